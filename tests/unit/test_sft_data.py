"""SFT text -> tokens: which positions the loss counts, truncation, filters, step arithmetic; and the
learner itself (no Ray): a few steps lower the loss, and a checkpoint restores it exactly."""

import math
from types import SimpleNamespace

import pyarrow as pa
import pytest
import torch

from karma_ray.config import load_config
from karma_ray.sft.config import SFTConfig, SFTDataConfig
from karma_ray.sft.data import collate, encode_example, keep_rows, reply_nll
from karma_ray.sft.train import lr_factor, steps_per_epoch


class WordTokenizer:
    """Whitespace tokenizer with a fixed vocabulary, so every position is known by hand."""

    def __init__(self, words, bos: bool):
        self.vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<bos>", *words])}
        self.pad_token_id, self.eos_token_id, self.bos_token_id = 0, 1, 2
        self.bos = bos

    def __call__(self, text, add_special_tokens=True):
        ids = [self.vocab[w] for w in text.split()]
        return SimpleNamespace(input_ids=([self.bos_token_id] if self.bos and add_special_tokens else []) + ids)


WORDS = ["a", "b", "c", "d", "[user]", "[title]", "x", "y", "z"]


def ids(tok, words):
    return [tok.vocab[w] for w in words]


def test_sequence_is_prompt_then_reply_and_only_reply_positions_are_labelled():
    tok = WordTokenizer(WORDS, bos=True)
    long_ = encode_example(tok, "a b c d", "x y", max_prompt_tokens=3, max_reply_tokens=8)
    short = encode_example(tok, "a", "z", max_prompt_tokens=8, max_reply_tokens=8)
    # the context loses its START; BOS and the "[user]" cue stay
    assert long_.prompt_ids == [2, *ids(tok, ["d", "[user]"])] and long_.prompt_truncated
    assert long_.target_ids == [*ids(tok, ["x", "y"]), tok.eos_token_id] and not long_.reply_truncated
    assert short.prompt_ids == [2, *ids(tok, ["a", "[user]"])] and short.target_ids == [tok.vocab["z"], 1]
    batch = collate([long_, short], tok.pad_token_id)
    x, y, z, user, d, a = (tok.vocab[w] for w in ["x", "y", "z", "[user]", "d", "a"])
    assert batch.input_ids.tolist() == [[2, d, user, x, y, 1], [2, a, user, z, 1, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]]
    assert batch.labels.tolist() == [[-100, -100, -100, x, y, 1], [-100, -100, -100, z, 1, -100]]
    assert batch.num_tokens == 11


def test_loss_counts_exactly_the_positions_that_predict_reply_tokens():
    tok = WordTokenizer(WORDS, bos=False)
    batch = collate([encode_example(tok, "a b", "x y", 8, 8)], tok.pad_token_id)  # a b [user] | x y <eos>
    V = len(tok.vocab)
    logits = torch.zeros(1, 6, V)
    # position t gets a distinct confidence t on the true next token: logp = t - log(e^t + V - 1)
    for t in range(5):
        logits[0, t, batch.input_ids[0, t + 1]] = float(t)
    nll, mask = reply_nll(logits, batch)
    assert mask.tolist() == [[False, False, True, True, True]]  # [user] -> x, x -> y, y -> eos
    expected = [0.0, 0.0] + [math.log(math.exp(t) + V - 1) - t for t in (2, 3, 4)]
    assert nll[0].tolist() == pytest.approx(expected, abs=1e-5)


def test_a_long_reply_is_cut_without_eos():
    tok = WordTokenizer(WORDS, bos=False)
    e = encode_example(tok, "a", "x y z x y", max_prompt_tokens=8, max_reply_tokens=3)
    assert e.target_ids == ids(tok, ["x", "y", "z"]) and e.reply_truncated
    fits = encode_example(tok, "a", "x y", max_prompt_tokens=8, max_reply_tokens=3)
    assert fits.target_ids == [*ids(tok, ["x", "y"]), 1] and not fits.reply_truncated


