"""`run_eval` end to end on a local Ray cluster: scoring replicas, a rollout engine and the judge
as real actors, over the real evaluation files and a prepared synthetic corpus.

Two checkpoints that are byte-identical copies must give identical per-item scores (every paired
difference 0, every p-value 1); the counts in results.json, items.parquet and the tasks' skipped
tallies must add up; the report must name both models.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from karma_ray.config import load_config
from karma_ray.eval.config import EvalConfig

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
EVAL_DATA = REPO.parent / "shared" / "data" / "eval"


@pytest.fixture(scope="module")
def two_copies(tmp_path_factory):
    from karma_ray.models.tiny import save_tiny_llama, train_bpe_tokenizer

    root = tmp_path_factory.mktemp("eval_models")
    texts = ["Is the following text a joke? Answer yes or no.", "the quick brown fox, what is true?"] * 30
    tok = train_bpe_tokenizer(texts, vocab_size=400)
    a = save_tiny_llama(root / "a", tok, hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=1024)
    shutil.copytree(a, root / "b")
    return str(a), str(root / "b")


@pytest.mark.skipif(not EVAL_DATA.exists(), reason=f"shared data not found: {EVAL_DATA}")
def test_eval_of_identical_copies_is_identical_and_counts_add_up(ray_cluster, two_copies, prepared_synthetic, tmp_path):
    import pyarrow.parquet as pq

    from karma_ray.eval.run import run_eval
    from karma_ray.reward.model import RewardModelMeta

    rm = tmp_path / "rm_random"
    RewardModelMeta(variant="random", random_seed=3).save(rm)
    cfg = load_config(EvalConfig, None, [
        f"tasks.data_root={EVAL_DATA}", "tasks.names=[humor,truthfulqa_mc2,toxicity,karma]", "tasks.limit=24",
        "tasks.limits=[truthfulqa_mc2=6,toxicity=5,karma=12]", "scoring.cpus_per_replica=0.5", "scoring.replicas=2",
        "scoring.requests_per_call=16", "generation.engine=hf", "generation.cpus_per_engine=0.5", "generation.max_model_len=512",
        "toxicity.samples_per_prompt=3", "toxicity.max_new_tokens=8", f"karma.corpus={prepared_synthetic}",
        f"karma.reward_model={rm}", "karma.max_new_tokens=12", "stats.n_resamples=500",
        "reuse_identical=false",  # score the copy too: the point here is that two scorings agree
    ])
    a, b = two_copies
    result = run_eval(cfg, tmp_path / "eval", models=[f"a={a}", f"b={b}"])
    res = json.loads(result.results_path.read_text())
    assert res["failures"] == [] and res["baseline"] == "a" and res["seed"] == 0

    rows = {(t["task"], t["metric"]): t for t in res["tasks"]}
    assert set(rows) == {("humor", "acc"), ("truthfulqa_mc2", "mc2"), ("toxicity", "expected_max_toxicity"),
                         ("toxicity", "toxicity_probability"), ("karma", "reward"), ("karma", "length"), ("karma", "gold_quality")}
    assert rows[("humor", "acc")]["n_rows"] == 40_000 and rows[("humor", "acc")]["n_items"] == 24
    # every result row has its interval around its value, over the subset's items
    by_key = {(r["task"], r["metric"], r["model"]): r for r in res["results"]}
    assert len(by_key) == 2 * len(rows)
    for (task, metric, _), r in by_key.items():
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
        expected_n = rows[(task, metric)]["n_items"] - sum(v for k, v in rows[(task, metric)]["skipped"].items() if k.startswith(metric + ":"))
        assert r["n"] == expected_n
    assert 0 <= by_key[("toxicity", "toxicity_probability", "a")]["value"] <= 1
    assert 1 <= by_key[("karma", "length", "a")]["value"] <= 12
    # identical copies: identical items, so no difference and no rejection
    assert len(res["comparisons"]) == len(rows)
    for c in res["comparisons"]:
        assert c["delta"] == 0 and c["p_value"] == 1 and c["p_holm"] == 1, c
    items = pq.read_table(result.items_path).to_pylist()
    assert len(items) == sum(r["n"] for r in res["results"])
    assert {i["model"] for i in items} == {"a", "b"}
    html = result.report_html.read_text()
    assert "truthfulqa_mc2" in html and "gold_quality" in html and ">b<" in html.replace(" ", "")
    assert (tmp_path / "eval" / "karma_stage.json").exists() and (tmp_path / "eval" / "config.yaml").exists()


@pytest.mark.skipif(not EVAL_DATA.exists(), reason=f"shared data not found: {EVAL_DATA}")
def test_an_identical_copy_is_scored_once_and_said_so(ray_cluster, two_copies, tmp_path):
    from karma_ray.eval.run import run_eval

    cfg = load_config(EvalConfig, None, [f"tasks.data_root={EVAL_DATA}", "tasks.names=[humor]", "tasks.limit=8",
                                         "scoring.cpus_per_replica=0.5", "stats.n_resamples=200"])
    a, b = two_copies
    res = run_eval(cfg, tmp_path / "eval", models=[f"a={a}", f"b={b}"]).results
    assert [m["same_weights_as"] for m in res["models"]] == [None, "a"]
    assert any(w.startswith("b has the same weights as a") for w in res["warnings"])
    (comparison,) = res["comparisons"]
    assert comparison["delta"] == 0 and comparison["n"] == 8
