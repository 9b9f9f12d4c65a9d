"""Checks of the fp32 and int8 ONNX graphs: interface, op census, foreign ops, task inference."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from .common import ARCH_TO_TASK, INPUT_NAMES, ExportError


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
