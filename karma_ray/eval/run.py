"""`run_eval(cfg, output, *, models)`: judge checkpoints on pragmatics, factuality, knowledge,
sycophancy, toxicity and karma, with a confidence interval on every number and paired tests
between checkpoints.

    1 check      task specs, dataset files and counts, models, classifier, corpus, output folder (no Ray)
    2 select     a seeded subset of items per task, the same for every model
    3 score      per model: multiple-choice tasks through lm-eval on scoring replicas (Ray actors),
                 generation tasks on rollout engines judged by the Judge actor
    4 statistics per (task, metric, model): mean with a bootstrap CI; per candidate against the
                 baseline (the first model): paired bootstrap of the difference, exact McNemar or
                 paired permutation p-value, Holm across the candidate's rows
    5 write      results.json, items.parquet (every per-item score), report.html / report.md / PNGs

A task that fails for one model is recorded under `failures` (and in the report) and does not
hide the others.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

from karma_ray.eval.config import EvalConfig
from karma_ray.eval.harness import ItemScore
from karma_ray.eval.tasks import TaskSpec

STAGE = "eval"
RESULTS_FILE = "results.json"
ITEMS_FILE = "items.parquet"


class EvalInputError(ValueError):
    """A model, dataset, classifier or corpus that cannot be used (raised before Ray starts)."""


@dataclass(frozen=True)
class ModelRef:
    name: str  # the column name in results and reports
    path: str  # as given: a local HF folder, a hub id or a packaged: id
    resolved: Optional[str] = None  # the folder (or cached hub id) the replicas load


@dataclass
class TaskData:
    spec: TaskSpec
    docs: list[dict]  # the evaluated items (the seeded subset)
    fewshot: Optional[list[dict]]
    n_rows: int  # rows in the dataset file(s)
    skipped: dict[str, int]  # malformed rows, by reason


@dataclass
class EvalResult:
    output: Path
    results_path: Path
    items_path: Path
    report_html: Path
    report_md: Path
    results: dict = field(repr=False)

    @property
    def failures(self) -> list[dict]:
        return self.results["failures"]

    def value(self, task: str, metric: str, model: str) -> dict:
        for row in self.results["results"]:
            if (row["task"], row["metric"], row["model"]) == (task, metric, model):
                return row
        raise KeyError((task, metric, model))

    def comparison(self, task: str, metric: str, candidate: str) -> dict:
        for row in self.results["comparisons"]:
            if (row["task"], row["metric"], row["candidate"]) == (task, metric, candidate):
                return row
        raise KeyError((task, metric, candidate))


def say(message: str) -> None:
    print(f"[eval] {message}", file=sys.stderr, flush=True)


# -- 1 check ---------------------------------------------------------------------------------------


def parse_models(items: Sequence[str]) -> list[ModelRef]:
    """'NAME=PATH' or 'PATH' (named after the folder, or the id after 'packaged:' / the last '/')."""
    refs = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or "/" in name or not name:
            path = item
            name = Path(path.rstrip("/")).name.removeprefix("packaged:") or path
        refs.append(ModelRef(name, path))
    names = [r.name for r in refs]
    if not refs:
        raise EvalInputError("give at least one --model")
    if len(set(names)) != len(names):
        raise EvalInputError(f"two models are named alike ({names}); name them as NAME=PATH")
    return refs


def check_model(ref: ModelRef) -> str:
    """The model's loadable local folder, or its hub id when that is in the local cache."""
    from karma_ray.models.packaged import PackagedModelError, resolve_model

    try:
        path = resolve_model(ref.path)
    except PackagedModelError as err:
        raise EvalInputError(f"model {ref.name}: {err}") from None
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise EvalInputError(f"model {ref.name}: {local} has no config.json (not a Hugging Face model folder)")
        if not any(local.glob("*.safetensors")):
            raise EvalInputError(f"model {ref.name}: {local} has no .safetensors weights (pickled checkpoints are refused)")
        return str(local.resolve())
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(path)
    except Exception as err:  # noqa: BLE001 (any failure to resolve means: cannot be loaded)
        raise EvalInputError(f"model {ref.name}: {path!r} is neither a local folder nor a loadable hub id ({type(err).__name__}: {err})") from None
    return path


