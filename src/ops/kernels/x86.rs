//! x86-64 instantiations of the kernels: the portable bodies compiled with AVX2 and FMA (the
//! callers check that the CPU has them).

use super::attention::head;
use super::portable::{add_layer_norm_body, Portable};
use super::{AttnDims, MaskView};

/// [`head`] with the portable body, fused multiply-adds and the fast `exp`, under AVX2 + FMA.
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
    head::<Portable<true, true>>(q, k, v, mask, dims, scale, nan_to_zero, out, b, h, scratch)
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
