"""karma_ray.algo must stay a pure torch + stdlib library that never mutates its inputs."""

import ast
import pathlib

import torch

import karma_ray.algo as algo

ALGO_DIR = pathlib.Path(algo.__file__).parent
ALLOWED_TOP_LEVEL = {"__future__", "torch", "typing", "dataclasses", "math", "enum", "functools", "collections"}


def test_algo_modules_import_only_torch_and_stdlib():
    files = sorted(ALGO_DIR.glob("*.py"))
    assert {f.name for f in files} >= {
        "__init__.py", "logprobs.py", "kl.py", "rewards.py", "advantages.py", "losses.py"
    }
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level > 0:  # relative import inside karma_ray.algo
                    continue
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= ALLOWED_TOP_LEVEL, f"{path.name} imports {roots - ALLOWED_TOP_LEVEL}"


def test_public_functions_do_not_mutate_inputs():
    g = torch.Generator().manual_seed(0)
    B, T, V = 4, 5, 7
    logits = torch.randn(B, T, V, generator=g)
    tokens = torch.randint(0, V, (B, T), generator=g)
    lp = torch.randn(B, T, generator=g) - 2
    old = lp + 0.1 * torch.randn(B, T, generator=g)
    ref = lp + 0.3 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, T, generator=g)
    vals = torch.randn(B, T, generator=g)
    rets = torch.randn(B, T, generator=g)
    scores = torch.randn(B, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [1, 0, 0, 0, 0]], dtype=torch.float32)
    inputs = [logits, tokens, lp, old, ref, adv, vals, rets, scores, mask]
    before = [x.clone() for x in inputs]

    algo.logprobs_from_logits(logits, tokens)
    algo.entropy_from_logits(logits)
    algo.masked_whiten(adv, mask)
    algo.kl_estimate(lp, ref, "k3", mask=mask)
    rewards, _ = algo.shape_token_rewards(scores, lp, ref, mask, 0.1)
    algo.gae(rewards, vals, mask, 0.99, 0.95)
    algo.reinforce_plus_plus_advantages(rewards, mask, 0.99)
    algo.grpo_advantages(scores, 2, mask)
    algo.rloo_advantages(scores, 2, mask)
    algo.ppo_policy_loss(lp, old, adv, mask, 0.2, 0.28, dual_clip=3.0)
    algo.value_loss(vals, rets + 0.1, rets, mask, 0.2)
    algo.kl_loss(lp, ref, mask)
    algo.entropy_bonus(adv.abs(), mask, 0.01)
    algo.clip_scores(scores, 1.0)
    algo.normalize_scores(scores, 0.0, 1.0)
    algo.RunningMoments().update(adv, mask)

    for a, b in zip(before, inputs):
        assert torch.equal(a, b)
