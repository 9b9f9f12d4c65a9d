//! `Attention` and `QAttention`: the input projection (float, or the `quantize_dynamic` int8
//! chain), then per-head scaled dot-product attention with onnxruntime's `mask_index` forms as
//! an additive mask (see the parent module's docs).

use anyhow::{anyhow, bail, Result};
use tract_onnx::pb::{tensor_proto::DataType, NodeProto};

use super::builder::{int_attr, Builder};
use super::graph::{attr, attr_f, attr_i, input, required, GraphInfo};

/// `Attention(x, W [In, 3H], b [3H], mask_index?)` into `out0`.
pub(super) fn attention(b: &mut Builder, n: &NodeProto, g: &GraphInfo, out0: &str) -> Result<()> {
    for (i, what) in [
        (4, "past"),
        (5, "attention_bias"),
        (6, "past_sequence_length"),
    ] {
        if input(n, i).is_some() {
            bail!("input {what} is not supported");
        }
    }
    let x = required(n, 0, "input")?;
    let w = required(n, 1, "weights")?;
    let hidden = hidden_size(n, g, w)?;
    let y = b.node("MatMul", &[x, w], vec![]);
    let qkv = match input(n, 2) {
        Some(bias) => b.node("Add", &[&y, bias], vec![]),
        None => y,
    };
    attention_core(b, n, g, &qkv, hidden, input(n, 3), out0)
}

/// `QAttention(x_q, W_q, b, x_scale, W_scale, mask?, x_zp?, W_zp?)` into `out0`.
pub(super) fn q_attention(b: &mut Builder, n: &NodeProto, g: &GraphInfo, out0: &str) -> Result<()> {
    if input(n, 8).is_some() {
        bail!("input past is not supported");
    }
    let w = required(n, 1, "weight")?;
    let hidden = hidden_size(n, g, w)?;
    let qkv = b.int_matmul(
        required(n, 0, "input")?,
        w,
        required(n, 3, "input_scale")?,
        required(n, 4, "weight_scale")?,
        input(n, 6),
        input(n, 7),
        Some(required(n, 2, "bias")?),
        None,
    );
    attention_core(b, n, g, &qkv, hidden, input(n, 5), out0)
}

/// The hidden size H of an attention node: `qkv_hidden_sizes` (all equal), or the weights'
/// last dimension / 3.
fn hidden_size(n: &NodeProto, g: &GraphInfo, w: &str) -> Result<i64> {
    if let Some(a) = attr(n, "qkv_hidden_sizes") {
        let s = &a.ints;
        if s.len() != 3 || s[0] != s[1] || s[1] != s[2] {
            bail!("qkv_hidden_sizes {s:?} (unequal sizes) are not supported");
        }
        return Ok(s[0]);
    }
    let d = g
        .dims
        .get(w)
        .ok_or_else(|| anyhow!("its weights {w:?} are not a constant of the graph"))?;
    match d.as_slice() {
        [_, n3] if n3 % 3 == 0 => Ok(n3 / 3),
        _ => bail!("weights of shape {d:?}, expected [input, 3 x hidden]"),
    }
}

/// Multi-head attention from the projected `qkv` `[B, S, 3H]` into `out` `[B, S, H]`.
fn attention_core(
    b: &mut Builder,
    n: &NodeProto,
    g: &GraphInfo,
    qkv: &str,
    hidden: i64,
    mask: Option<&str>,
    out: &str,
) -> Result<()> {
    if n.output.get(1).is_some_and(|o| g.is_used(o)) {
        bail!("output present (past state) is not supported");
    }
    for a in ["unidirectional", "do_rotary"] {
        if attr_i(n, a, 0) != 0 {
            bail!("attribute {a} is not supported");
        }
    }
    let heads = attr_i(n, "num_heads", 0);
    if heads <= 0 || hidden % heads != 0 {
        bail!("num_heads {heads} does not divide the hidden size {hidden}");
    }
    let d = hidden / heads;
    let scale = match attr_f(n, "scale", 0.0) {
        0.0 => 1.0 / (d as f32).sqrt(),
        s => s,
    };
    let filter = attr_f(n, "mask_filter_value", -10000.0);
    let (q, k, v) = (b.fresh("q"), b.fresh("k"), b.fresh("v"));
    let mut split_attrs = vec![int_attr("axis", 2)];
    if b.opset >= 18 {
        split_attrs.push(int_attr("num_outputs", 3));
    }
    b.node_to("Split", &[qkv], &[&q, &k, &v], split_attrs);
    let heads_of = |b: &mut Builder, x: &str, perm: &[i64]| {
        let r = b.reshape(x, &[0, 0, heads, d]);
        b.transpose(&r, perm)
    };
    let q = heads_of(b, &q, &[0, 2, 1, 3]);
    let kt = heads_of(b, &k, &[0, 2, 3, 1]);
    let v = heads_of(b, &v, &[0, 2, 1, 3]);
    // the scale on Q, as plain exports have it (the attention rewrite folds it)
    let c = b.f32s(&[scale], &[]);
    let q = b.node("Mul", &[&q, &c], vec![]);
    let mut s = b.node("MatMul", &[&q, &kt], vec![]);
    if let Some(m) = mask {
        let add = additive_mask(b, g, m, qkv, filter)?;
        s = b.node("Add", &[&s, &add], vec![]);
    }
    let p = b.node("Softmax", &[&s], vec![int_attr("axis", -1)]);
    let y = b.node("MatMul", &[&p, &v], vec![]);
    let y = b.transpose(&y, &[0, 2, 1, 3]);
    let shape = b.i64s(&[0, 0, hidden], &[3]);
    b.node_to("Reshape", &[&y, &shape], &[out], vec![]);
    Ok(())
}

/// onnxruntime's `mask_index` as an additive f32 mask broadcasting to `[B, heads, S, S]`:
/// 0 where attended, `filter` elsewhere.
fn additive_mask(
    b: &mut Builder,
    g: &GraphInfo,
    m: &str,
    qkv: &str,
    filter: f32,
) -> Result<String> {
    let zero = b.f32s(&[0.0], &[]);
    let fill = b.f32s(&[filter], &[]);
    match g.rank(m) {
        Some(1) => {
            // key j of row b attended when j < mask_index[b]
            let shape = b.node("Shape", &[qkv], vec![]);
            let one = b.i64s(&[1], &[]);
            let len = b.node("Gather", &[&shape, &one], vec![int_attr("axis", 0)]);
            let start = b.i64s(&[0], &[]);
            let range = b.node("Range", &[&start, &len, &one], vec![]);
            let ends = b.cast(m, DataType::Int64);
            let ends = b.unsqueeze(&ends, &[1]);
            let keep = b.node("Less", &[&range, &ends], vec![]);
            let add = b.node("Where", &[&keep, &zero, &fill], vec![]);
            Ok(b.unsqueeze(&add, &[1, 2]))
        }
        Some(r @ (2 | 3)) => {
            let m32 = b.cast(m, DataType::Int32);
            let zero_i = b.i32s(&[0], &[]);
            let keep = b.node("Greater", &[&m32, &zero_i], vec![]);
            let add = b.node("Where", &[&keep, &zero, &fill], vec![]);
            Ok(if r == 2 {
                b.unsqueeze(&add, &[1, 2])
            } else {
                b.unsqueeze(&add, &[1])
            })
        }
        Some(r) => bail!("a {r}-D mask_index is not supported"),
        None => bail!("cannot tell the rank of mask_index {m:?} from the graph"),
    }
}
