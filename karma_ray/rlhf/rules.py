"""Rule rewards: text in, float out. For tests, demos and sanity checks of the RL loop.

A rule is named in config as `rule:NAME` or `rule:NAME:ARG` in place of a reward-model folder, e.g.
`rule:char_fraction:e` (the fraction of the response's characters that are 'e'). They are learnable
by a random-init tiny policy within tens of iterations, so an end-to-end run can show reward rising
for reasons that have nothing to do with karma; `rule:constant` is the matching null control.

Pure Python; no model, no Ray.
"""

from __future__ import annotations

from typing import Callable, Optional

Rule = Callable[[str, str], float]  # (context, response) -> score


def _char_fraction(arg: Optional[str]) -> Rule:
    if not arg or len(arg) != 1:
        raise ValueError("rule:char_fraction needs one character, e.g. rule:char_fraction:e")

    def score(context: str, response: str) -> float:
        return response.count(arg) / len(response) if response else 0.0

    return score


def _length(arg: Optional[str]) -> Rule:
    target = int(arg) if arg else 32

    def score(context: str, response: str) -> float:
        return min(len(response.split()), target) / target

    return score


def _constant(arg: Optional[str]) -> Rule:
    value = float(arg) if arg else 0.0

    def score(context: str, response: str) -> float:
        return value

    return score


RULES: dict[str, Callable[[Optional[str]], Rule]] = {
    "char_fraction": _char_fraction,
    "length": _length,
    "constant": _constant,
}


def is_rule(path: str) -> bool:
    return path.startswith("rule:")


def make_rule(spec: str) -> Rule:
    """`rule:NAME[:ARG]` -> the scoring function; a clear error for unknown names or bad args."""
    name, _, arg = spec[len("rule:") :].partition(":")
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r} in {spec!r} (rules: {', '.join(sorted(RULES))})")
    return RULES[name](arg or None)
