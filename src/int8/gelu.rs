//! torch's erf GELU on f32, element-wise and in place: the epilogue of a fused int8 matmul that
//! feeds a GELU, and the standalone GELU op of fp32 graphs (`ops`).
//!
//! One portable body (the reference), compiled with AVX2 + FMA on x86-64 when the CPU has them,
//! and an explicit NEON body on aarch64 (the same operations in the same order on 4 lanes, so
//! every instantiation gives the same bits).

/// The coefficients of tract-linalg's `erf` (Abramowitz & Stegun 7.1.28).
#[allow(clippy::excessive_precision)]
mod coef {
    pub const A1: f32 = 0.0705230784;
    pub const A2: f32 = 0.0422820123;
    pub const A3: f32 = 0.0092705272;
    pub const A4: f32 = 0.0001520143;
    pub const A5: f32 = 0.0002765672;
    pub const A6: f32 = 0.0000430638;
}

/// tract-linalg's `erf` (Abramowitz & Stegun 7.1.28, |error| <= 3e-7), the same formula and
/// operation order, so that our GELU matches the unfused graph.
#[inline(always)]
fn erf(x: f32) -> f32 {
    use coef::*;
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

/// [`gelu_body`] on NEON registers, 16 values per step (the last 0..15 by the portable body):
/// every operation of [`erf`] and [`gelu_body`] in the same order, rounded the same way.
#[cfg(target_arch = "aarch64")]
fn gelu_neon(xs: &mut [f32], div: f32) {
    use coef::*;
    use std::arch::aarch64::*;
    /// One vector: `x * (erf(x / div) + 1) * 0.5`.
    ///
    /// # Safety
    /// None beyond NEON, which every aarch64 CPU has.
    #[inline(always)]
    unsafe fn gelu4(x: float32x4_t, div: float32x4_t) -> float32x4_t {
        let one = vdupq_n_f32(1.0);
        let z = vdivq_f32(x, div);
        let a = vabsq_f32(z);
        let mut y = vmulq_f32(vdupq_n_f32(A6), a);
        for c in [A5, A4, A3, A2, A1] {
            y = vmulq_f32(vaddq_f32(vdupq_n_f32(c), y), a);
        }
        let p = vaddq_f32(y, one);
        let p2 = vmulq_f32(p, p);
        let p4 = vmulq_f32(p2, p2);
        let p8 = vmulq_f32(p4, p4);
        let e = vsubq_f32(one, vdivq_f32(one, vmulq_f32(p8, p8)));
        // copysign(e, z): the sign bit from z, the rest from e
        let e = vbslq_f32(vdupq_n_u32(0x8000_0000), z, e);
        vmulq_f32(vmulq_f32(x, vaddq_f32(e, one)), vdupq_n_f32(0.5))
    }
    let n = xs.len();
    let p = xs.as_mut_ptr();
    let mut j = 0;
    // SAFETY: `j + 16 <= n` and `j + 4 <= n`: the loads and stores stay inside `xs`; NEON is
    // baseline on aarch64.
    unsafe {
        let dv = vdupq_n_f32(div);
        while j + 16 <= n {
            let a = vld1q_f32_x4(p.add(j));
            let y = float32x4x4_t(
                gelu4(a.0, dv),
                gelu4(a.1, dv),
                gelu4(a.2, dv),
                gelu4(a.3, dv),
            );
            vst1q_f32_x4(p.add(j), y);
            j += 16;
        }
        while j + 4 <= n {
            vst1q_f32(p.add(j), gelu4(vld1q_f32(p.add(j)), dv));
            j += 4;
        }
    }
    gelu_body(&mut xs[j..], div)
}

/// Whether [`gelu_f32`]'s SIMD instantiation can run here (x86-64 AVX2 + FMA; aarch64 NEON,
/// which every aarch64 CPU has).
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(target_arch = "aarch64")]
    {
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// [`gelu_body`], with AVX2 + FMA (x86-64) or NEON (aarch64) when `simd` (and the CPU has
/// them). Every instantiation gives the same bits.
pub fn gelu_f32(simd: bool, xs: &mut [f32], div: f32) {
    #[cfg(target_arch = "x86_64")]
    if simd && simd_available() {
        // SAFETY: AVX2 and FMA were detected just above.
        return unsafe { gelu_avx2(xs, div) };
    }
    #[cfg(target_arch = "aarch64")]
    if simd {
        return gelu_neon(xs, div);
    }
    let _ = simd;
    gelu_body(xs, div)
}
