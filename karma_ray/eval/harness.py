"""Multiple-choice tasks through lm-evaluation-harness: our task specs become lm-eval task configs,
lm-eval builds the prompts and requests and computes the per-item metrics, and a `ScoringLM`
hands the log-likelihood requests to whatever scores token ids (Ray replicas of LogprobScorer).

    lm = ScoringLM(tokenizer, score_pairs, max_length=2048)
    items = evaluate_multiple_choice(lm, [(spec, docs, fewshot_docs), ...], seed=0)  # {task: [ItemScore]}

Why lm-eval: its request strings (few-shot layout, delimiters, the context/continuation split at
the token level) and metric definitions are what published numbers mean. We call
`lm_eval.evaluator.evaluate` (not `simple_evaluate`, which indexes ~14k built-in task files and
collects environment info) and set the few-shot seed ourselves.

MC2 (TruthfulQA) follows lm-eval's `process_results_mc2`: the probability mass on the true answers
after normalising exp(log-likelihood) over all answers, computed with the max subtracted first so
that long answers cannot underflow to 0/0.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from karma_ray.eval.tasks import TaskSpec

TokenPairs = list[tuple[list[int], list[int]]]
PairScorer = Callable[[TokenPairs], list[tuple[float, bool]]]


@dataclass(frozen=True)
class ItemScore:
    item_id: str  # the loader's doc id
    value: float  # the per-item metric (acc: 0/1; mc2: a probability)
    answer: Optional[str] = None  # multiple choice: the choice with the highest log-likelihood


def mc2_score(log_likelihoods: Sequence[float], labels: Sequence[int]) -> float:
    """Probability mass on the true answers: sum_{label=1} exp(ll_i) / sum_all exp(ll_j)."""
    if len(log_likelihoods) != len(labels) or not labels:
        raise ValueError(f"{len(log_likelihoods)} log-likelihoods for {len(labels)} labels")
    top = max(log_likelihoods)
    weights = [math.exp(ll - top) for ll in log_likelihoods]
    return sum(w for w, label in zip(weights, labels) if label == 1) / sum(weights)


def _mc2_process_results(doc: dict, results: list) -> dict:
    return {"mc2": mc2_score([float(ll) for ll, _ in results], doc["mc2_labels"])}


@functools.lru_cache(maxsize=None)
def _scoring_lm_class():
    from lm_eval.api.model import TemplateLM

    class ScoringLM(TemplateLM):
        """lm-eval's model interface over token-id scoring: `score_pairs` gets (context ids,
        continuation ids) and returns (sum logprob, is_greedy) per pair, in order.

        Tokenization is lm-eval's (`TemplateLM._encode_pair`: the continuation's ids are those of
        context+continuation past the context's, so BPE merges at the boundary are kept), with no
        special tokens added, as lm-eval's HF model does for causal LMs."""

        def __init__(self, tokenizer: Any, score_pairs: PairScorer, max_length: int) -> None:
            super().__init__()
            self.tokenizer = tokenizer
            self.score_pairs = score_pairs
            self.max_length = max_length

        @property
        def eot_token_id(self) -> int:
            return self.tokenizer.eos_token_id

        @property
        def prefix_token_id(self) -> int:
            bos = self.tokenizer.bos_token_id
            return bos if bos is not None else self.tokenizer.eos_token_id

        def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs: Any) -> list[int]:
            return self.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"]

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)  # our scorer shows the progress

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any):
            return self.score_pairs([(list(ctx), list(cont)) for _, ctx, cont in requests])

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError("karma eval scores multiple choice only (no perplexity tasks)")

        def generate_until(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError("generation tasks run on the rollout engines (karma_ray.eval.generation)")

    return ScoringLM


def ScoringLM(tokenizer: Any, score_pairs: PairScorer, max_length: int):  # noqa: N802 (a class, built lazily)
    """A `lm_eval.api.model.TemplateLM` scoring through `score_pairs` (lm_eval is imported on first use)."""
    return _scoring_lm_class()(tokenizer, score_pairs, max_length)


def lm_eval_config(spec: TaskSpec, name: str, docs: list[dict], fewshot_docs: Optional[list[dict]]) -> dict:
    """The lm-eval task config (a dict; callables allowed) of one spec over the given docs."""
    import datasets

    def dataset(**_: Any) -> dict:
        splits = {"test": datasets.Dataset.from_list(docs)}
        if fewshot_docs:
            splits["fewshot"] = datasets.Dataset.from_list(fewshot_docs)
        return splits

    metric = spec.metric
    config: dict[str, Any] = {
        "task": name,
        "custom_dataset": dataset,
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": spec.prompt,
        "doc_to_choice": list(spec.choices) if isinstance(spec.choices, tuple) else spec.choices,
        "doc_to_target": spec.target,
        "target_delimiter": spec.target_delimiter,
        "description": spec.preamble,
        "num_fewshot": spec.num_fewshot,
        "metric_list": [{"metric": metric, "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1},
    }
    if fewshot_docs:
        config["fewshot_split"] = "fewshot"
        config["fewshot_config"] = {"sampler": spec.fewshot_sampler}
    if metric == "mc2":
        config["process_results"] = _mc2_process_results
    return config


def _subtasks(spec: TaskSpec, docs: list[dict], fewshot_docs: Optional[list[dict]]) -> list[tuple[str, list[dict], Optional[list[dict]]]]:
    """(lm-eval task name, docs, few-shot docs) per group of `spec.fewshot_by` (MMLU: per subject,
    as lm-eval's mmlu group does, so few-shot examples come from the question's own subject)."""
    if not spec.fewshot_by:
        return [(spec.task, docs, fewshot_docs)]
    by_key: dict[str, list[dict]] = {}
    for d in docs:
        by_key.setdefault(str(d[spec.fewshot_by]), []).append(d)
    shots: dict[str, list[dict]] = {}
    for d in fewshot_docs or []:
        shots.setdefault(str(d[spec.fewshot_by]), []).append(d)
    out = []
    for key in sorted(by_key):
        if spec.num_fewshot and len(shots.get(key, [])) < spec.num_fewshot:
            raise ValueError(f"{spec.task}: {spec.fewshot_by}={key!r} has {len(shots.get(key, []))} few-shot docs, "
                             f"needs {spec.num_fewshot}")
        out.append((f"{spec.task}.{key}", by_key[key], shots.get(key)))
    return out


def evaluate_multiple_choice(lm: Any, tasks: Sequence[tuple[TaskSpec, list[dict], Optional[list[dict]]]], *,
                             seed: int) -> dict[str, list[ItemScore]]:
    """Run lm-eval on every task at once (one flat list of requests for the scorer) and return the
    per-item metric of each spec, in doc order."""
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # per-task notices would flood the console
    configs, owner = [], {}
    for spec, docs, fewshot_docs in tasks:
        for name, sub_docs, sub_shots in _subtasks(spec, docs, fewshot_docs):
            configs.append(lm_eval_config(spec, name, sub_docs, sub_shots))
            owner[name] = spec
    manager = TaskManager(include_defaults=False)
    loaded = manager.load(configs)
    for task in loaded["tasks"].values():
        task.set_fewshot_seed(seed)
    import lm_eval.api.task as lm_eval_task

    # lm-eval draws one progress bar per task while it builds requests (57 for MMLU alone); the
    # scorer's single bar says what a reader needs. Restored afterwards.
    bar = lm_eval_task.tqdm
    lm_eval_task.tqdm = functools.partial(bar, disable=True)
    try:
        results = evaluate(lm=lm, task_dict=loaded, bootstrap_iters=0, log_samples=True, verbosity="ERROR")
    finally:
        lm_eval_task.tqdm = bar
    items: dict[str, list[ItemScore]] = {spec.task: [] for spec, _, _ in tasks}
    for name, spec in owner.items():
        for sample in sorted(results["samples"][name], key=lambda s: s["doc_id"]):
            lls = [float(r[0]) for r in sample["filtered_resps"]]
            answer = sample["arguments"][max(range(len(lls)), key=lls.__getitem__)][1]
            items[spec.task].append(ItemScore(str(sample["doc"]["id"]), float(sample[spec.metric]), answer))
    return items


__all__ = ["ItemScore", "ScoringLM", "evaluate_multiple_choice", "lm_eval_config", "mc2_score"]
