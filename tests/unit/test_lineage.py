"""Lineage files: the chain of stages, the corpora a model has seen, and the no-exposure check."""

import json

import pytest

from karma_ray import lineage


def make_prepared(folder, inputs, note):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"inputs": [{"path": p, "bytes": b} for p, b in inputs], "note": note}))
    return folder


def make_model(folder, base, prepared, ids, stage="sft"):
    folder.mkdir(parents=True, exist_ok=True)
    s = lineage.data_stage(stage, str(base), prepared, ["train"], ids, {"lr": 1})
    lineage.write_lineage(lineage.extend_lineage(base, s, folder), folder)
    return folder


def test_the_chain_follows_base_models_and_the_check_finds_any_ancestor(tmp_path):
    reddit = make_prepared(tmp_path / "reddit", [("RC_2015-01.zst", 100)], "a")
    other = make_prepared(tmp_path / "other", [("RC_2016-01.zst", 200)], "b")
    base = tmp_path / "base"
    base.mkdir()  # random init: no lineage.json
    exposed = make_model(tmp_path / "exposed", base, reddit, ["c2", "c1"])
    child = make_model(tmp_path / "child", exposed, other, ["d1"], stage="ppo")
    sha_reddit = lineage.file_sha256(reddit / "manifest.json")
    sha_other = lineage.file_sha256(other / "manifest.json")

    assert lineage.read_lineage(base) is None and lineage.corpora_seen(base) == []
    assert lineage.corpora_seen(exposed) == [sha_reddit]
    assert lineage.corpora_seen(child) == [sha_reddit, sha_other]  # the ancestor's corpus is inherited
    stages = lineage.read_lineage(child)["stages"]
    assert [s["stage"] for s in stages] == ["sft", "ppo"] and stages[1]["base_model"] == str(exposed)
    assert stages[0]["num_examples"] == 2

    lineage.assert_no_exposure(base, reddit)
    lineage.assert_no_exposure(exposed, other / "manifest.json")
    with pytest.raises(lineage.ExposureError, match="stage 0 \\('sft'"):
        lineage.assert_no_exposure(child, reddit)
    with pytest.raises(lineage.ExposureError, match="stage 1 \\('ppo'"):
        lineage.assert_no_exposure(child, other)


def test_the_same_raw_inputs_prepared_again_count_as_exposure(tmp_path):
    first = make_prepared(tmp_path / "first", [("RC_2015-01.zst", 100), ("RS_2015-01.zst", 50)], "settings A")
    again = make_prepared(tmp_path / "again", [("RC_2015-01.zst", 100)], "settings B")  # other manifest bytes
    unrelated = make_prepared(tmp_path / "unrelated", [("RC_2015-01.zst", 999)], "same name, other file")
    model = make_model(tmp_path / "m", tmp_path / "hub-id-not-a-folder", first, ["x"])
    assert lineage.file_sha256(again / "manifest.json") != lineage.file_sha256(first / "manifest.json")
    with pytest.raises(lineage.ExposureError, match="same raw inputs.*RC_2015-01.zst"):
        lineage.assert_no_exposure(model, again)
    lineage.assert_no_exposure(model, unrelated)


def test_ids_digest_is_order_free_and_set_sensitive():
    assert lineage.example_ids_digest(["b", "a"]) == lineage.example_ids_digest(["a", "b"])
    assert lineage.example_ids_digest(["a", "b"]) != lineage.example_ids_digest(["a", "b", "c"])
    assert lineage.example_ids_digest(["ab"]) != lineage.example_ids_digest(["a", "b"])


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(lineage.LineageError, match="no manifest"):
        lineage.assert_no_exposure(tmp_path, tmp_path / "nowhere")
    (tmp_path / "lineage.json").write_text("{not json")
    with pytest.raises(lineage.LineageError, match="not valid JSON"):
        lineage.read_lineage(tmp_path)