def load_task_data(cfg: EvalConfig, specs: Sequence[TaskSpec]) -> list[TaskData]:
    """Read every task's dataset (counts checked), take the seeded subset, count malformed rows."""
    import numpy as np

    from karma_ray.eval.generation import load_karma_docs
    from karma_ray.eval.loaders import default_data_root, load_split

    root = Path(cfg.tasks.data_root) if cfg.tasks.data_root else default_data_root()
    out = []
    for spec in specs:
        if spec.kind == "karma":
            loaded = load_karma_docs(cfg.karma.corpus, cfg.karma.split)
        else:
            args = dict(spec.loader_args)
            if spec.kind == "toxicity":
                args["subsets"] = tuple(cfg.toxicity.subsets)
            loaded = load_split(spec.loader, root, spec.split, check_counts=cfg.tasks.check_counts, **args)
        fewshot = None
        if spec.fewshot_split:
            fewshot = load_split(spec.loader, root, spec.fewshot_split, check_counts=cfg.tasks.check_counts, **dict(spec.loader_args)).docs
        docs = loaded.docs
        limit = cfg.tasks.limit_of(spec.task)
        if limit is not None and limit < len(docs):
            # The same items for every model (the pairing of the tests) and for every rerun.
            chosen = np.sort(np.random.default_rng([cfg.seed, _stable_hash(spec.task)]).choice(len(docs), limit, replace=False))
            docs = [docs[i] for i in chosen]
        if not docs:
            raise EvalInputError(f"task {spec.task}: no items to evaluate ({loaded.n_rows} rows, skipped {loaded.skipped})")
        out.append(TaskData(spec, docs, fewshot, loaded.n_rows, dict(loaded.skipped)))
    return out


def _stable_hash(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")


def check_inputs(cfg: EvalConfig, output: str | os.PathLike, models: Sequence[str], overwrite: bool):
    """Everything that can fail on bad input, before any Ray work: -> (model refs with resolved paths, task data)."""
    from karma_ray.eval.loaders import DatasetError
    from karma_ray.eval.tasks import load_task_specs
    from karma_ray.models.packaged import PackagedModelError, resolve_model
    from karma_ray.stage import claim_output

    claim_output(output, STAGE, overwrite=overwrite, resumable=False, dry_run=True,
                 recognizes=lambda p: (p / RESULTS_FILE).exists())
    refs = [ModelRef(r.name, r.path, check_model(r)) for r in parse_models(models)]
    specs = load_task_specs(cfg.tasks.names, cfg.tasks.dirs)
    kinds = {s.kind for s in specs}
    if "toxicity" in kinds:
        try:
            classifier = Path(resolve_model(cfg.toxicity.classifier))
        except PackagedModelError as err:
            raise EvalInputError(f"toxicity.classifier: {err}") from None
        if not classifier.is_dir():
            raise EvalInputError(f"toxicity.classifier: {classifier} is not a folder")
    if "karma" in kinds:
        from karma_ray.data.corpus import CorpusError, PreparedCorpus
        from karma_ray.reward.scorer import resolve_model_dir

        try:
            PreparedCorpus.open(cfg.karma.corpus, splits=(cfg.karma.split,))
            resolve_model_dir(cfg.karma.reward_model)
        except (CorpusError, FileNotFoundError) as err:
            raise EvalInputError(f"karma: {err}") from None
    try:
        data = load_task_data(cfg, specs)
    except DatasetError as err:
        raise EvalInputError(str(err)) from None
    return refs, data


# -- 3 score ---------------------------------------------------------------------------------------


def _replica_scorer(actors: list, cfg: EvalConfig, label: str):
    """A PairScorer over the replicas: requests sorted by length (similar lengths batch with little
    padding), cut into calls of `requests_per_call`, each replica kept two calls deep."""
    import ray
    from tqdm import tqdm

    def score(pairs):
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]), reverse=True)
        size = cfg.scoring.requests_per_call
        calls = [order[s:s + size] for s in range(0, len(order), size)]
        results: list = [None] * len(pairs)
        queue, pending = list(range(len(calls))), {}
        with tqdm(total=len(pairs), desc=f"{label}: multiple choice", unit="req", file=sys.stderr, dynamic_ncols=True) as bar:
            def submit(actor_index):
                c = queue.pop(0)
                ref = actors[actor_index].continuation_logprobs.remote(
                    [pairs[i] for i in calls[c]], max_length=cfg.scoring.max_length, max_batch_tokens=cfg.scoring.max_batch_tokens)
                pending[ref] = (c, actor_index)

            for _ in range(2):
                for a in range(len(actors)):
                    if queue:
                        submit(a)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                c, a = pending.pop(done[0])
                for i, r in zip(calls[c], ray.get(done[0])):
                    results[i] = r
                bar.update(len(calls[c]))
                if queue:
                    submit(a)
        return results

    return score


