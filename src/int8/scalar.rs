//! Portable primitives: the reference tile (i16 `a - za` times the packed i8 weights) and the
//! row packers every kernel without a vector packer of its own uses.

use super::layout::{AFormat, TILE_STRIDE};
use super::pack::{NR, QUAD_BYTES};

/// Rows of the portable tile.
pub(crate) const MR: usize = 4;

/// Portable tile: MR = 4, A = i16 `a - za` (see [`super::layout`] for the contract).
///
/// # Safety
/// `a` must point at `kq * 16` i16 values (one packed block), `w` at `kq * 32` bytes (one
/// panel) and `out` at `4 x TILE_STRIDE` writable i32 (the driver's tile buffer).
pub(crate) unsafe fn tile_scalar(a: *const u8, w: *const u8, kq: usize, out: *mut i32) {
    // SAFETY: the caller guarantees both extents; the packed A buffer is a Vec<i16>, so `a`
    // is aligned for i16.
    let (a, w) = unsafe {
        (
            std::slice::from_raw_parts(a as *const i16, kq * MR * 4),
            std::slice::from_raw_parts(w as *const i8, kq * QUAD_BYTES),
        )
    };
    let mut acc = [[0i32; NR]; MR];
    for q in 0..kq {
        let wq = &w[q * QUAD_BYTES..(q + 1) * QUAD_BYTES];
        for r in 0..MR {
            let aq = &a[(q * MR + r) * 4..(q * MR + r) * 4 + 4];
            for j in 0..NR {
                let wj = &wq[j * 4..j * 4 + 4];
                let mut s = 0i32;
                for i in 0..4 {
                    s += aq[i] as i32 * wj[i] as i32;
                }
                acc[r][j] = acc[r][j].wrapping_add(s);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: row r of the driver's buffer (row stride TILE_STRIDE) is writable.
        unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), out.add(r * TILE_STRIDE), NR) };
    }
}

/// Row `r` of a block of `mr` rows into the U8 / U8Pairs layouts (`dst`: the block). Returns
/// the sum of the row's u8 values.
pub(crate) fn pack_row_u8(fmt: AFormat, src: &[u8], dst: &mut [u8], mr: usize, r: usize) -> i32 {
    let mut s = 0i32;
    for (q, chunk) in src.chunks(4).enumerate() {
        let at = match fmt {
            AFormat::U8 => (q * mr + r) * 4,
            // [q / 2][r / 2][r % 2][q % 2][4]
            _ => ((q / 2 * mr + r / 2 * 2 + r % 2) * 2 + q % 2) * 4,
        };
        dst[at..at + chunk.len()].copy_from_slice(chunk);
        s += chunk.iter().map(|&x| x as i32).sum::<i32>();
    }
    s
}

/// One row into the i16 `a - za` layout: k-quad `q` of the row goes to `dst[q * stride..][..4]`.
/// Returns the sum of the row's u8 values.
pub(crate) fn pack_row_i16(src: &[u8], dst: &mut [i16], stride: usize, za: u8) -> i32 {
    let mut s = 0i32;
    for (q, chunk) in src.chunks(4).enumerate() {
        let d = &mut dst[q * stride..q * stride + chunk.len()];
        for (d, &x) in d.iter_mut().zip(chunk) {
            *d = x as i16 - za as i16;
            s += x as i32;
        }
    }
    s
}

/// Row `r` of a block of `mr` rows into the I8Shifted layout (`a ^ 0x80`, `dst`: the block).
/// Returns the sum of the row's u8 values.
pub(crate) fn pack_row_i8(src: &[u8], dst: &mut [i8], mr: usize, r: usize) -> i32 {
    let mut s = 0i32;
    for (q, chunk) in src.chunks(4).enumerate() {
        let d = &mut dst[(q * mr + r) * 4..(q * mr + r) * 4 + 4];
        for (d, &x) in d.iter_mut().zip(chunk) {
            *d = (x ^ 0x80) as i8;
            s += x as i32;
        }
    }
    s
}
