//! aarch64 NEON kernels. Activations are packed as i8 `a - 128` (`a ^ 0x80`); the driver adds
//! `(128 - za) * colsum[n]` back exactly.
//!
//! * baseline (Cortex-A72, no dotprod), 4 x 8 tile: per k-quad and row, the row's 4 activation
//!   bytes are replicated (`ld1r`), multiplied with 2 columns x 4 k of weights by `smull`
//!   (i8 x i8 -> i16, |p| <= 16384: exact) and pair-accumulated into i32 by `sadalp`; each
//!   i32x4 accumulator holds [c, c, c+1, c+1] partials, folded by `addp` at the end.
//!   16 accumulators.
//! * dotprod, 8 x 8 tile: `sdot` by element (4 columns x 4 k of weights against one row's 4 k),
//!   16 accumulators. The dotprod intrinsics are unstable in Rust, so `sdot` is one
//!   instruction of inline asm.
//! * i8mm, 8 x 8 tile: `usmmla` (u8 x i8 2x8 by 8x2 matrix product into a 2x2 i32 block) on
//!   the u8 activations as they are (the U8Pairs layout: 2 rows x 8 k per 16 bytes; the driver
//!   subtracts `za * colsum[n]`). The weights' shared layout has 4 k per column and k-quad;
//!   two k-quads are zipped (`zip1`/`zip2` on 32-bit elements) into 2 columns x 8 k per
//!   register. 16 accumulators of 2 x 2; unstable intrinsics here too, so inline asm.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::arch::aarch64::*;
use std::arch::asm;

use super::layout::TILE_STRIDE;
use super::quant::{min_max_scalar, quantize_one, QuantParams};

/// # Safety
/// The CPU must have NEON; `a` must hold one packed block (`kq * 4 * 4` bytes), `w` one panel
/// (`kq * 32` bytes) and `out` 4 rows of `TILE_STRIDE` writable i32.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn tile_neon(a: *const u8, w: *const u8, kq: usize, out: *mut i32) {
    // SAFETY: NEON is there and every pointer is in bounds (caller): 16 bytes of A and 32 of W
    // per k-quad, 4 rows of 8 i32 stored into the tile buffer.
    unsafe {
        const MR: usize = 4;
        let z = vdupq_n_s32(0);
        let mut acc = [[z; 4]; MR];
        let mut ap = a;
        let mut wp = w as *const i8;
        for _ in 0..kq {
            let w0 = vld1q_s8(wp);
            let w1 = vld1q_s8(wp.add(16));
            let (w0l, w1l) = (vget_low_s8(w0), vget_low_s8(w1));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = vreinterpretq_s8_u32(vdupq_n_u32(
                    (ap.add(4 * r) as *const u32).read_unaligned(),
                ));
                let avl = vget_low_s8(av);
                acc[0] = vpadalq_s16(acc[0], vmull_s8(w0l, avl));
                acc[1] = vpadalq_s16(acc[1], vmull_high_s8(w0, av));
                acc[2] = vpadalq_s16(acc[2], vmull_s8(w1l, avl));
                acc[3] = vpadalq_s16(acc[3], vmull_high_s8(w1, av));
            }
            ap = ap.add(MR * 4);
            wp = wp.add(32);
        }
        for (r, acc) in acc.iter().enumerate() {
            vst1q_s32(out.add(r * TILE_STRIDE), vpaddq_s32(acc[0], acc[1]));
            vst1q_s32(out.add(r * TILE_STRIDE + 4), vpaddq_s32(acc[2], acc[3]));
        }
    }
}

/// `acc[i] += dot(w[4i..4i+4], a[4L..4L+4])` (SDOT by element).
///
/// # Safety
/// The CPU must have dotprod.
#[inline(always)]
unsafe fn sdot_lane<const L: i32>(mut acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    // SAFETY: one register-only instruction; dotprod is there (caller).
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[{l}]",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            a = in(vreg) a,
            l = const L,
            options(pure, nomem, nostack, preserves_flags)
        );
        acc
    }
}

