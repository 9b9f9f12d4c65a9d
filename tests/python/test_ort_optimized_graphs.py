"""Graphs with onnxruntime's contrib ops (`com.microsoft`) run, within the parity rule against
onnxruntime on the unoptimized fp32 graph (the fixture's `reference.jsonl`, `ort_fp32`).

Every graph is made here from the fixtures' fp32 or int8 graphs (tiny: tagger, discriminator,
classifier; small: discriminator) into pytest's temporary folder (nothing generated is
committed). Each test asserts which contrib ops its graph really contains, and (from the
load's debug lines) that our attention, LayerNorm and int8 matmul ops took them over:

- `optimize_model(..., model_type="bert", opt_level=0)` (what `optimum-cli onnxruntime
  optimize` runs; `opt_level=0` because onnxruntime's basic rewrites import torch just to print
  its version): `SkipLayerNormalization`, `BiasGelu` (`FastGelu` with
  `enable_gelu_approximation`). It does **not** fuse `Attention` or
  `EmbedLayerNormalization` for these exports, whatever the `FusionOptions` (tried: default,
  `use_raw_attention_mask`, `disable_attention_mask`, `use_multi_head_attention`). Its
  attention fusion stops at two artefacts of these transformers 5 exports (traced in
  `fusion_attention.py`): an identity `Reshape` between the `P x V` MatMul and the heads'
  transpose (its output path match fails), and, with that Reshape removed, the scores path
  (`Softmax` wrapped in `Where(IsNaN)`, the boolean mask added through `Where`), which matches
  none of its patterns. ELECTRA's embedding LayerNorm feeds `embeddings_project` (a MatMul),
  not an attention block, so `EmbedLayerNormalization` is not fused either ("No Attention like
  subgraph in children of LayerNormalization").
- So `Attention` and `EmbedLayerNormalization` are fused here by hand (`hand_fused`, by the
  exporter's node names), the way the optimizer writes them for BERT (packed QKV weights
  `[H, 3H]`, 1-D `mask_index` from `EmbedLayerNormalization`, or the raw 2-D mask cast to
  int32). onnxruntime runs each hand-fused graph too and must agree with `ort_fp32`, so the
  fusion is checked independently of our runtime.
- `quantize_dynamic` of the hand-fused graph writes `QAttention` and
  `QEmbedLayerNormalization`; onnxruntime's own saved
  optimized graph (`ORT_ENABLE_EXTENDED` + `optimized_model_filepath`) of an int8 graph writes
  `DynamicQuantizeMatMul`, `MatMulIntegerToFloat`, `FusedMatMul`, `Gelu`,
  `SkipLayerNormalization`.

Int8 graphs use the parity suite's rule: |ours - ort_fp32| <= 2 x |onnxruntime int8 -
ort_fp32| + 2e-3, onnxruntime int8 being onnxruntime on the same int8 graph; they are also
packed (`electra-edge pack`) and must answer the same with every matmul's weights mapped.

Needs the release binary (`cargo build --release`).
"""
import json
import re
import shutil
import subprocess
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import FIXTURES, REPO, require_fixtures

BINARY = REPO / "target" / "release" / "electra-edge"
TINY = FIXTURES / "electra-tiny-zh"
SMALL = FIXTURES / "electra-small-zh"  # only its discriminator has an fp32 graph
FP32_TOL = 1e-4
EPSILON = 2e-3  # the parity suite's (src/selfcheck.rs)
SENTENCES = 12
# the heads whose raw outputs are logits (the encoder's are not)
HEADS = ["tagger", "discriminator", "classifier"]

ort.set_default_logger_severity(3)  # not its notes on unused initializers


def contrib_ops(model):
    return Counter(n.op_type for n in model.graph.node if n.domain == "com.microsoft")


def references(src):
    lines = (src / "reference.jsonl").read_text().splitlines()[:SENTENCES]
    return [json.loads(line) for line in lines]


def config(src):
    return json.loads((src / "config.json").read_text())


def model_folder(tmp_path, src, model, tag):
    """A model folder: the fixture head's (`src`) config and tokenizer, `model` as
    model.onnx."""
    out = tmp_path / f"{src.name}-{tag}"
    out.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, out / f)
    onnx.save(model, str(out / "model.onnx"))
    return out


