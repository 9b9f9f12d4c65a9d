"""Graphs written by onnxruntime's transformer optimizer (what `optimum-cli onnxruntime
optimize -O2` runs: `onnxruntime.transformers.optimizer.optimize_model` with the BERT
fusions) load without a panic: the runtime either answers within the parity rule against
onnxruntime on the original fp32 graph, or stops with exit status 1 and one error line.

The optimized graph is made here from the tiny fixture into pytest's temporary folder (nothing
generated is committed). The fusions run without onnxruntime's basic graph rewrites
(`opt_level=0`): those import torch just to print its version, and torch is not a test
dependency; the fused ops (`SkipLayerNormalization`, `BiasGelu`) are the same.

Needs the release binary (`cargo build --release`).
"""
import json
import shutil
import subprocess
from collections import Counter

import numpy as np
import pytest

from conftest import FIXTURES, REPO, require_fixtures

BINARY = REPO / "target" / "release" / "electra-edge"


def optimized_folder(tmp_path, head):
    """The tiny fixture's `head` folder with its fp32 graph through the optimizer."""
    optimizer = pytest.importorskip("onnxruntime.transformers.optimizer")
    src = FIXTURES / "electra-tiny-zh" / head
    out = tmp_path / head
    out.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, out / f)
    cfg = json.loads((src / "config.json").read_text())
    model = optimizer.optimize_model(str(src / "model.fp32.onnx"), model_type="bert",
                                     num_heads=cfg["num_attention_heads"],
                                     hidden_size=cfg["hidden_size"], opt_level=0)
    model.save_model_to_file(str(out / "model.onnx"))
    ops = Counter(n.op_type for n in model.model.graph.node)
    return out, ops


@pytest.mark.parametrize("head", ["tagger", "discriminator"])
def test_optimized_graph_answers_or_fails_cleanly(tmp_path, head):
    require_fixtures()
    if not BINARY.is_file():
        pytest.fail(f"{BINARY} not found: run `cargo build --release` first", pytrace=False)
    folder, ops = optimized_folder(tmp_path, head)
    # the optimizer did fuse something (else this test would test nothing new)
    assert ops["SkipLayerNormalization"] > 0, ops

    src = FIXTURES / "electra-tiny-zh" / head
    references = [json.loads(line) for line in (src / "reference.jsonl").read_text().splitlines()[:10]]
    requests = "".join(json.dumps({"id": i, "text": r["text"], "raw": True}) + "\n"
                       for i, r in enumerate(references))
    run = subprocess.run([str(BINARY), "run", "--model", str(folder)], input=requests,
                         capture_output=True, text=True, env={"RUST_LOG": "error"})
    if run.returncode != 0:
        # not supported: one clear line, never a panic
        assert run.returncode == 1, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, run.stderr
        assert "panicked at" not in run.stderr and "RUST_BACKTRACE" not in run.stderr, run.stderr
        pytest.fail(f"optimized graph ({dict(ops)}) not supported: {lines[0]}")
    answers = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(answers) == len(references)
    for answer, ref in zip(answers, references):
        assert answer["input_ids"] == ref["input_ids"]
        ours = np.array(answer["logits"], dtype=np.float32)
        fp32 = np.array(ref["ort_fp32"], dtype=np.float32)
        # an fp32 graph: only float rounding between the two runtimes
        assert float(np.max(np.abs(ours - fp32))) <= 1e-4, ref["text"]
