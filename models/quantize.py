#!/usr/bin/env python3
"""Quantize-and-verify stage of the electra-edge export toolchain (command line).

The work is done by the modules of ``models/eetools/`` (tokenizer, graph checks, quantization,
sessions, verification, folder writing); this file parses arguments and re-exports their names.
It imports only the standard library, numpy, onnx and onnxruntime, so it runs where
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
import json
import sys
from pathlib import Path

# The stages live in models/eetools/ (one concern per module, see its __init__); this file is the
# command line and re-exports their names, so `import quantize as q` keeps working.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eetools.common import (  # noqa: E402,F401
    ARCH_TO_TASK, EXTRA_VERIFY_SENTENCES, GOLDEN_SENTENCES, INPUT_NAMES, MANIFEST_FORMAT, MODEL_FILES,
    REL_BOUND, TASK_TO_ARCH, TASKS, VERIFY_SENTENCES, ExportError, arch_for, sha256_file, tool_versions, write_json,
)
from eetools.choose import SIZE_BUDGET, choose_quantization  # noqa: E402,F401
from eetools.folder import build_folder, check_folder  # noqa: E402,F401
from eetools.graph import check_int8_graph, infer_task, load_fp32, op_census  # noqa: E402,F401
from eetools.quant import quantize  # noqa: E402,F401
from eetools.sessions import (  # noqa: E402,F401
    compared_output, exact_int8_session, make_session, reduce_output, run,
)
from eetools.verify import error_bound, golden, verify  # noqa: E402,F401
from eetools.wordpiece import WordPieceTokenizer  # noqa: E402,F401


def add_quant_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quantization", choices=("auto", "per-tensor", "per-channel"), default=None,
                    help="auto: try per-tensor, per-channel and per-channel with the most outlier-prone matmuls in"
                         " fp32, keep the lowest measured error within --size-budget (export.py's default);"
                         " quantize.py's default is per-tensor")
    ap.add_argument("--per-channel", dest="quantization", action="store_const", const="per-channel",
                    help="same as --quantization per-channel")
    ap.add_argument("--size-budget", type=float, default=SIZE_BUDGET,
                    help=f"with auto: model.onnx at most this times the per-tensor file (default {SIZE_BUDGET})")
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
            per_channel=args.quantization == "per-channel", weight_type=args.weight_type,
            keep_fp32=not args.no_fp32, rel_bound=args.rel_bound, max_abs_err=args.max_abs_err,
            choose=args.quantization == "auto", size_budget=args.size_budget,
        )
        size = sum((out / n).stat().st_size for n in list(m["files"]) + ["manifest.json"])
        print(f"wrote {out}: {', '.join(list(m['files']) + ['manifest.json'])} ({size / 1e6:.2f} MB)")
        return 0
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