def run_ours(folder, refs):
    """Our raw outputs (`electra-edge run`) for the reference sentences."""
    if not BINARY.is_file():
        pytest.fail(f"{BINARY} not found: run `cargo build --release` first", pytrace=False)
    requests = "".join(json.dumps({"id": i, "text": r["text"], "raw": True}) + "\n"
                       for i, r in enumerate(refs))
    run = subprocess.run([str(BINARY), "run", "--model", str(folder)], input=requests,
                         capture_output=True, text=True,
                         env={"RUST_LOG": "error,electra_edge::model=debug"})
    assert "panicked at" not in run.stderr and "RUST_BACKTRACE" not in run.stderr, run.stderr
    assert run.returncode == 0, run.stderr
    answers = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(answers) == len(refs), run.stdout
    for a, r in zip(answers, refs):
        assert a["input_ids"] == r["input_ids"], r["text"]
    # what our rewrites installed (the load's debug lines)
    ops = re.search(r"our ops installed: OpsReport \{ attention: (\d+), layer_norms: (\d+)",
                    run.stderr)
    int8 = re.search(r"(\d+) quantized matmuls fused, (\d+) with mapped weights", run.stderr)
    assert ops and int8, run.stderr
    installed = {"attention": int(ops[1]), "layer_norms": int(ops[2]), "int8": int(int8[1]),
                 "mapped": int(int8[2])}
    return [np.array(a["logits"], dtype=np.float32).ravel() for a in answers], installed


def run_ort(path, refs):
    """onnxruntime on a graph file, all tokens attended, one segment."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = []
    for r in refs:
        ids = np.array([r["input_ids"]], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                "token_type_ids": np.zeros_like(ids)}
        feed = {i.name: feed[i.name] for i in sess.get_inputs()}
        outs.append(sess.run(None, feed)[0].astype(np.float32).ravel())
    return outs


def fp32_of(refs):
    return [np.array(r["ort_fp32"], dtype=np.float32).ravel() for r in refs]


def worst(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def ort_saved_optimized(src, dst):
    """onnxruntime's own optimized graph of `src` (extended level), as it saves it."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(dst))


def drop_dead_nodes(graph):
    """Removes nodes none of whose outputs is used, until none is left."""
    while True:
        used = {o.name for o in graph.output}
        for n in graph.node:
            used.update(n.input)
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


def hand_fused(src, heads, embed, mask_format="raw"):
    """The fp32 fixture graph with each layer's self-attention replaced by one
    `com.microsoft:Attention` (and, with `embed`, the embeddings by
    `EmbedLayerNormalization`, whose 1-D mask index the attentions take; else they take the
    2-D mask cast to int32 (`mask_format="raw"`) or its row sums (`"index"`,
    `ReduceSum(axes [1], keepdims 0)`)), the way onnxruntime's optimizer writes them for BERT
    (`fusion_attention.py`, `process_mask`)."""
    model = onnx.load(str(src))
    g = model.graph
    alias = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity"}
    inits = {t.name: t for t in g.initializer}

    def const(name):
        while name in alias:
            name = alias[name]
        return numpy_helper.to_array(inits[name])

    by_name = {n.name: n for n in g.node}
    new_nodes, new_inits = [], []
    int32 = lambda x, out: helper.make_node("Cast", [x], [out], to=TensorProto.INT32)
    if embed:
        ln = by_name["/electra/embeddings/LayerNorm/LayerNormalization"]
        table = lambda part: by_name[f"/electra/embeddings/{part}/Gather"].input[0]
        new_nodes += [int32("input_ids", "ids32"), int32("token_type_ids", "seg32"),
                      int32("attention_mask", "mask32")]
        emb = helper.make_node(
            "EmbedLayerNormalization",
            ["ids32", "seg32", table("word_embeddings"), table("position_embeddings"),
             table("token_type_embeddings"), ln.input[1], ln.input[2], "mask32"],
            [ln.output[0], "mask_index"], domain="com.microsoft", name="EmbedLayerNorm_0",
            epsilon=next(a.f for a in ln.attribute if a.name == "epsilon"))
        g.node.remove(ln)
        new_nodes.append(emb)
        mask = "mask_index"
    else:
        new_nodes.append(int32("attention_mask", "mask32"))
        mask = "mask32"
        if mask_format == "index":
            new_inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axes_1"))
            new_nodes.append(helper.make_node("ReduceSum", ["mask32", "axes_1"], ["mask_index"],
                                              keepdims=0))
            mask = "mask_index"
    layer = 0
    while f"/electra/encoder/layer.{layer}/attention/self/query/MatMul" in by_name:
        p = f"/electra/encoder/layer.{layer}/attention/self/"
        mms = [by_name[f"{p}{x}/MatMul"] for x in ("query", "key", "value")]
        adds = [by_name[f"{p}{x}/Add"] for x in ("query", "key", "value")]
        w = np.concatenate([const(m.input[1]) for m in mms], axis=1)
        b = np.concatenate([const(next(i for i in a.input if i not in
                                       {m.output[0] for m in mms})) for a in adds])
        new_inits += [numpy_helper.from_array(w, f"qkv_w_{layer}"),
                      numpy_helper.from_array(b, f"qkv_b_{layer}")]
        out = by_name[f"/electra/encoder/layer.{layer}/attention/output/dense/MatMul"].input[0]
        producer = next(n for n in g.node if out in n.output)
        g.node.remove(producer)
        new_nodes.append(helper.make_node(
            "Attention", [mms[0].input[0], f"qkv_w_{layer}", f"qkv_b_{layer}", mask], [out],
            domain="com.microsoft", name=f"Attention_{layer}", num_heads=heads))
        layer += 1
    assert layer > 0
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    drop_dead_nodes(g)
    # keep the node list in topological order (onnx.checker and tract want it)
    order, ready, pending = [], {i.name for i in g.input} | {t.name for t in g.initializer}, list(g.node)
    ready.add("")
    while pending:
        progress = [n for n in pending if all(i in ready for i in n.input)]
        assert progress, "cycle"
        for n in progress:
            order.append(n)
            ready.update(n.output)
            pending.remove(n)
    del g.node[:]
    g.node.extend(order)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def assert_our_ops(installed, src, int8):
    """The contrib ops' expansions ran through our ops, as a plain export does: every
    attention block, every LayerNorm (embeddings + 2 per layer), the int8 matmuls (whose
    packed weights `check_int8` also maps from a sidecar)."""
    layers = config(src)["num_hidden_layers"]
    assert installed["attention"] == layers, installed
    assert installed["layer_norms"] == 1 + 2 * layers, installed
    assert (installed["int8"] > 0) == int8, installed


