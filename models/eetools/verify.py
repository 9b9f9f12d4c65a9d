"""int8-vs-fp32 verification against an error bound, and the golden rows of the manifest."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import GOLDEN_SENTENCES, REL_BOUND, VERIFY_SENTENCES, ExportError
from .sessions import compared_output, exact_int8_session, make_session, reduce_output, run


def error_bound(fp32_max_abs: float, rel: float = REL_BOUND) -> float:
    """rel * max(1, largest |fp32 output|).

    Dynamic int8 quantization of a healthy ELECTRA graph moves outputs by ~0.5-3% of their
    largest magnitude (the shared fixtures: 0.4-2.8%); a broken quantization (wrong scale or
    zero point, a mis-wired node) moves them by a sizeable fraction of that magnitude.  5% keeps
    a margin of ~2x over the worst healthy case.  The scale is floored at 1 because logits of
    random or poorly separated models sit near zero, where a relative bound would measure noise;
    an absolute error of 0.05 on logits cannot change a decision unless the top two are closer
    than that.
    """
    return float(rel * max(1.0, fp32_max_abs))


def verify(fp32_path: Path, int8_path: Path, tokenize, task: str, sentences=VERIFY_SENTENCES,
           rel_bound: float = REL_BOUND, max_abs_err: float | None = None, exact: bool = True,
           sessions: tuple | None = None) -> dict:
    """Compare int8 with fp32 on SENTENCES.

    ``max_abs_err_int8_vs_fp32`` is onnxruntime int8 vs onnxruntime fp32.  With ``exact`` the
    int8 graph also runs under exact integer arithmetic (``exact_int8_session``); the model then
    passes when the exact error is within the bound (it is the model's own error and what tract
    computes) and an onnxruntime error above the bound is reported as its kernel's saturation.
    ``sessions``: the (fp32, int8) onnxruntime sessions of the two paths, when the caller has them.
    """
    s_fp32, s_int8 = sessions or (make_session(fp32_path), make_session(int8_path))
    s_exact = exact_int8_session(int8_path) if exact else None
    worst = worst_exact = 0.0
    scale = 0.0
    for text in sentences:
        ids = tokenize(text)
        a = run(s_fp32, ids)
        b = run(s_int8, ids)
        if a.shape != b.shape:
            raise ExportError(f"int8 output shape {b.shape} != fp32 output shape {a.shape}")
        if not np.all(np.isfinite(b)):
            raise ExportError(f"int8 graph produced non-finite values for {text!r}")
        a_c = compared_output(task, a)
        scale = max(scale, float(np.max(np.abs(a_c))))
        worst = max(worst, float(np.max(np.abs(a_c - compared_output(task, b)))))
        if s_exact is not None:
            c = run(s_exact, ids)
            worst_exact = max(worst_exact, float(np.max(np.abs(a_c - compared_output(task, c)))))
    bound = float(max_abs_err) if max_abs_err is not None else error_bound(scale, rel_bound)
    res = {
        "sentences": len(sentences),
        "max_abs_err_int8_vs_fp32": round(worst, 6),
        "bound": round(bound, 6),
        "max_abs_fp32": round(scale, 6),
    }
    if s_exact is not None:
        res["max_abs_err_exact_int8_vs_fp32"] = round(worst_exact, 6)
        res["ok"] = worst_exact <= bound
        res["ort_saturated"] = worst > bound >= worst_exact
    else:
        res["ok"] = worst <= bound
        res["ort_saturated"] = False
    return res


def golden(sessions: tuple, tokenize, task: str, sentences=GOLDEN_SENTENCES) -> list:
    """Golden rows for the manifest from the (fp32, int8) onnxruntime sessions."""
    s_fp32, s_int8 = sessions
    rows = []
    for text in sentences:
        ids = tokenize(text)
        rows.append(
            {
                "text": text,
                "input_ids": ids,
                "ort_int8": reduce_output(task, run(s_int8, ids)),
                "ort_fp32": reduce_output(task, run(s_fp32, ids)),
            }
        )
    return rows