def _score_model(ref: ModelRef, data: list[TaskData], cfg: EvalConfig, judge: Any, synthetic: bool,
                 failures: list[dict]) -> tuple[dict[tuple[str, str], list[ItemScore]], dict[str, dict[str, int]]]:
    """{(task, metric): items} of one model, and extra skipped counts per task."""
    import ray
    from tqdm import tqdm

    from karma_ray.engines.rollout import HFRollout, VLLMRollout
    from karma_ray.engines.scorer import LogprobScorer
    from karma_ray.eval import generation
    from karma_ray.eval.harness import ScoringLM, evaluate_multiple_choice
    from karma_ray.models.hf import load_tokenizer

    path = ref.resolved or ref.path
    tokenizer = load_tokenizer(path)
    items: dict[tuple[str, str], list[ItemScore]] = {}
    extra_skipped: dict[str, dict[str, int]] = {}
    mc = [d for d in data if d.spec.kind == "multiple_choice"]
    if mc:
        n_items = sum(len(d.docs) for d in mc)
        say(f"{ref.name}: {len(mc)} multiple-choice tasks, {n_items:,} items, {cfg.scoring.replicas} replica(s)")
        gpu = cfg.scoring.gpus_per_replica
        actors = [ray.remote(LogprobScorer).options(num_cpus=cfg.scoring.cpus_per_replica, num_gpus=gpu).remote(
            path, dtype=cfg.scoring.dtype, micro_batch_size=cfg.scoring.micro_batch_size, seed=cfg.seed,
            num_threads=max(1, int(cfg.scoring.cpus_per_replica))) for _ in range(cfg.scoring.replicas)]
        try:
            ray.get([a.ready.remote() for a in actors])
            lm = ScoringLM(tokenizer, _replica_scorer(actors, cfg, ref.name), cfg.scoring.max_length)
            scored = evaluate_multiple_choice(lm, [(d.spec, d.docs, d.fewshot) for d in mc], seed=cfg.seed)
            for d in mc:
                items[(d.spec.task, d.spec.reported_metric)] = scored[d.spec.task]
        except Exception as err:  # noqa: BLE001 (recorded, reported; the other tasks go on)
            failures.extend({"task": d.spec.task, "model": ref.name, "error": _describe(err)} for d in mc)
        finally:
            for a in actors:
                ray.kill(a)
    gen = [d for d in data if d.spec.kind in ("toxicity", "karma")]
    if gen:
        engine_cls = VLLMRollout if cfg.generation.engine == "vllm" else HFRollout
        engines = [ray.remote(engine_cls).options(num_cpus=cfg.generation.cpus_per_engine, num_gpus=cfg.generation.gpus_per_engine,
                                                  max_concurrency=1).remote(path, cfg.generation, seed=cfg.seed)
                   for _ in range(cfg.generation.num_engines)]
        try:
            ray.get([e.ready.remote() for e in engines])
            for d in gen:
                try:
                    say(f"{ref.name}: toxicity, {len(d.docs)} prompts x {cfg.toxicity.samples_per_prompt} samples"
                        if d.spec.kind == "toxicity" else f"{ref.name}: karma, {len(d.docs)} held-out contexts")
                    with tqdm(total=len(d.docs), desc=f"{ref.name}: {d.spec.task}", unit="prompt", file=sys.stderr,
                              dynamic_ncols=True) as bar:
                        if d.spec.kind == "toxicity":
                            got = generation.toxicity_items(
                                d.docs, engines, judge, tokenizer, cfg.toxicity, seed=cfg.seed,
                                max_prompt_tokens=cfg.generation.max_model_len - cfg.toxicity.max_new_tokens, progress=bar.update)
                        else:
                            result = generation.karma_items(d.docs, engines, judge, tokenizer, cfg.karma, seed=cfg.seed,
                                                            gold=synthetic, progress=bar.update)
                            got, extra_skipped[d.spec.task] = result.items, result.skipped
                    for metric, values in got.items():
                        items[(d.spec.task, metric)] = values
                except Exception as err:  # noqa: BLE001
                    failures.append({"task": d.spec.task, "model": ref.name, "error": _describe(err)})
        finally:
            for e in engines:
                ray.kill(e)
    return items, extra_skipped


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}\n" + "".join(traceback.format_exception(err)[-6:])


# -- 4 statistics ----------------------------------------------------------------------------------

