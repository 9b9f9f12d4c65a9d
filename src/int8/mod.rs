//! Our own quantized matmul: the kernels of the fast int8 path.
//!
//! The math is the one onnxruntime's `quantize_dynamic` graphs compute for every MatMul with a
//! constant weight (`DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul -> [Add]`):
//!
//! ```text
//! y[m,n] = (sum_k (a[m,k] - za) * (w[k,n] - zw[n])) as f32 * (sa * sw[n]) + bias[n]
//! ```
//!
//! * `a`: activations quantized per call by [`dynamic_quantize_linear`] (u8, scalar `sa`, `za`),
//!   bit-identical to the ONNX definition (division by the scale, round half to even).
//! * `w`: int8 or uint8 weights `[K, N]` row-major as stored in the ONNX initializer, packed once
//!   by [`pack_weights`] into a [`PackedWeights`] blob (plain bytes with a header: it can be
//!   written to a file and used from a memory map, see [`pack`] for the layout). uint8 weights
//!   are shifted to int8 (`w - 128`, `zw - 128`) exactly.
//! * the integer part is exact (i32, for `K <= 33025`) on every kernel: [`qgemm_i32`].
//! * the f32 epilogue ([`qgemm_f32`]) is `acc as f32 * (sa * sw[n]) + bias[n]` with two
//!   separately rounded operations (no FMA), the same as the unfused Cast/Mul/Add graph.
//!
//! Kernels ([`Kernel`]): portable scalar (the reference), x86-64 AVX2 (`vpmovsxbw` +
//! `vpmaddwd`, 6x8 tile), AVX-VNNI (`vpdpbusd` ymm, 6x16) and AVX-512 VNNI (`vpdpbusd` zmm,
//! 8x32) on the u8 activations as they are, aarch64 NEON baseline for Cortex-A72 (`smull` +
//! `sadalp`, 4x8), aarch64 `sdot` (8x8, when the CPU has dotprod) and aarch64 i8mm (`usmmla`,
//! 8x8 in 2x2 blocks). All share one packed weight layout ([`pack`]). One dispatcher picks the
//! best available at run time; `ELECTRA_EDGE_KERNEL` (`scalar`, `avx2`, `avxvnni`,
//! `avx512vnni`, `neon`, `dotprod`, `i8mm`) or an explicit [`Kernel`] argument overrides it.
//! Threads split the columns of a matmul over the persistent [`pool`] (`threads` = 1: the calling thread only; matmuls under ~2M
//! MACs per thread stay on the calling thread), and so are the steps around it in
//! [`quantized_matmul_gelu_f32`]: the activations' min/max (chunks, from 64K elements per
//! thread), their quantize-and-pack (ranges of row blocks, from 16K elements per thread) and
//! a GELU epilogue (each thread on the columns it computed); the results do not depend on
//! the number of threads.
//!
//! In the graph: [`QMatMul`] is the fused tract op and [`fuse_quantized_matmuls`] the
//! rewrite that installs it between `into_typed()` and `into_optimized()`; with
//! [`fuse_quantized_matmuls_from`] the packed weights come from a memory-mapped
//! [`sidecar`] file instead of the heap (deployment rule in [`sidecar`]).
//!
//! Structure (imports point down only): [`op`] (the tract op and the graph rewrite) uses the
//! driver `gemm` (every loop: A packing, tiles, threads, and the zero-point compensation and
//! epilogue; its kernel table picks each kernel's tile) and `quantize` (the choice of
//! quantizer per kernel); they use the instruction-set files (`x86`, `vnni`, `arm`, `scalar`:
//! micro-tiles and quantize primitives only), which use the leaves: [`pack`] (weights),
//! `layout` (packed-A formats and the tile contract), `quant` (the quantization's definition)
//! and `kernel` ([`Kernel`]).
//!
//! Tests: `cargo test --release --lib int8` runs every kernel this CPU has, and the VNNI tile
//! with an emulated `vpdpbusd` everywhere; each kernel of this architecture that the CPU lacks
//! is reported as `SKIPPED <kernel>: this CPU lacks <features>` (and is a failure when named in
//! `ELECTRA_EDGE_REQUIRE_KERNELS`). aarch64 under qemu with `-cpu cortex-a72` (scalar + NEON)
//! and `-cpu max` (+ dotprod, i8mm): `.ci/aarch64.sh int8`. qemu's x86 emulation (TCG, up to
//! at least 10.x) has neither AVX-VNNI nor AVX-512, so the real VNNI kernels only run on such
//! a CPU.

mod fuse;
pub mod gelu;
mod gemm;
mod kernel;
mod layout;
pub mod op;
pub mod pack;
pub mod pool;
mod quant;
mod quantize;
mod scalar;
pub mod sidecar;
mod vnni;

#[cfg(target_arch = "aarch64")]
mod arm;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests;

pub use fuse::{
    fuse_quantized_matmuls, fuse_quantized_matmuls_from, fuse_quantized_matmuls_with,
    packed_weights_of, FuseOptions, FuseReport,
};
pub use gemm::{qgemm_f32, qgemm_i32, quantized_matmul_f32, quantized_matmul_gelu_f32};
pub use kernel::{Kernel, KERNEL_ENV};
pub use op::QMatMul;
pub use pack::{pack_weights, PackedWeights};
pub use quantize::{dynamic_quantize_linear, dynamic_quantize_linear_with, QuantParams};
pub use sidecar::Sidecar;
