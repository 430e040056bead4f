"""Shared fixtures: paths to ../shared/data (tests that need it skip with a reason when it is absent)
and one local Ray cluster per test session (ray.init costs seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("KARMA_SHARED_DATA", REPO.parent / "shared" / "data"))
PUSHSHIFT = SHARED_DATA / "reddit" / "pushshift"
CONVOKIT = SHARED_DATA / "reddit" / "convokit_sample"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def need_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (tests read ../shared/data; set KARMA_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """A local 2-CPU Ray cluster shared by all tests that ask for it."""
    ray = pytest.importorskip("ray")
    from karma_ray.config import RayConfig
    from karma_ray.ray_utils import init_ray

    # The dashboard (loopback) serves the State API that Ray Train V2's PlacementGroupCleaner
    # needs to free the placement group of a Tune trial stopped by ASHA (see reward/sweep.py).
    init_ray(RayConfig(num_cpus=2, include_dashboard=True, object_store_memory_gb=0.5, log_to_driver=False))
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prepared_synthetic(ray_cluster, tmp_path_factory):
    """A `karma prepare` output of a 6k-comment synthetic corpus (seed 3), made once per session.
    Returns the prepared folder (examples/, pairs/, manifest.json)."""
    from karma_ray.config import PrepareConfig, load_config
    from karma_ray.data.prepare import run_prepare
    from karma_ray.data.synth import write_synthetic_corpus

    root = tmp_path_factory.mktemp("prepared_synthetic")
    write_synthetic_corpus(root / "corpus", 6000, seed=3)
    cfg = load_config(PrepareConfig, REPO / "configs" / "data" / "synthetic.yaml", ["ray.num_cpus=null", "ray.object_store_memory_gb=null"])
    run_prepare(cfg, str(root / "prepared"), inputs=[str(root / "corpus")], overwrite=True)
    return root / "prepared"


# ---- PPO workers (karma_ray.rlhf.workers): a tiny random Llama and hand-made PPO batches ----


@pytest.fixture(scope="session")
def workers_tiny_llama(tmp_path_factory):
    """A tiny random Llama (hidden 32, 2 layers) with a 300-token BPE tokenizer, saved as an HF folder."""
    from karma_ray.models.tiny import save_tiny_llama, train_bpe_tokenizer

    texts = ["the quick brown fox jumps over the lazy dog", "hello world, this is a test of the policy"] * 20
    tok = train_bpe_tokenizer(texts, vocab_size=300)
    return save_tiny_llama(tmp_path_factory.mktemp("workers_llama"), tok, hidden_size=32, num_layers=2, num_heads=2)


@pytest.fixture(scope="session")
def workers_experience():
    """make(batch, seed, vocab) -> a random PPO Experience (prompts of 2-5 tokens left-padded, responses
    of 1-6 tokens right-padded, one row with an empty response); old/ref logprobs random, not a model's."""
    import torch

    from karma_ray.types import Experience, pack_sequences

    def make(batch: int = 8, seed: int = 0, vocab: int = 300):
        g = torch.Generator().manual_seed(seed)

        def ids(lo, hi):
            return torch.randint(1, vocab, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

        prompts = [ids(2, 6) for _ in range(batch)]
        responses = [ids(1, 7) for _ in range(batch)]
        responses[-1] = []  # a row without response tokens contributes nothing and must not break anything
        seqs = pack_sequences(prompts, responses, pad_id=0)
        mask = seqs.response_mask
        old = (-5.0 - torch.rand(mask.shape, generator=g)) * mask
        return Experience(
            sequences=seqs,
            old_logprobs=old,
            ref_logprobs=old + 0.1 * torch.randn(mask.shape, generator=g) * mask,
            advantages=torch.randn(mask.shape, generator=g) * mask,
            returns=torch.randn(mask.shape, generator=g) * mask,
            values=0.1 * torch.randn(mask.shape, generator=g) * mask,
        )

    return make


@pytest.fixture(scope="session")
def workers_plain_ppo_update():
    """update(model_dir, experience, trainer, algo, seed) -> (state dict, [total loss per step],
    [gradient norm before clipping per step]): the
    PPO policy update written plainly: one process, whole minibatches, torch AdamW, clip_grad_norm_.
    The reference the DeepSpeed workers must reproduce."""
    import torch

    from karma_ray.algo import entropy_bonus, entropy_from_logits, kl_loss, ppo_policy_loss
    from karma_ray.models.hf import load_causal_lm
    from karma_ray.engines.forward import disable_dropout
    from karma_ray.rlhf.workers.distributed import optimizer_param_groups
    from karma_ray.types import response_logprobs

    def update(model_dir, experience, trainer, algo, seed=0):
        model = load_causal_lm(model_dir, dtype="float32")
        disable_dropout(model)
        opt = torch.optim.AdamW(optimizer_param_groups(model, trainer.weight_decay), lr=trainer.lr)
        shuffle = torch.Generator().manual_seed(seed)
        losses, norms = [], []
        for _ in range(algo.ppo_epochs):
            for mb in experience.minibatches(algo.minibatch_size, generator=shuffle):
                seq, mask = mb.sequences, mb.sequences.response_mask
                logits = model(input_ids=seq.input_ids, attention_mask=seq.attention_mask, position_ids=seq.position_ids).logits
                logp = response_logprobs(logits, seq)
                loss, _ = ppo_policy_loss(logp, mb.old_logprobs, mb.advantages, mask, algo.clip_eps, algo.clip_eps_high, loss_agg=algo.loss_agg)
                if algo.entropy_coef > 0:
                    ent = entropy_from_logits(logits[:, seq.prompt_len - 1 : -1])
                    loss = loss + entropy_bonus(ent, mask, algo.entropy_coef, algo.loss_agg)
                if algo.kl_placement == "loss":
                    loss = loss + algo.kl_coef * kl_loss(logp, mb.ref_logprobs, mask, algo.kl_estimator, algo.loss_agg)
                opt.zero_grad()
                loss.backward()
                # Returns the norm BEFORE clipping (grad_clip 0 = off): AdamW and the clip hide a wrong
                # gradient SCALE, the norm does not.
                norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.grad_clip or float("inf"))))
                opt.step()
                losses.append(float(loss.detach()))
        return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses, norms

    return update


