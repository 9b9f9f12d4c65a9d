//! NEON quantize primitives: min/max, `DynamicQuantizeLinear` to u8, and quantizing straight
//! into the I8Shifted packed-A layout (`a - 128`, blocks of `mr` rows, `[q][r][4]`) with the
//! row sums, so that no u8 tensor is written and read again.
//!
//! The rounding: `fcvtns` converts `x / scale` to i32 rounding to nearest, ties to even, which
//! is `round_half_even` for every quotient in i32's range; it saturates beyond, and gives 0 for
//! NaN. Saturating narrows (`sqxtn` to i16, `sqadd` of the zero point, `sqxtun` / `sqxtn` to
//! 8 bits) then clamp exactly as `clamp(r, -zp, 255 - zp) + zp` does: a value saturated at an
//! i16 bound stays beyond the 8-bit range after adding a zero point of at most 255. So the
//! result is bit-identical to [`quantize_one`], NaN -> `zp` included.

use std::arch::aarch64::*;

use crate::int8::quant::{min_max_scalar, quantize_one, QuantParams};

/// Min and max together with 0, NaNs ignored (`fminnm`/`fmaxnm` return the number).
///
/// # Safety
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn min_max_neon(x: &[f32]) -> (f32, f32) {
    // SAFETY: NEON is there (caller); one load of 16 floats per chunk of 16.
    unsafe {
        let z = vdupq_n_f32(0.0);
        let (mut lo, mut hi) = ([z; 4], [z; 4]);
        let chunks = x.chunks_exact(16);
        let rest = chunks.remainder();
        for c in chunks {
            let v = vld1q_f32_x4(c.as_ptr());
            let v = [v.0, v.1, v.2, v.3];
            for i in 0..4 {
                lo[i] = vminnmq_f32(v[i], lo[i]);
                hi[i] = vmaxnmq_f32(v[i], hi[i]);
            }
        }
        let l = vminnmq_f32(vminnmq_f32(lo[0], lo[1]), vminnmq_f32(lo[2], lo[3]));
        let h = vmaxnmq_f32(vmaxnmq_f32(hi[0], hi[1]), vmaxnmq_f32(hi[2], hi[3]));
        let (l, h) = (vminnmvq_f32(l), vmaxnmvq_f32(h));
        let (rl, rh) = min_max_scalar(rest);
        (l.min(rl), h.max(rh))
    }
}

/// 16 values `round_half_even(x / scale)` saturated to i16, plus `off` saturating.
#[inline(always)]
fn rounded16(x: float32x4x4_t, scale: float32x4_t, off: int16x8_t) -> [int16x8_t; 2] {
    // SAFETY: register-only NEON operations; NEON is part of the aarch64 baseline.
    unsafe {
        let c = [x.0, x.1, x.2, x.3].map(|v| vcvtnq_s32_f32(vdivq_f32(v, scale)));
        [
            vqaddq_s16(vqmovn_high_s32(vqmovn_s32(c[0]), c[1]), off),
            vqaddq_s16(vqmovn_high_s32(vqmovn_s32(c[2]), c[3]), off),
        ]
    }
}

/// `q = saturate(round_half_even(x / scale) + zp)`, NaN -> zp; `scale > 0`.
///
/// # Safety
/// The CPU must have NEON; `q` as long as `x`; `p.scale > 0`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn quantize_neon(x: &[f32], p: QuantParams, q: &mut [u8]) {
    // SAFETY: NEON is there (caller); loads and stores at i < n16 <= len, 16 at a time, and
    // q is as long as x (caller).
    unsafe {
        let vs = vdupq_n_f32(p.scale);
        let zp = vdupq_n_s16(p.zero_point as i16);
        let n16 = x.len() / 16 * 16;
        let (xp, qp) = (x.as_ptr(), q.as_mut_ptr());
        let mut i = 0;
        while i < n16 {
            let [h0, h1] = rounded16(vld1q_f32_x4(xp.add(i)), vs, zp);
            vst1q_u8(qp.add(i), vqmovun_high_s16(vqmovun_s16(h0), h1));
            i += 16;
        }
        for j in n16..x.len() {
            q[j] = quantize_one(x[j], p.scale, p.zero_point);
        }
    }
}

/// Steps of 16 values a row's i16 sum lanes take before they are added into i32 (each step
/// adds at most 2 * 128 to a lane: 64 steps stay within 16384).
const SUM_STEPS: usize = 64;

