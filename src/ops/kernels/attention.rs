//! The attention driver: the loops of one (batch, head) over blocks of query rows, written
//! once for every instruction set. An instruction set provides the inner loops of a block
//! ([`AttnBody`]): the scores `Q K^T`, the masked softmax (two passes per row) and the product
//! with V, and may provide its own packing of K and V.
//!
//! Per head, K is packed once as K^T in panels of [`AttnBody::KEYS`] keys and V in panels of
//! [`AttnBody::VCOLS`] columns, both zero-padded to whole panels, so that the products read
//! their operands in order; then every block of [`AttnBody::ROWS`] query rows computes its
//! scores (`ROWS x sp`, the only part of the `S x S` matrix that ever exists), their masked
//! softmax, unnormalised, and `P V` divided by the row sums.

use super::{AttnDims, MaskView};

/// Most query rows a body may ask for per block.
pub(super) const MAX_ROWS: usize = 16;

/// The inner loops of one block of query rows, on pointers the driver ([`head`]) has checked.
/// A block has [`AttnBody::ROWS`] rows; when fewer are left, the body computes the missing ones
/// as copies of the last real row and never stores them.
pub(super) trait AttnBody {
    /// Query rows per block (at most [`MAX_ROWS`]).
    const ROWS: usize;
    /// Keys per panel of K^T: the scores are padded to `sp`, a multiple of it.
    const KEYS: usize;
    /// Columns (of the head) per panel of V: V is padded to `dp`, a multiple of it.
    const VCOLS: usize;

    /// K^T in panels of `KEYS` keys: key `j`, element `dd` at
    /// `kt[(j / KEYS) * d * KEYS + dd * KEYS + j % KEYS]`, zero for `seq_k <= j < sp`. The
    /// portable loop; a body may do it faster.
    ///
    /// # Safety
    /// `k` is valid for `seq_k` rows of `d` values at stride `k_stride`, `kt` for `d * sp`
    /// values (`sp` the multiple of `KEYS` at or above `seq_k`), written by no one else.
    #[inline(always)]
    unsafe fn pack_kt(
        k: *const f32,
        k_stride: usize,
        seq_k: usize,
        d: usize,
        sp: usize,
        kt: *mut f32,
    ) {
        for j in 0..sp {
            let panel = kt.add((j / Self::KEYS) * d * Self::KEYS + j % Self::KEYS);
            for dd in 0..d {
                *panel.add(dd * Self::KEYS) = if j < seq_k {
                    *k.add(j * k_stride + dd)
                } else {
                    0.0
                };
            }
        }
    }

    /// V in panels of `VCOLS` columns (the layout [`AttnBody::pv`] reads), zero-padded to
    /// `dp` columns. The portable loop; a body may do it faster.
    ///
    /// # Safety
    /// `v` is valid for `seq_k` rows of `d` values at stride `v_stride`, `vt` for `seq_k * dp`
    /// values (`dp` the multiple of `VCOLS` at or above `d`), written by no one else.
    #[inline(always)]
    unsafe fn pack_v(
        v: *const f32,
        v_stride: usize,
        seq_k: usize,
        d: usize,
        dp: usize,
        vt: *mut f32,
    ) {
        for c0 in (0..dp).step_by(Self::VCOLS) {
            let panel = vt.add(c0 * seq_k);
            for j in 0..seq_k {
                for l in 0..Self::VCOLS {
                    *panel.add(j * Self::VCOLS + l) = if c0 + l < d {
                        *v.add(j * v_stride + c0 + l)
                    } else {
                        0.0
                    };
                }
            }
        }
    }

    /// `sc[r * sp + j] = sum_dd q[r * q_stride + dd] * kt(j, dd)` for `r < ROWS`, `j < sp`
    /// (rows `r >= rows` read row `rows - 1` of Q), K^T as [`AttnBody::pack_kt`] lays it out.
    ///
    /// # Safety
    /// `q` is valid for `rows` rows of `d` values at stride `q_stride` (`rows >= 1`), `kt` for
    /// `d * sp` values, `sc` for `ROWS * sp`; `sp` is a multiple of `KEYS`.
    unsafe fn scores(
        q: *const f32,
        q_stride: usize,
        rows: usize,
        d: usize,
        kt: *const f32,
        sp: usize,
        sc: *mut f32,
    );

    /// `s[j] = s[j] * scale (+ mask[j])` for every `j`; returns the maximum (NaN when an
    /// element is NaN).
    ///
    /// # Safety
    /// `mask`, when given, has at least `s.len()` values (the CPU has the body's features).
    unsafe fn scale_mask_max(s: &mut [f32], mask: Option<&[f32]>, scale: f32) -> f32;

    /// `s[j] = exp(s[j] - mx)` for every `j`; returns their sum.
    ///
    /// # Safety
    /// The CPU has the body's features.
    unsafe fn exp_sum(s: &mut [f32], mx: f32) -> f32;

    /// `out[r * out_stride + c] = inv[r] * sum_j p[r * sp + j] * V[j][c]` for
    /// `r < inv.len()`, `c < d`, `j < seq_k`, V in panels of `VCOLS` columns: row `j`, column
    /// `c` at `vt[(c / VCOLS) * seq_k * VCOLS + j * VCOLS + c % VCOLS]`, zero for
    /// `d <= c < dp` (rows `r >= inv.len()` up to `ROWS` may be read from `p`, never stored).
    ///
    /// # Safety
    /// `p` is valid for `ROWS * sp` values (`sp >= seq_k`), `vt` for `seq_k * dp` values (`dp`
    /// the multiple of `VCOLS` at or above `d`), `out` for `inv.len()` rows of `d` values at
    /// stride `out_stride`, written by no one else meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn pv(
        p: *const f32,
        sp: usize,
        seq_k: usize,
        vt: *const f32,
        d: usize,
        inv: &[f32],
        out: *mut f32,
        out_stride: usize,
    );
}

