"""The one rendering of a conversational context as text.

Used by corpus preparation (the `context` column), and later by reward-model training/scoring and
PPO prompt building, so that a context always reads the same way wherever a model sees it.
"""

from __future__ import annotations

from typing import Sequence

OP_ROLE = "OP"  # the submission's author speaking in the thread
USER_ROLE = "user"  # anyone else
ELLIPSIS = "…"


def render_context(
    title: str | None,
    selftext: str | None,
    turns: Sequence[tuple[str, str]],
    max_chars: int,
) -> str:
    """Submission title/selftext then ancestor turns (oldest first) as tagged lines.

    `turns` are (role, text). If the result is longer than `max_chars`, its START is cut (the
    turns nearest the reply matter most) and an ellipsis marks the cut.
    """
    parts = []
    if title:
        parts.append(f"[title] {title}")
    if selftext:
        parts.append(f"[post] {selftext}")
    for role, text in turns:
        parts.append(f"[{role}] {text}")
    text = "\n".join(parts)
    if len(text) > max_chars:
        text = ELLIPSIS + text[len(text) - max_chars + 1 :]
    return text


def truncate(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max(max_chars - 1, 0)] + ELLIPSIS


# The policy sees a context and writes the next turn as "[user] ...". The reply continues the prompt
# with a leading space (BPE vocabularies attach the space to the following word, so a prompt must not
# end with one). SFT, PPO prompts and evaluation all build policy text with these two functions.
def policy_prompt(context: str) -> str:
    return f"{context}\n[{USER_ROLE}]" if context else f"[{USER_ROLE}]"


def policy_reply(reply: str) -> str:
    return " " + reply


def reply_from_policy(continuation: str) -> str:
    """The inverse of `policy_reply`: a policy's decoded continuation of `policy_prompt(...)` -> the reply.

    The policy writes " reply" (the separator space belongs to its continuation), so scoring the
    decoded text as a reply would add the separator twice ("[user]  reply"): a byte-level BPE reward
    model would then see token ids it never saw in training. Exactly one leading space is removed.
    """
    return continuation[1:] if continuation.startswith(" ") else continuation


def decode_replies(tokenizer, response_ids) -> list[str]:
    """Policy response token ids (a list per row) -> replies, as the corpus stores them."""
    return [reply_from_policy(t) for t in tokenizer.batch_decode(response_ids, skip_special_tokens=True)]