def test_filters_keep_the_rows_they_should():
    t = pa.table({
        "id": ["a1", "a2", "a3", "a4", "a5"],
        "score": [5, 1, None, 2, 3],
        "sibling_percentile": [0.9, 0.1, 0.5, None, 0.4],
    })
    assert keep_rows(t, SFTDataConfig())["id"].to_pylist() == ["a1", "a2", "a3", "a4", "a5"]
    assert keep_rows(t, SFTDataConfig(min_score=2))["id"].to_pylist() == ["a1", "a4", "a5"]
    both = SFTDataConfig(min_score=2, min_sibling_percentile=0.5)
    assert keep_rows(t, both)["id"].to_pylist() == ["a1"]
    assert keep_rows(t, SFTDataConfig(), max_id="a3")["id"].to_pylist() == ["a1", "a2", "a3"]


def test_step_arithmetic_and_schedule():
    # 103 examples, 2 workers -> 51 rows each -> 7 micro-batches of 8 -> 3 steps of 2 (one tail micro-batch skipped)
    assert steps_per_epoch(103, 2, 8, 2) == 3
    assert steps_per_epoch(3, 2, 8, 2) == 0
    assert [lr_factor(s, 2, 6, "linear") for s in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert lr_factor(2, 2, 6, "cosine") == 1.0 and lr_factor(4, 2, 6, "cosine") == pytest.approx(0.5)
    assert lr_factor(5, 0, 6, "constant") == 1.0


def test_config_rejects_a_validation_split_that_is_also_trained_on():
    from karma_ray.config import ConfigError

    with pytest.raises(ConfigError, match="also a training split"):
        load_config(SFTConfig, None, ["model.path=m", "data.splits=[train,val]"])
    with pytest.raises(ConfigError, match="model.path is required"):
        load_config(SFTConfig, None, [])
    with pytest.raises(ConfigError, match="zero_stage"):
        load_config(SFTConfig, None, ["model.path=m", "deepspeed.zero_stage=1"])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from karma_ray.data.synth import FILLER_WORDS, TOPICS
    from karma_ray.models.tiny import save_tiny_llama, train_bpe_tokenizer

    words = list(FILLER_WORDS) + [w for topic in TOPICS.values() for w in topic]
    text = [" ".join(words[i:] + words[:i]) for i in range(0, len(words), 7)] + ["[title] [post] [user] [OP]"]
    tok = train_bpe_tokenizer(text, vocab_size=400)
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", tok, hidden_size=32, num_layers=1, num_heads=2)


def test_learner_steps_lower_the_loss_and_a_checkpoint_restores_it(tiny_model, tmp_path):
    from karma_ray.sft.train import SFTLearner

    cfg = load_config(SFTConfig, None, [f"model.path={tiny_model}", "optim.lr=0.003", "optim.schedule=constant", "train.batch_size=4"])
    torch.manual_seed(0)
    learner = SFTLearner(cfg, total=20)
    contexts = ["[title] alpha beta\n[user] gamma"] * 4
    replies = ["delta epsilon zeta", "eta theta", "iota kappa lambda", "mu nu"]
    before = learner.eval_sums(contexts, replies)
    for _ in range(8):
        stats = learner.train_step([learner.batch(contexts, replies)])
    after = learner.eval_sums(contexts, replies)
    assert before[1] == after[1] == stats.loss_count  # the same reply tokens are counted
    assert after[0] / after[1] < before[0] / before[1] - 0.5  # mean reply NLL fell
    assert stats.samples == 4 and stats.tokens > stats.loss_count

    learner.save(tmp_path, writer=True)
    restored = SFTLearner(cfg, total=20)
    restored.load(tmp_path)
    assert restored.eval_sums(contexts, replies)[0] == pytest.approx(after[0], rel=1e-6)
    # optimizer moments came back too: the next step is identical
    a = learner.train_step([learner.batch(contexts, replies)])
    b = restored.train_step([restored.batch(contexts, replies)])
    assert a.grad_norm == pytest.approx(b.grad_norm, rel=1e-5)
    assert restored.eval_sums(contexts, replies)[0] == pytest.approx(learner.eval_sums(contexts, replies)[0], rel=1e-5)
