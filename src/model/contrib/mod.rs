//! onnxruntime's contrib ops (`com.microsoft` domain, written by its transformer optimizer,
//! its own saved optimized graphs and `quantize_dynamic`) replaced by standard ONNX nodes of
//! the same meaning, on the decoded protobuf, before tract parses it.
//!
//! Each op becomes the subgraph a plain export has, so that the typed rewrites recognise it
//! as they do there: our attention ([`crate::ops`]), residual + LayerNorm, erf GELU, and the
//! fused int8 matmul ([`crate::int8`]).
//!
//! - `Attention(x, W [In, 3H], b [3H], mask_index?)`: `MatMul` + `Add`, `Split` into Q, K, V,
//!   per head `Reshape` + `Transpose`, `Q x scale`, `MatMul(Q, K^T)` + additive mask,
//!   `Softmax`, `x V`, `Transpose` + `Reshape` back to `[B, S, H]`;
//! - `QAttention(x_q, W_q, b, x_scale, W_scale, mask?, x_zp?, W_zp?)`: the same, with the
//!   input projection as the `quantize_dynamic` chain `MatMulInteger` + `Cast` +
//!   `Mul(x_scale x W_scale)` + `Add(b)`;
//! - `EmbedLayerNormalization(ids, seg?, word, pos, seg_emb?, gamma, beta, mask?, pos_ids?)`:
//!   `Gather`s + `Add`s + `LayerNormalization` (positions `0..S` without `pos_ids`); its
//!   `mask_index` output is `ReduceSum(mask, axis 1)`;
//!   `QEmbedLayerNormalization` (u8 tables, gamma and beta with scales and zero points): the
//!   same, each gathered row (and gamma, beta) through `DequantizeLinear`;
//! - `SkipLayerNormalization(x, skip, gamma, beta?, bias?)`: `Add(Add(x, bias), skip)` +
//!   `LayerNormalization` (its sum output kept when used);
//! - `BiasGelu(x, b)`, `Gelu(x)`: `Add` + the erf GELU chain `x * (erf(x / sqrt 2) + 1) * 0.5`;
//! - `FusedMatMul(A, B)`: `Mul(A, alpha)` + `Transpose` for `transA`/`transB` + `MatMul`;
//! - `MatMulIntegerToFloat(A, B, a_s, b_s, a_zp?, b_zp?, bias?)`: `MatMulInteger` + `Cast` +
//!   `Mul(a_s x b_s)` + `Add(bias)`; `DynamicQuantizeMatMul(A, B, b_s, b_zp?, bias?)`:
//!   `DynamicQuantizeLinear(A)` + the same.
//!
//! Scales go on an operand before its `MatMul` (as plain exports have them): the attention
//! rewrite expects the mask's `Add` right after the scores' `MatMul` and folds scalars on Q.
//!
//! Attention masks follow onnxruntime's CPU kernel: `mask_index` 1-D `[B]` is each row's
//! number of attended (leading) keys, 2-D `[B, S]` and 3-D `[B, S, S]` are 0/1 masks; a key
//! not attended gets `mask_filter_value` (default -10000) added to its score. Which of these
//! a `mask_index` is, is read from the graph (value infos, inputs, or its producers:
//! `EmbedLayerNormalization`'s mask index is 1-D, so is the optimizer's `ReduceSum` of the
//! mask over axis 1, through `Cast`s); the 1-D `[2B]` form (ends and starts)
//! cannot be told from `[B]` here and is not supported.
//!
//! Not supported (one error naming the op and node): `past`/`present` state, `unidirectional`,
//! rotary embeddings, `attention_bias`, unequal `qkv_hidden_sizes`, 4-D masks, the mean and
//! inverse-std-dev outputs of `SkipLayerNormalization`, `transBatchA`/`transBatchB`. Other
//! `com.microsoft` ops are left to tract (it runs `FastGelu`; an op it does not know is one
//! error line naming it).

//!
//! The expansions by family: [`attention`], [`layer_norm`] (skip and embedding LayerNorms),
//! [`matmul`]; the GELUs are two lines here. [`builder`] emits the nodes, [`graph`] answers
//! what an expansion needs to know about the graph around its node.

