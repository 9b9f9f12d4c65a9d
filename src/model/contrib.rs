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

use std::collections::{HashMap, HashSet};

use anyhow::{anyhow, bail, Result};
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, GraphProto, ModelProto,
    NodeProto, TensorProto,
};

const MS: &str = "com.microsoft";

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
        let mut b = Builder {
            prefix,
            nodes: vec![],
            inits: vec![],
            count: 0,
            opset,
        };
        expand(&mut b, &node, &info)
            .map_err(|e| anyhow!("cannot run {MS} {} (node {label:?}): {e:#}", node.op_type))?;
        nodes.extend(b.nodes);
        inits.extend(b.inits);
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

/// What the expansions need to know about the graph around a node.
struct GraphInfo {
    /// Names consumed by some node or listed as graph outputs.
    used: HashSet<String>,
    /// Known ranks (graph inputs, outputs, value infos, initializers).
    ranks: HashMap<String, usize>,
    /// Initializer dims.
    dims: HashMap<String, Vec<i64>>,
    /// The producer of each name.
    producers: HashMap<String, Producer>,
}

/// What [`GraphInfo::rank`] needs of a tensor's producer.
struct Producer {
    op: String,
    domain: String,
    /// Which output of the node the tensor is.
    slot: usize,
    first_input: Option<String>,
    /// A `perm` attribute's length.
    perm: Option<usize>,
    /// For reductions: `keepdims` and how many axes (attribute, or a constant second input).
    keepdims: bool,
    axes: Option<usize>,
}

impl GraphInfo {
    fn new(g: &GraphProto, detached: &[(&str, Vec<i64>)]) -> GraphInfo {
        let mut used: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
        let mut producers = HashMap::new();
        // every initializer's name and dims: those in the graph, then the detached ones
        let initializers: Vec<(&str, &[i64])> = g
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), &t.dims[..]))
            .chain(detached.iter().map(|(n, d)| (*n, &d[..])))
            .collect();
        let init_len: HashMap<&str, usize> = initializers
            .iter()
            .map(|(n, d)| (*n, d.iter().product::<i64>() as usize))
            .collect();
        for n in &g.node {
            used.extend(n.input.iter().filter(|i| !i.is_empty()).cloned());
            let perm = attr(n, "perm").map(|a| a.ints.len());
            let axes = attr(n, "axes").map(|a| a.ints.len()).or_else(|| {
                let second = n.input.get(1)?;
                init_len.get(second.as_str()).copied()
            });
            for (slot, o) in n.output.iter().enumerate() {
                producers.insert(
                    o.clone(),
                    Producer {
                        op: n.op_type.clone(),
                        domain: n.domain.clone(),
                        slot,
                        first_input: n.input.first().cloned(),
                        perm,
                        keepdims: attr_i(n, "keepdims", 1) != 0,
                        axes,
                    },
                );
            }
        }
        let mut ranks = HashMap::new();
        for v in g.input.iter().chain(&g.output).chain(&g.value_info) {
            use tract_onnx::pb::type_proto::Value;
            if let Some(Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                if let Some(s) = &t.shape {
                    ranks.insert(v.name.clone(), s.dim.len());
                }
            }
        }
        let dims: HashMap<String, Vec<i64>> = initializers
            .iter()
            .map(|(n, d)| (n.to_string(), d.to_vec()))
            .collect();
        for (n, d) in &dims {
            ranks.insert(n.clone(), d.len());
        }
        GraphInfo {
            used,
            ranks,
            dims,
            producers,
        }
    }

    fn is_used(&self, name: &str) -> bool {
        !name.is_empty() && self.used.contains(name)
    }

    /// The rank of a tensor when the graph tells it.
    fn rank(&self, name: &str) -> Option<usize> {
        if let Some(&r) = self.ranks.get(name) {
            return Some(r);
        }
        let p = self.producers.get(name)?;
        match (p.op.as_str(), p.domain.as_str()) {
            ("EmbedLayerNormalization" | "QEmbedLayerNormalization", MS) if p.slot == 1 => Some(1),
            ("Cast" | "Identity", "") => self.rank(p.first_input.as_deref()?),
            ("Transpose", "") => p.perm,
            // the optimizer's mask index: ReduceSum(Cast(mask), axes [1], keepdims 0)
            ("ReduceSum", "") => {
                let r = self.rank(p.first_input.as_deref()?)?;
                if p.keepdims {
                    Some(r)
                } else {
                    r.checked_sub(p.axes?)
                }
            }
            _ => None,
        }
    }
}

