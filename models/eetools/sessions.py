"""Running graphs: onnxruntime sessions, the exact-integer reference evaluator, output shaping."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import ExportError


def make_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1  # deterministic, reproducible golden values
    so.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(f"onnxruntime cannot load {path}: {type(e).__name__}: {e}") from None


def run(session, ids: list[int]) -> np.ndarray:
    x = np.asarray([ids], dtype=np.int64)
    feeds = {"input_ids": x, "attention_mask": np.ones_like(x), "token_type_ids": np.zeros_like(x)}
    return session.run(None, feeds)[0]


def reduce_output(task: str, out: np.ndarray):
    """Batch row 0 in the shape of the fixtures' reference.jsonl, rounded to 6 decimals."""

    def r(a):
        return np.round(np.asarray(a, dtype=np.float64), 6).tolist()

    row = out[0]
    if task == "embed":
        return {"cls": r(row[0]), "mean": r(row.mean(axis=0, dtype=np.float64))}
    return r(row)


def compared_output(task: str, out: np.ndarray) -> np.ndarray:
    """The values the verification compares: what the runtime serves for the task.

    Logits are compared whole.  For ``embed`` it is the [CLS] row and the mean-pooled vector:
    single elements of the raw hidden states are spiky under int8 (a random tiny encoder shows
    up to ~20% of the output scale at isolated positions while the pooled vectors stay within
    ~3% and every row keeps cosine > 0.99 to fp32), so the raw tensor is no useful yardstick.
    """
    if task == "embed":
        row = out[0].astype(np.float64)
        return np.concatenate([row[0], row.mean(axis=0)])
    return out.astype(np.float64)


def exact_int8_session(int8_path: Path):
    """onnx's pure-numpy reference evaluator on the int8 graph: exact integer arithmetic.

    onnxruntime's u8s8 MatMulInteger kernel on x86-64 AVX2 without VNNI sums pairs of u8*s8
    products in saturating int16 (vpmaddubsw), so with int8 weights (worst: per-channel) its
    output can be off by far more than the quantization itself; uint8 weights, VNNI and ARM do
    not have the problem, and neither does tract (i32 accumulation).  The evaluator only
    implements DequantizeLinear from opset 19 on; the ops of these graphs mean the same in
    opsets 17..21, so the in-memory copy is relabelled 21.
    """
    import onnx
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(int8_path))
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version < 21:
            imp.version = 21
    ref = ReferenceEvaluator(model)

    class _Session:
        def run(self, _names, feeds):
            return ref.run(None, feeds)

    return _Session()
