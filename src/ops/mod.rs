//! Our own transformer ops in tract's graph and the loader's panic guard.
//!
//! * [`attention::Attention`]: `softmax(Q K^T * scale + mask) V` for all heads in one op,
//!   reading Q, K and V as the projections write them (`[B, S, heads * head_dim]`), blocked
//!   by query rows so that no `heads x S x S` tensor exists ([`kernels::attention_f32`]).
//! * [`norm::AddLayerNorm`]: the residual add and the LayerNorm after it in one pass per
//!   row; [`norm::Gelu`]: torch's erf GELU in one pass, or folded into the int8 matmul that
//!   feeds it ([`crate::int8::QMatMul::gelu`]).
//! * [`fuse_transformer_ops`]: the typed-graph rewrite that installs them, run right after
//!   the int8 fusion ([`crate::int8::fuse_quantized_matmuls_from`]), before declutter (the
//!   loader's own `LayerNormalization` parser already types plain LayerNorms as
//!   [`norm::AddLayerNorm`]; the rewrite then gives them their options and residual add).
//! * [`guard`]: tract's parse, typing and optimisation under `catch_unwind`; a panic becomes
//!   one error naming the node and op when known.
//!
//! Kernels ([`kernels::OpsKernel`]): portable scalar (the reference) and SIMD bodies written
//! with intrinsics: aarch64 NEON; x86-64 AVX2 + FMA and, for attention, AVX-512F, chosen at
//! run time. The kernels' driver owns the loops; each instruction set provides bodies.
//!
//! Tests: `cargo test --release --lib ops` (random inputs against an f64 reference, the
//! SIMD LayerNorm and GELU bit for bit against the scalar ones; the fixtures' graphs
//! rewritten against tract's own result to 1e-5), on every kernel this CPU has; each kernel
//! of this architecture that it lacks is reported as `SKIPPED ops kernel <name>: this CPU
//! lacks <features>` (a failure when `ELECTRA_EDGE_REQUIRE_KERNELS` names it: `simd`,
//! `avx512` or `all`).

pub mod attention;
pub mod guard;
pub mod kernels;
pub mod norm;
mod par;
mod rewrite;

#[cfg(test)]
mod graph_tests;
#[cfg(test)]
mod tests;

pub use attention::Attention;
pub use kernels::{attention_f32, AttnDims, MaskView, OpsKernel};
pub use norm::{AddLayerNorm, Gelu};
pub(crate) use rewrite::enabled;
pub use rewrite::{fuse_transformer_ops, OpsOptions, OpsReport, OPS_ENV};
