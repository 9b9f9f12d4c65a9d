#!/usr/bin/env python3
"""Export an ELECTRA or BERT model to an electra-edge model folder (int8 ONNX + tokenizer + manifest).

    python models/export.py hfl/chinese-electra-small-discriminator OUT --task discriminator
    python models/export.py ./my-finetuned-ner OUT --task tag --per-channel
    python models/export.py --random-init --tiny --task classify OUT          # no hub needed
    python models/export.py --from-onnx model.fp32.onnx OUT                   # quantize only

Stages: load with transformers -> fp32 ONNX (opset 17, TorchScript exporter, constant folding,
dynamic batch/sequence axes, no onnxruntime fusions) -> models/quantize.py (quantize_dynamic,
graph check, int8-vs-fp32 verification, manifest).  torch and transformers are imported only
for the first stage; --from-onnx needs just onnx, onnxruntime and numpy.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import quantize as q  # noqa: E402  (onnx/onnxruntime/numpy only)
from make_vocab import build_vocab, write_vocab  # noqa: E402

OPSET = 17
DEFAULT_LABELS = {
    "classify": ["negative", "neutral", "positive"],
    "tag": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"],
}
# hfl/chinese-electra-small-discriminator
SMALL_SHAPE = dict(num_hidden_layers=12, hidden_size=256, num_attention_heads=4, intermediate_size=1024,
                   embedding_size=128, max_position_embeddings=512)
TINY_SHAPE = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128,
                  embedding_size=32, max_position_embeddings=512)
TASK_CLASS = q.TASK_TO_ARCH  # task -> transformers class name


def log(msg: str) -> None:
    print(msg, flush=True)


def quiet_transformers():
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "20")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")


def hub_reachable(timeout: float = 5.0) -> bool:
    """A quick TCP probe of the hub endpoint, so an unreachable hub fails in seconds, not after retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def import_torch():
    try:
        import torch
        import transformers
    except ImportError as e:
        raise q.ExportError(
            f"{e.name} is not installed: the fp32 export needs `pip install -r models/requirements.txt`"
            " (quantize-only runs use --from-onnx)"
        ) from None
    return torch, transformers


def load_model(args, task: str | None):
    """Returns (model, task, tokenizer, source dict)."""
    hub_down = False
    if not args.random_init and not Path(args.model).is_dir() and os.environ.get("HF_HUB_OFFLINE") != "1":
        if not hub_reachable():
            # Only the local cache can help now; must be set before huggingface_hub is imported.
            hub_down = True
            os.environ["HF_HUB_OFFLINE"] = "1"
    torch, transformers = import_torch()
    if args.random_init:
        task = task or "discriminator"
        shape = dict(TINY_SHAPE if args.tiny else SMALL_SHAPE)
        with tempfile.TemporaryDirectory(prefix="ee-vocab-") as tmp:
            if args.vocab:
                vocab_file = Path(args.vocab)
                if not vocab_file.is_file():
                    raise q.ExportError(f"--vocab {vocab_file}: no such file")
                vocab_name = vocab_file.name
            else:
                vocab_file = write_vocab(Path(tmp) / "vocab.txt", build_vocab())
                vocab_name = "electra-edge generated vocab (models/make_vocab.py)"
            tokenizer = transformers.BertTokenizer(
                vocab=str(vocab_file), do_lower_case=True, tokenize_chinese_chars=True, strip_accents=None,
                model_max_length=512,
            )
        vocab_size = len(tokenizer.get_vocab())
        labels = (args.labels.split(",") if args.labels else DEFAULT_LABELS.get(task))
        cfg_kwargs = dict(shape, vocab_size=vocab_size, pad_token_id=tokenizer.pad_token_id)
        if labels:
            cfg_kwargs["id2label"] = {i: l for i, l in enumerate(labels)}
            cfg_kwargs["label2id"] = {l: i for i, l in enumerate(labels)}
        config = transformers.ElectraConfig(**cfg_kwargs)
        config.architectures = [TASK_CLASS[task]]
        torch.manual_seed(args.seed)
        model = getattr(transformers, TASK_CLASS[task])(config)
        shape_name = "tiny" if args.tiny else "small"
        log("=" * 78)
        log(f"RANDOM WEIGHTS: {TASK_CLASS[task]} ({shape_name} shape, seed {args.seed}), vocab {vocab_size}"
            f" from {vocab_name}. This is NOT a trained model; its outputs are meaningless.")
        log("=" * 78)
        source = {
            "model": f"random-init:electra-{shape_name}-zh:{task}",
            "revision": f"seed={args.seed}",
            "random_weights": True,
        }
        return model, task, tokenizer, source

    src = args.model
    local = Path(src).is_dir()
    kw = {} if local else {"revision": args.revision}
    try:
        config = transformers.AutoConfig.from_pretrained(src, **kw)
        if task is None:
            task = next((q.ARCH_TO_TASK[a] for a in (config.architectures or []) if a in q.ARCH_TO_TASK),
                        "discriminator")
        arch = q.arch_for(getattr(config, "model_type", None), task)
        cls = getattr(transformers, arch)
        model, info = cls.from_pretrained(src, output_loading_info=True, **kw)
        tokenizer = transformers.AutoTokenizer.from_pretrained(src, **kw)
    except q.ExportError:
        raise
    except Exception as e:  # OSError, huggingface_hub errors, requests/httpx errors ...
        if local:
            raise q.ExportError(f"cannot load the model in {src}: {type(e).__name__}: {e}") from None
        why = ("the hub is unreachable from this machine (and the model is not in the local cache)" if hub_down
               else f"{type(e).__name__}: the hub is unreachable or offline, or the id/revision does not exist")
        raise q.ExportError(
            f"cannot load '{src}' from the Hugging Face hub: {why}. Download the model on a machine with internet"
            " and pass its local directory, or use --random-init (with --vocab FILE or the generated vocab)."
        ) from None
    model.config.architectures = [arch]
    revision = None if local else (getattr(config, "_commit_hash", None) or args.revision)
    name = Path(src).name if local else src
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        # e.g. --task classify on a discriminator checkpoint: the new head is random.
        log("=" * 78)
        log(f"WARNING: {len(missing)} weights are not in the checkpoint and were initialized RANDOMLY"
            f" ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}). Fine-tune before use;"
            " the manifest records random_weights = true.")
        log("=" * 78)
    source = {"model": name, "revision": revision, "random_weights": bool(missing)}
    return model, task, tokenizer, source




