//! The dotprod tiles (Cortex-A76 / Raspberry Pi 5 and later) and the i8mm tile.
//!
//! * dotprod, 12 x 8: `sdot` by element (4 columns x 4 k of weights against one row's 4 k,
//!   the row picked by the lane of a register that holds one k-quad of 4 rows). Per k-quad:
//!   the block's 12 rows (48 bytes, one `ld1` of 3 registers), the panel's 8 columns (32
//!   bytes, one `ld1` of 2), 24 `sdot`: 24 accumulators + 5 operands of the 32 registers.
//!   The dotprod intrinsics are unstable in Rust, so `sdot` is inline asm: one instruction
//!   in the intrinsic tile, and the whole loop for blocks of 12 and 8 rows (LLVM loaded the
//!   48 bytes of a quad's activations with 3 instructions where one `ld1` does).
//! * i8mm, 8 x 8: `usmmla` (u8 x i8 2x8 by 8x2 matrix product into a 2x2 i32 block) on the u8
//!   activations as they are (the U8Pairs layout: 2 rows x 8 k per 16 bytes; the driver
//!   subtracts `za * colsum[n]`). The weights' shared layout has 4 k per column and k-quad;
//!   two k-quads are zipped (`zip1`/`zip2` on 32-bit elements) into 2 columns x 8 k per
//!   register. 16 accumulators of 2 x 2; unstable intrinsics here too, so inline asm.

use std::arch::aarch64::*;
use std::arch::asm;

use crate::int8::layout::{DirectOut, TILE_STRIDE};

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

/// The two `sdot` of one row: accumulators `$c0`, `$c1` += the weights v24, v25 (columns
/// 0-3, 4-7) times the row's k-quad, lane `$l` of activation register `$a`.
#[rustfmt::skip]
macro_rules! sdot_row {
    ($c0:literal, $c1:literal, $a:literal, $l:literal) => {
        concat!(
            "sdot ", $c0, ".4s, v24.16b, ", $a, ".4b[", $l, "]\n",
            "sdot ", $c1, ".4s, v25.16b, ", $a, ".4b[", $l, "]\n",
        )
    };
}

/// Rows 0-7 (activations v26, v27) of one k-quad.
macro_rules! sdot_rows8 {
    () => {
        concat!(
            sdot_row!("v0", "v1", "v26", 0),
            sdot_row!("v2", "v3", "v26", 1),
            sdot_row!("v4", "v5", "v26", 2),
            sdot_row!("v6", "v7", "v26", 3),
            sdot_row!("v8", "v9", "v27", 0),
            sdot_row!("v10", "v11", "v27", 1),
            sdot_row!("v12", "v13", "v27", 2),
            sdot_row!("v14", "v15", "v27", 3),
        )
    };
}

/// Rows 0-11 (activations v26-v28) of one k-quad.
macro_rules! sdot_rows12 {
    () => {
        concat!(
            sdot_rows8!(),
            sdot_row!("v16", "v17", "v28", 0),
            sdot_row!("v18", "v19", "v28", 1),
            sdot_row!("v20", "v21", "v28", 2),
            sdot_row!("v22", "v23", "v28", 3),
        )
    };
}

/// Stores of rows 0-7 (`st1` of 2 registers, then the output pointer moves one row on).
macro_rules! store_rows8 {
    () => {
        concat!(
            "st1 {{v0.4s, v1.4s}}, [{out}], {row}\n",
            "st1 {{v2.4s, v3.4s}}, [{out}], {row}\n",
            "st1 {{v4.4s, v5.4s}}, [{out}], {row}\n",
            "st1 {{v6.4s, v7.4s}}, [{out}], {row}\n",
            "st1 {{v8.4s, v9.4s}}, [{out}], {row}\n",
            "st1 {{v10.4s, v11.4s}}, [{out}], {row}\n",
            "st1 {{v12.4s, v13.4s}}, [{out}], {row}\n",
            "st1 {{v14.4s, v15.4s}}, [{out}], {row}\n",
        )
    };
}