/// # Safety
/// The CPU must have NEON and dotprod; `a` must hold one packed block (`kq * 8 * 4` bytes), `w`
/// one panel (`kq * 32` bytes) and `out` 8 rows of `4 * 8` writable i32.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn tile_dotprod(a: *const u8, w: *const u8, kq: usize, out: *mut i32) {
    // SAFETY: features and bounds as guaranteed by the caller: 32 bytes of A and 32 of W per
    // k-quad, 8 rows of 8 i32 stored into the tile buffer.
    unsafe {
        let z = vdupq_n_s32(0);
        let mut acc = [[z; 2]; 8];
        let mut ap = a as *const i8;
        let mut wp = w as *const i8;
        for _ in 0..kq {
            let w0 = vld1q_s8(wp);
            let w1 = vld1q_s8(wp.add(16));
            let a0 = vld1q_s8(ap);
            let a1 = vld1q_s8(ap.add(16));
            macro_rules! row {
                ($r:expr, $a:expr, $l:expr) => {
                    acc[$r][0] = sdot_lane::<$l>(acc[$r][0], w0, $a);
                    acc[$r][1] = sdot_lane::<$l>(acc[$r][1], w1, $a);
                };
            }
            row!(0, a0, 0);
            row!(1, a0, 1);
            row!(2, a0, 2);
            row!(3, a0, 3);
            row!(4, a1, 0);
            row!(5, a1, 1);
            row!(6, a1, 2);
            row!(7, a1, 3);
            ap = ap.add(32);
            wp = wp.add(32);
        }
        for (r, acc) in acc.iter().enumerate() {
            vst1q_s32(out.add(r * TILE_STRIDE), acc[0]);
            vst1q_s32(out.add(r * TILE_STRIDE + 4), acc[1]);
        }
    }
}

