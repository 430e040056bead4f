"""Slow lane: bigger corpora and the alternative shuffle, against ground truth."""

import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest

from karma_ray.config import PrepareConfig, load_config
from karma_ray.data.prepare import run_prepare
from karma_ray.data.synth import write_synthetic_corpus
from tests.conftest import PUSHSHIFT, REPO, need_shared

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.mark.parametrize("shuffle", ["partition", "sort", "hash"])
def test_100k_synthetic_matches_ground_truth_with_either_shuffle(ray_cluster, tmp_path, shuffle):
    truth = write_synthetic_corpus(tmp_path / "corpus", 100_000, seed=11)
    cfg = load_config(PrepareConfig, REPO / "configs" / "data" / "synthetic.yaml",
                      ["ray.num_cpus=null", "ray.object_store_memory_gb=null", f"shuffle={shuffle}", "read.chunk_mib=4"])
    m = run_prepare(cfg, str(tmp_path / "out"), inputs=[str(tmp_path / "corpus")], overwrite=True).manifest
    assert m.records_read == truth.comments_written
    assert m.records_malformed == truth.malformed_lines
    assert m.examples_written == truth.clean_comments
    assert m.dangling_parents == truth.dangling_parents
    assert m.submissions_read == truth.submissions_written
    assert m.invariant_holds
    t = pads.dataset(tmp_path / "out" / "examples", format="parquet", partitioning="hive").to_table(columns=["link_id", "split", "id"])
    assert pc.count_distinct(t["id"]).as_py() == t.num_rows  # no example twice (a thread split across blocks would duplicate)
    per_link = t.group_by("link_id").aggregate([("split", "count_distinct")])
    assert pc.max(per_link["split_count_distinct"]).as_py() == 1


def test_real_2006_01_dump(ray_cluster, tmp_path):
    src = need_shared(PUSHSHIFT / "RC_2006-01.zst")
    m = run_prepare(load_config(PrepareConfig), str(tmp_path / "out"), inputs=[str(src)], overwrite=True).manifest
    assert m.records_read == 3666 and m.invariant_holds
    assert m.dangling_parents == 58 and m.threads == 1173
    assert m.dropped["deleted"] == 471 and m.dropped["removed"] == 57