/// One dotprod tile of 12 or 8 rows as a block of assembly: zero the accumulators, the loop
/// over pairs of k-quads (per quad one `ld1` of the weights, one of the activations, then
/// `$rows`), an odd last quad, then `$stores` with the operands `$ops`.
macro_rules! dot_asm {
    ($a:ident, $w:ident, $kq:ident, $load_a:literal, $rows:expr, $stores:expr, $($ops:tt)*) => {{
        let (pairs, odd) = ($kq / 2, $kq % 2);
        asm!(
            "movi v0.4s, #0", "movi v1.4s, #0", "movi v2.4s, #0", "movi v3.4s, #0",
            "movi v4.4s, #0", "movi v5.4s, #0", "movi v6.4s, #0", "movi v7.4s, #0",
            "movi v8.4s, #0", "movi v9.4s, #0", "movi v10.4s, #0", "movi v11.4s, #0",
            "movi v12.4s, #0", "movi v13.4s, #0", "movi v14.4s, #0", "movi v15.4s, #0",
            "movi v16.4s, #0", "movi v17.4s, #0", "movi v18.4s, #0", "movi v19.4s, #0",
            "movi v20.4s, #0", "movi v21.4s, #0", "movi v22.4s, #0", "movi v23.4s, #0",
            "cbz {pairs}, 2f",
            "1:",
            "ld1 {{v24.16b, v25.16b}}, [{w}], #32",
            $load_a,
            $rows,
            "ld1 {{v24.16b, v25.16b}}, [{w}], #32",
            $load_a,
            $rows,
            "subs {pairs}, {pairs}, #1",
            "b.ne 1b",
            "2:",
            "cbz {odd}, 3f",
            "ld1 {{v24.16b, v25.16b}}, [{w}]",
            $load_a,
            $rows,
            "3:",
            $stores,
            a = inout(reg) $a => _,
            w = inout(reg) $w => _,
            pairs = inout(reg) pairs => _,
            odd = in(reg) odd,
            astride = in(reg) 4 * MR_DOT,
            $($ops)*
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
            out("v6") _, out("v7") _, out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _, out("v16") _, out("v17") _,
            out("v18") _, out("v19") _, out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _, out("v28") _, out("v29") _,
            options(nostack)
        )
    }};
}

/// Stores of rows 8-11 (after [`store_rows8`]).
macro_rules! store_rows12 {
    () => {
        concat!(
            store_rows8!(),
            "st1 {{v16.4s, v17.4s}}, [{out}], {row}\n",
            "st1 {{v18.4s, v19.4s}}, [{out}], {row}\n",
            "st1 {{v20.4s, v21.4s}}, [{out}], {row}\n",
            "st1 {{v22.4s, v23.4s}}, [{out}], {row}\n",
        )
    };
}

/// The fused epilogue of rows 0-7 ([`DirectOut`]).
macro_rules! epi_rows8 {
    () => {
        concat!(
            epi_load!(),
            epi_row!("v0", "v1"),
            epi_row!("v2", "v3"),
            epi_row!("v4", "v5"),
            epi_row!("v6", "v7"),
            epi_row!("v8", "v9"),
            epi_row!("v10", "v11"),
            epi_row!("v12", "v13"),
            epi_row!("v14", "v15"),
        )
    };
}

/// The fused epilogue of rows 0-11.
macro_rules! epi_rows12 {
    () => {
        concat!(
            epi_rows8!(),
            epi_row!("v16", "v17"),
            epi_row!("v18", "v19"),
            epi_row!("v20", "v21"),
            epi_row!("v22", "v23"),
        )
    };
}