# the hand fusions run on the tiny fixture's tagger and discriminator and the small one's
# discriminator (12 layers, 4 heads)
HAND_FUSED = [TINY / h for h in HEADS] + [SMALL / "discriminator"]


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("approximate", [False, True], ids=["erf-gelu", "fast-gelu"])
def test_transformer_optimizer_graph(tmp_path, head, approximate):
    """`optimize_model` (BERT fusions): SkipLayerNormalization and BiasGelu, or FastGelu
    with `enable_gelu_approximation` (left to tract's own FastGelu; onnxruntime runs the same
    graph as the reference, since tanh GELU is not the fp32 graph's erf GELU)."""
    require_fixtures()
    optimizer = pytest.importorskip("onnxruntime.transformers.optimizer")
    from onnxruntime.transformers.fusion_options import FusionOptions
    src = TINY / head
    cfg = config(src)
    options = FusionOptions("bert")
    options.enable_gelu_approximation = approximate
    opt = optimizer.optimize_model(str(src / "model.fp32.onnx"), model_type="bert",
                                   num_heads=cfg["num_attention_heads"],
                                   hidden_size=cfg["hidden_size"], opt_level=0,
                                   optimization_options=options)
    ops = contrib_ops(opt.model)
    gelu = "FastGelu" if approximate else "BiasGelu"
    assert ops["SkipLayerNormalization"] > 0 and ops[gelu] > 0, ops
    refs = references(src)
    folder = model_folder(tmp_path, src, opt.model, "optimizer")
    want = run_ort(folder / "model.onnx", refs) if approximate else fp32_of(refs)
    ours, installed = run_ours(folder, refs)
    err = worst(ours, want)
    print(f"{head} optimizer graph {dict(ops)}: max |ours - reference| = {err:.2e}, {installed}")
    assert err <= FP32_TOL
    assert_our_ops(installed, src, int8=False)


@pytest.mark.parametrize("src", HAND_FUSED, ids=lambda p: f"{p.parent.name}/{p.name}")
@pytest.mark.parametrize("embed,mask_format", [(True, None), (False, "raw"), (False, "index")],
                         ids=["embed-layer-norm", "raw-mask", "reduce-sum-mask-index"])
def test_hand_fused_attention_fp32(tmp_path, src, embed, mask_format):
    """Attention (1-D mask index from EmbedLayerNormalization or ReduceSum, or 2-D mask),
    EmbedLayerNormalization."""
    require_fixtures()
    cfg = config(src)
    model = hand_fused(src / "model.fp32.onnx", cfg["num_attention_heads"], embed, mask_format)
    ops = contrib_ops(model)
    assert ops["Attention"] == cfg["num_hidden_layers"], ops
    assert ops["EmbedLayerNormalization"] == int(embed), ops
    folder = model_folder(tmp_path, src, model, "attention")
    refs = references(src)
    fp32 = fp32_of(refs)
    ort_err = worst(run_ort(folder / "model.onnx", refs), fp32)
    assert ort_err <= FP32_TOL, f"the hand fusion is wrong: onnxruntime differs by {ort_err}"
    ours, installed = run_ours(folder, refs)
    err = worst(ours, fp32)
    print(f"{src} {dict(ops)}: max |ours - ort_fp32| = {err:.2e} "
          f"(onnxruntime on the same graph: {ort_err:.2e}), {installed}")
    assert err <= FP32_TOL
    assert_our_ops(installed, src, int8=False)


