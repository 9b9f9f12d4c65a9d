"""onnxruntime quantize_dynamic, with its warnings silenced and its failures turned into ExportError."""
from __future__ import annotations

import logging
from pathlib import Path

from .common import ExportError


def quantize(fp32_path: Path, int8_path: Path, per_channel: bool = False, weight_type: str = "int8",
             nodes_to_exclude: list[str] | None = None) -> None:
    """quantize_dynamic; ``nodes_to_exclude``: node names left in fp32."""
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
            nodes_to_exclude=list(nodes_to_exclude or []),
        )
    except Exception as e:
        raise ExportError(f"onnxruntime quantize_dynamic failed on {fp32_path}: {type(e).__name__}: {e}") from None
    finally:
        root.setLevel(level)
