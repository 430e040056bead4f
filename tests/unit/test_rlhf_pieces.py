"""Pure pieces of the PPO stage: config rules, placement plans, prompt order, rules, advantages."""

import time
import json
import random
from dataclasses import asdict

import pytest
import torch

from karma_ray.config import ConfigError, load_config
from karma_ray.rlhf.config import PPOConfig
from karma_ray.rlhf.driver import DriverState, PhaseTimer, latest_checkpoint, sampling_seed
from karma_ray.rlhf.experience import make_advantage_fn
from karma_ray.rlhf.placement import RoleRequest, check_fits, plan_placement
from karma_ray.rlhf.prompts import PromptError, PromptSampler, load_prompts, tokenize_prompts
from karma_ray.rlhf.roles import _split, role_requests
from karma_ray.types import concat_generations
from karma_ray.rlhf.rules import make_rule
from karma_ray.rlhf.workers.reward import RewardWorker, combine_scores
from karma_ray.types import Generations

BASE = ["model.policy=p", "prompts.path=x", "reward.models=[{path: 'rule:constant'}]"]


def cfg(*overrides):
    return load_config(PPOConfig, None, [*BASE, *overrides])


def test_config_cross_field_rules():
    assert cfg().sequences_per_iteration == 16
    with pytest.raises(ConfigError, match="must divide"):
        cfg("algo.minibatch_size=5")
    with pytest.raises(ConfigError, match="samples_per_prompt >= 2"):
        cfg("algo.estimator=grpo")
    with pytest.raises(ConfigError, match="max_model_len"):
        cfg("rollout.max_model_len=100", "prompts.max_prompt_tokens=90", "rollout.max_new_tokens=20")
    with pytest.raises(ConfigError, match="at least one reward model"):
        load_config(PPOConfig, None, ["model.policy=p", "prompts.path=x"])
    with pytest.raises(ConfigError, match="did you mean 'algo.kl_coef'"):
        cfg("algo.kl_coeff=0.1")
    assert cfg("algo.estimator=rloo", "run.samples_per_prompt=4", "algo.minibatch_size=64").algo.uses_critic is False


def test_disaggregated_plan_gives_each_role_its_own_group():
    reqs = [RoleRequest("policy", 2, 1.0, 0.0), RoleRequest("critic", 0, 1.0, 0.0), RoleRequest("rollout", 1, 0.5, 0.0)]
    plan = plan_placement("disaggregated", "PACK", reqs)
    assert set(plan.groups) == {"policy", "rollout"}  # a role with 0 actors gets nothing
    assert plan.groups["policy"] == [{"CPU": 1.0}, {"CPU": 1.0}]
    assert plan.slots["rollout"] == [("rollout", 0)]
    assert plan.total() == {"CPU": 2.5}


def test_colocated_plan_sums_what_shares_a_bundle():
    reqs = [RoleRequest("policy", 2, 0.5, 0.25), RoleRequest("reference", 1, 0.25, 0.25), RoleRequest("rollout", 2, 0.25, 0.5)]
    plan = plan_placement("colocated", "PACK", reqs)
    assert list(plan.groups) == ["shared"]
    assert plan.groups["shared"] == [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 0.75, "GPU": 0.75}]
    assert plan.slots["reference"] == [("shared", 0)]
    assert check_fits(plan, {"CPU": 1.0, "GPU": 8}) == "CPU: needs 1.75, cluster has 1"
    assert check_fits(plan, {"CPU": 2.0, "GPU": 2}) is None
    with pytest.raises(ValueError, match="needs some CPU or GPU"):
        plan_placement("colocated", "PACK", [RoleRequest("x", 1, 0.0, 0.0)])


def test_role_requests_follow_modes():
    gae = {r.role: r.count for r in role_requests(cfg())}
    assert gae["critic"] == 1
    free = {r.role: r.count for r in role_requests(cfg("algo.estimator=reinforce++"))}
    assert free["critic"] == 0
    two = cfg("reward.models=[{path: 'rule:constant'}, {path: 'rule:length'}]", "reward.num_actors=2")
    assert {r.role: r.count for r in role_requests(two)}["reward"] == 4


