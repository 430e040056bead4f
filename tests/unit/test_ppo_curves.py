"""What PPO logs to watch a run: the batch reward's noise band, the planted gold quality (synthetic
corpora), and the curves figure that draws both."""

import json
import math

import pytest

from karma_ray.rlhf.logging import plot_curves, write_report
from karma_ray.rlhf.prompts import Prompt


def _prompt(context: str) -> Prompt:
    return Prompt(context=context, text=context)


def test_gold_metrics_average_the_defined_replies_and_count_the_rest():
    pytest.importorskip("torch")
    from karma_ray.rlhf.driver import gold_metrics

    cooking = "[title] how long to simmer the garlic broth\n[user] any tips"
    prompts = [_prompt(cooking), _prompt(cooking), _prompt(cooking), _prompt("[user] no title here")]
    replies = [
        "simmer it with oregano, in my experience",  # on topic + good marker: 0.9 + 0.6 = 1.5
        "simmer the broth lol",  # on topic, bad marker: 0.9 - 0.6 = 0.3
        "nice weather today",  # off topic, no marker: 0.0
        "anything",  # no title: gold undefined, not counted
    ]
    m = gold_metrics(prompts, replies)
    assert m["gold_n"] == 3
    assert m["gold_mean"] == pytest.approx(0.6)
    # sample sd of (1.5, 0.3, 0.0) = sqrt(((0.9)^2 + (0.3)^2 + (0.6)^2) / 2) = sqrt(0.63); sem = sd / sqrt(3)
    assert m["gold_sem"] == pytest.approx(math.sqrt(0.63 / 3))
    none = gold_metrics(prompts[3:], replies[3:])
    assert none["gold_n"] == 0 and math.isnan(none["gold_mean"])


def _rows(gold: bool, evals: bool) -> list[dict]:
    rows = []
    for step in range(1, 7):
        r = {"step": step, "reward_mean": 0.1 * step, "reward_std": 0.2, "reward_sem": 0.2 / math.sqrt(32),
             "kl": 0.05 * step, "entropy": 6.0, "response_length": 20.0, "clip_frac": 0.1, "approx_kl": 0.01,
             "time/2_generate": 0.4, "time/7_update": 1.0, "time/iteration": 1.5}
        if gold:
            r.update(gold_mean=0.05 * step, gold_sem=0.03, gold_n=30)
        if evals and step % 2 == 0:
            r.update({"eval/humor/acc": 0.5, "eval/humor/acc_ci_low": 0.4, "eval/humor/acc_ci_high": 0.6})
        rows.append(r)
    return rows


@pytest.mark.parametrize("gold,evals", [(True, True), (False, False)])
def test_the_curves_figure_is_a_png_with_or_without_gold_and_eval(tmp_path, gold, evals):
    pytest.importorskip("matplotlib")
    out = plot_curves(_rows(gold, evals), tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    report = write_report(_rows(gold, evals), tmp_path).read_text()
    assert ("| gold_mean | 0.05 | 0.3 |" in report) == gold
    assert "| reward_sem |" in report
