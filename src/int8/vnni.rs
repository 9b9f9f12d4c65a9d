//! The VNNI micro-tile (`vpdpbusd`: per i32 lane, the sum of 4 u8 x i8 products added to the
//! lane, no saturation), written once over a small vector interface ([`DotOps`]) so that the
//! same code runs with AVX-VNNI (ymm, 8 lanes), AVX-512 VNNI (zmm, 16 lanes) and, in the tests,
//! a portable emulation of the instruction: the tile's indexing and the driver around it are
//! then checked bit for bit on any machine, also where the instruction itself cannot run.
//!
//! Data: A is the U8 layout (the u8 activations as they are, `[block][q][r][4]`), so one row's
//! k-quad is one i32 to broadcast; W is the shared packed layout, where one k-quad of a panel
//! (8 columns x 4 k, 32 bytes) is exactly one ymm of `vpdpbusd` operands (lane j = column j).
//! A zmm takes the same k-quad of two neighbouring panels (low and high 256 bits).
//! The raw sums are `sum_k a * w`; the driver subtracts `za * colsum[n]` ([`super::gemm`]).
//!
//! Tiles: ymm 6 rows x 2 panels (12 accumulators + 2 weights + 1 broadcast of the 16 ymm
//! registers); zmm 8 rows x 4 panels (16 accumulators of 32 zmm registers).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
// the tile runs for real on x86-64 only (elsewhere only in the tests, emulated)
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_macros))]

use super::layout::TILE_STRIDE;
use super::pack::QUAD_BYTES;

/// Rows per tile, ymm.
pub(crate) const MR_YMM: usize = 6;
/// Panels per tile, ymm (2 ymm per row).
pub(crate) const NP_YMM: usize = 2;
/// Rows per tile, zmm.
pub(crate) const MR_ZMM: usize = 8;
/// Panels per tile, zmm (2 zmm per row).
pub(crate) const NP_ZMM: usize = 4;

/// The vector operations of the tile.
///
/// # Safety
/// Every method may use instructions of the implementation's target features (the caller
/// runs them only where the CPU has them: inside the kernel's `target_feature` functions),
/// and the pointer arguments must be valid for the bytes each method names.
pub(crate) trait DotOps {
    type V: Copy;
    /// Panels per vector (1: 8 i32 lanes, 2: 16 lanes).
    const PANELS: usize;
    /// All lanes 0.
    unsafe fn zero() -> Self::V;
    /// One k-quad of `panels` (1 or 2 <= PANELS) consecutive panels: panel `i`'s 32 bytes at
    /// `w + i * stride`; lanes of a missing panel are 0.
    unsafe fn load_w(w: *const u8, stride: usize, panels: usize) -> Self::V;
    /// The 4 bytes at `a` (one row's k-quad) in every lane.
    unsafe fn bcast(a: *const u8) -> Self::V;
    /// `acc + per lane sum of 4 products (u8 of a) x (i8 of w)`, wrapping.
    unsafe fn dot(acc: Self::V, a: Self::V, w: Self::V) -> Self::V;
    /// Stores the `8 * PANELS` lanes.
    unsafe fn store(out: *mut i32, v: Self::V);
}

/// `R <= MR` rows x `P <= NP` panels of raw sums `sum_k a * w` into `out` (row stride
/// `TILE_STRIDE` i32: the driver's buffer). `a`: one U8 block of `MR` rows; `w`: the first panel.
///
/// # Safety
/// The CPU must support `D`'s instructions; `a` must hold `kq * MR * 4` bytes, `w` the `P`
/// panels (`kq * 32` bytes each, at a stride of `kq * 32`), `out` `R` rows of `4 * 8` i32.
#[inline(always)]
pub(crate) unsafe fn tile<D: DotOps, const MR: usize, const R: usize, const P: usize>(
    a: *const u8,
    w: *const u8,
    kq: usize,
    out: *mut i32,
) {
    // vectors per row: ceil(P / PANELS) <= 2 (P <= 2 * PANELS)
    let nv = P.div_ceil(D::PANELS);
    let stride = kq * QUAD_BYTES;
    // SAFETY: (whole body) the caller guarantees the CPU features and every extent used:
    // A rows r < R <= MR of each k-quad, W panels < P of each k-quad, `out` rows < R.
    unsafe {
        let z = D::zero();
        let mut acc = [[z; 2]; R];
        let mut ap = a;
        let mut wp = w;
        for _ in 0..kq {
            let w0 = D::load_w(wp, stride, P.min(D::PANELS));
            let w1 = if nv > 1 {
                D::load_w(wp.add(D::PANELS * stride), stride, P - D::PANELS)
            } else {
                z
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = D::bcast(ap.add(4 * r));
                acc[0] = D::dot(acc[0], av, w0);
                if nv > 1 {
                    acc[1] = D::dot(acc[1], av, w1);
                }
            }
            ap = ap.add(4 * MR);
            wp = wp.add(QUAD_BYTES);
        }
        for (r, acc) in acc.iter().enumerate() {
            let o = out.add(r * TILE_STRIDE);
            D::store(o, acc[0]);
            if nv > 1 {
                D::store(o.add(D::PANELS * 8), acc[1]);
            }
        }
    }
}