fn attr<'n>(n: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

fn attr_i(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map_or(default, |a| a.i)
}

fn attr_f(n: &NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).map_or(default, |a| a.f)
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn ints_attr(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

fn float_attr(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

/// The `i`th input's name, `None` when absent or empty.
fn input(n: &NodeProto, i: usize) -> Option<&str> {
    n.input.get(i).map(String::as_str).filter(|s| !s.is_empty())
}

fn required<'n>(n: &'n NodeProto, i: usize, what: &str) -> Result<&'n str> {
    input(n, i).ok_or_else(|| anyhow!("input {i} ({what}) is missing"))
}

/// Emits standard nodes (and small constants) under a name prefix.
struct Builder {
    prefix: String,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    count: usize,
    opset: i64,
}

impl Builder {
    fn fresh(&mut self, what: &str) -> String {
        self.count += 1;
        format!("{}/{what}_{}", self.prefix, self.count)
    }

    /// One node with the given outputs.
    fn node_to(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) {
        let name = self.fresh(op);
        self.nodes.push(NodeProto {
            name,
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        });
    }

    /// One node with one fresh output; returns its name.
    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(&format!("{op}_out"));
        self.node_to(op, inputs, &[&out], attrs);
        out
    }

    fn konst(&mut self, t: TensorProto) -> String {
        let name = self.fresh("const");
        self.inits.push(TensorProto {
            name: name.clone(),
            ..t
        });
        name
    }

    fn f32s(&mut self, v: &[f32], dims: &[i64]) -> String {
        self.konst(TensorProto {
            dims: dims.to_vec(),
            data_type: DataType::Float as i32,
            float_data: v.to_vec(),
            ..Default::default()
        })
    }

    fn i64s(&mut self, v: &[i64], dims: &[i64]) -> String {
        self.konst(TensorProto {
            dims: dims.to_vec(),
            data_type: DataType::Int64 as i32,
            int64_data: v.to_vec(),
            ..Default::default()
        })
    }

    fn i32s(&mut self, v: &[i32], dims: &[i64]) -> String {
        self.konst(TensorProto {
            dims: dims.to_vec(),
            data_type: DataType::Int32 as i32,
            int32_data: v.to_vec(),
            ..Default::default()
        })
    }

    fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> String {
        if self.opset >= 13 {
            let a = self.i64s(axes, &[axes.len() as i64]);
            self.node("Unsqueeze", &[x, &a], vec![])
        } else {
            self.node("Unsqueeze", &[x], vec![ints_attr("axes", axes)])
        }
    }

    fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.i64s(shape, &[shape.len() as i64]);
        self.node("Reshape", &[x, &s], vec![])
    }

    fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.node("Transpose", &[x], vec![ints_attr("perm", perm)])
    }

    fn cast(&mut self, x: &str, to: DataType) -> String {
        self.node("Cast", &[x], vec![int_attr("to", to as i64)])
    }

    /// `Cast(MatMulInteger(a, b, a_zp, b_zp), f32) * (a_scale * b_scale) [+ bias]`: the
    /// `quantize_dynamic` chain our int8 fusion recognises.
    #[allow(clippy::too_many_arguments)]
    fn int_matmul(
        &mut self,
        a: &str,
        b: &str,
        a_scale: &str,
        b_scale: &str,
        a_zp: Option<&str>,
        b_zp: Option<&str>,
        bias: Option<&str>,
        out: Option<&str>,
    ) -> String {
        let mut ins = vec![a, b];
        match (a_zp, b_zp) {
            (None, None) => {}
            (a_zp, b_zp) => {
                ins.push(a_zp.unwrap_or(""));
                ins.extend(b_zp);
            }
        }
        let acc = self.node("MatMulInteger", &ins, vec![]);
        let accf = self.cast(&acc, DataType::Float);
        let scale = self.node("Mul", &[a_scale, b_scale], vec![]);
        let end = |b: &mut Builder, op: &str, ins: &[&str], last: bool| -> String {
            match out.filter(|_| last) {
                Some(o) => {
                    b.node_to(op, ins, &[o], vec![]);
                    o.to_string()
                }
                None => b.node(op, ins, vec![]),
            }
        };
        let y = end(self, "Mul", &[&accf, &scale], bias.is_none());
        match bias {
            Some(bias) => end(self, "Add", &[&y, bias], true),
            None => y,
        }
    }

    /// `x * (erf(x / sqrt 2) + 1) * 0.5` into `out`.
    fn erf_gelu(&mut self, x: &str, out: &str) {
        let c = self.f32s(&[std::f32::consts::SQRT_2], &[]);
        let one = self.f32s(&[1.0], &[]);
        let half = self.f32s(&[0.5], &[]);
        let d = self.node("Div", &[x, &c], vec![]);
        let e = self.node("Erf", &[&d], vec![]);
        let p = self.node("Add", &[&e, &one], vec![]);
        let m = self.node("Mul", &[x, &p], vec![]);
        self.node_to("Mul", &[&m, &half], &[out], vec![]);
    }

    fn layer_norm(&mut self, x: &str, gamma: &str, beta: Option<&str>, eps: f32, out: &str) {
        let mut ins = vec![x, gamma];
        ins.extend(beta);
        self.node_to(
            "LayerNormalization",
            &ins,
            &[out],
            vec![int_attr("axis", -1), float_attr("epsilon", eps)],
        );
    }
}

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
        "SkipLayerNormalization" => {
            for (i, what) in [(1, "mean"), (2, "inv_std_var")] {
                if n.output.get(i).is_some_and(|o| g.is_used(o)) {
                    bail!("its {what} output is not supported");
                }
            }
            let x = required(n, 0, "input")?;
            let skip = required(n, 1, "skip")?;
            let gamma = required(n, 2, "gamma")?;
            let x = match input(n, 4) {
                Some(bias) => b.node("Add", &[x, bias], vec![]),
                None => x.to_string(),
            };
            let sum = match n.output.get(3).filter(|o| g.is_used(o)) {
                Some(o) => {
                    b.node_to("Add", &[&x, skip], &[o], vec![]);
                    o.clone()
                }
                None => b.node("Add", &[&x, skip], vec![]),
            };
            b.layer_norm(&sum, gamma, input(n, 3), attr_f(n, "epsilon", 1e-12), out0);
        }
        "FusedMatMul" => {
            if attr_i(n, "transBatchA", 0) != 0 || attr_i(n, "transBatchB", 0) != 0 {
                bail!("transBatchA/transBatchB are not supported");
            }
            let mut ab = [
                required(n, 0, "A")?.to_string(),
                required(n, 1, "B")?.to_string(),
            ];
            for (i, t) in ["transA", "transB"].iter().enumerate() {
                if attr_i(n, t, 0) != 0 {
                    let r = g
                        .rank(&ab[i])
                        .filter(|&r| r >= 2)
                        .ok_or_else(|| anyhow!("{t}: the rank of {:?} is unknown", ab[i]))?
                        as i64;
                    let mut perm: Vec<i64> = (0..r).collect();
                    perm.swap(r as usize - 2, r as usize - 1);
                    ab[i] = b.transpose(&ab[i], &perm);
                }
            }
            // alpha scales A (as the scale on Q of a plain export: the attention rewrite
            // folds it from there, and finds the scores' mask `Add` right after the MatMul)
            let alpha = attr_f(n, "alpha", 1.0);
            if alpha != 1.0 {
                let a = b.f32s(&[alpha], &[]);
                ab[0] = b.node("Mul", &[&ab[0], &a], vec![]);
            }
            b.node_to("MatMul", &[&ab[0], &ab[1]], &[out0], vec![]);
        }
        "MatMulIntegerToFloat" => {
            b.int_matmul(
                required(n, 0, "A")?,
                required(n, 1, "B")?,
                required(n, 2, "a_scale")?,
                required(n, 3, "b_scale")?,
                input(n, 4),
                input(n, 5),
                input(n, 6),
                Some(out0),
            );
        }
        "DynamicQuantizeMatMul" => {
            let a = required(n, 0, "A")?;
            let (q, s, z) = (b.fresh("q"), b.fresh("scale"), b.fresh("zp"));
            b.node_to("DynamicQuantizeLinear", &[a], &[&q, &s, &z], vec![]);
            b.int_matmul(
                &q,
                required(n, 1, "B")?,
                &s,
                required(n, 2, "b_scale")?,
                Some(&z),
                input(n, 3),
                input(n, 4),
                Some(out0),
            );
        }
        "EmbedLayerNormalization" => embed_layer_norm(b, n, g, out0, false)?,
        "QEmbedLayerNormalization" => embed_layer_norm(b, n, g, out0, true)?,
        "Attention" => {
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
            attention_core(b, n, g, &qkv, hidden, input(n, 3), out0)?;
        }
        "QAttention" => {
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
            attention_core(b, n, g, &qkv, hidden, input(n, 5), out0)?;
        }
        other => bail!("no expansion for {other}"),
    }
    Ok(())
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

