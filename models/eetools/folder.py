"""Writing a model folder (quantize, check, verify, files, manifest) and checking one against its manifest."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from .common import MANIFEST_FORMAT, MODEL_FILES, REL_BOUND, TASKS, VERIFY_SENTENCES, ExportError, sha256_file, tool_versions, write_json
from .choose import SIZE_BUDGET, choose_quantization
from .graph import check_int8_graph, infer_task, load_fp32
from .quant import quantize
from .sessions import make_session
from .verify import golden, verify
from .wordpiece import WordPieceTokenizer


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
    choose: bool = False,
    size_budget: float = SIZE_BUDGET,
) -> dict:
    """Quantize FP32 into OUT_DIR, verify, and write the model folder. Returns the manifest.

    ``choose``: pick per-tensor / per-channel / per-channel with a few fp32 matmuls by measurement
    (``eetools.choose``; ``per_channel`` is then ignored) and record the candidates in the manifest.
    """
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
        if choose:
            qrecord, chosen, chosen_dir = choose_quantization(fp32_path, tokenize, task, weight_type,
                                                              VERIFY_SENTENCES, size_budget=size_budget, log=log)
            shutil.copyfile(chosen, tmp_int8)
            chosen_dir.cleanup()
            per_channel = qrecord["per_channel"]
        else:
            log(f"quantizing {fp32_path.name}: quantize_dynamic per_channel={per_channel} weight_type={weight_type}")
            quantize(fp32_path, tmp_int8, per_channel=per_channel, weight_type=weight_type)
            qrecord = {"per_channel": bool(per_channel), "weight_type": weight_type}
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
        "quantization": qrecord,
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
