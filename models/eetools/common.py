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