/// Calls the `tile` instantiation for `rows` x `np` of the ymm tile (6 x 2). A macro so that
/// each call site, inside a `target_feature` function, gets code compiled with its features.
macro_rules! ymm_tile {
    ($d:ty, $a:expr, $w:expr, $kq:expr, $o:expr, $rows:expr, $np:expr) => {{
        use $crate::int8::vnni::{tile, MR_YMM};
        macro_rules! by_np {
            ($r:literal) => {
                match $np {
                    1 => tile::<$d, MR_YMM, $r, 1>($a, $w, $kq, $o),
                    _ => tile::<$d, MR_YMM, $r, 2>($a, $w, $kq, $o),
                }
            };
        }
        match $rows {
            1 => by_np!(1),
            2 => by_np!(2),
            3 => by_np!(3),
            4 => by_np!(4),
            5 => by_np!(5),
            _ => by_np!(6),
        }
    }};
}
#[cfg(any(test, target_arch = "x86_64"))]
pub(crate) use ymm_tile;

/// As [`ymm_tile`] for the zmm tile (8 x 4).
macro_rules! zmm_tile {
    ($d:ty, $a:expr, $w:expr, $kq:expr, $o:expr, $rows:expr, $np:expr) => {{
        use $crate::int8::vnni::{tile, MR_ZMM};
        macro_rules! by_np {
            ($r:literal) => {
                match $np {
                    1 => tile::<$d, MR_ZMM, $r, 1>($a, $w, $kq, $o),
                    2 => tile::<$d, MR_ZMM, $r, 2>($a, $w, $kq, $o),
                    3 => tile::<$d, MR_ZMM, $r, 3>($a, $w, $kq, $o),
                    _ => tile::<$d, MR_ZMM, $r, 4>($a, $w, $kq, $o),
                }
            };
        }
        match $rows {
            1 => by_np!(1),
            2 => by_np!(2),
            3 => by_np!(3),
            4 => by_np!(4),
            5 => by_np!(5),
            6 => by_np!(6),
            7 => by_np!(7),
            _ => by_np!(8),
        }
    }};
}
#[cfg(any(test, target_arch = "x86_64"))]
pub(crate) use zmm_tile;

/// Portable emulation of `vpdpbusd` on `L` lanes (tests only; `L / 8` panels per vector); the
/// driver runs the tiles with it in `gemm::runners::emulated`.
#[cfg(test)]
pub(crate) mod emulated {
    use super::*;

    pub(crate) struct Emu<const L: usize>;

    impl<const L: usize> DotOps for Emu<L> {
        type V = [[u8; 4]; L];
        const PANELS: usize = L / 8;
        unsafe fn zero() -> Self::V {
            [[0; 4]; L]
        }
        unsafe fn load_w(w: *const u8, stride: usize, panels: usize) -> Self::V {
            let mut v = [[0; 4]; L];
            for (i, lane) in v.iter_mut().enumerate() {
                if i / 8 < panels {
                    // SAFETY: the caller guarantees `panels` panels of 32 bytes at `stride`.
                    unsafe {
                        let p = w.add(i / 8 * stride + i % 8 * 4);
                        *lane = p.cast::<[u8; 4]>().read_unaligned();
                    }
                }
            }
            v
        }
        unsafe fn bcast(a: *const u8) -> Self::V {
            // SAFETY: the caller guarantees 4 readable bytes.
            [unsafe { a.cast::<[u8; 4]>().read_unaligned() }; L]
        }
        unsafe fn dot(acc: Self::V, a: Self::V, w: Self::V) -> Self::V {
            // lanes hold i32 accumulators as little-endian bytes
            let mut out = acc;
            for i in 0..L {
                let s: i32 = (0..4).map(|j| a[i][j] as i32 * w[i][j] as i8 as i32).sum();
                out[i] = i32::from_le_bytes(acc[i]).wrapping_add(s).to_le_bytes();
            }
            out
        }
        unsafe fn store(out: *mut i32, v: Self::V) {
            for (i, lane) in v.iter().enumerate() {
                // SAFETY: the caller guarantees L writable i32.
                unsafe { *out.add(i) = i32::from_le_bytes(*lane) };
            }
        }
    }
}
