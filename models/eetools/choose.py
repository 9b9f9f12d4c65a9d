"""Choosing the quantization by measurement: try per-tensor, per-channel, and per-channel with the
few most outlier-prone matmuls left in fp32; keep the lowest error within a size budget.

Why these candidates.  ``quantize_dynamic`` quantizes activations per tensor at run time
(DynamicQuantizeLinear) and weights per tensor or per output channel.  Trained transformers have
outliers: a few weight columns with large magnitudes (per-channel scales fix those) and a few
activation channels that are 10-100x the rest (typically the input of the FFN output matmul,
after GELU), which no weight setting fixes: the one activation scale is set by the outlier and
the other channels lose their resolution.  Leaving those matmuls in fp32 removes that error at
the cost of their weights' size (4 bytes instead of 1 per weight).

How the candidates are ranked.  The error is measured the way the runtime serves the output,
with exact integer arithmetic (what tract computes; onnxruntime's AVX2 u8s8 kernel saturates):
for ``embed`` it is ``1 - min cosine`` of the mean-pooled vector to fp32 over the sentences, for
the other tasks the largest absolute difference of the compared outputs divided by
``max(1, largest |fp32 output|)`` (the same scale as the verification bound).  Candidates whose
model.onnx is larger than ``size_budget`` times the plain per-tensor file are not kept; among
the rest the lowest error wins, ties going to the smaller file.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .common import ExportError
from .quant import quantize
from .sessions import exact_int8_session, make_session, run

# English everyday sentences (and two very short inputs) added to the measurement (the project's Chinese sentences are mostly
# [UNK] or single characters to an English vocabulary such as MiniLM's).
ENGLISH_SENTENCES = [
    "The weather is lovely today, let's go for a walk in the park.",
    "Could you send me the invoice for last month's order?",
    "My phone battery dies after only two hours, what should I do?",
    "The meeting has been moved to Thursday at 3 pm.",
    # very short inputs are the hard case: few rows, so the [CLS]/[SEP] outliers set the scales
    "ok",
    "Thanks!",
]
SIZE_BUDGET = 2.0  # model.onnx may be at most 2x the plain per-tensor int8 file (fp32 is ~4x)
MAX_FP32_MATMULS = (1, 2, 4, 8, 12)  # how many outlier-prone matmuls the fp32 candidates keep


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def matmul_outlier_ranking(fp32_path: Path, tokenize, sentences) -> list[tuple[str, float]]:
    """MatMul nodes with a constant weight, by how outlier-heavy their input activations are:
    max |x| / rms(x) over the sentences (fp32 run), largest first."""
    import onnx

    model = onnx.load(str(fp32_path))
    inits = {t.name for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) >= 2
             and n.input[1] in inits]
    if not nodes:
        return []
    existing = {o.name for o in model.graph.output}
    wanted = sorted({n.input[0] for n in nodes} - existing)
    for name in wanted:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    with tempfile.TemporaryDirectory(prefix="ee-probe-") as tmp:
        probe = Path(tmp) / "probe.onnx"
        onnx.save(model, str(probe))
        sess = make_session(probe)
        names = [o.name for o in sess.get_outputs()]
        peak: dict[str, float] = {}
        sq: dict[str, float] = {}
        cnt: dict[str, int] = {}
        for text in sentences:
            x = np.asarray([tokenize(text)], dtype=np.int64)
            outs = sess.run(None, {"input_ids": x, "attention_mask": np.ones_like(x),
                                   "token_type_ids": np.zeros_like(x)})
            for name, val in zip(names, outs):
                v = np.abs(np.asarray(val, dtype=np.float64))
                peak[name] = max(peak.get(name, 0.0), float(v.max()))
                sq[name] = sq.get(name, 0.0) + float((v * v).sum())
                cnt[name] = cnt.get(name, 0) + v.size
        del sess
    ranking = []
    for n in nodes:
        x = n.input[0]
        rms = (sq[x] / max(1, cnt[x])) ** 0.5
        ranking.append((n.name, peak[x] / (rms + 1e-12)))
    ranking.sort(key=lambda t: -t[1])
    return ranking


def measure(fp32_sess, int8_path: Path, tokenize, task: str, sentences) -> dict:
    """Error of the int8 graph vs fp32 under exact integer arithmetic (see the module docs)."""
    exact = exact_int8_session(int8_path)
    worst = 0.0
    scale = 0.0
    min_cos = 1.0
    for text in sentences:
        ids = tokenize(text)
        a = np.asarray(run(fp32_sess, ids), dtype=np.float64)
        b = np.asarray(run(exact, ids), dtype=np.float64)
        if not np.all(np.isfinite(b)):
            return {"error": float("inf"), "min_cosine": None}
        if task == "embed":
            min_cos = min(min_cos, _cos(a[0].mean(axis=0), b[0].mean(axis=0)))
        scale = max(scale, float(np.max(np.abs(a))))
        worst = max(worst, float(np.max(np.abs(a - b))))
    if task == "embed":
        return {"error": round(1.0 - min_cos, 6), "min_cosine": round(min_cos, 6)}
    return {"error": round(worst / max(1.0, scale), 6), "max_abs_err": round(worst, 6)}


def choose_quantization(fp32_path: Path, tokenize, task: str, weight_type: str, sentences,
                        size_budget: float = SIZE_BUDGET, log=print) -> tuple[dict, Path, tempfile.TemporaryDirectory]:
    """Try the candidates; returns (record for the manifest, path of the chosen int8 file, the
    temporary directory holding it, to be cleaned up by the caller)."""
    tmpdir = tempfile.TemporaryDirectory(prefix="ee-choose-")
    tmp = Path(tmpdir.name)
    sentences = list(sentences) + ENGLISH_SENTENCES
    fp32_sess = make_session(fp32_path)
    cands: list[dict] = []

    def attempt(name: str, per_channel: bool, exclude: list[str]):
        path = tmp / f"{name}.onnx"
        quantize(fp32_path, path, per_channel=per_channel, weight_type=weight_type, nodes_to_exclude=exclude)
        m = measure(fp32_sess, path, tokenize, task, sentences)
        c = {"name": name, "per_channel": per_channel, "fp32_nodes": exclude,
             "bytes": path.stat().st_size, **m}
        cands.append(c)
        log(f"  candidate {name}: {path.stat().st_size / 1e6:.2f} MB, error {m['error']:.6f}"
            + (f" (min cosine {m['min_cosine']:.5f})" if m.get("min_cosine") is not None else ""))
        return c

    log(f"choosing the quantization by measurement on {len(sentences)} sentences ({weight_type} weights)")
    base = attempt("per-tensor", False, [])
    attempt("per-channel", True, [])
    ranking = matmul_outlier_ranking(fp32_path, tokenize, sentences)
    budget = base["bytes"] * size_budget
    for k in MAX_FP32_MATMULS:
        if k > len(ranking):
            break
        c = attempt(f"per-channel, {k} matmul{'s' if k > 1 else ''} in fp32", True, [n for n, _ in ranking[:k]])
        if c["bytes"] > budget:
            break
    fitting = [c for c in cands if c["bytes"] <= budget]
    best = min(fitting, key=lambda c: (c["error"], c["bytes"]))
    if not np.isfinite(best["error"]):
        raise ExportError("every quantization candidate produced non-finite outputs")
    why = (f"lowest {'1 - min cosine of the mean-pooled vector' if task == 'embed' else 'relative max abs error'}"
           f" (exact integer arithmetic, {len(sentences)} sentences) among {len(fitting)} candidates within"
           f" {size_budget:g}x the per-tensor size ({base['bytes'] / 1e6:.2f} MB)")
    log(f"chosen: {best['name']} ({why})")
    record = {
        "per_channel": best["per_channel"],
        "weight_type": weight_type,
        "fp32_nodes": best["fp32_nodes"],
        "chosen_by": "measurement",
        "why": why,
        "size_budget": size_budget,
        "candidates": [{k: v for k, v in c.items() if k != "fp32_nodes"} | {"fp32_nodes": len(c["fp32_nodes"])}
                       for c in cands],
    }
    return record, tmp / f"{best['name']}.onnx", tmpdir