def test_prompt_sampler_epochs_and_resume():
    s = PromptSampler(5, 3, seed=1)
    draws = [s.next_indices() for _ in range(4)]  # 12 draws over 5 prompts: epochs 0, 1 and part of 2
    flat = [i for d in draws for i in d]
    assert sorted(flat[:5]) == [0, 1, 2, 3, 4] and sorted(flat[5:10]) == [0, 1, 2, 3, 4]
    s2 = PromptSampler(5, 3, seed=1)
    s2.next_indices()
    state = json.loads(json.dumps(s2.state_dict()))
    s3 = PromptSampler(5, 3, seed=1)
    s3.load_state_dict(state)
    assert [s3.next_indices() for _ in range(3)] == draws[1:]
    with pytest.raises(PromptError, match="checkpoint was taken"):
        PromptSampler(6, 3, seed=1).load_state_dict(state)


def test_prompt_file_errors_are_clear(tmp_path):
    from karma_ray.rlhf.config import PromptConfig

    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hi"}\n{"text": "no prompt key"}\n')
    with pytest.raises(PromptError, match="1 of 2 rows lack"):
        load_prompts(PromptConfig(source="file", path=str(f)))
    f.write_text('{"prompt": "hi"}\nnot json\n')
    with pytest.raises(PromptError, match="malformed line.*line 2"):
        load_prompts(PromptConfig(source="file", path=str(f)))
    f.write_text('{"prompt": "What is a cat?"}\n')
    (p,) = load_prompts(PromptConfig(source="file", path=str(f)))
    assert p.context == "What is a cat?" and p.text == "What is a cat?\n[user]"


def test_tokenize_prompts_cuts_from_the_left():
    class Tok:
        eos_token_id = 9

        def __call__(self, texts, add_special_tokens):
            return {"input_ids": [list(range(len(t))) for t in texts]}

    assert tokenize_prompts(Tok(), ["abcdef", ""], 4) == [[2, 3, 4, 5], [9]]


def test_rules_and_reward_combination():
    assert make_rule("rule:char_fraction:e")("", "eeab") == 0.5
    assert make_rule("rule:length:4")("", "a b c d e f") == 1.0
    with pytest.raises(ValueError, match="unknown rule"):
        make_rule("rule:nope")
    w = RewardWorker("rule:char_fraction:e")
    scores, seconds = w.score(["c", "c"], ["ee", "ab"])
    assert scores.tolist() == [1.0, 0.0]
    total = combine_scores([torch.tensor([1.0, 2.0]), torch.tensor([10.0, 0.0])], [0.5, -1.0])
    assert total.tolist() == [-9.5, 1.0]


def test_split_and_merge_generations_keep_prompt_groups():
    assert _split(5, 2) == [(0, 3), (3, 5)]
    assert _split(1, 3) == [(0, 1), (1, 1), (1, 1)]
    a = Generations([[1]] * 2, [[5], [6]], [[-0.1], [-0.2]], [True, False], [0, 0])  # 1 prompt x 2 samples
    b = Generations([[2]], [[7]], [[-0.3]], [True], [0])
    m = concat_generations([a, b], [0, 1])
    assert m.group == [0, 0, 1] and m.response_ids == [[5], [6], [7]] and len(m) == 3


