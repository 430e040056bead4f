"""PreparedCorpus: the one owner of the prepared layout, and its one error type."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from karma_ray.config import ConfigError, load_config
from karma_ray.data.corpus import CorpusError, PreparedCorpus
from karma_ray.engines.config import RolloutConfig
from karma_ray.rlhf.config import PPOConfig


def corpus_folder(root, splits=("train", "val", "test"), pairs=()):
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text('{"examples_written": 1}')
    for split in splits:
        (root / "examples" / f"split={split}").mkdir(parents=True)
        pq.write_table(pa.table({"id": ["a"]}), root / "examples" / f"split={split}" / "part-0.parquet")
    for split in pairs:
        (root / "pairs" / f"split={split}").mkdir(parents=True)
        pq.write_table(pa.table({"chosen_id": ["a"]}), root / "pairs" / f"split={split}" / "part-0.parquet")
    return root


def test_open_checks_each_piece_a_reader_asks_for_and_names_it(tmp_path):
    with pytest.raises(CorpusError, match="no manifest.json"):
        PreparedCorpus.open(tmp_path)
    root = corpus_folder(tmp_path / "c", splits=("train", "val"))
    with pytest.raises(CorpusError, match="split=test"):
        PreparedCorpus.open(root)
    assert PreparedCorpus.open(root, splits=("train",)).example_files("train") == [root / "examples" / "split=train" / "part-0.parquet"]
    with pytest.raises(CorpusError, match="pairs/split=train"):
        PreparedCorpus.open(root, splits=("train",), pairs=("train",))


def test_paths_are_absolute(tmp_path, monkeypatch):
    corpus_folder(tmp_path / "c", pairs=("train",))
    monkeypatch.chdir(tmp_path)
    corpus = PreparedCorpus.open("c", pairs=("train",))
    assert corpus.root.is_absolute() and corpus.pairs_dir("val") == tmp_path / "c" / "pairs" / "split=val"


def test_greedy_is_an_engine_setting_that_ppo_refuses():
    load_config(RolloutConfig, None, ["temperature=0"])  # evaluation decodes greedily
    with pytest.raises(ConfigError, match="temperature must be >= 0"):
        load_config(RolloutConfig, None, ["temperature=-1"])
    base = ["model.policy=x", "reward.models=[{path: y}]", "prompts.path=z"]
    load_config(PPOConfig, None, base)
    with pytest.raises(ConfigError, match="rollout.temperature must be > 0 for PPO"):
        load_config(PPOConfig, None, [*base, "rollout.temperature=0"])
