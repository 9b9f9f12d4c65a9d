//! torch's erf GELU on f32, element-wise and in place: the epilogue of a fused int8 matmul that
//! feeds a GELU, and the standalone GELU op of fp32 graphs (`ops`).

/// tract-linalg's `erf` (Abramowitz & Stegun 7.1.28, |error| <= 3e-7), the same formula and
/// operation order, so that our GELU matches the unfused graph.
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn erf(x: f32) -> f32 {
    const A1: f32 = 0.0705230784;
    const A2: f32 = 0.0422820123;
    const A3: f32 = 0.0092705272;
    const A4: f32 = 0.0001520143;
    const A5: f32 = 0.0002765672;
    const A6: f32 = 0.0000430638;
    let abs = x.abs();
    let y = A6 * abs;
    let y = (A5 + y) * abs;
    let y = (A4 + y) * abs;
    let y = (A3 + y) * abs;
    let y = (A2 + y) * abs;
    let y = (A1 + y) * abs;
    let p = y + 1.0;
    let p2 = p * p;
    let p4 = p2 * p2;
    let p8 = p4 * p4;
    let y = 1.0 - (p8 * p8).recip();
    y.copysign(x)
}

/// GELU as torch exports it, in place: `x * (erf(x / div) + 1) * 0.5` (`div` = sqrt(2)),
/// in the graph's operation order.
#[inline(always)]
fn gelu_body(xs: &mut [f32], div: f32) {
    for x in xs {
        *x = *x * (erf(*x / div) + 1.0) * 0.5;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(xs: &mut [f32], div: f32) {
    gelu_body(xs, div)
}

/// Whether [`gelu_f32`]'s SIMD instantiation can run here (x86-64 AVX2 + FMA; on aarch64 the
/// portable body is NEON already).
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`gelu_body`], with AVX2 + FMA when `simd` (and the CPU has them).
pub fn gelu_f32(simd: bool, xs: &mut [f32], div: f32) {
    #[cfg(target_arch = "x86_64")]
    if simd && simd_available() {
        // SAFETY: AVX2 and FMA were detected just above.
        return unsafe { gelu_avx2(xs, div) };
    }
    let _ = simd;
    gelu_body(xs, div)
}