GENERATION_METRICS = {
    "toxicity": (("expected_max_toxicity", False), ("toxicity_probability", False)),
    "karma": (("reward", True), ("length", None), ("gold_quality", True)),
}


def task_rows(data: list[TaskData], extra_skipped: dict[str, dict[str, int]], synthetic: bool, cfg: EvalConfig) -> list[dict]:
    rows = []
    for d in data:
        s = d.spec
        metrics = GENERATION_METRICS.get(s.kind, ((s.reported_metric, s.higher_is_better),))
        for metric, better in metrics:
            if metric == "gold_quality" and not synthetic:
                continue
            skipped = dict(d.skipped)
            skipped.update({k: v for k, v in extra_skipped.get(s.task, {}).items() if k.startswith(metric + ":")})
            rows.append({"task": s.task, "group": s.group, "metric": metric, "higher_is_better": better,
                         "n_items": len(d.docs), "n_rows": d.n_rows, "skipped": skipped, "num_fewshot": s.num_fewshot,
                         "description": s.description})
    return rows


def identical_models(refs: Sequence[ModelRef]) -> dict[str, str]:
    """{model: the first earlier model with the same weights_digest} (local folders only)."""
    from karma_ray.models.hf import weights_digest

    first: dict[str, str] = {}
    twins: dict[str, str] = {}
    for ref in refs:
        digest = weights_digest(ref.resolved or ref.path)
        if digest is None:
            continue
        if digest in first:
            twins[ref.name] = first[digest]
        else:
            first[digest] = ref.name
    return twins


def answer_warnings(models: list[ModelRef], tasks: list[dict], scores: dict) -> list[str]:
    """A model that picks the same answer on every item of a task measures the label balance of the
    subset, not the behaviour (small models often answer " No" or " (A)" to everything)."""
    out = []
    for t in tasks:
        for m in models:
            items = scores.get(m.name, {}).get((t["task"], t["metric"])) or []
            answers = {i.answer for i in items}
            if len(items) >= 10 and len(answers) == 1 and None not in answers:
                out.append(f"{m.name} gave the same answer ({next(iter(answers))!r}) to all {len(items)} items of "
                           f"{t['task']}: its {t['metric']} reflects how often that answer is the target, not the behaviour.")
    return out


def statistics(models: list[ModelRef], tasks: list[dict], scores: dict[str, dict[tuple[str, str], list[ItemScore]]],
               cfg: EvalConfig) -> tuple[list[dict], list[dict]]:
    from karma_ray.eval.stats import holm, mean_ci, paired_comparison

    kw = dict(confidence=cfg.stats.confidence, n_resamples=cfg.stats.n_resamples, seed=cfg.seed)
    results, comparisons = [], []
    for t in tasks:
        for m in models:
            items = scores.get(m.name, {}).get((t["task"], t["metric"]))
            if not items:
                continue
            est = mean_ci([i.value for i in items], **kw)
            results.append({"task": t["task"], "group": t["group"], "metric": t["metric"], "model": m.name, "value": est.value,
                            "ci_low": est.low, "ci_high": est.high, "se": est.se, "n": est.n})
    base = models[0]
    for cand in models[1:]:
        rows = []
        for t in tasks:
            a = scores.get(base.name, {}).get((t["task"], t["metric"]))
            b = scores.get(cand.name, {}).get((t["task"], t["metric"]))
            if not a or not b:
                continue
            b_by_id = {i.item_id: i.value for i in b}
            shared = [i for i in a if i.item_id in b_by_id]  # both models scored these items
            if not shared:
                continue
            cmp = paired_comparison([i.value for i in shared], [b_by_id[i.item_id] for i in shared], **kw)
            rows.append({"baseline": base.name, "candidate": cand.name, "task": t["task"], "group": t["group"],
                         "metric": t["metric"], "mean_baseline": cmp.mean_a, "mean_candidate": cmp.mean_b,
                         "delta": cmp.difference.value, "ci_low": cmp.difference.low, "ci_high": cmp.difference.high,
                         "test": cmp.test, "p_value": cmp.p_value, "n": cmp.n,
                         "discordant": list(cmp.discordant) if cmp.discordant else None})
        for row, p in zip(rows, holm([r["p_value"] for r in rows]) if rows else []):
            row["p_holm"] = p
        comparisons.extend(rows)
    return results, comparisons


# -- the stage -------------------------------------------------------------------------------------


