//! The dotprod tiles (Cortex-A76 / Raspberry Pi 5 and later) and the i8mm tile.
//!
//! * dotprod, 12 x 8: `sdot` by element (4 columns x 4 k of weights against one row's 4 k,
//!   the row picked by the lane of a register that holds one k-quad of 4 rows). Per k-quad:
//!   the block's 12 rows (48 bytes, one `ld1` of 3 registers), the panel's 8 columns (32
//!   bytes, one `ld1` of 2), 24 `sdot`: 24 accumulators + 5 operands of the 32 registers.
//!   The dotprod intrinsics are unstable in Rust, so `sdot` is one instruction of inline asm.
//! * i8mm, 8 x 8: `usmmla` (u8 x i8 2x8 by 8x2 matrix product into a 2x2 i32 block) on the u8
//!   activations as they are (the U8Pairs layout: 2 rows x 8 k per 16 bytes; the driver
//!   subtracts `za * colsum[n]`). The weights' shared layout has 4 k per column and k-quad;
//!   two k-quads are zipped (`zip1`/`zip2` on 32-bit elements) into 2 columns x 8 k per
//!   register. 16 accumulators of 2 x 2; unstable intrinsics here too, so inline asm.

use std::arch::aarch64::*;
use std::arch::asm;

use crate::int8::layout::TILE_STRIDE;

/// Rows of the dotprod tile (and of its packed-A blocks).
pub(crate) const MR_DOT: usize = 12;
/// Rows of the i8mm tile.
pub(crate) const MR_I8MM: usize = 8;

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

/// `R <= 12` rows x 8 columns of raw sums (see [`crate::int8::layout`] for the contract).
///
/// # Safety
/// The CPU must have NEON and dotprod; `a` must hold one packed block (`kq * 48` bytes), `w`
/// one panel (`kq * 32` bytes) and `out` `R` rows of `TILE_STRIDE` writable i32.
#[target_feature(enable = "neon,dotprod")]
unsafe fn tile_dot<const R: usize>(a: *const u8, w: *const u8, kq: usize, out: *mut i32) {
    // SAFETY: (whole body) features and bounds as guaranteed by the caller: per k-quad, the
    // first ceil(R / 4) of the block's 3 groups of 4 rows (16 bytes each) and the panel's 32
    // bytes; the stores are R rows of 8 i32 of the tile buffer.
    unsafe {
        let z = vdupq_n_s32(0);
        let mut acc = [[z; 2]; R];
        let mut ap = a as *const i8;
        let mut wp = w as *const i8;
        for _ in 0..kq {
            let wv = vld1q_s8_x2(wp);
            // the groups of 4 rows this tile uses (a multi-register load when more than one)
            let av = match R.div_ceil(4) {
                1 => [vld1q_s8(ap), z8(), z8()],
                2 => {
                    let v = vld1q_s8_x2(ap);
                    [v.0, v.1, z8()]
                }
                _ => {
                    let v = vld1q_s8_x3(ap);
                    [v.0, v.1, v.2]
                }
            };
            macro_rules! row {
                ($r:literal, $l:literal) => {
                    if $r < R {
                        acc[$r][0] = sdot_lane::<$l>(acc[$r][0], wv.0, av[$r / 4]);
                        acc[$r][1] = sdot_lane::<$l>(acc[$r][1], wv.1, av[$r / 4]);
                    }
                };
            }
            row!(0, 0);
            row!(1, 1);
            row!(2, 2);
            row!(3, 3);
            row!(4, 0);
            row!(5, 1);
            row!(6, 2);
            row!(7, 3);
            row!(8, 0);
            row!(9, 1);
            row!(10, 2);
            row!(11, 3);
            ap = ap.add(4 * MR_DOT);
            wp = wp.add(32);
        }
        for (r, acc) in acc.iter().enumerate() {
            let o = out.add(r * TILE_STRIDE);
            vst1q_s32(o, acc[0]);
            vst1q_s32(o.add(4), acc[1]);
        }
    }
}

/// A zero byte vector.
#[inline(always)]
fn z8() -> int8x16_t {
    // SAFETY: register-only; NEON is part of the aarch64 baseline.
    unsafe { vdupq_n_s8(0) }
}

/// The dotprod tile for `rows <= 12` rows of the block.
///
/// # Safety
/// As [`tile_dot`], for `rows` rows.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn tile_dotprod(
    a: *const u8,
    w: *const u8,
    kq: usize,
    out: *mut i32,
    rows: usize,
) {
    // SAFETY: as guaranteed by the caller.
    unsafe {
        match rows {
            12 => tile_dot::<12>(a, w, kq, out),
            11 => tile_dot::<11>(a, w, kq, out),
            10 => tile_dot::<10>(a, w, kq, out),
            9 => tile_dot::<9>(a, w, kq, out),
            8 => tile_dot::<8>(a, w, kq, out),
            7 => tile_dot::<7>(a, w, kq, out),
            6 => tile_dot::<6>(a, w, kq, out),
            5 => tile_dot::<5>(a, w, kq, out),
            4 => tile_dot::<4>(a, w, kq, out),
            3 => tile_dot::<3>(a, w, kq, out),
            2 => tile_dot::<2>(a, w, kq, out),
            _ => tile_dot::<1>(a, w, kq, out),
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
