//! Exact tests of every kernel available on the running CPU against naive references, plus
//! the VNNI tile with an emulated `vpdpbusd` (runs everywhere: it checks the tile's indexing
//! and the driver bit for bit; the real instruction only runs where the CPU has it).
//!
//! A kernel of this architecture that the CPU lacks is reported once per test process on
//! stderr, uncaptured: `SKIPPED <kernel>: this CPU lacks <features>`. Set
//! `ELECTRA_EDGE_REQUIRE_KERNELS=avx512vnni,avxvnni,...` (or `all`: every kernel of this
//! architecture) to make a missing kernel a failure instead. On aarch64 run the tests under
//! qemu with `-cpu cortex-a72` (NEON baseline) and `-cpu max` (dotprod, i8mm), see
//! `.ci/aarch64.sh`.
//!
//! Files: [`gemm`] (the integer GEMM of every kernel, exact), [`pack`] (the packed weights'
//! format), [`quantize`] (quantization and quantize-and-pack), [`fused`] (the f32 epilogue and
//! the fused op), [`graph`] (the graph rewrite on the fixtures' models).

mod fused;
mod gemm;
mod graph;
mod pack;
mod quantize;

use super::gemm::{qgemm_i32_with_runner, Runner};
use super::*;

use crate::testutil::XorShift;

/// Env var: comma-separated kernels that must be available (`all`: all of this architecture).
const REQUIRE_ENV: &str = "ELECTRA_EDGE_REQUIRE_KERNELS";

/// The kernels built for this architecture.
pub(super) fn kernels_of_this_arch() -> Vec<Kernel> {
    let arch: &[Kernel] = if cfg!(target_arch = "x86_64") {
        &[Kernel::Avx2, Kernel::AvxVnni, Kernel::Avx512Vnni]
    } else if cfg!(target_arch = "aarch64") {
        &[Kernel::Neon, Kernel::Dotprod, Kernel::I8mm]
    } else {
        &[]
    };
    std::iter::once(Kernel::Scalar)
        .chain(arch.iter().copied())
        .collect()
}

/// The kernels available here. Reports the missing ones once (uncaptured stderr) and fails
/// when `ELECTRA_EDGE_REQUIRE_KERNELS` names one of them.
pub(super) fn kernels() -> Vec<Kernel> {
    static REPORT: std::sync::Once = std::sync::Once::new();
    let all = kernels_of_this_arch();
    let (ks, missing): (Vec<Kernel>, Vec<Kernel>) = all.iter().partition(|k| k.is_available());
    REPORT.call_once(|| {
        use std::io::Write;
        let mut msg = format!("int8 kernels under test: {ks:?}\n");
        for k in &missing {
            msg += &format!("SKIPPED {k}: this CPU lacks {}\n", k.features());
        }
        // io::stderr() directly: libtest captures eprintln! of passing tests, not this
        let _ = std::io::stderr().write_all(msg.as_bytes());
    });
    let required = std::env::var(REQUIRE_ENV).unwrap_or_default();
    for name in required.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let want: Vec<Kernel> = if name.eq_ignore_ascii_case("all") {
            all.clone()
        } else {
            match Kernel::parse(name) {
                Some(k) => vec![k],
                None => panic!("{REQUIRE_ENV}: unknown kernel {name:?}"),
            }
        };
        for k in want {
            assert!(
                k.is_available(),
                "{REQUIRE_ENV}={required}: kernel {k} is required but this CPU lacks {}",
                k.features()
            );
        }
    }
    ks
}

/// A GEMM implementation under test: a real kernel, or the VNNI tile with an emulated
/// instruction in the layout of the named kernel.
#[derive(Clone, Copy)]
pub(super) enum Impl {
    Real(Kernel),
    Emulated {
        name: &'static str,
        layout: Kernel,
        run: Runner,
        np: usize,
    },
}

impl std::fmt::Display for Impl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Impl::Real(k) => write!(f, "{k}"),
            Impl::Emulated { name, .. } => f.write_str(name),
        }
    }
}

/// Every available kernel plus the emulated VNNI tiles (ymm and zmm).
pub(super) fn impls() -> Vec<Impl> {
    use super::gemm::emulated;
    use super::vnni::{NP_YMM, NP_ZMM};
    let mut v: Vec<Impl> = kernels().into_iter().map(Impl::Real).collect();
    v.push(Impl::Emulated {
        name: "avxvnni-emulated",
        layout: Kernel::AvxVnni,
        run: emulated::run_ymm,
        np: NP_YMM,
    });
    v.push(Impl::Emulated {
        name: "avx512vnni-emulated",
        layout: Kernel::Avx512Vnni,
        run: emulated::run_zmm,
        np: NP_ZMM,
    });
    v
}

#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_i32(
    imp: Impl,
    a: &[u8],
    m: usize,
    za: u8,
    w: &PackedWeights,
    c: &mut [i32],
    threads: usize,
) {
    match imp {
        Impl::Real(k) => qgemm_i32(k, a, m, za, w, c, threads),
        Impl::Emulated {
            layout, run, np, ..
        } => qgemm_i32_with_runner(layout, run, np, a, m, za, w, c, threads),
    }
}

/// Naive i64 reference of `sum_k (a - za) * (w - zw[n])` from the unpacked inputs.
#[allow(clippy::too_many_arguments)]
pub(super) fn reference(
    a: &[u8],
    m: usize,
    k: usize,
    za: u8,
    w: &[u8],
    signed: bool,
    n: usize,
    zp: &[u8],
) -> Vec<i64> {
    let wv = |b: u8| -> i64 {
        if signed {
            b as i8 as i64
        } else {
            b as i64
        }
    };
    let mut c = vec![0i64; m * n];
    for i in 0..m {
        for j in 0..n {
            let z = match zp.len() {
                0 => 0,
                1 => wv(zp[0]),
                _ => wv(zp[j]),
            };
            let mut s = 0i64;
            for kk in 0..k {
                s += (a[i * k + kk] as i64 - za as i64) * (wv(w[kk * n + j]) - z);
            }
            c[i * n + j] = s;
        }
    }
    c
}

#[allow(clippy::too_many_arguments)]
pub(super) fn check_case(
    kernel: Impl,
    m: usize,
    k: usize,
    n: usize,
    a: &[u8],
    za: u8,
    w: &[u8],
    signed: bool,
    zp: &[u8],
    threads: usize,
) {
    let packed = pack_weights(w, signed, k, n, zp);
    let want = reference(a, m, k, za, w, signed, n, zp);
    let mut c = vec![i32::MIN; m * n];
    gemm_i32(kernel, a, m, za, &packed, &mut c, threads);
    for (idx, (&got, &exp)) in c.iter().zip(&want).enumerate() {
        assert!(exp.abs() < i32::MAX as i64);
        assert_eq!(
            got as i64,
            exp,
            "{kernel} m={m} k={k} n={n} signed={signed} zp={} za={za} threads={threads}: C[{},{}]",
            zp.len(),
            idx / n,
            idx % n
        );
    }
}
