"""The PPO driver loop with every role in this process (backend='local', no Ray): the same worker
classes and phases, so the loop's bookkeeping is testable in seconds."""

import json
import random

import pytest

from karma_ray.config import load_config
from karma_ray.rlhf.config import PPOConfig


def test_local_backend_runs_the_loop_and_logs_every_phase(tmp_path):
    pytest.importorskip("deepspeed")
    from karma_ray.models.tiny import save_tiny_llama, train_bpe_tokenizer
    from karma_ray.rlhf.driver import PPODriver

    rng = random.Random(0)
    words = "red green blue cat dog sun moon tree".split()
    texts = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(50)]
    policy = save_tiny_llama(tmp_path / "policy", train_bpe_tokenizer(texts, vocab_size=300), hidden_size=32, num_heads=1)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    cfg = load_config(
        PPOConfig,
        None,
        [
            f"model.policy={policy}",
            "reward.models=[{path: 'rule:char_fraction:e', name: e}, {path: 'rule:constant:2', name: two, weight: 0.5}]",
            "rollout.engine=hf",
            "rollout.max_new_tokens=6",
            "algo.minibatch_size=8",
            "policy.micro_batch_size=4",
            "critic.micro_batch_size=4",
            "prompts.source=file",
            f"prompts.path={prompts}",
            "prompts.max_prompt_tokens=16",
            "run.prompts_per_iteration=8",
            "run.iterations=3",
            "run.checkpoint_every=2",
            "run.tensorboard=false",
        ],
    )
    driver = PPODriver(cfg, tmp_path / "run", backend="local")
    try:
        history = driver.fit()
        exported = driver.export_policy()
    finally:
        driver.shutdown()
    assert [m["step"] for m in history] == [1, 2, 3]
    for m in history:
        # combined reward = 1 * e_fraction + 0.5 * 2
        assert m["reward_mean"] == pytest.approx(m["reward/e"] + 1.0, abs=1e-6)
        assert m["sequences"] == 8 and 1 <= m["response_length"] <= 6
        assert m["rollout_logprob_max_abs_diff"] < 1e-4  # HF engine synced from the policy each step
        for phase in ("1_prompts", "2_generate", "3-5_score_reference_values", "6_advantages", "7_update", "8_sync", "9_log"):
            assert m[f"time/{phase}"] >= 0
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_000002", "step_000003"]
    assert (exported / "model.safetensors").exists() and (exported / "lineage.json").exists()
    assert (tmp_path / "run" / "report.md").read_text().startswith("# PPO run")


def test_the_live_policy_is_evaluated_through_its_workers_every_n_iterations(tmp_path, monkeypatch):
    """eval.every_iterations=2: iterations 2 and 4 log eval/humor/acc (with its CI); the score is the
    one `karma eval` computes for the same weights (the exported policy, scored by LogprobScorer)."""
    pytest.importorskip("deepspeed")
    from pathlib import Path

    eval_data = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "eval"
    if not eval_data.exists():
        pytest.skip(f"shared data not found: {eval_data}")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    from karma_ray.engines.scorer import LogprobScorer
    from karma_ray.eval.harness import ScoringLM, evaluate_multiple_choice
    from karma_ray.models.tiny import save_tiny_llama, train_bpe_tokenizer
    from karma_ray.rlhf.driver import PPODriver

    words = "is the following text a joke answer yes or no".split()
    rng = random.Random(1)
    texts = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(50)]
    policy = save_tiny_llama(tmp_path / "policy", train_bpe_tokenizer(texts, vocab_size=300), hidden_size=32, num_heads=1,
                             max_position_embeddings=512)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    cfg = load_config(PPOConfig, None, [
        f"model.policy={policy}", "reward.models=[{path: 'rule:char_fraction:e', name: e}]", "rollout.engine=hf",
        "rollout.max_new_tokens=4", "algo.minibatch_size=8", "policy.micro_batch_size=4", "critic.micro_batch_size=4",
        "prompts.source=file", f"prompts.path={prompts}", "prompts.max_prompt_tokens=16", "run.prompts_per_iteration=8",
        "run.iterations=4", "run.checkpoint_every=10", "run.tensorboard=false", "policy.lr=1e-2",
        "eval.every_iterations=2", "eval.tasks=[humor]", "eval.limit=16", f"eval.data_root={eval_data}", "eval.max_length=256",
    ])
    driver = PPODriver(cfg, tmp_path / "run", backend="local")
    try:
        history = driver.fit()
        exported = driver.export_policy()
        data = driver.live_eval.data
    finally:
        driver.shutdown()
    assert ["eval/humor/acc" in m for m in history] == [False, True, False, True]
    last = history[-1]
    assert last["eval/humor/acc_ci_low"] <= last["eval/humor/acc"] <= last["eval/humor/acc_ci_high"]
    scorer = LogprobScorer(str(exported), num_threads=1)
    from karma_ray.models.hf import load_tokenizer

    lm = ScoringLM(load_tokenizer(str(exported)), lambda p: scorer.continuation_logprobs(p, max_length=256), 256)
    items = evaluate_multiple_choice(lm, [(d.spec, d.docs, d.fewshot) for d in data], seed=0)["humor"]
    assert last["eval/humor/acc"] == pytest.approx(sum(i.value for i in items) / len(items), abs=1e-9)


@pytest.mark.parametrize("every,final,due", [
    (2, True, [2, 4, 5]),  # every 2nd iteration and the last
    (2, False, [2, 4]),  # the experiment's cells: no checkpoint after the last iteration
    (0, True, [5]),
    (0, False, []),
])
def test_checkpoints_fall_on_every_nth_iteration_and_the_last_unless_it_is_switched_off(every, final, due):
    from types import SimpleNamespace

    from karma_ray.rlhf.driver import PPODriver

    cfg = load_config(PPOConfig, "configs/ppo/smollm2-cpu.yaml", ["run.iterations=5", f"run.checkpoint_every={every}", f"run.final_checkpoint={str(final).lower()}"])
    assert [s for s in range(1, 6) if PPODriver._checkpoint_due(SimpleNamespace(cfg=cfg), s)] == due