/// The tile of 12 rows (`TWELVE`) or 8 as one block of assembly (accumulators v0-v23 or
/// v0-v15, weights v24-v25, activations v26-v28 or v26-v27), into the driver's buffer.
///
/// # Safety
/// As [`tile_dot`] with `R` = 12 or 8.
#[target_feature(enable = "neon,dotprod")]
unsafe fn tile_dot_asm<const TWELVE: bool>(a: *const u8, w: *const u8, kq: usize, out: *mut i32) {
    // SAFETY: the features are there (caller). Per k-quad the assembly reads the panel's 32
    // bytes and the first 48 or 32 of the block's 48 (one ld1 each, no alignment needed): kq
    // quads of the block and panel the caller guarantees; it writes 12 or 8 rows of 8 i32 at
    // `out + r * TILE_STRIDE`; it touches no other memory, and every vector register it uses
    // is declared clobbered.
    unsafe {
        if TWELVE {
            dot_asm!(
                a, w, kq,
                "ld1 {{v26.16b, v27.16b, v28.16b}}, [{a}], {astride}",
                sdot_rows12!(),
                store_rows12!(),
                out = inout(reg) out => _,
                row = in(reg) 4 * TILE_STRIDE,
            )
        } else {
            dot_asm!(
                a, w, kq,
                "ld1 {{v26.16b, v27.16b}}, [{a}], {astride}",
                sdot_rows8!(),
                store_rows8!(),
                out = inout(reg) out => _,
                row = in(reg) 4 * TILE_STRIDE,
            )
        }
    }
}

/// [`tile_dot_asm`] with the f32 epilogue applied in registers and stored to the output
/// ([`DirectOut`]): for whole tiles of weights whose zero points are all 0.
///
/// # Safety
/// As [`tile_dot_asm`] for `a`, `w`, `kq`; `d` must point at 8 values of `colterm`, `scale`
/// and `bias`, and `d.y + r * d.ldy` at 8 writable f32 for each of the 12 or 8 rows.
#[target_feature(enable = "neon,dotprod")]
unsafe fn tile_dot_asm_direct<const TWELVE: bool>(
    a: *const u8,
    w: *const u8,
    kq: usize,
    d: &DirectOut,
) {
    // SAFETY: as for `tile_dot_asm`, the vectors and rows of `d` written instead of the
    // buffer, as the caller guarantees.
    unsafe {
        if TWELVE {
            dot_asm!(
                a, w, kq,
                "ld1 {{v26.16b, v27.16b, v28.16b}}, [{a}], {astride}",
                sdot_rows12!(),
                epi_rows12!(),
                ct = in(reg) d.colterm,
                sc = in(reg) d.scale,
                bi = in(reg) d.bias,
                y = inout(reg) d.y => _,
                ldy = in(reg) d.ldy * 4,
            )
        } else {
            dot_asm!(
                a, w, kq,
                "ld1 {{v26.16b, v27.16b}}, [{a}], {astride}",
                sdot_rows8!(),
                epi_rows8!(),
                ct = in(reg) d.colterm,
                sc = in(reg) d.scale,
                bi = in(reg) d.bias,
                y = inout(reg) d.y => _,
                ldy = in(reg) d.ldy * 4,
            )
        }
    }
}

/// The dotprod tile with the fused epilogue for `rows` (12 or 8) rows.
///
/// # Safety
/// As [`tile_dot_asm_direct`]; `rows` is 12 or 8.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn tile_dotprod_direct(
    a: *const u8,
    w: *const u8,
    kq: usize,
    d: &DirectOut,
    rows: usize,
) {
    // SAFETY: as guaranteed by the caller.
    unsafe {
        if rows == 12 {
            tile_dot_asm_direct::<true>(a, w, kq, d)
        } else {
            tile_dot_asm_direct::<false>(a, w, kq, d)
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
            12 => tile_dot_asm::<true>(a, w, kq, out),
            11 => tile_dot::<11>(a, w, kq, out),
            10 => tile_dot::<10>(a, w, kq, out),
            9 => tile_dot::<9>(a, w, kq, out),
            8 => tile_dot_asm::<false>(a, w, kq, out),
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