/// `EmbedLayerNormalization`, or with `quantized` `QEmbedLayerNormalization`: tables, gamma
/// and beta as u8 with a scale and zero point each (inputs 8..=12 and 13..=17), the rows
/// gathered first and then dequantized.
fn embed_layer_norm(
    b: &mut Builder,
    n: &NodeProto,
    g: &GraphInfo,
    out0: &str,
    quantized: bool,
) -> Result<()> {
    // input i, dequantized when the node is the quantized one (after `gather` for tables)
    let deq = |b: &mut Builder, x: String, i: usize| -> Result<String> {
        if !quantized {
            return Ok(x);
        }
        let scale = required(n, i + 6, "scale")?;
        let mut ins = vec![x.as_str(), scale];
        ins.extend(input(n, i + 11));
        Ok(b.node("DequantizeLinear", &ins, vec![]))
    };
    let ids = required(n, 0, "input_ids")?;
    let word = required(n, 2, "word_embedding")?;
    let pos = required(n, 3, "position_embedding")?;
    let gamma = required(n, 5, "gamma")?.to_string();
    let beta = required(n, 6, "beta")?.to_string();
    let gamma = deq(b, gamma, 5)?;
    let beta = deq(b, beta, 6)?;
    let gather = |b: &mut Builder, table: &str, idx: &str, i: usize| -> Result<String> {
        let rows = b.node("Gather", &[table, idx], vec![int_attr("axis", 0)]);
        deq(b, rows, i)
    };
    let w = gather(b, word, ids, 2)?;
    let p = match input(n, 8).filter(|_| !quantized) {
        Some(pos_ids) => gather(b, pos, pos_ids, 3)?,
        None => {
            // positions 0..S
            let shape = b.node("Shape", &[ids], vec![]);
            let one = b.i64s(&[1], &[]);
            let len = b.node("Gather", &[&shape, &one], vec![int_attr("axis", 0)]);
            let start = b.i64s(&[0], &[]);
            let range = b.node("Range", &[&start, &len, &one], vec![]);
            gather(b, pos, &range, 3)?
        }
    };
    let mut sum = b.node("Add", &[&w, &p], vec![]);
    if let (Some(seg), Some(table)) = (input(n, 1), input(n, 4)) {
        let s = gather(b, table, seg, 4)?;
        sum = b.node("Add", &[&sum, &s], vec![]);
    }
    if let Some(o) = n.output.get(2).filter(|o| g.is_used(o)) {
        b.node_to("Identity", &[&sum], &[o], vec![]);
    }
    b.layer_norm(&sum, &gamma, Some(&beta), attr_f(n, "epsilon", 1e-12), out0);
    if let Some(o) = n.output.get(1).filter(|o| g.is_used(o)) {
        let mask = input(n, 7).ok_or_else(|| {
            anyhow!("its mask_index output is used but it has no mask input (not supported)")
        })?;
        let m = b.cast(mask, DataType::Int32);
        let s = if b.opset >= 13 {
            let axes = b.i64s(&[1], &[1]);
            b.node("ReduceSum", &[&m, &axes], vec![int_attr("keepdims", 0)])
        } else {
            b.node(
                "ReduceSum",
                &[&m],
                vec![ints_attr("axes", &[1]), int_attr("keepdims", 0)],
            )
        };
        b.node_to("Identity", &[&s], &[o], vec![]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_protos::{one_node_model, value_info};
    use tract_onnx::pb::{GraphProto, OperatorSetIdProto, ValueInfoProto};
    use tract_onnx::prelude::*;

    const S: usize = 5;
    const IN: usize = 8;
    const HEADS: usize = 2;
    const HID: usize = 8;

    fn tensor(name: &str, dims: &[usize], dt: DataType, vals: &[f32]) -> TensorProto {
        let mut t = TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: dt as i32,
            ..Default::default()
        };
        match dt {
            DataType::Float => t.float_data = vals.to_vec(),
            _ => t.int32_data = vals.iter().map(|&v| v as i32).collect(),
        }
        t
    }

    /// Deterministic values in about [-1, 1].
    fn vals(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 37 + seed * 11) % 23) as f32 - 11.0) / 11.0)
            .collect()
    }

    /// One contrib node between graph inputs and output `y` `[1, S, HID]`; expanded, then
    /// run by tract (with our transformer ops installed when `ops`).
    fn run(
        node: NodeProto,
        inputs: Vec<(ValueInfoProto, Tensor)>,
        inits: Vec<TensorProto>,
        ops: bool,
    ) -> Result<(Vec<f32>, usize)> {
        let input_infos: Vec<ValueInfoProto> = inputs.iter().map(|(v, _)| v.clone()).collect();
        let mut model = model_of(node, input_infos, inits);
        assert_eq!(expand_contrib_ops(&mut model, &[])?, 1);
        assert!(model
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .all(|n| n.domain.is_empty()));
        let mut typed = tract_onnx::onnx()
            .model_for_proto_model(&model)?
            .into_typed()?;
        let mut fused = 0;
        if ops {
            fused = crate::ops::fuse_transformer_ops(&mut typed, &Default::default())?.attention;
        }
        let plan = typed.into_optimized()?.into_runnable()?;
        let out = plan.run(inputs.into_iter().map(|(_, t)| t.into_tvalue()).collect())?;
        let y = out[0].to_plain_array_view::<f32>()?;
        Ok((y.iter().copied().collect(), fused))
    }

    /// A one-node model with output `y` `[1, S, HID]`, onnxruntime's domain imported.
    fn model_of(
        node: NodeProto,
        inputs: Vec<ValueInfoProto>,
        inits: Vec<TensorProto>,
    ) -> ModelProto {
        let y = value_info("y", DataType::Float, &[1, S, HID]);
        let mut model = one_node_model(node, inputs, inits, y);
        model.opset_import.push(OperatorSetIdProto {
            domain: MS.into(),
            version: 1,
        });
        model
    }

    /// The loader leaves big initializers out of the decoded model and passes their names
    /// and dims (`decode::thin_model`): the expansion is the same as with them in the graph.
    #[test]
    fn detached_weights_expand_like_present_ones() {
        let (x, w, b) = (vals(S * IN, 1), vals(IN * 3 * HID, 2), vals(3 * HID, 3));
        let w = tensor("w", &[IN, 3 * HID], DataType::Float, &w);
        let b = tensor("b", &[3 * HID], DataType::Float, &b);
        let model = |inits: Vec<TensorProto>| {
            let node = attention_node("Attention", &["x", "w", "b"], vec![]);
            model_of(node, vec![x_input(&x).0], inits)
        };
        let mut present = model(vec![w, b.clone()]);
        assert_eq!(expand_contrib_ops(&mut present, &[]).unwrap(), 1);
        let mut detached = model(vec![b.clone()]);
        let known = [("w", vec![IN as i64, 3 * HID as i64])];
        assert_eq!(expand_contrib_ops(&mut detached, &known).unwrap(), 1);
        let (p, d) = (present.graph.unwrap(), detached.graph.unwrap());
        assert_eq!(p.node, d.node);
        assert_eq!(&p.initializer[1..], &d.initializer[..]);
        // without the dims the weights are unknown
        let msg = format!(
            "{:#}",
            expand_contrib_ops(&mut model(vec![b]), &[]).unwrap_err()
        );
        assert!(msg.contains("not a constant of the graph"), "{msg}");
    }

    /// onnxruntime's Attention, by the book: x W + b, per head softmax(Q K^T / sqrt(d) +
    /// (keep ? 0 : -10000)) V.
    fn reference(x: &[f32], w: &[f32], b: &[f32], keep: &[bool]) -> Vec<f32> {
        let d = HID / HEADS;
        let mut qkv = vec![0f32; S * 3 * HID];
        for s in 0..S {
            for j in 0..3 * HID {
                qkv[s * 3 * HID + j] = b[j]
                    + (0..IN)
                        .map(|k| x[s * IN + k] * w[k * 3 * HID + j])
                        .sum::<f32>();
            }
        }
        let at =
            |s: usize, part: usize, h: usize, i: usize| qkv[s * 3 * HID + part * HID + h * d + i];
        let mut y = vec![0f32; S * HID];
        for h in 0..HEADS {
            for sq in 0..S {
                let scores: Vec<f32> = (0..S)
                    .map(|sk| {
                        let dot: f32 = (0..d).map(|i| at(sq, 0, h, i) * at(sk, 1, h, i)).sum();
                        dot / (d as f32).sqrt() + if keep[sk] { 0.0 } else { -10000.0 }
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f32::MIN, f32::max);
                let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f32 = e.iter().sum();
                for i in 0..d {
                    y[sq * HID + h * d + i] =
                        (0..S).map(|sk| e[sk] / sum * at(sk, 2, h, i)).sum::<f32>();
                }
            }
        }
        y
    }

    fn attention_node(op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            name: "attn_0".into(),
            op_type: op.into(),
            domain: MS.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec!["y".into()],
            attribute: [vec![int_attr("num_heads", HEADS as i64)], attrs].concat(),
            ..Default::default()
        }
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn x_input(x: &[f32]) -> (ValueInfoProto, Tensor) {
        (
            value_info("x", DataType::Float, &[1, S, IN]),
            Tensor::from_shape(&[1, S, IN], x).unwrap(),
        )
    }

    #[test]
    fn attention_matches_the_reference_with_every_mask_form() {
        let (x, w, b) = (vals(S * IN, 1), vals(IN * 3 * HID, 2), vals(3 * HID, 3));
        let inits = || {
            vec![
                tensor("w", &[IN, 3 * HID], DataType::Float, &w),
                tensor("b", &[3 * HID], DataType::Float, &b),
            ]
        };
        let all = [true; S];
        let three = [true, true, true, false, false];
        let mask2 = |m: &[bool]| {
            let v: Vec<i32> = m.iter().map(|&k| k as i32).collect();
            (
                value_info("mask", DataType::Int32, &[1, S]),
                Tensor::from_shape(&[1, S], &v).unwrap(),
            )
        };
        let len1 = (
            value_info("mask", DataType::Int32, &[1]),
            Tensor::from_shape(&[1], &[3i32]).unwrap(),
        );
        type Case<'a> = (
            &'a str,
            Vec<&'a str>,
            Vec<(ValueInfoProto, Tensor)>,
            &'a [bool],
        );
        let cases: Vec<Case> = vec![
            ("no mask", vec!["x", "w", "b"], vec![x_input(&x)], &all),
            (
                "2-D ones",
                vec!["x", "w", "b", "mask"],
                vec![x_input(&x), mask2(&all)],
                &all,
            ),
            (
                "2-D 3 of 5",
                vec!["x", "w", "b", "mask"],
                vec![x_input(&x), mask2(&three)],
                &three,
            ),
            (
                "1-D length 3",
                vec!["x", "w", "b", "mask"],
                vec![x_input(&x), len1],
                &three,
            ),
        ];
        for (what, ins, inputs, keep) in cases {
            let want = reference(&x, &w, &b, keep);
            for ops in [false, true] {
                let node = attention_node("Attention", &ins, vec![]);
                let (got, fused) = run(node, inputs.clone(), inits(), ops).unwrap();
                let err = max_diff(&got, &want);
                eprintln!("{what}, our ops {ops}: max |tract - reference| = {err:e}");
                assert!(err < 1e-5, "{what} (ops {ops}): {err}");
                // our attention op takes the expanded subgraph
                assert_eq!(fused, ops as usize, "{what}");
            }
        }
    }

    #[test]
    fn qattention_is_attention_on_dequantized_input_and_weights() {
        // u8 input with zero point 128, i8 weights with zero point 0
        let xq: Vec<u8> = (0..S * IN).map(|i| ((i * 53) % 256) as u8).collect();
        let wq: Vec<i8> = (0..IN * 3 * HID).map(|i| ((i * 29) % 255) as i8).collect();
        let (xs, ws) = (0.01f32, 0.02f32);
        let b = vals(3 * HID, 3);
        let x: Vec<f32> = xq.iter().map(|&q| (q as f32 - 128.0) * xs).collect();
        let w: Vec<f32> = wq.iter().map(|&q| q as f32 * ws).collect();
        let raw = |name: &str, dims: &[usize], dt: DataType, bytes: Vec<u8>| TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: dt as i32,
            raw_data: bytes,
            ..Default::default()
        };
        let inits = vec![
            raw(
                "wq",
                &[IN, 3 * HID],
                DataType::Int8,
                wq.iter().map(|&v| v as u8).collect(),
            ),
            tensor("b", &[3 * HID], DataType::Float, &b),
            tensor("xs", &[], DataType::Float, &[xs]),
            tensor("ws", &[], DataType::Float, &[ws]),
            raw("xzp", &[], DataType::Uint8, vec![128]),
            raw("wzp", &[], DataType::Int8, vec![0]),
        ];
        let input = (
            value_info("xq", DataType::Uint8, &[1, S, IN]),
            Tensor::from_shape(&[1, S, IN], &xq).unwrap(),
        );
        let node = attention_node(
            "QAttention",
            &["xq", "wq", "b", "xs", "ws", "", "xzp", "wzp"],
            vec![],
        );
        let (got, _) = run(node, vec![input], inits, true).unwrap();
        let err = max_diff(&got, &reference(&x, &w, &b, &[true; S]));
        eprintln!("QAttention: max |tract - reference| = {err:e}");
        assert!(err < 1e-4, "{err}");
    }

    /// `FusedMatMul` with `transA`, `transB` and `alpha` (ranks from the graph inputs) against
    /// a plain product; and one error when a transposed operand's rank is unknown.
    #[test]
    fn fused_matmul_transposes_and_scales() {
        let (m, k, n) = (3, 4, 5);
        let (a, b) = (vals(2 * k * m, 4), vals(2 * n * k, 5));
        let alpha = 0.375f32;
        let node = |b_rank_known: bool| NodeProto {
            name: "fmm".into(),
            op_type: "FusedMatMul".into(),
            domain: MS.into(),
            input: vec!["a".into(), if b_rank_known { "b" } else { "b2" }.into()],
            output: vec!["y".into()],
            attribute: vec![
                int_attr("transA", 1),
                int_attr("transB", 1),
                float_attr("alpha", alpha),
            ],
            ..Default::default()
        };
        // a [2, k, m], b [2, n, k]: y [2, m, n] = alpha * a^T b^T
        let mut want = vec![0f32; 2 * m * n];
        for bt in 0..2 {
            for i in 0..m {
                for j in 0..n {
                    want[(bt * m + i) * n + j] = alpha
                        * (0..k)
                            .map(|kk| a[(bt * k + kk) * m + i] * b[(bt * n + j) * k + kk])
                            .sum::<f32>();
                }
            }
        }
        let inputs = vec![
            (
                value_info("a", DataType::Float, &[2, k, m]),
                Tensor::from_shape(&[2, k, m], &a).unwrap(),
            ),
            (
                value_info("b", DataType::Float, &[2, n, k]),
                Tensor::from_shape(&[2, n, k], &b).unwrap(),
            ),
        ];
        let mut model = one_node_model(
            node(true),
            inputs.iter().map(|(v, _)| v.clone()).collect(),
            vec![],
            value_info("y", DataType::Float, &[2, m, n]),
        );
        let mut unknown = model.clone();
        expand_contrib_ops(&mut model, &[]).unwrap();
        let plan = tract_onnx::onnx()
            .model_for_proto_model(&model)
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let out = plan
            .run(inputs.into_iter().map(|(_, t)| t.into_tvalue()).collect())
            .unwrap();
        let got: Vec<f32> = out[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect();
        assert!(max_diff(&got, &want) < 1e-5, "{got:?} vs {want:?}");

        unknown.graph.as_mut().unwrap().node = vec![node(false)];
        let msg = format!("{:#}", expand_contrib_ops(&mut unknown, &[]).unwrap_err());
        assert!(msg.contains("fmm") && msg.contains("transB"), "{msg}");
    }

    /// Two contrib nodes with the same name expand to distinct node and tensor names.
    #[test]
    fn same_named_nodes_expand_to_distinct_names() {
        let gelu = |i: &str, o: &str| NodeProto {
            name: "Gelu".into(),
            op_type: "Gelu".into(),
            domain: MS.into(),
            input: vec![i.into()],
            output: vec![o.into()],
            ..Default::default()
        };
        let mut model = ModelProto {
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(GraphProto {
                node: vec![gelu("x", "h"), gelu("h", "y")],
                output: vec![value_info("y", DataType::Float, &[2])],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(expand_contrib_ops(&mut model, &[]).unwrap(), 2);
        let g = model.graph.unwrap();
        let mut names = HashSet::new();
        for n in &g.node {
            assert!(names.insert(n.name.clone()), "{}", n.name);
            for o in &n.output {
                assert!(names.insert(o.clone()), "{o}");
            }
        }
    }

    #[test]
    fn unsupported_variants_are_one_error_naming_the_node() {
        let w = vals(IN * 3 * HID, 2);
        let inits = vec![tensor("w", &[IN, 3 * HID], DataType::Float, &w)];
        for (attrs, ins, word) in [
            (
                vec![int_attr("unidirectional", 1)],
                vec!["x", "w"],
                "unidirectional",
            ),
            (
                vec![ints_attr("qkv_hidden_sizes", &[8, 8, 4])],
                vec!["x", "w"],
                "qkv_hidden_sizes",
            ),
            (vec![], vec!["x", "w", "", "", "past"], "past"),
        ] {
            let node = attention_node("Attention", &ins, attrs);
            let err = run(node, vec![x_input(&vals(S * IN, 1))], inits.clone(), false)
                .map(|_| ())
                .unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains("attn_0") && msg.contains("Attention"), "{msg}");
            assert!(msg.contains(word) && !msg.contains('\n'), "{msg}");
        }
    }
}