mod attention;
mod builder;
mod graph;
mod layer_norm;
mod matmul;
#[cfg(test)]
mod tests;

use std::collections::HashSet;

use anyhow::{anyhow, bail, Result};
use tract_onnx::pb::{ModelProto, NodeProto};

use builder::Builder;
use graph::{required, GraphInfo, MS};

/// Replaces the `com.microsoft` ops listed in the module docs by standard ONNX nodes, in
/// place. `detached` names the initializers left out of `model` (the loader's thin decode)
/// with their dims: only names and dims are read. Returns how many nodes were replaced.
pub(crate) fn expand_contrib_ops(
    model: &mut ModelProto,
    detached: &[(&str, Vec<i64>)],
) -> Result<usize> {
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(13, |o| o.version);
    let Some(graph) = model.graph.as_mut() else {
        return Ok(0);
    };
    if !graph.node.iter().any(|n| n.domain == MS) {
        return Ok(0);
    }
    let info = GraphInfo::new(graph, detached);
    let mut nodes = Vec::with_capacity(graph.node.len());
    let mut inits = vec![];
    let mut replaced = 0;
    let mut prefixes = HashSet::new();
    for (ix, node) in std::mem::take(&mut graph.node).into_iter().enumerate() {
        if node.domain != MS || !SUPPORTED.contains(&node.op_type.as_str()) {
            nodes.push(node);
            continue;
        }
        let label = if node.name.is_empty() {
            format!("{}_{ix}", node.op_type)
        } else {
            node.name.clone()
        };
        // new names are `<prefix>/<op>_<n>`; node names need not be unique in ONNX
        let mut prefix = format!("{label}/contrib");
        if !prefixes.insert(prefix.clone()) {
            prefix = format!("{label}/contrib{ix}");
            prefixes.insert(prefix.clone());
        }
        let mut b = Builder::new(prefix, opset);
        expand(&mut b, &node, &info)
            .map_err(|e| anyhow!("cannot run {MS} {} (node {label:?}): {e:#}", node.op_type))?;
        let (new_nodes, new_inits) = b.finish();
        nodes.extend(new_nodes);
        inits.extend(new_inits);
        replaced += 1;
    }
    graph.node = nodes;
    graph.initializer.extend(inits);
    Ok(replaced)
}

const SUPPORTED: &[&str] = &[
    "Attention",
    "QAttention",
    "EmbedLayerNormalization",
    "QEmbedLayerNormalization",
    "SkipLayerNormalization",
    "BiasGelu",
    "Gelu",
    "FusedMatMul",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
];

/// The standard nodes of one supported contrib node, emitted into `b`.
fn expand(b: &mut Builder, n: &NodeProto, g: &GraphInfo) -> Result<()> {
    let out0 = n
        .output
        .first()
        .filter(|o| !o.is_empty())
        .ok_or_else(|| anyhow!("no output"))?
        .as_str();
    match n.op_type.as_str() {
        "Gelu" => b.erf_gelu(required(n, 0, "X")?, out0),
        "BiasGelu" => {
            let x = b.node("Add", &[required(n, 0, "A")?, required(n, 1, "B")?], vec![]);
            b.erf_gelu(&x, out0);
        }
        "SkipLayerNormalization" => layer_norm::skip_layer_norm(b, n, g, out0)?,
        "EmbedLayerNormalization" => layer_norm::embed_layer_norm(b, n, g, out0, false)?,
        "QEmbedLayerNormalization" => layer_norm::embed_layer_norm(b, n, g, out0, true)?,
        "FusedMatMul" => matmul::fused_matmul(b, n, g, out0)?,
        "MatMulIntegerToFloat" => matmul::matmul_integer_to_float(b, n, out0)?,
        "DynamicQuantizeMatMul" => matmul::dynamic_quantize_matmul(b, n, out0)?,
        "Attention" => attention::attention(b, n, g, out0)?,
        "QAttention" => attention::q_attention(b, n, g, out0)?,
        other => bail!("no expansion for {other}"),
    }
    Ok(())
}
