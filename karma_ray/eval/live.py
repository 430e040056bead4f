"""The eval task specs scored on the LIVE PPO policy, through its own actors, without exporting it.

    live = LiveEvaluator(cfg.eval, tokenizer)              # before Ray: specs, data, subsets checked
    scores = live.evaluate(policy_logprobs)                # {"eval/humor/acc": 0.56, "eval/humor/acc_ci_low": ...}

`policy_logprobs(SequenceBatch) -> (B, R)` is the policy role's own forward (the one PPO uses for
the old logprobs), so a request is packed as prompt = its context, response = its continuation,
and the continuation's log-likelihood is the sum over its response tokens. lm-eval builds the
requests and computes the metrics exactly as `karma eval` does; the item subset is fixed for the
run, so the scores of two iterations are paired.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from karma_ray.types import SequenceBatch, pack_sequences


class LiveEvaluator:
    def __init__(self, cfg: Any, tokenizer: Any) -> None:
        from karma_ray.eval.config import EvalConfig, EvalTasksConfig
        from karma_ray.eval.run import load_task_data
        from karma_ray.eval.tasks import TaskError, load_task_specs

        self.cfg = cfg
        self.tokenizer = tokenizer
        specs = load_task_specs(cfg.tasks, cfg.task_dirs)
        generation = [s.task for s in specs if s.kind != "multiple_choice"]
        if generation:
            raise TaskError(f"eval.tasks: {generation} are generation tasks; in training only multiple-choice tasks run")
        # cfg was validated with the PPO config; the subset and data settings are all load_task_data reads
        eval_cfg = EvalConfig(seed=cfg.seed, tasks=EvalTasksConfig(names=tuple(cfg.tasks), limit=cfg.limit, data_root=cfg.data_root))
        self.data = load_task_data(eval_cfg, specs)

    def score_pairs(self, policy_logprobs: Callable[[SequenceBatch], torch.Tensor]):
        pad = self.tokenizer.pad_token_id

        def score(pairs):
            out = []
            for start in range(0, len(pairs), self.cfg.requests_per_call):
                chunk = pairs[start:start + self.cfg.requests_per_call]
                prompts, responses = [], []
                for ctx, cont in chunk:
                    whole = (ctx + cont)[-(self.cfg.max_length + 1):]  # lm-eval's left cut of long requests
                    prompts.append(whole[:-len(cont)] or whole[:1])
                    responses.append(cont)
                logprobs = policy_logprobs(pack_sequences(prompts, responses, pad))  # (B, R), 0 on padding
                # is_greedy is not computed (no metric here uses it)
                out.extend((float(x), False) for x in logprobs.sum(-1))
            return out

        return score

    def evaluate(self, policy_logprobs: Callable[[SequenceBatch], torch.Tensor]) -> dict[str, float]:
        from karma_ray.eval.harness import ScoringLM, evaluate_multiple_choice
        from karma_ray.eval.stats import mean_ci

        lm = ScoringLM(self.tokenizer, self.score_pairs(policy_logprobs), self.cfg.max_length)
        items = evaluate_multiple_choice(lm, [(d.spec, d.docs, d.fewshot) for d in self.data], seed=self.cfg.seed)
        out = {}
        for d in self.data:
            est = mean_ci([i.value for i in items[d.spec.task]], n_resamples=1000, seed=self.cfg.seed)
            key = f"eval/{d.spec.task}/{d.spec.reported_metric}"
            out.update({key: est.value, f"{key}_ci_low": est.low, f"{key}_ci_high": est.high})
        return out


__all__ = ["LiveEvaluator"]