def check_int8(folder, src, refs, what):
    fp32 = fp32_of(refs)
    theirs = run_ort(folder / "model.onnx", refs)
    ours, installed = run_ours(folder, refs)
    # the packed-weights sidecar of the expanded graph: every fused matmul mapped, same answers
    pack = subprocess.run([str(BINARY), "pack", "--model", str(folder)], capture_output=True,
                          text=True, env={"RUST_LOG": "error"})
    assert pack.returncode == 0, pack.stderr
    mapped, with_sidecar = run_ours(folder, refs)
    assert with_sidecar["mapped"] == with_sidecar["int8"] == installed["int8"], with_sidecar
    assert all(np.array_equal(a, b) for a, b in zip(ours, mapped))
    worst_ratio = 0.0
    for o, t, f, r in zip(ours, theirs, fp32, refs):
        ort_err = float(np.max(np.abs(t - f)))
        err = float(np.max(np.abs(o - f)))
        assert err <= 2 * ort_err + EPSILON, (what, r["text"], err, ort_err)
        worst_ratio = max(worst_ratio, err / (2 * ort_err + EPSILON))
    print(f"{what}: max |ours - ort_fp32| = {worst(ours, fp32):.2e}, onnxruntime int8 "
          f"{worst(theirs, fp32):.2e}, worst share of the bound {worst_ratio:.2f}, {installed}")
    assert_our_ops(installed, src, int8=True)


@pytest.mark.parametrize("head", HEADS)
def test_onnxruntime_saved_int8_graph(tmp_path, head):
    """onnxruntime's saved optimized graph of the fixture's int8 model: DynamicQuantizeMatMul,
    MatMulIntegerToFloat, FusedMatMul, Gelu, SkipLayerNormalization."""
    require_fixtures()
    src = TINY / head
    model = ort_saved_optimized(src / "model.onnx", tmp_path / "saved.onnx")
    ops = contrib_ops(model)
    for op in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat", "FusedMatMul"):
        assert ops[op] > 0, ops
    folder = model_folder(tmp_path, src, model, "ort-int8")
    check_int8(folder, src, references(src), f"{head} onnxruntime-saved int8 {dict(ops)}")


def test_onnxruntime_saved_fp32_graph(tmp_path):
    """onnxruntime's saved optimized fp32 graph: FusedMatMul (the attention scale), BiasGelu."""
    require_fixtures()
    src = TINY / "tagger"
    model = ort_saved_optimized(src / "model.fp32.onnx", tmp_path / "saved.onnx")
    ops = contrib_ops(model)
    assert ops["FusedMatMul"] > 0 and ops["BiasGelu"] > 0, ops
    refs = references(src)
    ours, installed = run_ours(model_folder(tmp_path, src, model, "ort-fp32"), refs)
    err = worst(ours, fp32_of(refs))
    print(f"tagger onnxruntime-saved fp32 {dict(ops)}: max |ours - ort_fp32| = {err:.2e}, "
          f"{installed}")
    assert err <= FP32_TOL
    assert_our_ops(installed, src, int8=False)


@pytest.mark.parametrize("src", HAND_FUSED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_quantized_hand_fused_attention(tmp_path, src):
    """quantize_dynamic of the hand-fused graph: QAttention, QEmbedLayerNormalization; then
    onnxruntime's saved optimized version of it (QAttention next to DynamicQuantizeMatMul)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    require_fixtures()
    cfg = config(src)
    layers = cfg["num_hidden_layers"]
    fused = tmp_path / "fused.onnx"
    onnx.save(hand_fused(src / "model.fp32.onnx", cfg["num_attention_heads"], True), str(fused))
    quantized = tmp_path / "quantized.onnx"
    # (shape inference cannot type the contrib ops' outputs: they are float)
    quantize_dynamic(str(fused), str(quantized), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})
    refs = references(src)
    plain = onnx.load(str(quantized))
    ops = contrib_ops(plain)
    assert ops["QAttention"] == layers and ops["QEmbedLayerNormalization"] == 1, ops
    check_int8(model_folder(tmp_path, src, plain, "qattention"), src, refs,
               f"{src} quantize_dynamic {dict(ops)}")
    saved = ort_saved_optimized(quantized, tmp_path / "saved.onnx")
    ops = contrib_ops(saved)
    assert ops["QAttention"] == layers, ops
    assert ops["DynamicQuantizeMatMul"] + ops["MatMulIntegerToFloat"] > 0, ops
    check_int8(model_folder(tmp_path, src, saved, "qattention-saved"), src, refs,
               f"{src} quantize_dynamic + onnxruntime-saved {dict(ops)}")