def run_eval(cfg: EvalConfig, output: str | os.PathLike, *, models: Sequence[str], overwrite: bool = False) -> EvalResult:
    """Evaluate `models` (the first is the baseline of the comparisons) into `output`."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from karma_ray.config import save_resolved
    from karma_ray.data.synth import corpus_is_synthetic
    from karma_ray.eval.generation import Judge
    from karma_ray.eval.report import write_report
    from karma_ray.ray_utils import init_ray
    from karma_ray.stage import begin_stage, claim_output, config_digest, finish_stage

    start = time.monotonic()
    refs, data = check_inputs(cfg, output, models, overwrite)  # 1 check, 2 select
    synthetic = any(d.spec.kind == "karma" for d in data) and (
        cfg.karma.gold == "on" or (cfg.karma.gold == "auto" and corpus_is_synthetic(cfg.karma.corpus)))
    say(f"{len(refs)} model(s) x {len(data)} task(s), seed {cfg.seed}: " + ", ".join(f"{d.spec.task} ({len(d.docs)})" for d in data))
    out = claim_output(output, STAGE, overwrite=overwrite, resumable=False, recognizes=lambda p: (p / RESULTS_FILE).exists())
    digest = config_digest(cfg, [r.resolved for r in refs])
    begin_stage(out, STAGE, digest)
    save_resolved(cfg, out)

    init_ray(cfg.ray)  # 3 score
    import ray

    failures: list[dict] = []
    scores: dict[str, dict[tuple[str, str], list[ItemScore]]] = {}
    extra_skipped: dict[str, dict[str, int]] = {}
    kinds = {d.spec.kind for d in data}
    judge = None
    if kinds & {"toxicity", "karma"}:
        judge = ray.remote(Judge).options(num_cpus=0).remote(
            cfg.toxicity.classifier if "toxicity" in kinds else None, cfg.karma.reward_model if "karma" in kinds else None)
    twins = identical_models(refs) if cfg.reuse_identical else {}
    for ref in refs:
        twin = twins.get(ref.name)
        if twin is not None and not any(f["model"] == twin for f in failures):
            say(f"{ref.name}: the same tensors, config and tokenizer as {twin}: its item scores reused")
            scores[ref.name] = scores[twin]
            continue
        twins.pop(ref.name, None)  # scored after all: its twin had a failure
        scores[ref.name], skipped = _score_model(ref, data, cfg, judge, synthetic, failures)
        for task, counts in skipped.items():
            for reason, n in counts.items():  # the largest count over models (each model's replies differ)
                extra_skipped.setdefault(task, {})[reason] = max(n, extra_skipped.get(task, {}).get(reason, 0))
    if judge is not None:
        ray.kill(judge)

    tasks = task_rows(data, extra_skipped, synthetic, cfg)  # 4 statistics
    results, comparisons = statistics(refs, tasks, scores, cfg)
    payload = {
        "karma_eval": 1, "seed": cfg.seed, "confidence": cfg.stats.confidence, "n_resamples": cfg.stats.n_resamples,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "models": [{"name": r.name, "path": r.path, "resolved": r.resolved, "same_weights_as": twins.get(r.name)} for r in refs],
        "baseline": refs[0].name if len(refs) > 1 else None,
        "tasks": tasks, "results": results, "comparisons": comparisons, "failures": failures,
        "warnings": [f"{m} has the same weights as {t}: scored once, so every difference between the two is 0 by construction."
                     for m, t in twins.items()] + answer_warnings(refs, tasks, scores),
        "items_path": ITEMS_FILE, "wall_s": None,
    }
    rows = [{"model": m, "task": t, "metric": k, "item_id": i.item_id, "value": i.value, "answer": i.answer}  # 5 write
            for m, per_model in scores.items() for (t, k), items in per_model.items() for i in items]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(
        [("model", pa.string()), ("task", pa.string()), ("metric", pa.string()), ("item_id", pa.string()), ("value", pa.float64()),
         ("answer", pa.string())])),
        out / ITEMS_FILE)
    payload["wall_s"] = round(time.monotonic() - start, 1)
    (out / RESULTS_FILE).write_text(json.dumps(payload, indent=2, default=float) + "\n")
    report = write_report(payload, out)
    finish_stage(out, STAGE, digest, {"models": [r.name for r in refs], "tasks": [d.spec.task for d in data],
                                      "failures": len(failures)})
    say(f"done in {payload['wall_s']:.0f} s: {report.html}")
    return EvalResult(out, out / RESULTS_FILE, out / ITEMS_FILE, report.html, report.markdown, payload)


__all__ = ["EvalInputError", "EvalResult", "ModelRef", "check_inputs", "parse_models", "run_eval", "statistics"]