/// K^T in panels of `KEYS` keys (the layout of [`AttnBody::pack_kt`]), 4 keys x 4 elements
/// at a time through `block4`, the odd ones one by one, zeros for `seq_k <= j < sp`. `block4`
/// is an instruction set's 4x4 transpose: it reads 4 values at each of its 4 row pointers and
/// writes column `c` of them (4 values) at its `c`-th output pointer.
///
/// # Safety
/// As [`AttnBody::pack_kt`]; `KEYS` is a multiple of 4, and `block4` touches only the 16
/// values it is given.
#[inline(always)]
pub(super) unsafe fn pack_kt_by_4x4<const KEYS: usize>(
    k: *const f32,
    k_stride: usize,
    seq_k: usize,
    d: usize,
    sp: usize,
    kt: *mut f32,
    block4: impl Fn([*const f32; 4], [*mut f32; 4]),
) {
    let at = |j: usize, dd: usize| kt.add((j / KEYS) * d * KEYS + dd * KEYS + j % KEYS);
    let mut j = 0;
    while j + 4 <= seq_k {
        let rows: [*const f32; 4] = std::array::from_fn(|r| k.add((j + r) * k_stride));
        let mut dd = 0;
        while dd + 4 <= d {
            // (j % KEYS is a multiple of 4: the 4 keys are side by side in one panel)
            block4(
                rows.map(|row| row.add(dd)),
                std::array::from_fn(|c| at(j, dd + c)),
            );
            dd += 4;
        }
        for dd in dd..d {
            for (r, row) in rows.iter().enumerate() {
                *at(j + r, dd) = *row.add(dd);
            }
        }
        j += 4;
    }
    for j in j..sp {
        for dd in 0..d {
            *at(j, dd) = if j < seq_k {
                *k.add(j * k_stride + dd)
            } else {
                0.0
            };
        }
    }
}

/// One (batch, head): K^T and V packed once, then blocks of `B::ROWS` query rows: scores,
/// masked softmax (unnormalised), `P V`, divided by the row sums.
///
/// # Safety
/// Q, K, V have the sizes of `dims` (checked by `attention_f32`), `out` points to
/// `batch * seq_q * heads * head_dim` writable f32 that no one else writes in this
/// batch/head's elements meanwhile, and the CPU has `B`'s features.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn head<B: AttnBody>(
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
    const {
        assert!(B::ROWS >= 1 && B::ROWS <= MAX_ROWS && B::KEYS >= 1 && B::VCOLS >= 1);
    };
    let AttnDims {
        seq_q,
        seq_k,
        heads,
        head_dim: d,
        ..
    } = dims;
    let hd = heads * d;
    let sp = seq_k.div_ceil(B::KEYS) * B::KEYS;
    let dp = d.div_ceil(B::VCOLS) * B::VCOLS;
    let rows_max = B::ROWS;
    let need = d * sp + seq_k * dp + rows_max * sp;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (kt, rest) = scratch.split_at_mut(d * sp);
    let (vt, sc) = rest.split_at_mut(seq_k * dp);
    let sc = &mut sc[..rows_max * sp];
    let at = b * seq_k * hd + h * d;
    // SAFETY: K and V hold seq_k rows of hd values for batch b (caller), of which this head
    // reads d from column h * d; kt holds d * sp values and vt seq_k * dp (just above).
    B::pack_kt(k[at..].as_ptr(), hd, seq_k, d, sp, kt.as_mut_ptr());
    B::pack_v(v[at..].as_ptr(), hd, seq_k, d, dp, vt.as_mut_ptr());
    let mut i0 = 0;
    while i0 < seq_q {
        let rows = (seq_q - i0).min(rows_max);
        let q_block = q[(b * seq_q + i0) * hd + h * d..].as_ptr();
        // SAFETY: rows i0..i0 + rows of Q exist (sizes checked by the caller), kt holds
        // d * sp values and sc rows_max * sp, sp is a multiple of B::KEYS.
        B::scores(q_block, hd, rows, d, kt.as_ptr(), sp, sc.as_mut_ptr());
        // masked softmax, unnormalised: p = exp(x - max); inv = 1 / sum
        let mut inv = [0f32; MAX_ROWS];
        for r in 0..rows {
            let i = i0 + r;
            let s = &mut sc[r * sp..r * sp + seq_k];
            let mr = mask.map(|m| &m.data[b * m.sb + h * m.sh + i * m.si..][..seq_k]);
            // SAFETY: the mask row has seq_k values (slice above); the CPU has B's features.
            let mx = B::scale_mask_max(s, mr, scale);
            if mx == f32::NEG_INFINITY || mx.is_nan() {
                // every key masked (or NaN inputs): softmax is NaN; the guard makes it 0
                inv[r] = if nan_to_zero && mx == f32::NEG_INFINITY {
                    0.0
                } else {
                    f32::NAN
                };
                s.fill(0.0);
                continue;
            }
            // SAFETY: the CPU has B's features.
            inv[r] = 1.0 / B::exp_sum(s, mx);
        }
        // SAFETY: sc holds rows_max * sp values, vt seq_k * dp; the output rows
        // i0..i0 + rows of this head are written only by this task (caller).
        B::pv(
            sc.as_ptr(),
            sp,
            seq_k,
            vt.as_ptr(),
            d,
            &inv[..rows],
            out.add((b * seq_q + i0) * hd + h * d),
            hd,
        );
        i0 += rows_max;
    }
}