/// `acc += a (2 x 8 u8) * b^T (b: 2 x 8 i8)`: `[r0.b0, r0.b1, r1.b0, r1.b1]` (USMMLA).
///
/// # Safety
/// The CPU must have i8mm.
#[inline(always)]
unsafe fn usmmla(mut acc: int32x4_t, a: uint8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: one register-only instruction; the caller guarantees FEAT_I8MM.
    unsafe {
        asm!(
            "usmmla {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// 8 rows x 8 columns of raw sums `sum_k a * w` (row stride `4 * 8` i32 in `out`).
///
/// # Safety
/// The CPU must have NEON and i8mm; `a` must hold one U8Pairs block of 8 rows
/// (`ceil(kq / 2) * 64` bytes), `w` one panel (`kq * 32` bytes), `out` 8 rows of 32 i32.
#[target_feature(enable = "neon,i8mm")]
pub(crate) unsafe fn tile_i8mm(a: *const u8, w: *const u8, kq: usize, out: *mut i32) {
    // SAFETY: (whole body) extents and features as guaranteed by the caller: the loop reads
    // k-quad pairs of the panel (the odd last quad alone) and 64 bytes of A per pair.
    unsafe {
        let z = vdupq_n_s32(0);
        let mut acc = [[z; 4]; 4];
        let mut ap = a;
        let mut wp = w as *const i32;
        macro_rules! step {
            ($lo0:expr, $hi0:expr, $lo1:expr, $hi1:expr) => {
                let (lo0, hi0, lo1, hi1) = ($lo0, $hi0, $lo1, $hi1);
                // columns (0,1), (2,3), (4,5), (6,7), each 8 k
                let b = [
                    vreinterpretq_s8_s32(vzip1q_s32(lo0, lo1)),
                    vreinterpretq_s8_s32(vzip2q_s32(lo0, lo1)),
                    vreinterpretq_s8_s32(vzip1q_s32(hi0, hi1)),
                    vreinterpretq_s8_s32(vzip2q_s32(hi0, hi1)),
                ];
                for (rp, acc) in acc.iter_mut().enumerate() {
                    let av = vld1q_u8(ap.add(16 * rp));
                    for (cp, acc) in acc.iter_mut().enumerate() {
                        *acc = usmmla(*acc, av, b[cp]);
                    }
                }
                ap = ap.add(64);
            };
        }
        for _ in 0..kq / 2 {
            step!(
                vld1q_s32(wp),
                vld1q_s32(wp.add(4)),
                vld1q_s32(wp.add(8)),
                vld1q_s32(wp.add(12))
            );
            wp = wp.add(16);
        }
        if kq % 2 == 1 {
            step!(vld1q_s32(wp), vld1q_s32(wp.add(4)), z, z);
        }
        let _ = ap;
        for (rp, acc) in acc.iter().enumerate() {
            let acc = [0, 1, 2, 3].map(|i| vreinterpretq_s64_s32(acc[i]));
            let r0 = out.add(2 * rp * TILE_STRIDE);
            let r1 = r0.add(TILE_STRIDE);
            vst1q_s32(r0, vreinterpretq_s32_s64(vzip1q_s64(acc[0], acc[1])));
            vst1q_s32(r0.add(4), vreinterpretq_s32_s64(vzip1q_s64(acc[2], acc[3])));
            vst1q_s32(r1, vreinterpretq_s32_s64(vzip2q_s64(acc[0], acc[1])));
            vst1q_s32(r1.add(4), vreinterpretq_s32_s64(vzip2q_s64(acc[2], acc[3])));
        }
    }
}

/// Min and max together with 0, NaNs ignored (`fminnm`/`fmaxnm` return the number).
///
/// # Safety
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn min_max_neon(x: &[f32]) -> (f32, f32) {
    // SAFETY: NEON is there (caller); loads of 4 floats at 4 * i < 16 inside each chunk of 16.
    unsafe {
        let z = vdupq_n_f32(0.0);
        let (mut lo, mut hi) = ([z; 4], [z; 4]);
        let chunks = x.chunks_exact(16);
        let rest = chunks.remainder();
        for c in chunks {
            let p = c.as_ptr();
            for i in 0..4 {
                let v = vld1q_f32(p.add(4 * i));
                lo[i] = vminnmq_f32(v, lo[i]);
                hi[i] = vmaxnmq_f32(v, hi[i]);
            }
        }
        let l = vminnmq_f32(vminnmq_f32(lo[0], lo[1]), vminnmq_f32(lo[2], lo[3]));
        let h = vmaxnmq_f32(vmaxnmq_f32(hi[0], hi[1]), vmaxnmq_f32(hi[2], hi[3]));
        let (l, h) = (vminnmvq_f32(l), vmaxnmvq_f32(h));
        let (rl, rh) = min_max_scalar(rest);
        (l.min(rl), h.max(rh))
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
        let zpf = p.zero_point as f32;
        let vs = vdupq_n_f32(p.scale);
        let vz = vdupq_n_f32(zpf);
        let lo = vdupq_n_f32(-zpf);
        let hi = vdupq_n_f32(255.0 - zpf);
        macro_rules! one {
            ($v:expr) => {{
                let r = vrndnq_f32(vdivq_f32($v, vs));
                // NaN -> 0 (fmaxnm/fminnm would also do it, but keep the order of the scalar code)
                let r = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(r), vceqq_f32(r, r)));
                let r = vminq_f32(vmaxq_f32(r, lo), hi);
                vcvtq_u32_f32(vaddq_f32(r, vz))
            }};
        }
        let n16 = x.len() / 16 * 16;
        let (xp, qp) = (x.as_ptr(), q.as_mut_ptr());
        let mut i = 0;
        while i < n16 {
            let a = one!(vld1q_f32(xp.add(i)));
            let b = one!(vld1q_f32(xp.add(i + 4)));
            let c = one!(vld1q_f32(xp.add(i + 8)));
            let d = one!(vld1q_f32(xp.add(i + 12)));
            let ab = vcombine_u16(vmovn_u32(a), vmovn_u32(b));
            let cd = vcombine_u16(vmovn_u32(c), vmovn_u32(d));
            vst1q_u8(qp.add(i), vcombine_u8(vmovn_u16(ab), vmovn_u16(cd)));
            i += 16;
        }
        for j in n16..x.len() {
            q[j] = quantize_one(x[j], p.scale, p.zero_point);
        }
    }
}