def test_advantage_fn_kl_in_reward_with_gae_by_hand():
    # One sequence, two response tokens, gamma = lam = 1, no whitening, k1 KL.
    c = cfg("algo.whiten_advantages=false", "algo.gamma=1.0", "algo.lam=1.0")
    fn = make_advantage_fn(c.algo)
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])  # k1 = logp - ref = [0.5, -1.0]
    mask = torch.ones(1, 2)
    values = torch.tensor([[0.2, 0.1]])
    out = fn(torch.tensor([3.0]), logp, ref, mask, values, torch.tensor([0]), 0.1)
    # token rewards: [-0.05, 0.1 + 3.0]; returns-to-go: [3.05, 3.1]; A = G - V
    assert out.token_rewards[0].tolist() == pytest.approx([-0.05, 3.1])
    assert out.returns[0].tolist() == pytest.approx([3.05, 3.1])
    assert out.advantages[0].tolist() == pytest.approx([2.85, 3.0])
    assert out.kl_per_sequence.tolist() == pytest.approx([-0.5])


def test_advantage_fn_group_estimators_fold_kl_into_the_sequence_score():
    c = cfg("algo.estimator=rloo", "run.samples_per_prompt=2", "algo.whiten_advantages=false")
    fn = make_advantage_fn(c.algo)
    mask = torch.ones(2, 1)
    logp = torch.tensor([[0.0], [0.0]])
    ref = torch.tensor([[-1.0], [0.0]])  # KL 1.0 for row 0, 0 for row 1
    out = fn(torch.tensor([2.0, 1.0]), logp, ref, mask, None, torch.tensor([0, 0]), 0.5)
    # sequence scores 2 - 0.5 = 1.5 and 1.0; RLOO: each minus the other
    assert out.advantages.squeeze(-1).tolist() == pytest.approx([0.5, -0.5])
    c2 = cfg("algo.estimator=rloo", "run.samples_per_prompt=2", "algo.whiten_advantages=false", "algo.kl_placement=loss")
    out2 = make_advantage_fn(c2.algo)(torch.tensor([2.0, 1.0]), logp, ref, mask, None, torch.tensor([0, 0]), 0.5)
    assert out2.advantages.squeeze(-1).tolist() == pytest.approx([1.0, -1.0])
    with pytest.raises(ValueError, match="critic values"):
        make_advantage_fn(cfg().algo)(torch.tensor([1.0]), logp[:1], ref[:1], mask[:1], None, torch.tensor([0]), 0.1)


def test_driver_state_roundtrip_and_checkpoint_discovery(tmp_path):
    random.seed(3)
    st = DriverState(step=4, kl_controller={"a": 1}, python_rng=random.getstate(), torch_rng=torch.get_rng_state().tolist())
    back = DriverState.from_json(json.loads(json.dumps(asdict(st))))
    random.setstate(back.python_rng)
    x = random.random()
    random.seed(3)
    assert x == random.random() and back.step == 4
    root = tmp_path / "checkpoints"
    for s in (2, 4, 6):
        (root / f"step_{s:06d}").mkdir(parents=True)
    (root / "step_000002" / "COMPLETE").write_text("2")
    (root / "step_000004" / "COMPLETE").write_text("4")  # step 6 was interrupted mid-write
    assert latest_checkpoint(tmp_path).name == "step_000004"
    assert sampling_seed(0, 3) != sampling_seed(0, 4) and sampling_seed(1, 3) == sampling_seed(1, 3)
    t = PhaseTimer()
    with t("a"):
        time.sleep(0.02)
    with t("a"):
        time.sleep(0.02)
    assert list(t.seconds) == ["a"] and t.seconds["a"] >= 0.04  # the two spans add up


def test_rendezvous_ports_stay_out_of_the_ephemeral_range():
    """An ephemeral port (bind-to-0) can be taken by any connection opened before the rendezvous
    binds it; free_port picks one below the kernel's ephemeral range, above Ray's worker ports."""
    import socket

    from karma_ray.rlhf.workers.distributed import _ephemeral_low, free_port

    ports = {free_port() for _ in range(20)}
    assert all(20_000 <= p < _ephemeral_low() for p in ports), sorted(ports)
    assert len(ports) > 1  # random, not one fixed port for every group
    with socket.socket() as s:
        s.bind(("", ports.pop()))  # and it is free
