//! The f32 epilogue against the unfused graph's arithmetic (and f64), and the fused op
//! (quantize, GEMM, epilogue, GELU) of every kernel against the scalar one, bit for bit, on
//! any number of threads.

use super::*;
use crate::int8::quant::{min_max_scalar, quantize_scalar};

/// The f32 epilogue of every kernel equals the unfused graph's `Cast -> Mul -> [Add]` bit
/// for bit: random and all-zero weight zero points (with all-zero ones, whole tiles of the
/// aarch64 kernels store their outputs themselves), with and without bias, full and partial
/// tiles, negative scales, and all-zero sums (so -0.0 outputs without bias).
#[test]
fn epilogue_matches_unfused_graph_and_f64() {
    let mut rng = XorShift::new(4);
    for kernel in kernels() {
        // (m, k, n, per-column scales, bias, zero points all 0, negative scales, zero sums)
        for &(m, k, n, per_col, with_bias, zp0, neg, zero) in &[
            (1, 64, 8, false, true, false, false, false),
            (7, 33, 17, true, true, false, false, false),
            (33, 256, 65, true, false, false, false, false),
            (3, 5, 3, false, false, false, false, false),
            (8, 64, 16, true, true, true, false, false),
            (12, 100, 24, false, true, true, false, false),
            (29, 256, 40, true, false, true, false, false),
            (13, 33, 17, true, true, true, true, false),
            (24, 20, 32, true, false, true, true, true),
            (4, 16, 8, false, false, true, true, true),
        ] {
            let za = rng.byte();
            let a = if zero {
                vec![za; m * k]
            } else {
                rng.bytes(m * k)
            };
            let w = rng.bytes(k * n);
            let zp = if zp0 { vec![0; n] } else { rng.bytes(n) };
            let sa = rng.f32(1e-3, 0.1);
            // (with `neg`, every other scale negative, the first one included)
            let sw: Vec<f32> = (0..if per_col { n } else { 1 })
                .map(|i| rng.f32(1e-3, 0.05) * if neg && i % 2 == 0 { -1.0 } else { 1.0 })
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
                    // Cast -> Mul(acc, sa * sw) -> [Add(bias)]: two f32 roundings, as the graph
                    let unfused = match bias {
                        Some(b) => c[i * n + j] as f32 * s + b[j],
                        None => c[i * n + j] as f32 * s,
                    };
                    let got = y[i * n + j];
                    assert_eq!(got.to_bits(), unfused.to_bits(), "{kernel} ({i},{j})");
                    let b = bias.map_or(0.0, |b| b[j]);
                    let exact = c[i * n + j] as f64 * s as f64 + b as f64;
                    let tol = 1e-6 * (exact.abs() + b.abs() as f64 + 1e-3);
                    assert!(
                        (got as f64 - exact).abs() <= tol,
                        "{kernel}: {got} vs {exact}"
                    );
                }
            }
            if zero && !with_bias && neg {
                // (some outputs are -0.0: the bias-less epilogue must not turn them into +0.0)
                assert!(
                    y.iter().any(|v| v.to_bits() == (-0.0f32).to_bits()),
                    "{kernel}"
                );
            }
        }
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
        (24, 64, 40, -2.0, 3.0),
        (12, 1024, 16, -1.0, 8.0),
    ] {
        let x: Vec<f32> = (0..m * k).map(|_| rng.f32(lo, hi)).collect();
        let w = rng.bytes(k * n);
        // (weight zero points all 0 for even K: the aarch64 tiles' own stores)
        let zp = if k % 2 == 0 { vec![0] } else { rng.bytes(n) };
        let packed = pack_weights(&w, true, k, n, &zp);
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
        let zp = if k % 2 == 0 { vec![0] } else { rng.bytes(n) };
        let packed = pack_weights(&w, true, k, n, &zp);
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