/// DynamicQuantizeLinear of the rows of `x` (`rowsum.len()` rows of `k`) straight into the
/// I8Shifted layout (`a - 128`, blocks of `mr` rows, `[block][q][r][4]`), bit-identical to
/// quantizing with [`quantize_one`] then packing; `rowsum[m] = sum_k (a - za)`. Four rows at a
/// time: each 16 k of the 4 rows are 4 k-quads x 4 rows, stored by `st4` (one instruction
/// when `mr` is 4, the 4 quads of a block's row group being contiguous; one `st4` by lane per
/// quad otherwise). `buf` holds the rows' blocks, zeroed (rows past the last stay 0; k past
/// K too); a caller may hand each thread a range of whole blocks.
///
/// # Safety
/// The CPU must have NEON; `mr` a multiple of 4; `x` must hold `rowsum.len() * k` values,
/// `buf` at least `ceil(rows / mr) * ceil(k / 4) * mr * 4` bytes; `p.scale > 0`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn quantize_rows_i8(
    x: &[f32],
    k: usize,
    p: QuantParams,
    mr: usize,
    buf: &mut [i8],
    rowsum: &mut [i32],
) {
    let rows = rowsum.len();
    let kq = k.div_ceil(4);
    let per_block = kq * mr * 4;
    let stride = mr * 4;
    assert!(
        mr.is_multiple_of(4) && x.len() >= rows * k && buf.len() >= rows.div_ceil(mr) * per_block
    );
    let k16 = k / 16 * 16;
    let za = p.zero_point;
    // SAFETY: NEON is there (caller). Bounds: loads of 16 floats at kk + 16 <= k of rows
    // g + r < rows of x (asserted); the 4-row group g of block g / mr starts at byte
    // g / mr * per_block + g % mr * 4 of buf (asserted to hold the blocks), and its quads
    // q < kq are at q * stride from there: st4 writes quads kk / 4 .. kk / 4 + 3 < kq.
    unsafe {
        let vs = vdupq_n_f32(p.scale);
        let off = vdupq_n_s16(za as i16 - 128);
        let z16 = vdupq_n_s16(0);
        let xp = x.as_ptr();
        for g in (0..rows).step_by(4) {
            let live = (rows - g).min(4);
            let bp = buf.as_mut_ptr().add(g / mr * per_block + g % mr * 4);
            let mut sum = [vdupq_n_s32(0); 4];
            let mut part = [z16; 4];
            let mut kk = 0;
            let mut steps = 0;
            while kk < k16 {
                let mut v = [vdupq_n_s8(0); 4];
                for r in 0..live {
                    let [h0, h1] = rounded16(vld1q_f32_x4(xp.add((g + r) * k + kk)), vs, off);
                    v[r] = vqmovn_high_s16(vqmovn_s16(h0), h1);
                    part[r] = vpadalq_s8(part[r], v[r]);
                }
                let t = int32x4x4_t(
                    vreinterpretq_s32_s8(v[0]),
                    vreinterpretq_s32_s8(v[1]),
                    vreinterpretq_s32_s8(v[2]),
                    vreinterpretq_s32_s8(v[3]),
                );
                let q = bp.add(kk / 4 * stride) as *mut i32;
                if mr == 4 {
                    vst4q_s32(q, t);
                } else {
                    let s = stride / 4;
                    vst4q_lane_s32::<0>(q, t);
                    vst4q_lane_s32::<1>(q.add(s), t);
                    vst4q_lane_s32::<2>(q.add(2 * s), t);
                    vst4q_lane_s32::<3>(q.add(3 * s), t);
                }
                kk += 16;
                steps += 1;
                if steps == SUM_STEPS {
                    for r in 0..4 {
                        sum[r] = vpadalq_s16(sum[r], part[r]);
                        part[r] = z16;
                    }
                    steps = 0;
                }
            }
            for r in 0..live {
                let mut s = vaddvq_s32(vpadalq_s16(sum[r], part[r]));
                let row = xp.add((g + r) * k);
                for kk in k16..k {
                    let a = (quantize_one(*row.add(kk), p.scale, za) ^ 0x80) as i8;
                    *bp.add(kk / 4 * stride + r * 4 + kk % 4) = a;
                    s += a as i32;
                }
                // sum (a - 128) + k * (128 - za) = sum (a - za)
                rowsum[g + r] = s + k as i32 * (128 - za as i32);
            }
        }
    }
}
