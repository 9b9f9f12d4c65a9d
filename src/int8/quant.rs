//! ONNX `DynamicQuantizeLinear` (u8): its parameters and the scalar definition every vector
//! quantizer reproduces bit for bit:
//!
//! ```text
//! min = min(0, min(x)), max = max(0, max(x))        (NaNs ignored)
//! scale = (max - min) / 255
//! zp = saturate(round_half_even(-min / scale))
//! q = saturate(round_half_even(x / scale) + zp)     (a true division, not x * (1/scale))
//! ```
//!
//! Edge cases, identical on every kernel: an all-zero input (or empty) gives `scale = 0`,
//! `zp = 0`, `q = 0` (ONNX's formula divides by zero there; tract gives the same result).
//! A NaN element quantizes to `zp`. Infinite inputs give an infinite scale and `q = zp`.
//!
//! This file is a leaf: the instruction-set files build on it, the dispatch by kernel is
//! [`super::quantize`].

// `!(scale > 0.0)` on purpose: NaN scales take the zero branch.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

/// Scale and zero point of a dynamically quantized tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantParams {
    pub scale: f32,
    pub zero_point: u8,
}

impl QuantParams {
    /// Parameters from the tensor's min and max (before they are extended to include 0).
    pub fn from_min_max(min: f32, max: f32) -> QuantParams {
        let min = if min < 0.0 { min } else { 0.0 };
        let max = if max > 0.0 { max } else { 0.0 };
        let scale = (max - min) / 255.0;
        if !(scale > 0.0) {
            return QuantParams {
                scale: 0.0,
                zero_point: 0,
            };
        }
        let zp = (-min / scale).round_ties_even();
        let zp = if zp.is_nan() {
            0.0
        } else {
            zp.clamp(0.0, 255.0)
        };
        QuantParams {
            scale,
            zero_point: zp as u8,
        }
    }
}

/// Min and max of `x` together with 0 (NaNs ignored).
pub(crate) fn min_max_scalar(x: &[f32]) -> (f32, f32) {
    x.iter().fold((0f32, 0f32), |(lo, hi), &v| {
        (if v < lo { v } else { lo }, if v > hi { v } else { hi })
    })
}

/// One element; the vector kernels reproduce exactly this.
#[inline(always)]
pub(crate) fn quantize_one(x: f32, scale: f32, zp: u8) -> u8 {
    let r = (x / scale).round_ties_even();
    let r = if r.is_nan() { 0.0 } else { r };
    let zpf = zp as f32;
    let r = r.clamp(-zpf, 255.0 - zpf);
    (r + zpf) as u8
}

/// `q = saturate(round_half_even(x / scale) + zp)` for every element (`scale > 0`).
pub(crate) fn quantize_scalar(x: &[f32], p: QuantParams, q: &mut [u8]) {
    for (x, q) in x.iter().zip(q.iter_mut()) {
        *q = quantize_one(*x, p.scale, p.zero_point);
    }
}
