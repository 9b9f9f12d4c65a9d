//! `DynamicQuantizeLinear` of every kernel against an independent spelling of the ONNX
//! definition, and the quantize-and-pack paths and the min/max split on any number of
//! threads.

use super::*;
use crate::int8::gemm::{min_max_split, pack_a, quantize_pack_a, ABuf, PackedA};
use crate::int8::quant::min_max_scalar;

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

fn same_packed(a: &PackedA, b: &PackedA) -> bool {
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
/// odd sizes, fewer rows than threads, NaNs, an all-zero input (scale 0), long rows of the
/// largest and smallest values.
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
            // past the NEON row sums' i16 flush (64 steps of 16), at both 8-bit extremes
            (6, 2100, 5.0, 5.0),
            (5, 2100, -5.0, -5.0),
            (3, 1100, -3.0, 4.0),
        ] {
            let mut x: Vec<f32> = (0..m * k).map(|_| rng.f32(lo, hi)).collect();
            if x.len() > 5 {
                x[5] = f32::NAN;
            }
            let (mn, mx) = min_max_scalar(&x);
            let p = QuantParams::from_min_max(mn, mx);
            let mut q = vec![0u8; m * k];
            crate::int8::quantize::quantize(Kernel::Scalar, &x, p, &mut q);
            let want = pack_a(layout, &q, m, k, p.zero_point);
            for threads in [1, 2, 3, 7] {
                let got = quantize_pack_a(layout, &x, m, k, p, threads);
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
                let (l, h) = min_max_split(kernel, x, threads);
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
