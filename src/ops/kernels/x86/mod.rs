//! x86-64 bodies of the f32 kernels, chosen at run time: attention with AVX2 + FMA
//! ([`avx2`]) or AVX-512F ([`avx512`]), the packing of K and V they share (SSE), and the
//! portable LayerNorm body compiled with AVX2 + FMA (it keeps the scalar reference's
//! operations, hence its bits).

use std::arch::x86_64::*;

use super::attention::{head, pack_kt_by_4x4};
use super::portable::add_layer_norm_body;
use super::{AttnDims, MaskView};

mod avx2;
mod avx512;

/// [`head`] with the AVX2 + FMA body.
///
/// # Safety
/// As [`head`]; the CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn head_avx2(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<MaskView>,
    dims: AttnDims,
    scale: f32,
    nan_to_zero: bool,
    out: *mut f32,
    b: usize,
    h: usize,
    scratch: &mut Vec<f32>,
) {
    head::<avx2::Avx2>(q, k, v, mask, dims, scale, nan_to_zero, out, b, h, scratch)
}

/// [`head`] with the AVX-512F body.
///
/// # Safety
/// As [`head`]; the CPU has AVX-512F, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn head_avx512(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<MaskView>,
    dims: AttnDims,
    scale: f32,
    nan_to_zero: bool,
    out: *mut f32,
    b: usize,
    h: usize,
    scratch: &mut Vec<f32>,
) {
    head::<avx512::Avx512>(q, k, v, mask, dims, scale, nan_to_zero, out, b, h, scratch)
}

/// The AVX2 body's `exp` pass, for the tests.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(test)]
pub(in super::super) unsafe fn exp_sum_avx2(s: &mut [f32], mx: f32) -> f32 {
    use super::attention::AttnBody;
    avx2::Avx2::exp_sum(s, mx)
}

/// The AVX-512 body's `exp` pass, for the tests.
///
/// # Safety
/// The CPU has AVX-512F, AVX2 and FMA.
#[cfg(test)]
pub(in super::super) unsafe fn exp_sum_avx512(s: &mut [f32], mx: f32) -> f32 {
    use super::attention::AttnBody;
    avx512::Avx512::exp_sum(s, mx)
}

/// [`add_layer_norm_body`] under AVX2 + FMA.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn add_layer_norm_avx2(
    x: &[f32],
    r: Option<&[f32]>,
    gamma: &[f32],
    beta: Option<&[f32]>,
    eps: f32,
    y: &mut [f32],
) {
    add_layer_norm_body(x, r, gamma, beta, eps, y)
}

/// K^T in panels of `KEYS` keys (the layout of [`super::attention::AttnBody::pack_kt`]): 4
/// keys x 4 elements at a time through an SSE transpose, the odd ones one by one.
///
/// # Safety
/// As [`super::attention::AttnBody::pack_kt`]; `KEYS` is a multiple of 4.
#[inline(always)]
unsafe fn pack_kt_sse<const KEYS: usize>(
    k: *const f32,
    k_stride: usize,
    seq_k: usize,
    d: usize,
    sp: usize,
    kt: *mut f32,
) {
    pack_kt_by_4x4::<KEYS>(k, k_stride, seq_k, d, sp, kt, |rows, to| {
        let (r0, r1, r2, r3) = (
            _mm_loadu_ps(rows[0]),
            _mm_loadu_ps(rows[1]),
            _mm_loadu_ps(rows[2]),
            _mm_loadu_ps(rows[3]),
        );
        let t0 = _mm_unpacklo_ps(r0, r1); // a0 b0 a1 b1
        let t1 = _mm_unpackhi_ps(r0, r1); // a2 b2 a3 b3
        let t2 = _mm_unpacklo_ps(r2, r3); // c0 d0 c1 d1
        let t3 = _mm_unpackhi_ps(r2, r3); // c2 d2 c3 d3
        _mm_storeu_ps(to[0], _mm_movelh_ps(t0, t2));
        _mm_storeu_ps(to[1], _mm_movehl_ps(t2, t0));
        _mm_storeu_ps(to[2], _mm_movelh_ps(t1, t3));
        _mm_storeu_ps(to[3], _mm_movehl_ps(t3, t1));
    })
}

/// V in panels of `VCOLS` columns (the layout of [`super::attention::AttnBody::pack_v`]):
/// whole panels 4 values at a time, the last partial one with zeros after the head's end.
///
/// # Safety
/// As [`super::attention::AttnBody::pack_v`]; `VCOLS` is a multiple of 4.
#[inline(always)]
unsafe fn pack_v_sse<const VCOLS: usize>(
    v: *const f32,
    v_stride: usize,
    seq_k: usize,
    d: usize,
    dp: usize,
    vt: *mut f32,
) {
    for c0 in (0..dp).step_by(VCOLS) {
        let w = d.saturating_sub(c0).min(VCOLS);
        let (mut src, mut dst) = (v.add(c0), vt.add(c0 * seq_k));
        for _ in 0..seq_k {
            if w == VCOLS {
                for l in (0..VCOLS).step_by(4) {
                    _mm_storeu_ps(dst.add(l), _mm_loadu_ps(src.add(l)));
                }
            } else {
                for l in 0..VCOLS {
                    *dst.add(l) = if l < w { *src.add(l) } else { 0.0 };
                }
            }
            src = src.add(v_stride);
            dst = dst.add(VCOLS);
        }
    }
}
