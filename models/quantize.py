#!/usr/bin/env python3
"""Quantize-and-verify stage of the electra-edge export toolchain.

This module imports only the standard library, numpy, onnx and onnxruntime, so it runs where
torch and transformers are not installed (CI).  ``models/export.py`` calls it after the fp32
export; it also runs alone on an existing fp32 ONNX file:

    python models/quantize.py FP32.onnx OUT_DIR [--per-channel] [--weight-type uint8]
    python models/quantize.py --check OUT_DIR          # re-check a folder against its manifest

What it does:
1. validates the fp32 graph (readable ONNX, inputs input_ids/attention_mask/token_type_ids,
   output logits or last_hidden_state);
2. ``onnxruntime.quantization.quantize_dynamic`` (per-tensor by default, optional per-channel,
   int8 or uint8 weights);
3. checks the int8 graph: standard ONNX domain only (no com.microsoft fused ops), at least one
   MatMulInteger;
4. runs fp32 and int8 with onnxruntime on a few Chinese sentences and fails when the max abs
   error exceeds the bound (see ``error_bound``);
5. writes model.onnx, (optionally) model.fp32.onnx, config.json, tokenizer files and
   manifest.json with sha256 of every file and golden outputs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import re
import shutil
import sys
import tempfile
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np

MANIFEST_FORMAT = 1
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
TASKS = ("discriminator", "classify", "tag", "embed")
ARCH_TO_TASK = {
    "ElectraForPreTraining": "discriminator",
    "ElectraForSequenceClassification": "classify",
    "ElectraForTokenClassification": "tag",
    "ElectraModel": "embed",
}
TASK_TO_ARCH = {v: k for k, v in ARCH_TO_TASK.items()}
MODEL_FILES = ("model.onnx", "model.fp32.onnx", "config.json", "tokenizer.json", "tokenizer_config.json")

# Golden sentences recorded in manifest.json (short, one with ASCII + emoji).
GOLDEN_SENTENCES = [
    "我爱北京天安门。",
    "今天天气很好，我们去公园散步吧！",
    "张伟在深圳腾讯公司担任软件工程师。",
    "iPhone 15 的售价是 5999 元😀",
    "繁體中文的句子也應該能夠正確處理。",
]
# Extra sentences used only for the error measurement.
EXTRA_VERIFY_SENTENCES = [
    "这家餐厅的菜味道不错，但是服务太慢了。",
    "价格：￥128.00（含税），数量：3件。",
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
]
VERIFY_SENTENCES = GOLDEN_SENTENCES + EXTRA_VERIFY_SENTENCES

# Error bound: REL_BOUND * max(1, max |fp32 output| over the verification sentences).
REL_BOUND = 0.05


class ExportError(Exception):
    """A failure with a message meant for the user (no traceback needed)."""


# --------------------------------------------------------------------------------------------
# files


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_NUM_LIST = re.compile(r"\[\s*(-?[0-9][-0-9.eE+]*(?:,\s*-?[0-9][-0-9.eE+]*)*)\s*\]")


def write_json(path: Path, obj, compact: bool = False) -> None:
    with open(path, "w", encoding="utf-8") as f:
        if compact:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        else:
            text = json.dumps(obj, ensure_ascii=False, indent=2)
            # keep lists of numbers on one line (golden vectors, input ids)
            text = _NUM_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
            f.write(text + "\n")


def tool_versions(**extra) -> dict:
    import onnx
    import onnxruntime

    versions = {
        "python": platform.python_version(),
        "torch": None,
        "transformers": None,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    versions.update(extra)
    return versions


# --------------------------------------------------------------------------------------------
# a pure-Python BertTokenizer (WordPiece) reading tokenizer.json, so that CI needs no `tokenizers`


def _is_chinese_char(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B920 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


class WordPieceTokenizer:
    """BertNormalizer + BertPreTokenizer + WordPiece + [CLS] A [SEP], as in tokenizer.json."""

    def __init__(self, tokenizer_json: Path):
        try:
            spec = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
            model = spec["model"]
            if model.get("type") != "WordPiece":
                raise ExportError(f"{tokenizer_json}: model type {model.get('type')!r}, expected WordPiece")
            self.vocab: dict[str, int] = model["vocab"]
            self.unk = model.get("unk_token", "[UNK]")
            self.prefix = model.get("continuing_subword_prefix", "##")
            self.max_chars = int(model.get("max_input_chars_per_word", 100))
            norm = spec.get("normalizer") or {}
            self.lowercase = bool(norm.get("lowercase", True))
            strip = norm.get("strip_accents")
            self.strip_accents = self.lowercase if strip is None else bool(strip)
            self.clean_text = bool(norm.get("clean_text", True))
            self.chinese_chars = bool(norm.get("handle_chinese_chars", True))
            trunc = spec.get("truncation") or {}
            self.max_length = int(trunc.get("max_length", 512))
            self.cls_id = self.vocab["[CLS]"]
            self.sep_id = self.vocab["[SEP]"]
            self.unk_id = self.vocab[self.unk]
        except ExportError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ExportError(f"cannot read tokenizer {tokenizer_json}: {e}") from None

    def normalize(self, text: str) -> str:
        out = []
        for ch in text:
            if self.clean_text:
                if ch in ("\0", "\ufffd") or _is_control(ch):
                    continue
                if _is_whitespace(ch):
                    ch = " "
            if self.chinese_chars and _is_chinese_char(ord(ch)):
                out.append(" " + ch + " ")
            else:
                out.append(ch)
        s = "".join(out)
        if self.strip_accents:
            s = "".join(c for c in unicodedata.normalize("NFD", s) if unicodedata.category(c) != "Mn")
        if self.lowercase:
            s = s.lower()
        return s

    @staticmethod
    def pre_tokenize(text: str) -> list[str]:
        words: list[str] = []
        cur: list[str] = []
        for ch in text:
            if ch.isspace():
                if cur:
                    words.append("".join(cur))
                    cur = []
            elif _is_punctuation(ch):
                if cur:
                    words.append("".join(cur))
                    cur = []
                words.append(ch)
            else:
                cur.append(ch)
        if cur:
            words.append("".join(cur))
        return words

    def wordpiece(self, word: str) -> list[int]:
        if len(word) > self.max_chars:
            return [self.unk_id]
        ids = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end]
                if start > 0:
                    piece = self.prefix + piece
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk_id]
            ids.append(found)
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for w in self.pre_tokenize(self.normalize(text)):
            ids.extend(self.wordpiece(w))
        ids = ids[: self.max_length - 2]
        return [self.cls_id] + ids + [self.sep_id]


# --------------------------------------------------------------------------------------------
# graph checks


def load_fp32(path: Path):
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, truncated files, ...
        raise ExportError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    if len(model.graph.node) == 0:
        raise ExportError(f"{path}: not a readable ONNX model (empty graph)")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise ExportError(f"{path}: ONNX checker rejects the model: {e}") from None
    names = [i.name for i in model.graph.input]
    init_names = {t.name for t in model.graph.initializer}
    names = [n for n in names if n not in init_names]
    if sorted(names) != sorted(INPUT_NAMES):
        raise ExportError(f"{path}: graph inputs are {names}, expected {list(INPUT_NAMES)}")
    outs = [o.name for o in model.graph.output]
    if len(outs) != 1 or outs[0] not in ("logits", "last_hidden_state"):
        raise ExportError(f"{path}: graph outputs are {outs}, expected ['logits'] or ['last_hidden_state']")
    return model


def op_census(model) -> Counter:
    """op_type -> count; ops outside the default ONNX domain are keyed "domain::op_type"."""
    return Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in model.graph.node
    )


def check_int8_graph(path: Path) -> Counter:
    import onnx

    model = onnx.load(str(path))
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        raise ExportError(f"{path}: quantized graph uses non-standard ops {foreign} (tract cannot run them)")
    census = op_census(model)
    if census.get("MatMulInteger", 0) == 0:
        raise ExportError(f"{path}: quantized graph has no MatMulInteger node; quantization did nothing")
    return census


def infer_task(model, config: dict | None) -> str:
    if config:
        for arch in config.get("architectures") or []:
            if arch in ARCH_TO_TASK:
                return ARCH_TO_TASK[arch]
    out = model.graph.output[0]
    if out.name == "last_hidden_state":
        return "embed"
    dims = out.type.tensor_type.shape.dim
    if len(dims) == 3:
        return "tag"
    if len(dims) == 2 and dims[1].dim_param:
        return "discriminator"
    return "classify"


# --------------------------------------------------------------------------------------------
# quantize + run


def quantize(fp32_path: Path, int8_path: Path, per_channel: bool = False, weight_type: str = "int8") -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if weight_type not in ("int8", "uint8"):
        raise ExportError(f"weight type {weight_type!r}: expected int8 or uint8")
    wt = QuantType.QInt8 if weight_type == "int8" else QuantType.QUInt8
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic warns about optional pre-processing
    try:
        quantize_dynamic(
            model_input=str(fp32_path),
            model_output=str(int8_path),
            per_channel=per_channel,
            weight_type=wt,
        )
    except Exception as e:
        raise ExportError(f"onnxruntime quantize_dynamic failed on {fp32_path}: {type(e).__name__}: {e}") from None
    finally:
        root.setLevel(level)


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


# --------------------------------------------------------------------------------------------
# the folder


def build_folder(
    fp32_path: Path,
    out_dir: Path,
    *,
    task: str | None = None,
    config: dict | None = None,
    tokenizer_json: Path,
    tokenizer_config: Path | None = None,
    source: dict,
    per_channel: bool = False,
    weight_type: str = "int8",
    keep_fp32: bool = True,
    tools: dict | None = None,
    tokenize=None,
    rel_bound: float = REL_BOUND,
    max_abs_err: float | None = None,
    log=print,
) -> dict:
    """Quantize FP32 into OUT_DIR, verify, and write the model folder. Returns the manifest."""
    fp32_path = Path(fp32_path)
    out_dir = Path(out_dir)
    model = load_fp32(fp32_path)
    if config is None:
        cfg_path = fp32_path.parent / "config.json"
        config = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else None
    task = task or infer_task(model, config)
    if task not in TASKS:
        raise ExportError(f"task {task!r}: expected one of {', '.join(TASKS)}")
    if tokenize is None:
        tokenize = WordPieceTokenizer(tokenizer_json).encode
    out_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="ee-quant-") as tmp:
        tmp_int8 = Path(tmp) / "model.onnx"
        log(f"quantizing {fp32_path.name}: quantize_dynamic per_channel={per_channel} weight_type={weight_type}")
        quantize(fp32_path, tmp_int8, per_channel=per_channel, weight_type=weight_type)
        census = check_int8_graph(tmp_int8)
        log(
            "int8 graph: "
            + ", ".join(f"{k} {v}" for k, v in sorted(census.items()) if k in
                        ("MatMulInteger", "DynamicQuantizeLinear", "DequantizeLinear", "MatMul"))
        )
        sessions = (make_session(fp32_path), make_session(tmp_int8))
        ver = verify(fp32_path, tmp_int8, tokenize, task, rel_bound=rel_bound, max_abs_err=max_abs_err,
                     sessions=sessions)
        log(
            f"verification on {ver['sentences']} sentences: max |int8 - fp32| = {ver['max_abs_err_int8_vs_fp32']:.6f}"
            f" (onnxruntime), {ver['max_abs_err_exact_int8_vs_fp32']:.6f} (exact integer arithmetic);"
            f" largest |fp32| {ver['max_abs_fp32']:.4f}, bound {ver['bound']:.6f}"
        )
        if not ver["ok"]:
            raise ExportError(
                f"int8 model is off: max abs error {ver['max_abs_err_exact_int8_vs_fp32']:.6f} > bound {ver['bound']:.6f}"
                " (try --per-channel or --weight-type uint8, or pass --max-abs-err to accept it)"
            )
        if ver["ort_saturated"]:
            log(
                "WARNING: onnxruntime's int8 output is off by more than the bound while exact integer arithmetic is"
                " within it: onnxruntime's u8s8 kernel saturates on this CPU (x86-64 AVX2 without VNNI). The model"
                " is fine (tract accumulates in i32), but the golden ort_int8 values carry that error; prefer"
                " --weight-type uint8 for golden values that match exact arithmetic."
            )
        gold = golden(sessions, tokenize, task)
        del sessions  # release the int8 session before the temporary directory goes

        # Write the folder only once everything above passed.
        for name in MODEL_FILES + ("manifest.json",):
            p = out_dir / name
            if p.exists():
                p.unlink()
        shutil.copyfile(tmp_int8, out_dir / "model.onnx")
    if keep_fp32:
        if fp32_path.resolve() != (out_dir / "model.fp32.onnx").resolve():
            shutil.copyfile(fp32_path, out_dir / "model.fp32.onnx")
    if config is not None:
        write_json(out_dir / "config.json", config)
    write_json(out_dir / "tokenizer.json", json.loads(Path(tokenizer_json).read_text(encoding="utf-8")), compact=True)
    if tokenizer_config is not None and Path(tokenizer_config).is_file():
        tc = json.loads(Path(tokenizer_config).read_text(encoding="utf-8"))
        tc.pop("name_or_path", None)  # may hold a local absolute path
        write_json(out_dir / "tokenizer_config.json", tc)

    files = {name: sha256_file(out_dir / name) for name in MODEL_FILES if (out_dir / name).is_file()}
    manifest = {
        "format": MANIFEST_FORMAT,
        "source": {
            "model": source.get("model"),
            "revision": source.get("revision"),
            "random_weights": bool(source.get("random_weights", False)),
        },
        "task": task,
        "files": files,
        "tools": tools or tool_versions(),
        "quantization": {"per_channel": bool(per_channel), "weight_type": weight_type},
        "verification": {
            "sentences": ver["sentences"],
            "max_abs_err_int8_vs_fp32": ver["max_abs_err_int8_vs_fp32"],
            "bound": ver["bound"],
            "max_abs_err_exact_int8_vs_fp32": ver["max_abs_err_exact_int8_vs_fp32"],
        },
        "golden": gold,
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def check_folder(folder: Path) -> dict:
    """Check a model folder against its manifest.json; raises ExportError on any mismatch."""
    folder = Path(folder)
    mpath = folder / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExportError(f"{mpath}: cannot read manifest: {e}") from None
    for key in ("format", "source", "task", "files", "tools", "quantization", "verification", "golden"):
        if key not in manifest:
            raise ExportError(f"{mpath}: missing key {key!r}")
    if manifest["format"] != MANIFEST_FORMAT:
        raise ExportError(f"{mpath}: format {manifest['format']!r}, expected {MANIFEST_FORMAT}")
    if manifest["task"] not in TASKS:
        raise ExportError(f"{mpath}: task {manifest['task']!r}")
    if "model.onnx" not in manifest["files"]:
        raise ExportError(f"{mpath}: files lacks model.onnx")
    for name, digest in manifest["files"].items():
        p = folder / name
        if not p.is_file():
            raise ExportError(f"{folder}: {name} is listed in manifest.json but missing")
        actual = sha256_file(p)
        if actual != digest:
            raise ExportError(f"{folder}: {name} sha256 {actual} does not match manifest {digest}")
    return manifest


# --------------------------------------------------------------------------------------------
# CLI


def add_quant_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--per-channel", action="store_true", help="per-channel weight scales (default per-tensor)")
    ap.add_argument("--weight-type", choices=("int8", "uint8"), default="int8", help="weight type (default int8)")
    ap.add_argument("--rel-bound", type=float, default=REL_BOUND,
                    help=f"fail when max|int8-fp32| > REL * max(1, max|fp32|) (default {REL_BOUND})")
    ap.add_argument("--max-abs-err", type=float, default=None, help="absolute error bound (overrides --rel-bound)")
    ap.add_argument("--no-fp32", action="store_true", help="do not keep model.fp32.onnx in OUT_DIR")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Quantize an fp32 ELECTRA ONNX export to int8 with onnxruntime and verify it.",
    )
    ap.add_argument("paths", nargs="+", metavar="PATH", help="FP32_ONNX OUT_DIR, or with --check: DIR")
    ap.add_argument("--check", action="store_true", help="check DIR's files against its manifest.json")
    ap.add_argument("--ops", action="store_true", help="print the op census of each ONNX file given")
    ap.add_argument("--task", choices=TASKS, help="default: from config.json architectures / output shape")
    ap.add_argument("--tokenizer-dir", help="folder with tokenizer.json (+ tokenizer_config.json); default: FP32's folder")
    ap.add_argument("--config", help="config.json to copy (default: FP32's folder)")
    ap.add_argument("--source-model", help="source model name for the manifest (default: FP32's folder name)")
    ap.add_argument("--revision", default=None, help="source revision for the manifest")
    ap.add_argument("--random-weights", action="store_true", help="record that the weights are random")
    add_quant_args(ap)
    args = ap.parse_args(argv)
    try:
        if args.ops:
            import onnx

            for p in args.paths:
                try:
                    census = op_census(onnx.load(p))
                except Exception as e:
                    raise ExportError(f"{p}: not a readable ONNX model ({type(e).__name__}: {e})") from None
                print(f"{p}: {sum(census.values())} nodes")
                for op, n in sorted(census.items()):
                    print(f"  {op:24s} {n}")
            return 0
        if args.check:
            if len(args.paths) != 1:
                ap.error("--check takes one DIR")
            m = check_folder(Path(args.paths[0]))
            print(f"{args.paths[0]}: ok ({m['task']}, {len(m['files'])} files match manifest.json)")
            return 0
        if len(args.paths) != 2:
            ap.error("expected FP32_ONNX OUT_DIR")
        fp32, out = Path(args.paths[0]), Path(args.paths[1])
        tok_dir = Path(args.tokenizer_dir) if args.tokenizer_dir else fp32.parent
        tok_json = tok_dir / "tokenizer.json"
        if not tok_json.is_file():
            raise ExportError(f"{tok_json}: missing (pass --tokenizer-dir)")
        config = None
        cfg = Path(args.config) if args.config else fp32.parent / "config.json"
        if cfg.is_file():
            config = json.loads(cfg.read_text(encoding="utf-8"))
        elif args.config:
            raise ExportError(f"{cfg}: no such file")
        source = {
            "model": args.source_model or fp32.resolve().parent.name,
            "revision": args.revision or ("sha256:" + sha256_file(fp32) if fp32.is_file() else None),
            "random_weights": args.random_weights,
        }
        if args.random_weights:
            print("NOTE: recording this model as RANDOM weights (not a trained model)")
        m = build_folder(
            fp32, out, task=args.task, config=config, tokenizer_json=tok_json,
            tokenizer_config=tok_dir / "tokenizer_config.json", source=source,
            per_channel=args.per_channel, weight_type=args.weight_type, keep_fp32=not args.no_fp32,
            rel_bound=args.rel_bound, max_abs_err=args.max_abs_err,
        )
        size = sum((out / n).stat().st_size for n in list(m["files"]) + ["manifest.json"])
        print(f"wrote {out}: {', '.join(list(m['files']) + ['manifest.json'])} ({size / 1e6:.2f} MB)")
        return 0
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
