//! Our own quantized matmul: the kernels of the fast int8 path (issue 4).
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
//! `avx512vnni`, `neon`, `dotprod`, `i8mm`) or an explicit [`Kernel`] argument overrides it. Threads split the columns of a matmul
//! over the persistent [`pool`] (`threads` = 1: the calling thread only; matmuls under ~2M
//! MACs per thread stay on the calling thread), and so are the steps around it in
//! [`quantized_matmul_gelu_f32`]: the activations' min/max (chunks, from 64K elements per
//! thread), their quantize-and-pack (ranges of row blocks, from 16K elements per thread) and
//! a GELU epilogue (each thread on the columns it computed); the results do not depend on
//! the number of threads.
//!
//! In the graph: [`op::QMatMul`] is the fused tract op and [`fuse_quantized_matmuls`] the
//! rewrite that installs it between `into_typed()` and `into_optimized()`; with
//! [`fuse_quantized_matmuls_from`] the packed weights come from a memory-mapped
//! [`sidecar`] file instead of the heap (deployment rule in [`sidecar`]).
//!
//! Tests: `cargo test --release --lib int8` runs every kernel this CPU has, and the VNNI tile
//! with an emulated `vpdpbusd` everywhere; each kernel of this architecture that the CPU lacks
//! is reported as `SKIPPED <kernel>: this CPU lacks <features>` (and is a failure when named in
//! `ELECTRA_EDGE_REQUIRE_KERNELS`). aarch64 under qemu with `-cpu cortex-a72` (scalar + NEON)
//! and `-cpu max` (+ dotprod, i8mm): `.ci/aarch64.sh int8`. qemu's x86 emulation (TCG, up to
//! at least 10.x) has neither AVX-VNNI nor AVX-512, so the real VNNI kernels only run on such
//! a CPU.

pub mod gelu;
mod gemm;
pub mod op;
pub mod pack;
pub mod pool;
mod quantize;
pub mod sidecar;
mod vnni;

#[cfg(target_arch = "aarch64")]
mod arm;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests;

pub use gemm::{qgemm_f32, qgemm_i32, quantized_matmul_f32, quantized_matmul_gelu_f32};
pub use op::{
    fuse_quantized_matmuls, fuse_quantized_matmuls_from, fuse_quantized_matmuls_with,
    packed_weights_of, FuseOptions, FuseReport, QMatMul,
};
pub use pack::{pack_weights, PackedWeights};
pub use quantize::{dynamic_quantize_linear, dynamic_quantize_linear_with, QuantParams};
pub use sidecar::Sidecar;

use std::sync::OnceLock;

/// The environment variable that overrides the kernel choice.
pub const KERNEL_ENV: &str = "ELECTRA_EDGE_KERNEL";

/// One implementation of the quantized kernels (quantize, A packing, integer GEMM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Portable Rust, the reference semantics; available everywhere.
    Scalar,
    /// x86-64 AVX2.
    Avx2,
    /// aarch64 NEON without dotprod (Cortex-A72, Raspberry Pi 4).
    Neon,
    /// aarch64 NEON with `sdot` (Cortex-A76 and later, Raspberry Pi 5).
    Dotprod,
    /// x86-64 AVX-VNNI: VEX-encoded `vpdpbusd` on ymm (Alder Lake and later, Zen 5), for CPUs
    /// with VNNI but without AVX-512.
    AvxVnni,
    /// x86-64 AVX-512 VNNI: `vpdpbusd` on zmm (Ice Lake / Cascade Lake and later, Zen 4).
    Avx512Vnni,
    /// aarch64 `usmmla` (FEAT_I8MM: Cortex-A510/A710/X2 and later, Neoverse V1/N2, Apple M2).
    I8mm,
}

impl Kernel {
    /// Every kernel, available here or not.
    pub const ALL: [Kernel; 7] = [
        Kernel::Scalar,
        Kernel::Avx2,
        Kernel::AvxVnni,
        Kernel::Avx512Vnni,
        Kernel::Neon,
        Kernel::Dotprod,
        Kernel::I8mm,
    ];

    /// Name as accepted by [`Kernel::parse`] and `ELECTRA_EDGE_KERNEL`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Neon => "neon",
            Kernel::Dotprod => "dotprod",
            Kernel::AvxVnni => "avxvnni",
            Kernel::Avx512Vnni => "avx512vnni",
            Kernel::I8mm => "i8mm",
        }
    }

    /// The CPU features the kernel needs, as named by `is_x86_feature_detected!` /
    /// `is_aarch64_feature_detected!` (for messages).
    pub fn features(self) -> &'static str {
        match self {
            Kernel::Scalar => "none",
            Kernel::Avx2 => "x86-64 avx2",
            Kernel::AvxVnni => "x86-64 avx2 + avxvnni",
            Kernel::Avx512Vnni => "x86-64 avx2 + avx512f + avx512bw + avx512vnni",
            Kernel::Neon => "aarch64 neon",
            Kernel::Dotprod => "aarch64 neon + dotprod",
            Kernel::I8mm => "aarch64 neon + dotprod + i8mm",
        }
    }

    /// A kernel name (see [`Kernel::name`], case-insensitive).
    pub fn parse(s: &str) -> Option<Kernel> {
        Kernel::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether this CPU can run the kernel (runtime detection).
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("avxvnni")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Kernel::Dotprod => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[cfg(target_arch = "aarch64")]
            Kernel::I8mm => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
                    && std::arch::is_aarch64_feature_detected!("i8mm")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The fastest kernel this CPU can run.
    pub fn best() -> Kernel {
        [
            Kernel::I8mm,
            Kernel::Dotprod,
            Kernel::Neon,
            Kernel::Avx512Vnni,
            Kernel::AvxVnni,
            Kernel::Avx2,
        ]
        .into_iter()
        .find(|k| k.is_available())
        .unwrap_or(Kernel::Scalar)
    }

    /// The kernel to use by default: `ELECTRA_EDGE_KERNEL` if set (and available here),
    /// otherwise [`Kernel::best`]. Read once per process. An unknown or unavailable name is
    /// reported once on the log and ignored.
    pub fn default_choice() -> Kernel {
        static CHOICE: OnceLock<Kernel> = OnceLock::new();
        *CHOICE.get_or_init(|| match std::env::var(KERNEL_ENV) {
            Ok(v) if !v.trim().is_empty() => match Kernel::parse(&v) {
                Some(k) if k.is_available() => k,
                Some(k) => {
                    log::warn!(
                        "{KERNEL_ENV}={v}: kernel {} not available on this CPU",
                        k.name()
                    );
                    Kernel::best()
                }
                None => {
                    log::warn!(
                        "{KERNEL_ENV}={v}: unknown kernel ({})",
                        Kernel::ALL.map(Kernel::name).join("|")
                    );
                    Kernel::best()
                }
            },
            _ => Kernel::best(),
        })
    }

    /// `Some(k)` if available, else the default choice. Kernels not available on this CPU are
    /// never run (it would be undefined behaviour).
    pub fn resolve(choice: Option<Kernel>) -> Kernel {
        match choice {
            Some(k) if k.is_available() => k,
            _ => Kernel::default_choice(),
        }
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
