//! Our parsers for two ONNX ops, registered over tract-onnx's own:
//!
//! * `MatMulInteger`: the same typed graph as tract-onnx's (a rank-broadcast, then one
//!   9-input `EinSum` with i32 accumulation, which the int8 fusion matches), built faster.
//!   tract-onnx derives the `EinSum`'s axes mapping anew for each node through a dozen
//!   `renaming`/`linking` steps that re-sort and re-check the whole mapping each time: 75
//!   `MatMulInteger` nodes in ELECTRA-small spent ~7% of the start there. All of them share
//!   one mapping per combination of input ranks, so it is derived once per combination and
//!   cloned. The derivation is the same sequence of steps on tract's public API, so the mapping
//!   is equal to tract's (tested, along with the whole typed graph).
//! * `LayerNormalization` (only when our transformer ops are installed): over the last axis,
//!   f32, with constant scale and bias and no extra outputs, it is typed as one
//!   [`AddLayerNorm`] node, which the ops stage would make of tract's ~20-node expansion
//!   anyway (`ops::rewrite::fuse_layer_norms`, which then also folds the residual add before
//!   it); every other form is tract-onnx's own expansion.
//!
//! [`matmul_integer`] and [`layer_norm`] hold the two parsers; the tests compare both with
//! tract-onnx's typing.

mod layer_norm;
mod matmul_integer;
#[cfg(test)]
mod tests;

use tract_onnx::model::OnnxOpRegister;

/// Registers our parsers over tract-onnx's for the same op types: `MatMulInteger` always,
/// `LayerNormalization` when `our_ops` (the loader installs our transformer ops, and the
/// LayerNorm rewrite is not turned off by `ELECTRA_EDGE_OPS`).
pub(super) fn register(reg: &mut OnnxOpRegister, our_ops: bool) {
    reg.insert("MatMulInteger", matmul_integer::parse);
    if our_ops && crate::ops::enabled("layernorm") {
        layer_norm::register_over_tracts(reg);
    }
}
