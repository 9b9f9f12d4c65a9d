"""The committed demo models in models/demo/: the trained discriminator (models/train_demo.py) and the
random-weight classifier, tagger and encoder (tiny shape); all with the generated vocabulary."""
import json

import numpy as np
import onnx
import onnxruntime
import pytest

import make_vocab
import quantize as q
from conftest import MODELS, need

DEMO = MODELS / "demo"
FOLDERS = {"classifier": "classify", "tagger": "tag", "encoder": "embed"}  # random weights
ARCH = {"discriminator": "ElectraForPreTraining", "classify": "ElectraForSequenceClassification",
        "tag": "ElectraForTokenClassification", "embed": "ElectraModel"}


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_demo_folder(folder):
    d = DEMO / folder
    m = q.check_folder(d)  # every listed file exists and its sha256 matches
    task = FOLDERS[folder]
    assert m["task"] == task
    assert m["source"]["random_weights"] is True
    assert set(m["files"]) == {"model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json"}
    size = sum(p.stat().st_size for p in d.iterdir())
    assert size < 1_300_000, f"{folder}: {size} bytes"

    cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    assert cfg["architectures"] == [ARCH[task]]
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["embedding_size"]) == (2, 64, 32)
    if task == "classify":
        assert cfg["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    if task == "tag":
        assert list(cfg["id2label"].values()) == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    assert {v: int(k) for k, v in cfg.get("id2label", {}).items()} == cfg.get("label2id", {})

    # the vocabulary is the project's own, generated one
    tj = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = make_vocab.build_vocab()
    assert tj["model"]["vocab"] == {tok: i for i, tok in enumerate(vocab)}
    assert cfg["vocab_size"] == len(vocab)
    ids = make_vocab.special_ids(vocab)
    added = {t["content"]: t["id"] for t in tj["added_tokens"]}
    assert added == ids

    # the int8 graph is plain ONNX, and the golden outputs reproduce with onnxruntime
    census = q.check_int8_graph(d / "model.onnx")
    assert census["MatMulInteger"] >= 13
    v = m["verification"]
    assert v["max_abs_err_exact_int8_vs_fp32"] <= v["bound"]
    # uint8 weights: onnxruntime's int8 numbers are exact integer arithmetic on any CPU
    assert m["quantization"] == {"per_channel": False, "weight_type": "uint8"}
    assert v["max_abs_err_int8_vs_fp32"] == pytest.approx(v["max_abs_err_exact_int8_vs_fp32"], abs=2e-5)
    tok = q.WordPieceTokenizer(d / "tokenizer.json")
    sess = q.make_session(d / "model.onnx")
    assert 3 <= len(m["golden"]) <= 5
    for g in m["golden"]:
        assert g["input_ids"] == tok.encode(g["text"])
        got = q.reduce_output(task, q.run(sess, g["input_ids"]))
        tol = 2e-6 if onnxruntime.__version__ == m["tools"]["onnxruntime"] else v["bound"]
        if task == "embed":
            for k in ("cls", "mean"):
                np.testing.assert_allclose(got[k], g["ort_int8"][k], atol=tol)
                np.testing.assert_allclose(g["ort_int8"][k], g["ort_fp32"][k], atol=v["bound"])
        else:
            np.testing.assert_allclose(got, g["ort_int8"], atol=tol)
            np.testing.assert_allclose(g["ort_int8"], g["ort_fp32"], atol=v["bound"])


def test_trained_demo_discriminator():
    """The demo typo spotter: trained weights, the project's vocabulary, model.onnx <= 5 MB, goldens that
    reproduce, a quantization chosen by measurement, and it flags a real typo."""
    d = DEMO / "discriminator"
    m = q.check_folder(d)
    assert m["task"] == "discriminator"
    assert m["source"]["random_weights"] is False
    assert set(m["files"]) == {"model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json"}
    size = (d / "model.onnx").stat().st_size
    assert size <= 5_000_000, f"model.onnx: {size} bytes"
    cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    assert cfg["architectures"] == ["ElectraForPreTraining"] and cfg["model_type"] == "electra"
    tj = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = make_vocab.build_vocab()
    assert tj["model"]["vocab"] == {tok: i for i, tok in enumerate(vocab)}
    assert cfg["vocab_size"] == len(vocab)
    qrec = m["quantization"]
    assert qrec["chosen_by"] == "measurement" and qrec["weight_type"] == "uint8"
    v = m["verification"]
    assert v["max_abs_err_exact_int8_vs_fp32"] <= v["bound"]
    # uint8 weights: onnxruntime's int8 is exact integer arithmetic, so it equals the exact run
    assert v["max_abs_err_int8_vs_fp32"] == pytest.approx(v["max_abs_err_exact_int8_vs_fp32"], abs=2e-5)
    tok = q.WordPieceTokenizer(d / "tokenizer.json")
    sess = q.make_session(d / "model.onnx")
    for g in m["golden"]:
        assert g["input_ids"] == tok.encode(g["text"])
        tol = 2e-6 if onnxruntime.__version__ == m["tools"]["onnxruntime"] else v["bound"]
        np.testing.assert_allclose(q.reduce_output("discriminator", q.run(sess, g["input_ids"])), g["ort_int8"], atol=tol)

    def prob(text):
        return 1 / (1 + np.exp(-np.asarray(q.run(sess, tok.encode(text))).reshape(-1)[1:-1]))

    # the README's first command: 门 (for 们) is flagged, and it is the most suspicious character
    p = prob("我门今天去学校上课。")
    assert p[1] > 0.5 and int(np.argmax(p)) == 1, p.round(3)
    # the corrected character is not flagged
    assert prob("我们今天去学校上课。")[1] < 0.5
    # the hand-written everyday sentences of models/demo/README.md: 9 of the 12 typos caught,
    # a flag on one of the 12 corrected sentences (她, the first character of 她高兴地跳了起来)
    from train_demo import EVERYDAY

    caught = [typed for typed, meant in EVERYDAY
              if prob(typed)[next(i for i, (a, b) in enumerate(zip(typed, meant)) if a != b)] > 0.5]
    assert len(caught) == 9, caught
    flagged = {meant: [meant[i] for i in np.flatnonzero(prob(meant) > 0.5)] for _, meant in EVERYDAY}
    assert {m: f for m, f in flagged.items() if f} == {"她高兴地跳了起来。": ["她"]}


def test_demo_tokenizer_handles_mixed_text():
    tok = q.WordPieceTokenizer(DEMO / "tagger" / "tokenizer.json")
    vocab = json.loads((DEMO / "tagger" / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    inv = {i: t for t, i in vocab.items()}
    toks = [inv[i] for i in tok.encode("Hello，ＡＢＣ世界 2024年😀")]
    assert toks == ["[CLS]", "hello", "，", "ａ", "##ｂ", "##ｃ", "世", "界", "2024", "年", "[UNK]", "[SEP]"]


def test_hub_failure_is_one_clear_message(tmp_path):
    """Needs transformers (models/requirements.txt); skipped in CI where only the light set is installed."""
    need("torch")
    need("transformers")
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, str(MODELS / "export.py"), "hfl/chinese-electra-small-discriminator", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 2
    assert "hfl/chinese-electra-small-discriminator" in r.stderr and "--random-init" in r.stderr
    assert "Traceback" not in r.stderr


def test_full_export_reproduces_a_demo_model(tmp_path):
    """Needs torch + transformers: the random-init export is reproducible byte for byte."""
    need("torch")
    need("transformers")
    import subprocess
    import sys

    out = tmp_path / "tagger"
    r = subprocess.run(
        [sys.executable, str(MODELS / "export.py"), "--random-init", "--tiny", "--seed", "0", "--task", "tag",
         "--weight-type", "uint8", "--quantization", "per-tensor", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert "RANDOM WEIGHTS" in r.stdout and "fp32 export check" in r.stdout
    m = q.check_folder(out)
    assert m["source"] == {"model": "random-init:electra-tiny-zh:tag", "revision": "seed=0", "random_weights": True}
    assert "model.fp32.onnx" in m["files"]
    model = onnx.load(str(out / "model.fp32.onnx"))
    assert model.opset_import[0].version == 17
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", "sequence"]
    demo = json.loads((DEMO / "tagger" / "manifest.json").read_text(encoding="utf-8"))
    if (m["tools"]["torch"], m["tools"]["transformers"], m["tools"]["onnxruntime"]) == (
            demo["tools"]["torch"], demo["tools"]["transformers"], demo["tools"]["onnxruntime"]):
        for name in ("model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json"):
            assert m["files"][name] == demo["files"][name], name
        assert m["golden"] == demo["golden"]
