//! The typed-graph rewrites that install our transformer ops (run on the freshly typed model,
//! next to the int8 fusion, before declutter), one stage per op:
//!
//! * [`attention`]: the exporter's multi-head attention into one
//!   [`Attention`](super::Attention);
//! * [`norm`]: tract-onnx's `LayerNormalization` expansion (and the residual add before it)
//!   into [`AddLayerNorm`](super::AddLayerNorm);
//! * [`gelu`]: torch's erf GELU into [`Gelu`](super::Gelu), or into the
//!   [`QMatMul`](crate::int8::QMatMul) that feeds it.
//!
//! This file holds the options, the report, the stage order and the graph-matching helpers the
//! stages share.

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cast::Cast;
use tract_core::ops::change_axes::AxisOp;
use tract_core::ops::konst::Const;

use std::sync::Arc;

use super::kernels::OpsKernel;

mod attention;
mod gelu;
mod norm;

use attention::fuse_attention;
use gelu::fuse_gelus;
use norm::fuse_layer_norms;

/// Options of [`fuse_transformer_ops`].
#[derive(Clone, Debug)]
pub struct OpsOptions {
    /// `None`: the best kernel for this CPU.
    pub kernel: Option<OpsKernel>,
    /// Threads per op (attention: heads; LayerNorm: rows; GELU: chunks), each op splitting
    /// only when big enough; 1 = calling thread only.
    pub threads: usize,
}

impl Default for OpsOptions {
    fn default() -> Self {
        OpsOptions {
            kernel: None,
            threads: 1,
        }
    }
}

/// What [`fuse_transformer_ops`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpsReport {
    /// Attention blocks replaced by one [`Attention`](super::Attention) op.
    pub attention: usize,
    /// LayerNorms replaced by [`AddLayerNorm`](super::AddLayerNorm) (of which `residual_adds`
    /// took the add before).
    pub layer_norms: usize,
    pub residual_adds: usize,
    /// GELU chains replaced by [`Gelu`](super::Gelu) or folded into the
    /// [`QMatMul`](crate::int8::QMatMul) that feeds them.
    pub gelus: usize,
    pub gelus_in_matmul: usize,
}

/// The environment variable that turns the rewrites off (`off`), or picks some
/// (comma-separated: `attention`, `layernorm`, `gelu`); for comparisons.
pub const OPS_ENV: &str = "ELECTRA_EDGE_OPS";

/// Whether the rewrite `what` (`attention`, `layernorm`, `gelu`) is on ([`OPS_ENV`]).
pub(crate) fn enabled(what: &str) -> bool {
    match std::env::var(OPS_ENV) {
        Ok(v) if !v.trim().is_empty() => v.split(',').any(|p| p.trim().eq_ignore_ascii_case(what)),
        _ => true,
    }
}

/// Rewrites every recognised attention block, LayerNorm (with the residual add before it)
/// and erf GELU of a typed model into our ops ([`Attention`](super::Attention),
/// [`AddLayerNorm`](super::AddLayerNorm), [`Gelu`](super::Gelu) or
/// [`QMatMul::gelu`](crate::int8::QMatMul::gelu)). `ELECTRA_EDGE_OPS` ([`OPS_ENV`]) can turn
/// them off.
pub fn fuse_transformer_ops(model: &mut TypedModel, opts: &OpsOptions) -> TractResult<OpsReport> {
    let mut report = OpsReport::default();
    // (compacting after each stage drops the replaced nodes, so that consumer counts seen by
    // the next stage are the live ones)
    type Stage = fn(&mut TypedModel, &OpsOptions, &mut OpsReport) -> TractResult<()>;
    let stages: [(&str, Stage); 3] = [
        ("attention", fuse_attention),
        ("layernorm", fuse_layer_norms),
        ("gelu", fuse_gelus),
    ];
    for (name, stage) in stages {
        if enabled(name) {
            let before = report.clone();
            stage(model, opts, &mut report)?;
            if report != before {
                model.compact()?;
            }
        }
    }
    Ok(report)
}

/// A constant reached through axis ops and casts (its fact's value, or a `Const` upstream).
fn const_tensor(model: &TypedModel, mut o: OutletId) -> Option<Arc<Tensor>> {
    loop {
        if let Some(k) = model.outlet_fact(o).ok().and_then(|f| f.konst.clone()) {
            return Some(k);
        }
        let n = producer(model, o);
        if n.op_as::<AxisOp>().is_some() || n.op_as::<Cast>().is_some() {
            o = n.inputs[0];
            continue;
        }
        return n.op_as::<Const>().map(|c| c.val().clone());
    }
}

fn f32s(t: &Tensor) -> Option<Vec<f32>> {
    let t = t.cast_to::<f32>().ok()?;
    Some(t.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?.to_vec())
}

/// The single-node producer of an outlet.
fn producer(model: &TypedModel, o: OutletId) -> &TypedNode {
    model.node(o.node)
}

/// The scalar value of a constant reached through axis operations, if it is one.
fn scalar_const(model: &TypedModel, mut o: OutletId) -> Option<f32> {
    loop {
        if let Some(k) = model.outlet_fact(o).ok().and_then(|f| f.konst.clone()) {
            if k.len() != 1 || k.datum_type() != f32::datum_type() {
                return None;
            }
            return k.cast_to_scalar::<f32>().ok();
        }
        let n = producer(model, o);
        if n.op_as::<AxisOp>().is_some() {
            o = n.inputs[0];
            continue;
        }
        let c = n.op_as::<Const>()?;
        let t = c.val();
        if t.len() != 1 || t.datum_type() != f32::datum_type() {
            return None;
        }
        return t.cast_to_scalar::<f32>().ok();
    }
}

fn bin_is<T: tract_core::ops::binary::BinMiniOp>(n: &TypedNode) -> bool {
    n.op_as::<TypedBinOp>().is_some_and(|b| b.0.is::<T>())
}

/// The only consumer of `o`, if exactly one.
fn single_successor(model: &TypedModel, o: OutletId) -> Option<&TypedNode> {
    let succ = &model.outlet_successors(o);
    if succ.len() == 1 {
        Some(model.node(succ[0].node))
    } else {
        None
    }
}
