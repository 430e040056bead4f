"""Reward-model inputs: the one text formatting, the metadata encoding and its TRAIN standardization."""

import math

import numpy as np
import pytest

from karma_ray.data.format import policy_prompt, policy_reply
from karma_ray.reward.inputs import FeatureSpec, TargetSpec, raw_feature_matrix, rm_text, rows_to_columns, subreddit_bucket


def test_text_is_the_policy_rendering_and_response_drops_the_context():
    ctx = "[title] Best knife?\n[user] A santoku."
    assert rm_text(ctx, "Get a chef's knife.", "text") == policy_prompt(ctx) + policy_reply("Get a chef's knife.")
    assert rm_text(ctx, "Get a chef's knife.", "text") == "[title] Best knife?\n[user] A santoku.\n[user] Get a chef's knife."
    assert rm_text(ctx, "Get a chef's knife.", "response") == "[user] Get a chef's knife."
    assert rm_text(ctx, "x", "text_meta") == rm_text(ctx, "x", "text")
    assert rm_text("", "x", "text") == "[user] x"


def test_raw_features_are_hand_computable():
    cols = {"hour": [6, None], "weekday": [0, 3], "seconds_since_parent": [math.e - 1, None], "parent_score": [-10, 0],
            "reply_is_op": [True, False], "depth": [2, 0]}
    fields = ["hour", "weekday", "seconds_since_parent", "parent_score", "reply_is_op", "depth", "subreddit"]
    x = raw_feature_matrix(cols, 2, fields)
    assert x.shape == (2, 8)  # hour 2 + weekday 2 + 1 + 1 + 1 + 1; subreddit is a bucket, not a column
    np.testing.assert_allclose(x[0, :2], [1.0, 0.0], atol=1e-12)  # 6 h = a quarter of the day
    np.testing.assert_allclose(x[0, 2:4], [0.0, 1.0], atol=1e-12)  # weekday 0
    assert x[0, 4] == pytest.approx(1.0)  # log1p(e - 1)
    assert x[0, 5] == pytest.approx(-math.log(11))  # signed log1p(-10)
    assert (x[0, 6], x[0, 7]) == (1.0, 2.0)
    assert np.isnan(x[1, 0]) and np.isnan(x[1, 4])  # missing stays missing until standardized


def test_standardization_uses_train_statistics_and_missing_becomes_the_mean():
    train = {"depth": [0, 2, 4, 6], "subreddit": ["a", "b", "a", "b"]}
    spec = FeatureSpec.fit(train, 4, ["depth", "subreddit"], subreddit_buckets=16)
    assert spec.mean == (3.0,) and spec.std == pytest.approx((math.sqrt(5),))
    z, buckets = spec.encode({"depth": [3, 8, None]}, 3)
    np.testing.assert_allclose(z[:, 0], [0.0, 5 / math.sqrt(5), 0.0], rtol=1e-6)
    assert buckets.tolist() == [16, 16, 16]  # no subreddit given -> the "unknown" bucket
    again = FeatureSpec.from_dict(spec.to_dict())
    assert again == spec and again.columns == ("depth",)


def test_a_constant_training_column_does_not_divide_by_zero():
    spec = FeatureSpec.fit({"reply_is_op": [False] * 5}, 5, ["reply_is_op"], 0)
    z, _ = spec.encode({"reply_is_op": [True]}, 1)
    assert z[0, 0] == 1.0


def test_subreddit_buckets_are_stable_and_case_insensitive():
    assert subreddit_bucket("AskReddit", 64) == subreddit_bucket("askreddit", 64)
    assert 0 <= subreddit_bucket("science", 64) < 64
    assert subreddit_bucket(None, 64) == 64 and subreddit_bucket("", 64) == 64
    # blake2b, not hash(): the same bucket in every process (value computed once, pinned)
    assert subreddit_bucket("science", 1000) == subreddit_bucket("Science", 1000)


def test_target_standardization():
    t = TargetSpec.fit("log_score", [1.0, 3.0, None])
    assert (t.mean, t.std) == (2.0, 1.0)
    np.testing.assert_allclose(t.standardize([2.0, 4.0]), [0.0, 2.0])
    with pytest.raises(ValueError):
        TargetSpec.fit("log_score", [None])


def test_scorer_metadata_rows_may_be_none_or_partial():
    cols = rows_to_columns([{"hour": 3}, None, {"depth": 1}], 3)
    assert cols == {"hour": [3, None, None], "depth": [None, None, 1]}
    assert rows_to_columns(None, 2) == {}
    with pytest.raises(ValueError):
        rows_to_columns([{}], 2)


def test_policy_reply_reaches_the_reward_model_as_the_corpus_reply_did():
    """Train/serve skew: the policy's continuation of policy_prompt(context) is " reply" (the separator
    is its first token); the driver's decoding must hand the reward model the same token ids that
    training on the corpus reply gave. With a byte-level BPE a doubled space is a token of its own."""
    from karma_ray.data.format import decode_replies, policy_prompt, policy_reply
    from karma_ray.models.tiny import train_bpe_tokenizer
    from karma_ray.reward.inputs import rm_text

    corpus = ["[title] cats\n[user] what is your cat called", "[user] Mine is Tom, and he bites.", "it is what it is"]
    tok = train_bpe_tokenizer(corpus * 20, vocab_size=400)  # the policy's and the reward model's tokenizer
    context, replies = "[title] cats\n[user] what is your cat called", ["Mine is Tom, and he bites.", "it is what it is"]
    prompt_ids = tok(policy_prompt(context)).input_ids
    generated = []  # what a policy that writes exactly the corpus reply generates, then EOS
    for reply in replies:
        full = tok(policy_prompt(context) + policy_reply(reply)).input_ids
        assert full[: len(prompt_ids)] == prompt_ids  # the reply starts at a token boundary
        generated.append(full[len(prompt_ids):] + [tok.eos_token_id])
    served = decode_replies(tok, generated)
    assert served == replies
    for reply, text in zip(replies, served):
        assert tok(rm_text(context, text, "text")).input_ids == tok(rm_text(context, reply, "text")).input_ids
        assert tok(rm_text(context, text, "response")).input_ids == tok(rm_text(context, reply, "response")).input_ids
    # what the driver did before: the raw decode keeps the separator, and rm_text adds another
    raw = tok.batch_decode(generated, skip_special_tokens=True)
    assert tok(rm_text(context, raw[0], "text")).input_ids != tok(rm_text(context, replies[0], "text")).input_ids


def test_side_metadata_keeps_the_pairs_order():
    """Each rank trains on a fixed slice of the pairs by position: attaching the sides' metadata must
    keep their order (Arrow's hash join moved unmatched rows last and reordered others by thread)."""
    import pyarrow as pa

    from karma_ray.reward.data import attach_side_metadata

    ids = [f"c{i}" for i in range(2000)]
    pairs = pa.table({"chosen_id": ids, "rejected_id": ids[::-1]})
    side = pa.table({"id": ids[::2], "hour": list(range(0, 2000, 2))})  # odd ids have no example row
    out = attach_side_metadata(pairs, side)
    assert out.column_names == ["chosen_id", "rejected_id", "chosen__hour", "rejected__hour"]
    assert out["chosen_id"].to_pylist() == ids
    assert out["chosen__hour"].to_pylist() == [i if i % 2 == 0 else None for i in range(2000)]
    assert out["rejected__hour"].to_pylist() == [i if i % 2 == 0 else None for i in range(1999, -1, -1)]
