"""Constants of the model-folder format, the user-facing error type and small file helpers."""
from __future__ import annotations

import hashlib
import json
import platform
import re
from pathlib import Path

MANIFEST_FORMAT = 1
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
TASKS = ("discriminator", "classify", "tag", "embed")
ARCH_TO_TASK = {
    "ElectraForPreTraining": "discriminator",
    "ElectraForSequenceClassification": "classify",
    "ElectraForTokenClassification": "tag",
    "ElectraModel": "embed",
    # BERT family (also HFL's RBT3 / RoBERTa-wwm-ext and sentence-transformers' MiniLM, which are
    # BertModel checkpoints); BERT has no replaced-token-detection head.
    "BertForSequenceClassification": "classify",
    "BertForTokenClassification": "tag",
    "BertModel": "embed",
}
TASK_TO_ARCH = {v: k for k, v in ARCH_TO_TASK.items() if k.startswith("Electra")}
# transformers model_type -> class name prefix of the families export.py builds
FAMILY_PREFIX = {"electra": "Electra", "bert": "Bert"}


def arch_for(model_type: str | None, task: str) -> str:
    """The transformers class for a task in a model family (ELECTRA when the family is unknown)."""
    prefix = FAMILY_PREFIX.get((model_type or "electra").lower())
    if prefix is None:
        raise ExportError(f"model_type {model_type!r} is not supported (supported: {', '.join(FAMILY_PREFIX)})")
    arch = TASK_TO_ARCH[task].replace("Electra", prefix, 1)
    if arch not in ARCH_TO_TASK:
        raise ExportError(f"task {task!r} needs {arch}, which does not exist: {prefix} has no such head")
    return arch
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
