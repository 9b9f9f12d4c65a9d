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

use super::gemm::{qgemm_i32_with_runner, Runner};
use super::pack::{pack_weights_bytes, MAX_K};
use super::quantize::{min_max_scalar, quantize_scalar};
use super::*;
use std::sync::Arc;

/// Env var: comma-separated kernels that must be available (`all`: all of this architecture).
const REQUIRE_ENV: &str = "ELECTRA_EDGE_REQUIRE_KERNELS";

/// The kernels built for this architecture.
fn kernels_of_this_arch() -> Vec<Kernel> {
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

use crate::testutil::XorShift;

/// The kernels available here. Reports the missing ones once (uncaptured stderr) and fails
/// when `ELECTRA_EDGE_REQUIRE_KERNELS` names one of them.
fn kernels() -> Vec<Kernel> {
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
enum Impl {
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
fn impls() -> Vec<Impl> {
    use super::vnni::{emulated, NP_YMM, NP_ZMM};
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
fn gemm_i32(
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
fn reference(
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
fn check_case(
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

const ODD: [usize; 8] = [1, 2, 3, 7, 8, 17, 33, 65];

#[test]
fn gemm_odd_shapes_exact() {
    let mut rng = XorShift::new(1);
    for kernel in impls() {
        for &m in &ODD {
            for &k in &ODD {
                for &n in &ODD {
                    let signed = rng.below(2) == 0;
                    let a = rng.bytes(m * k);
                    let w = rng.bytes(k * n);
                    let zp = match rng.below(3) {
                        0 => vec![],
                        1 => vec![rng.byte()],
                        _ => rng.bytes(n),
                    };
                    let za = rng.byte();
                    check_case(kernel, m, k, n, &a, za, &w, signed, &zp, 1 + rng.below(3));
                }
            }
        }
    }
}

#[test]
fn gemm_random_shapes_exact() {
    let mut rng = XorShift::new(2);
    for kernel in impls() {
        for _ in 0..40 {
            let (m, k, n) = (1 + rng.below(140), 1 + rng.below(600), 1 + rng.below(150));
            let signed = rng.below(2) == 0;
            let a = rng.bytes(m * k);
            let w = rng.bytes(k * n);
            let zp = match rng.below(3) {
                0 => vec![],
                1 => vec![rng.byte()],
                _ => rng.bytes(n),
            };
            check_case(
                kernel,
                m,
                k,
                n,
                &a,
                rng.byte(),
                &w,
                signed,
                &zp,
                1 + rng.below(4),
            );
        }
    }
}

#[test]
fn gemm_extremes_exact() {
    for kernel in impls() {
        for &(m, k, n) in &[
            (7, 1024, 17),
            (13, 3071, 9),
            (1, 1, 1),
            (6, 4, 8),
            (8, 256, 16),
        ] {
            // all 255 x all -128, zero points 0
            check_case(
                kernel,
                m,
                k,
                n,
                &vec![255; m * k],
                0,
                &vec![0x80; k * n],
                true,
                &[],
                1,
            );
            // all 255 x all 127
            check_case(
                kernel,
                m,
                k,
                n,
                &vec![255; m * k],
                0,
                &vec![127; k * n],
                true,
                &[],
                2,
            );
            // (0 - 255) * (-128 - 127) = 65025 per k, the largest product
            check_case(
                kernel,
                m,
                k,
                n,
                &vec![0; m * k],
                255,
                &vec![0x80; k * n],
                true,
                &[127],
                1,
            );
            // (255 - 0) * (-128 - 127) = -65025 per k, per-column zero points at the limit
            check_case(
                kernel,
                m,
                k,
                n,
                &vec![255; m * k],
                0,
                &vec![0x80; k * n],
                true,
                &vec![127; n],
                1,
            );
            // uint8 weights: (255 - 0) * (0 - 255)
            check_case(
                kernel,
                m,
                k,
                n,
                &vec![255; m * k],
                0,
                &vec![0; k * n],
                false,
                &[255],
                1,
            );
            check_case(
                kernel,
                m,
                k,
                n,
                &vec![0; m * k],
                255,
                &vec![255; k * n],
                false,
                &vec![0; n],
                3,
            );
            // alternating extremes
            let a: Vec<u8> = (0..m * k)
                .map(|i| if i % 3 == 0 { 0 } else { 255 })
                .collect();
            let w: Vec<u8> = (0..k * n)
                .map(|i| if i % 5 < 2 { 0x80 } else { 0x7f })
                .collect();
            check_case(kernel, m, k, n, &a, 128, &w, true, &[0x80], 1);
        }
    }
}

#[test]
fn gemm_largest_k_no_overflow() {
    // 255 * 255 * MAX_K < 2^31: the exact result is the largest that fits.
    let (m, k, n) = (3, MAX_K, 9);
    for kernel in impls() {
        check_case(
            kernel,
            m,
            k,
            n,
            &vec![0; m * k],
            255,
            &vec![0x80; k * n],
            true,
            &[127],
            2,
        );
        check_case(
            kernel,
            m,
            k,
            n,
            &vec![255; m * k],
            0,
            &vec![0x80; k * n],
            true,
            &[127],
            1,
        );
    }
}

#[test]
fn packed_weights_round_trip_and_shared() {
    let mut rng = XorShift::new(3);
    let (m, k, n) = (5, 37, 19);
    let a = rng.bytes(m * k);
    let w = rng.bytes(k * n);
    let zp = rng.bytes(n);
    let bytes = pack_weights_bytes(&w, false, k, n, &zp);
    assert_eq!(bytes.len(), PackedWeights::packed_len(k, n));
    assert_eq!(&bytes[0..4], b"EEQW");
    // inside a bigger buffer at a 64-aligned offset, as in a sidecar file
    let mut file = vec![0xAAu8; 128];
    file.extend_from_slice(&bytes);
    file.extend_from_slice(&[0x55; 10]);
    let shared: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(file);
    let p = PackedWeights::from_shared(shared.clone(), 128).unwrap();
    assert!(p.is_shared() && p.from_u8());
    assert_eq!(p.as_bytes(), &bytes[..]);
    let want = reference(&a, m, k, 7, &w, false, n, &zp);
    for kernel in impls() {
        let mut c = vec![0i32; m * n];
        gemm_i32(kernel, &a, m, 7, &p, &mut c, 1);
        assert!(
            c.iter().zip(&want).all(|(&x, &y)| x as i64 == y),
            "{kernel}"
        );
    }
    // corrupted or truncated blobs are refused
    assert!(PackedWeights::from_shared(shared.clone(), 64).is_err());
    assert!(PackedWeights::from_vec(bytes[..bytes.len() - 1].to_vec()).is_err());
    let mut bad = bytes.clone();
    bad[4] = 9;
    assert!(PackedWeights::from_vec(bad).is_err());
    assert!(PackedWeights::from_shared(shared, 1 << 20).is_err());
}

#[test]
fn epilogue_matches_unfused_graph_and_f64() {
    let mut rng = XorShift::new(4);
    for kernel in kernels() {
        for &(m, k, n, per_col, with_bias) in &[
            (1, 64, 8, false, true),
            (7, 33, 17, true, true),
            (33, 256, 65, true, false),
            (3, 5, 3, false, false),
        ] {
            let a = rng.bytes(m * k);
            let w = rng.bytes(k * n);
            let zp = rng.bytes(n);
            let za = rng.byte();
            let sa = rng.f32(1e-3, 0.1);
            let sw: Vec<f32> = (0..if per_col { n } else { 1 })
                .map(|_| rng.f32(1e-3, 0.05))
                .collect();
            let bias: Vec<f32> = (0..n).map(|_| rng.f32(-2.0, 2.0)).collect();
            let bias = with_bias.then_some(&bias[..]);
            let packed = pack_weights(&w, true, k, n, &zp);
            let c = reference(&a, m, k, za, &w, true, n, &zp);
            let mut y = vec![f32::NAN; m * n];
            qgemm_f32(kernel, &a, m, za, sa, &packed, &sw, bias, &mut y, 2);
            for i in 0..m {
                for j in 0..n {
                    let s = sa * sw[if per_col { j } else { 0 }];
                    let b = bias.map_or(0.0, |b| b[j]);
                    // Cast -> Mul(acc, sa * sw) -> Add(bias): two f32 roundings, as the graph
                    let unfused = c[i * n + j] as f32 * s + b;
                    let got = y[i * n + j];
                    assert_eq!(got.to_bits(), unfused.to_bits(), "{kernel} ({i},{j})");
                    let exact = c[i * n + j] as f64 * s as f64 + b as f64;
                    let tol = 1e-6 * (exact.abs() + b.abs() as f64 + 1e-3);
                    assert!(
                        (got as f64 - exact).abs() <= tol,
                        "{kernel}: {got} vs {exact}"
                    );
                }
            }
        }
    }
}

/// Independent spelling of the ONNX definition (f32 division, round half to even).
fn dql_reference(x: &[f32]) -> (f32, u8, Vec<u8>) {
    let mut lo = 0f32;
    let mut hi = 0f32;
    for &v in x {
        if v < lo {
            lo = v;
        }
        if v > hi {
            hi = v;
        }
    }
    let scale = (hi - lo) / 255.0;
    if scale == 0.0 {
        return (0.0, 0, vec![0; x.len()]);
    }
    let zp = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as i32;
    let q = x
        .iter()
        .map(|&v| {
            let r = (v / scale).round_ties_even();
            let r = if r.is_nan() { 0 } else { r as i32 };
            (r + zp).clamp(0, 255) as u8
        })
        .collect();
    (scale, zp as u8, q)
}

fn check_dql(kernel: Kernel, x: &[f32]) {
    let (scale, zp, want) = dql_reference(x);
    let mut q = vec![0xEEu8; x.len()];
    let p = dynamic_quantize_linear_with(kernel, x, &mut q);
    assert_eq!(
        p.scale.to_bits(),
        scale.to_bits(),
        "{kernel} scale, len {}",
        x.len()
    );
    assert_eq!(p.zero_point, zp, "{kernel} zero point");
    assert_eq!(q, want, "{kernel} values, len {}", x.len());
    // the scalar building blocks agree too
    let (lo, hi) = min_max_scalar(x);
    assert_eq!(QuantParams::from_min_max(lo, hi), p);
}

#[test]
fn dynamic_quantize_linear_matches_definition() {
    let mut rng = XorShift::new(5);
    for kernel in kernels() {
        for len in [
            0, 1, 3, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 255, 256, 1000, 4099,
        ] {
            for (lo, hi) in [
                (-3.0, 5.0),
                (0.1, 9.0),
                (-7.0, -0.01),
                (-1e-3, 1e-3),
                (-60.0, 2.0),
            ] {
                let x: Vec<f32> = (0..len).map(|_| rng.f32(lo, hi)).collect();
                check_dql(kernel, &x);
            }
        }
    }
}

#[test]
fn dynamic_quantize_linear_ties_and_edges() {
    for kernel in kernels() {
        // scale exactly 1 (max 255, min 0): x / scale = k + 0.5 are ties, to even
        let mut x: Vec<f32> = (0..255).map(|i| i as f32 + 0.5).collect();
        x.push(255.0);
        x.extend([0.5, 1.5, 2.5, 3.5, 253.5, 254.5].iter().cycle().take(70));
        check_dql(kernel, &x);
        let mut q = vec![0; x.len()];
        dynamic_quantize_linear_with(kernel, &x, &mut q);
        assert_eq!(&q[..4], &[0, 2, 2, 4], "{kernel}");
        // negative ties with zero point 255: -0.5 -> 255, -1.5 -> 253, -2.5 -> 253
        let mut x: Vec<f32> = vec![-255.0];
        x.extend([-0.5, -1.5, -2.5, -3.5].iter().cycle().take(67));
        check_dql(kernel, &x);
        dynamic_quantize_linear_with(kernel, &x, &mut q[..x.len()]);
        assert_eq!(&q[1..5], &[255, 253, 253, 251], "{kernel}");
        // zero point on a tie: -min / scale = 126.5 -> 126
        let mut x = vec![-126.5f32, 128.5];
        x.extend((0..61).map(|i| i as f32 * 0.25 - 3.0));
        check_dql(kernel, &x);
        // all zeros (and empty): scale 0, zero point 0, q 0
        for len in [0, 1, 40, 33] {
            let x = vec![0f32; len];
            let mut q = vec![7u8; len];
            let p = dynamic_quantize_linear_with(kernel, &x, &mut q);
            assert_eq!((p.scale, p.zero_point), (0.0, 0));
            assert!(q.iter().all(|&v| v == 0));
        }
        // negative zeros count as zeros
        check_dql(kernel, &[-0.0f32; 37]);
        // NaNs are ignored by min/max and quantize to the zero point
        let mut x: Vec<f32> = (0..70).map(|i| i as f32 - 20.0).collect();
        x[3] = f32::NAN;
        x[40] = f32::NAN;
        check_dql(kernel, &x);
        // only positive / only negative values
        check_dql(
            kernel,
            &(0..50).map(|i| i as f32 * 0.37 + 1.0).collect::<Vec<_>>(),
        );
        check_dql(
            kernel,
            &(0..50)
                .map(|i| -(i as f32) * 0.37 - 1.0)
                .collect::<Vec<_>>(),
        );
    }
}

#[test]
fn kernels_agree_with_scalar_on_quantize_and_fused_op() {
    let mut rng = XorShift::new(6);
    for &(m, k, n, lo, hi) in &[
        (37, 256, 72, -4.0f32, 6.0f32),
        (5, 37, 9, -1.0, 0.5),
        (1, 3, 1, 0.0, 2.0),
        (13, 100, 17, -3.0, -1.0),
        (7, 33, 8, 0.0, 0.0),
        (6, 48, 16, -1e-3, 1e-3),
    ] {
        let x: Vec<f32> = (0..m * k).map(|_| rng.f32(lo, hi)).collect();
        let w = rng.bytes(k * n);
        let packed = pack_weights(&w, true, k, n, &rng.bytes(n));
        let sw: Vec<f32> = (0..n).map(|_| rng.f32(1e-3, 1e-2)).collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.f32(-1.0, 1.0)).collect();
        let mut want = vec![0f32; m * n];
        let pw = quantized_matmul_f32(
            Kernel::Scalar,
            &x,
            m,
            &packed,
            &sw,
            Some(&bias),
            &mut want,
            1,
        );
        let mut q = vec![0u8; m * k];
        let (mn, mx) = min_max_scalar(&x);
        let p = QuantParams::from_min_max(mn, mx);
        quantize_scalar(&x, p, &mut q);
        assert_eq!(p, pw);
        // the scalar fused op is quantize + qgemm_f32
        let mut y2 = vec![0f32; m * n];
        qgemm_f32(
            Kernel::Scalar,
            &q,
            m,
            p.zero_point,
            p.scale,
            &packed,
            &sw,
            Some(&bias),
            &mut y2,
            1,
        );
        assert!(y2
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        for kernel in kernels() {
            for threads in [1, 2, 5] {
                let mut y = vec![0f32; m * n];
                let pk =
                    quantized_matmul_f32(kernel, &x, m, &packed, &sw, Some(&bias), &mut y, threads);
                assert_eq!(pk, pw);
                assert!(
                    y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{kernel} x{threads} {m}x{k}x{n}"
                );
            }
        }
    }
}

#[test]
fn kernel_names_and_dispatch() {
    for k in Kernel::ALL {
        assert_eq!(Kernel::parse(k.name()), Some(k));
    }
    assert_eq!(Kernel::parse(" AVX2 "), Some(Kernel::Avx2));
    assert_eq!(Kernel::parse("sse"), None);
    assert!(Kernel::Scalar.is_available());
    assert!(Kernel::best().is_available());
    assert!(Kernel::default_choice().is_available());
    #[cfg(target_arch = "x86_64")]
    assert!([Kernel::Neon, Kernel::Dotprod, Kernel::I8mm]
        .iter()
        .all(|k| !k.is_available()));
    #[cfg(target_arch = "aarch64")]
    assert!(
        [Kernel::Avx2, Kernel::AvxVnni, Kernel::Avx512Vnni]
            .iter()
            .all(|k| !k.is_available())
            && Kernel::Neon.is_available()
    );
    // the best kernel is the last available one of this architecture's list
    let best = kernels_of_this_arch()
        .into_iter()
        .rfind(|k| k.is_available());
    assert_eq!(Some(Kernel::best()), best);
    // an unavailable kernel is never run: it resolves to the default
    for k in Kernel::ALL {
        assert!(Kernel::resolve(Some(k)).is_available());
    }
}

/// The packed-A layouts whose quantize-and-pack path can run here: all of them, except the
/// x86-64 ones (AVX2 code, also for the VNNI layouts) on an x86-64 CPU without AVX2 (said).
fn packing_layouts() -> Vec<Kernel> {
    let avx2 = cfg!(target_arch = "x86_64") && Kernel::Avx2.is_available();
    let x86 = [Kernel::Avx2, Kernel::AvxVnni, Kernel::Avx512Vnni];
    if cfg!(target_arch = "x86_64") && !avx2 {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED quantize-and-pack of the avx2/avxvnni/avx512vnni layouts: this CPU lacks {}",
            Kernel::Avx2.features()
        );
    }
    Kernel::ALL
        .into_iter()
        .filter(|k| avx2 || !cfg!(target_arch = "x86_64") || !x86.contains(k))
        .collect()
}

fn same_packed(a: &super::gemm::PackedA, b: &super::gemm::PackedA) -> bool {
    use super::gemm::ABuf;
    a.rowsum == b.rowsum
        && a.block_bytes == b.block_bytes
        && match (&a.buf, &b.buf) {
            (ABuf::I16(x), ABuf::I16(y)) => x == y,
            (ABuf::I8(x), ABuf::I8(y)) => x == y,
            (ABuf::U8(x), ABuf::U8(y)) => x == y,
            _ => false,
        }
}

/// Quantize-and-pack straight from f32 (split over 1, 2, 3 or 7 threads by ranges of row
/// blocks) equals quantizing with the scalar reference, then packing, for every layout:
/// odd sizes, fewer rows than threads, NaNs, an all-zero input (scale 0).
#[test]
fn quantize_pack_a_matches_quantize_then_pack_on_any_threads() {
    let mut rng = XorShift::new(7);
    for layout in packing_layouts() {
        for &(m, k, lo, hi) in &[
            (1, 1, -1.0f32, 1.0f32),
            (2, 5, -1.0, 2.0),
            (7, 33, -3.0, 5.0),
            (13, 256, -0.5, 9.0),
            (9, 17, 0.0, 0.0),
            (17, 100, -7.0, -1.0),
            (25, 64, -2.0, 2.0),
            (40, 12, 0.5, 3.0),
        ] {
            let mut x: Vec<f32> = (0..m * k).map(|_| rng.f32(lo, hi)).collect();
            if x.len() > 5 {
                x[5] = f32::NAN;
            }
            let (mn, mx) = min_max_scalar(&x);
            let p = QuantParams::from_min_max(mn, mx);
            let mut q = vec![0u8; m * k];
            quantize::quantize(Kernel::Scalar, &x, p, &mut q);
            let want = super::gemm::pack_a(layout, &q, m, k, p.zero_point);
            for threads in [1, 2, 3, 7] {
                let got = super::gemm::quantize_pack_a(layout, &x, m, k, p, threads);
                assert!(same_packed(&got, &want), "{layout} {m}x{k} x{threads}");
            }
        }
    }
}

/// The min/max split in chunks over threads gives the values of the serial reference and the
/// same quantization parameters (NaNs ignored, negative zeros, infinities, one-signed inputs,
/// fewer values than threads).
#[test]
fn min_max_is_the_same_on_any_threads() {
    let mut rng = XorShift::new(8);
    let mut inputs: Vec<Vec<f32>> = vec![
        vec![],
        vec![3.0],
        vec![-0.0; 37],
        (0..1000).map(|i| i as f32 * 0.5 + 1.0).collect(),
        (0..999).map(|i| -(i as f32) - 0.25).collect(),
        (0..4097).map(|_| rng.f32(-5.0, 7.0)).collect(),
    ];
    let mut nan: Vec<f32> = (0..300).map(|_| rng.f32(-1.0, 1.0)).collect();
    nan[0] = f32::NAN;
    nan[299] = f32::NAN;
    nan[150] = f32::INFINITY;
    inputs.push(nan);
    let mut ninf: Vec<f32> = (0..77).map(|_| rng.f32(-1.0, 1.0)).collect();
    ninf[70] = f32::NEG_INFINITY;
    inputs.push(ninf);
    for x in &inputs {
        let (wl, wh) = min_max_scalar(x);
        for kernel in kernels() {
            for threads in [1, 2, 3, 5] {
                let (l, h) = super::gemm::min_max_split(kernel, x, threads);
                // equal values (a zero's sign may differ: NEON's `fminnm` gives -0 for
                // (-0, +0)), and so the same quantization parameters, bit for bit
                assert!(
                    l == wl && h == wh,
                    "{kernel} x{threads} len {}: ({l}, {h}) vs ({wl}, {wh})",
                    x.len()
                );
                let (p, wp) = (
                    QuantParams::from_min_max(l, h),
                    QuantParams::from_min_max(wl, wh),
                );
                assert_eq!(
                    (p.scale.to_bits(), p.zero_point),
                    (wp.scale.to_bits(), wp.zero_point),
                    "{kernel} x{threads} len {}",
                    x.len()
                );
            }
        }
    }
}

/// The fused op with its GELU epilogue: bit-identical on 1, 2, 3 and 5 threads (each thread
/// applies the GELU to the columns it computed), and on one thread equal to the op without
/// GELU followed by the GELU over the whole output (the unfused order).
#[test]
fn fused_op_with_gelu_is_the_same_on_any_threads() {
    let mut rng = XorShift::new(9);
    for &(m, k, n) in &[
        (37, 256, 72),
        (5, 37, 9),
        (1, 3, 1),
        (2, 64, 200),
        (13, 100, 1024),
    ] {
        let x: Vec<f32> = (0..m * k).map(|_| rng.f32(-3.0, 4.0)).collect();
        let w = rng.bytes(k * n);
        let packed = pack_weights(&w, true, k, n, &rng.bytes(n));
        let sw: Vec<f32> = (0..n).map(|_| rng.f32(1e-3, 1e-2)).collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.f32(-1.0, 1.0)).collect();
        let div = std::f32::consts::SQRT_2;
        for kernel in kernels() {
            let mut want = vec![0f32; m * n];
            quantized_matmul_f32(kernel, &x, m, &packed, &sw, Some(&bias), &mut want, 1);
            gelu::gelu_f32(true, &mut want, div);
            // (the GELU is there: negative inputs give small negative outputs)
            assert!(m * n < 50 || (want.iter().any(|v| *v < 0.0) && want.iter().any(|v| *v > 0.5)));
            for threads in [1, 2, 3, 5] {
                let mut y = vec![f32::NAN; m * n];
                quantized_matmul_gelu_f32(
                    kernel,
                    &x,
                    m,
                    &packed,
                    &sw,
                    Some(&bias),
                    Some(div),
                    &mut y,
                    threads,
                );
                assert!(
                    y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{kernel} x{threads} {m}x{k}x{n}"
                );
            }
        }
    }
}