def export_fp32(model, task: str, path: Path, tokenizer) -> None:
    torch, _ = import_torch()
    output = "last_hidden_state" if task == "embed" else "logits"

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state if task == "embed" else out.logits

    model.eval()
    enc = tokenizer(["我爱北京天安门。", "今天天气很好"], padding=True, return_tensors="pt")
    args = (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    dyn = {name: {0: "batch", 1: "sequence"} for name in q.INPUT_NAMES}
    dyn[output] = {0: "batch"} if task == "classify" else {0: "batch", 1: "sequence"}
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrapper(model).eval(), args, str(path),
            input_names=list(q.INPUT_NAMES), output_names=[output], dynamic_axes=dyn,
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )


def torch_check(model, task: str, fp32_path: Path, tokenizer) -> float:
    """max |torch - onnxruntime fp32| on the verification sentences (export sanity check)."""
    import numpy as np

    torch, _ = import_torch()
    sess = q.make_session(fp32_path)
    model.eval()
    worst = 0.0
    with torch.no_grad():
        for text in q.VERIFY_SENTENCES:
            ids = tokenizer(text)["input_ids"]
            x = torch.tensor([ids])
            out = model(input_ids=x, attention_mask=torch.ones_like(x), token_type_ids=torch.zeros_like(x))
            t = (out.last_hidden_state if task == "embed" else out.logits).numpy()
            worst = max(worst, float(np.max(np.abs(t - q.run(sess, ids)))))
    return worst


