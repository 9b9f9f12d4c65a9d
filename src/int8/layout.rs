//! The packed-A formats and the contract between the GEMM driver and the micro-tiles of the
//! instruction-set files (a leaf: it imports nothing of the int8 module but [`super::pack`]).
//!
//! A tile, `tile(a, w, kq, out, rows, np)` (the signature the driver's closures have),
//! computes raw sums `sum_k â[m,k] * w[k,n]` of `rows <= MR` rows of one packed-A
//! block and `np` panels of 8 columns of the packed weights ([`super::pack`]): it reads the
//! block at `a`, panel `i` at `w + i * kq * 32`, and writes row `r`, panel `i` into
//! `out[r * TILE_STRIDE + 8 * i..][..8]`. The driver ([`super::gemm`]) owns every loop around
//! it, the zero-point compensation and the epilogue.

use super::pack::NR;

/// i32 values per row of a tile's output buffer (room for up to 4 panels).
pub(crate) const TILE_STRIDE: usize = 4 * NR;

/// Packed-A formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AFormat {
    /// i16 `a - za`, k-quads of MR rows: `[block][q][r][4]`.
    I16MinusZa,
    /// i8 `a - 128` (`a ^ 0x80`), k-quads of MR rows: `[block][q][r][4]`.
    I8Shifted,
    /// u8 `a` as is, k-quads of MR rows: `[block][q][r][4]` (VNNI `vpdpbusd`).
    U8,
    /// u8 `a` as is, pairs of k-quads (8 k) of pairs of rows: `[block][q / 2][r / 2][2][8]`,
    /// a 2 x 8 matrix per 16 bytes (i8mm `usmmla`); k past K (an odd last quad) is 0.
    U8Pairs,
}

impl AFormat {
    /// Values (of the format's element type) in one packed block of `mr` rows of `k`.
    pub(crate) fn block_len(self, mr: usize, k: usize) -> usize {
        let kq = k.div_ceil(4);
        match self {
            // U8Pairs rounds K up to whole pairs of quads (8 k)
            AFormat::U8Pairs => kq.div_ceil(2) * 8 * mr,
            _ => kq * mr * 4,
        }
    }

    /// Bytes of one element.
    pub(crate) fn elem_bytes(self) -> usize {
        match self {
            AFormat::I16MinusZa => 2,
            _ => 1,
        }
    }

    /// `za'` of the driver's `za' * colsum[n]` term for activations with zero point `za`:
    /// what turns the tile's raw sums over `â` into sums over `a - za`.
    pub(crate) fn col_offset(self, za: u8) -> i32 {
        match self {
            AFormat::I16MinusZa => 0,
            AFormat::I8Shifted => 128 - za as i32,
            AFormat::U8 | AFormat::U8Pairs => -(za as i32),
        }
    }
}

/// The epilogue's values for one panel of 8 columns (0 past N), as the driver hands them to
/// an instruction set's store: `y = (raw + colterm - zp * rowsum) as f32 * scale + bias`.
pub(crate) struct PanelEpilogue<'a> {
    /// `za' * colsum[n]`, see [`AFormat::col_offset`].
    pub colterm: &'a [i32; NR],
    /// The weights' zero points, when not all 0.
    pub zp: Option<&'a [i32; NR]>,
    /// `sa * sw[n]` (0 for an i32 output).
    pub scale: &'a [f32; NR],
    pub bias: Option<&'a [f32; NR]>,
}

/// `-0.0` in every column: the bias of an op without one when a tile adds it anyway (adding
/// -0.0 changes no value, -0.0 and NaN included).
pub(crate) static NO_BIAS: [f32; NR] = [-0.0; NR];

/// Where a tile that applies the f32 epilogue itself writes (a whole tile, the weights' zero
/// points all 0): row `r`, column `j` of the tile goes to `y + r * ldy + j` as
/// `(raw + colterm[j]) as f32 * scale[j] + bias[j]` (`bias`: [`NO_BIAS`] when the op has
/// none), the same two roundings as the driver's store.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(crate) struct DirectOut {
    pub colterm: *const i32,
    pub scale: *const f32,
    pub bias: *const f32,
    pub y: *mut f32,
    /// The output's row stride, in f32.
    pub ldy: usize,
}