# ---- reward-model stage (tests/*/test_reward_*.py; `prepared_synthetic` is above) ----


@pytest.fixture(scope="session")
def tiny_rm_backbones(tmp_path_factory):
    """Tiny random-init BERT and Llama backbones (hidden 32, 2 layers) sharing a 512-token byte-level BPE
    trained on synthetic text, for reward-model tests. Returns {"bert": dir, "llama": dir}."""
    from karma_ray.data import synth
    from karma_ray.models.tiny import save_tiny_bert, save_tiny_llama, train_bpe_tokenizer

    # The synthetic corpus's own vocabularies, so its topic words and markers get their own tokens.
    texts = [" ".join(words) for words in synth.TOPICS.values()] * 5 + [" ".join(synth.FILLER_WORDS)] * 20
    texts += list(synth.MARKERS_GOOD + synth.MARKERS_BAD) + ["[title] [post] [user] [OP] …"] * 5
    tok = train_bpe_tokenizer(texts, vocab_size=512)
    root = tmp_path_factory.mktemp("tiny_rm_backbones")
    return {
        "bert": save_tiny_bert(root / "bert", tok, hidden_size=32, num_layers=2, num_heads=2),
        "llama": save_tiny_llama(root / "llama", tok, hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=512),
    }


# A hung test must not eat CI's 90 minutes: after this many seconds in ONE test, faulthandler dumps
# every thread's stack (the diagnosis) and exits the run. Real tests here take at most a few minutes.
TEST_HANG_LIMIT_S = int(os.environ.get("KARMA_TEST_HANG_LIMIT_S", "900"))


@pytest.fixture(autouse=True)
def _hang_guard():
    import faulthandler

    faulthandler.dump_traceback_later(TEST_HANG_LIMIT_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def ray_start_calls(monkeypatch):
    """Records every attempt to start/join Ray (karma_ray.ray_utils.init_ray is the only caller of
    ray.init). Tests of "errors are caught before Ray starts" assert it stays empty: checking
    `ray.is_initialized()` instead would fail whenever an earlier test left the session cluster up."""
    import karma_ray.ray_utils

    calls = []
    monkeypatch.setattr(karma_ray.ray_utils, "init_ray", lambda cfg: calls.append(cfg))
    return calls


def pytest_collection_modifyitems(config, items):
    """`make test-unit` is the lane without Ray: a unit test that asks for the cluster is a mistake."""
    wrong = [item.nodeid for item in items if "unit" in item.path.parts and "ray_cluster" in getattr(item, "fixturenames", ())]
    if wrong:
        raise pytest.UsageError(f"tests/unit must not start Ray (move them to tests/integration): {wrong[:5]}")


def pytest_configure(config):
    # Registered here rather than in pyproject.toml: its digest keys the Makefile's install stamp.
    config.addinivalue_line("markers", "multinode: a multi-node Ray cluster on this machine (~15 min); "
                            "`make test-multinode`, not in CI's slow lane (its 90 minutes)")