def save_tokenizer(tokenizer, out: Path, max_len: int) -> tuple[Path, Path]:
    """tokenizer.json + tokenizer_config.json, truncating at the model's max positions (as the fixtures)."""
    tokenizer.save_pretrained(str(out))
    tj, tc = out / "tokenizer.json", out / "tokenizer_config.json"
    if not tj.is_file():
        raise q.ExportError("the tokenizer has no fast (tokenizers) form; cannot write tokenizer.json")
    spec = json.loads(tj.read_text(encoding="utf-8"))
    trunc = spec.get("truncation")
    if not trunc or trunc.get("max_length", max_len) > max_len:
        spec["truncation"] = {"direction": "Right", "max_length": max_len, "strategy": "LongestFirst", "stride": 0}
        q.write_json(tj, spec, compact=True)
    if tc.is_file():
        cfg = json.loads(tc.read_text(encoding="utf-8"))
        if int(cfg.get("model_max_length", max_len)) > max_len:
            cfg["model_max_length"] = max_len
        cfg.pop("name_or_path", None)
        q.write_json(tc, cfg)
    return tj, tc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        usage="%(prog)s [options] MODEL_ID_OR_DIR OUT_DIR\n"
              "       %(prog)s --random-init [--tiny] [--vocab FILE] [options] OUT_DIR\n"
              "       %(prog)s --from-onnx FP32_ONNX [options] OUT_DIR",
        description="Export an ELECTRA or BERT-family model (hub id or local dir) to an electra-edge int8 model folder.",
        epilog="The hub is needed only for a hub id; --random-init and --from-onnx work offline.",
    )
    ap.add_argument("paths", nargs="+", metavar="PATH",
                    help="hub id or local directory, then the output folder (only OUT_DIR with --random-init/--from-onnx)")
    ap.add_argument("--task", choices=q.TASKS, help="default: from the config's architectures (discriminator if unknown)")
    ap.add_argument("--revision", default="main", help="hub revision (default main)")
    ap.add_argument("--random-init", action="store_true", help="build the architecture with seeded RANDOM weights (no hub)")
    ap.add_argument("--tiny", action="store_true", help="with --random-init: 2 layers, hidden 64, 2 heads, FFN 128, embedding 32")
    ap.add_argument("--vocab", help="with --random-init: WordPiece vocab.txt (default: the project's generated vocab)")
    ap.add_argument("--labels", help="with --random-init: comma-separated labels for classify/tag")
    ap.add_argument("--seed", type=int, default=0, help="torch.manual_seed for --random-init (default 0)")
    ap.add_argument("--from-onnx", metavar="FP32_ONNX", help="skip torch: quantize and verify this fp32 export (config/tokenizer from its folder)")
    q.add_quant_args(ap)
    args = ap.parse_args(argv)

    if args.from_onnx:
        if len(args.paths) != 1:
            ap.error("with --from-onnx give only OUT_DIR")
        rest = [args.from_onnx, args.paths[0]]
        if args.task:
            rest += ["--task", args.task]
        rest += ["--weight-type", args.weight_type, "--rel-bound", str(args.rel_bound)]
        rest += ["--quantization", args.quantization or "auto", "--size-budget", str(args.size_budget)]
        if args.max_abs_err is not None:
            rest += ["--max-abs-err", str(args.max_abs_err)]
        if args.no_fp32:
            rest.append("--no-fp32")
        return q.main(rest)

    if args.random_init:
        if len(args.paths) == 2:
            ap.error("--random-init takes only OUT_DIR (no model id)")
        args.model, out = None, Path(args.paths[0])
    else:
        if len(args.paths) != 2:
            ap.error("expected MODEL_ID_OR_DIR OUT_DIR (or --random-init OUT_DIR)")
        if args.tiny or args.vocab or args.labels:
            ap.error("--tiny, --vocab and --labels only apply with --random-init")
        args.model, out = args.paths[0], Path(args.paths[1])

    quiet_transformers()
    try:
        model, task, tokenizer, source = load_model(args, args.task)
        torch, transformers = import_torch()
        tools = q.tool_versions(torch=torch.__version__.split("+")[0], transformers=transformers.__version__)
        with tempfile.TemporaryDirectory(prefix="ee-export-") as tmp:
            tmp = Path(tmp)
            fp32 = tmp / "model.fp32.onnx"
            log(f"exporting fp32 ONNX (opset {OPSET}, TorchScript exporter) for task {task}")
            export_fp32(model, task, fp32, tokenizer)
            err = torch_check(model, task, fp32, tokenizer)
            log(f"fp32 export check: max |torch - onnxruntime fp32| = {err:.2e}")
            if err > 1e-3:
                raise q.ExportError(f"the fp32 ONNX export differs from torch by {err:.3g}; refusing to continue")
            model.config.save_pretrained(str(tmp))
            config = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
            config.pop("_name_or_path", None)
            tj, tc = save_tokenizer(tokenizer, tmp / "tok", int(config.get("max_position_embeddings", 512)))

            # The runtime re-implements this tokenizer; make sure our reference agrees with HF.
            ref = q.WordPieceTokenizer(tj)
            for text in q.VERIFY_SENTENCES:
                if ref.encode(text) != tokenizer(text)["input_ids"]:
                    log(f"WARNING: reference WordPiece tokenizer disagrees with transformers on {text!r}")

            manifest = q.build_folder(
                fp32, out, task=task, config=config, tokenizer_json=tj, tokenizer_config=tc, source=source,
                per_channel=args.quantization == "per-channel", weight_type=args.weight_type,
                choose=(args.quantization or "auto") == "auto", size_budget=args.size_budget, keep_fp32=not args.no_fp32,
                tools=tools, tokenize=lambda t: tokenizer(t)["input_ids"], rel_bound=args.rel_bound,
                max_abs_err=args.max_abs_err, log=log,
            )
        files = list(manifest["files"]) + ["manifest.json"]
        size = sum((out / n).stat().st_size for n in files)
        log(f"wrote {out}: {', '.join(files)} ({size / 1e6:.2f} MB)")
        if source["random_weights"]:
            log("NOTE: RANDOM weights (manifest source.random_weights = true): a test/demo model, not a trained one.")
        return 0
    except q.ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
