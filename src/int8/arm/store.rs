//! The driver's epilogue on NEON: a tile's raw sums to f32 outputs, 8 columns at a time in
//! registers (`add`, `mls`, `scvtf`, `fmul`, `fadd`: two separately rounded operations, as
//! the unfused graph), instead of the portable loop, which LLVM only partly vectorizes here.

use std::arch::aarch64::*;

use crate::int8::layout::{PanelEpilogue, TILE_STRIDE};

/// `y[r][j] = (raw[r][j] + colterm[j] - zp[j] * rowsum[r]) as f32 * scale[j] + bias[j]` for
/// `rows` rows and the first `cols <= 8` columns (`zp` and `bias` as the panel has them), all
/// i32 arithmetic wrapping, as the portable epilogue.
///
/// # Safety
/// The CPU must have NEON; `raw` must hold `rows` rows of `TILE_STRIDE` i32 (the first 8 of
/// each used), `rowsum` `rows` values, and `y + r * ldy` `cols` writable f32 for each row.
#[target_feature(enable = "neon")]
#[inline]
pub(crate) unsafe fn store_f32(
    raw: *const i32,
    rows: usize,
    rowsum: &[i32],
    e: &PanelEpilogue,
    y: *mut f32,
    ldy: usize,
    cols: usize,
) {
    // SAFETY: as guaranteed by the caller.
    unsafe {
        match (e.zp.is_some(), e.bias.is_some()) {
            (false, false) => rows_f32::<false, false>(raw, rows, rowsum, e, y, ldy, cols),
            (false, true) => rows_f32::<false, true>(raw, rows, rowsum, e, y, ldy, cols),
            (true, false) => rows_f32::<true, false>(raw, rows, rowsum, e, y, ldy, cols),
            (true, true) => rows_f32::<true, true>(raw, rows, rowsum, e, y, ldy, cols),
        }
    }
}

/// [`store_f32`] with the panel's zero points and bias known to be there or not.
///
/// # Safety
/// As [`store_f32`]; `ZP` / `BIAS` only when `e` has them.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn rows_f32<const ZP: bool, const BIAS: bool>(
    raw: *const i32,
    rows: usize,
    rowsum: &[i32],
    e: &PanelEpilogue,
    y: *mut f32,
    ldy: usize,
    cols: usize,
) {
    // SAFETY: (whole body) the panel vectors are 8 values each (arrays); the rest as
    // guaranteed by the caller: row r of raw at r * TILE_STRIDE, row r of y at r * ldy.
    unsafe {
        let ct = vld1q_s32_x2(e.colterm.as_ptr());
        let sc = vld1q_f32_x2(e.scale.as_ptr());
        let zp = if ZP {
            vld1q_s32_x2(e.zp.unwrap_or(&[0; 8]).as_ptr())
        } else {
            int32x4x2_t(vdupq_n_s32(0), vdupq_n_s32(0))
        };
        let bias = if BIAS {
            vld1q_f32_x2(e.bias.unwrap_or(&[0.0; 8]).as_ptr())
        } else {
            float32x4x2_t(vdupq_n_f32(0.0), vdupq_n_f32(0.0))
        };
        for (r, &rs) in rowsum.iter().enumerate().take(rows) {
            let v = vld1q_s32_x2(raw.add(r * TILE_STRIDE));
            let (mut v0, mut v1) = (vaddq_s32(v.0, ct.0), vaddq_s32(v.1, ct.1));
            if ZP {
                let rs = vdupq_n_s32(rs);
                v0 = vmlsq_s32(v0, zp.0, rs);
                v1 = vmlsq_s32(v1, zp.1, rs);
            }
            let mut f0 = vmulq_f32(vcvtq_f32_s32(v0), sc.0);
            let mut f1 = vmulq_f32(vcvtq_f32_s32(v1), sc.1);
            if BIAS {
                f0 = vaddq_f32(f0, bias.0);
                f1 = vaddq_f32(f1, bias.1);
            }
            let dst = y.add(r * ldy);
            if cols == 8 {
                vst1q_f32_x2(dst, float32x4x2_t(f0, f1));
            } else {
                let mut f = [0f32; 8];
                vst1q_f32_x2(f.as_mut_ptr(), float32x4x2_t(f0, f1));
                std::ptr::copy_nonoverlapping(f.as_ptr(), dst, cols);
            }
        }
    }
}
