//! The attention driver: the loops of one (batch, head) over blocks of query rows, written
//! once for every instruction set. An instruction set provides the three inner loops of a
//! block ([`AttnBody`]): the scores `Q K^T`, the masked softmax (two passes per row), and the
//! product with V.

use super::{AttnDims, MaskView};

/// Most query rows a body may ask for per block.
pub(super) const MAX_ROWS: usize = 16;

/// The inner loops of one block of query rows, on pointers the driver ([`head`]) has checked.
/// A block has [`AttnBody::ROWS`] rows; when fewer are left, the body computes the missing ones
/// as copies of the last real row and never stores them.
pub(super) trait AttnBody {
    /// Query rows per block (at most [`MAX_ROWS`]).
    const ROWS: usize;
    /// K^T is zero-padded to a multiple of this many keys (`sp`).
    const COLS: usize;

    /// `sc[r * sp + j] = sum_dd q[r * q_stride + dd] * K[j][dd]` for `r < ROWS`, `j < sp`
    /// (rows `r >= rows` read row `rows - 1` of Q). K^T comes in panels of `COLS` keys:
    /// key `j`, element `dd` at `kt[(j / COLS) * d * COLS + dd * COLS + j % COLS]` (zero for
    /// `j >= seq_k`), so that a block of scores reads its panel in order.
    ///
    /// # Safety
    /// `q` is valid for `rows` rows of `d` values at stride `q_stride` (`rows >= 1`), `kt` for
    /// `d * sp` values, `sc` for `ROWS * sp`; `sp` is a multiple of `COLS`.
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

    /// `out[r * out_stride + c] = inv[r] * sum_j p[r * sp + j] * v[j * v_stride + c]` for
    /// `r < inv.len()`, `c < d`, `j < seq_k` (rows `r >= inv.len()` up to `ROWS` may be read
    /// from `p`, never stored).
    ///
    /// # Safety
    /// `p` is valid for `ROWS * sp` values (`sp >= seq_k`), `v` for `seq_k` rows of `d` values
    /// at stride `v_stride`, `out` for `inv.len()` rows of `d` values at stride `out_stride`,
    /// written by no one else meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn pv(
        p: *const f32,
        sp: usize,
        seq_k: usize,
        v: *const f32,
        v_stride: usize,
        d: usize,
        inv: &[f32],
        out: *mut f32,
        out_stride: usize,
    );
}

/// One (batch, head): K^T packed once (panels of `B::COLS` keys, zero-padded), then blocks of
/// `B::ROWS` query rows: scores, masked softmax (unnormalised), `P V`, divided by the row
/// sums.
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
    const { assert!(B::ROWS >= 1 && B::ROWS <= MAX_ROWS && B::COLS >= 1) };
    let AttnDims {
        seq_q,
        seq_k,
        heads,
        head_dim: d,
        ..
    } = dims;
    let hd = heads * d;
    let sp = seq_k.div_ceil(B::COLS) * B::COLS;
    let rows_max = B::ROWS;
    if scratch.len() < d * sp + rows_max * sp {
        scratch.resize(d * sp + rows_max * sp, 0.0);
    }
    let (kt, sc) = scratch.split_at_mut(d * sp);
    let sc = &mut sc[..rows_max * sp];
    // K^T of this head in panels of B::COLS keys, zero-padded to whole panels
    let cols = B::COLS;
    for (j, row) in k[b * seq_k * hd..]
        .chunks(hd)
        .take(seq_k)
        .map(|r| &r[h * d..][..d])
        .enumerate()
    {
        let panel = &mut kt[(j / cols) * d * cols + j % cols..];
        for (dd, &x) in row.iter().enumerate() {
            panel[dd * cols] = x;
        }
    }
    for j in seq_k..sp {
        let panel = &mut kt[(j / cols) * d * cols + j % cols..];
        for dd in 0..d {
            panel[dd * cols] = 0.0;
        }
    }
    let v_head = v[b * seq_k * hd + h * d..].as_ptr();
    let mut i0 = 0;
    while i0 < seq_q {
        let rows = (seq_q - i0).min(rows_max);
        let q_block = q[(b * seq_q + i0) * hd + h * d..].as_ptr();
        // SAFETY: rows i0..i0 + rows of Q exist (sizes checked by the caller), kt holds
        // d * sp values and sc rows_max * sp, sp is a multiple of B::COLS.
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
        // SAFETY: sc holds rows_max * sp values, V seq_k rows of this head at stride hd
        // (sizes checked by the caller); the output rows i0..i0 + rows of this head are
        // written only by this task (caller).
        B::pv(
            sc.as_ptr(),
            sp,
            seq_k,
            v_head,
            hd,
            d,
            &inv[..rows],
            out.add((b * seq_q + i0) * hd + h * d),
            hd,
        );
        i0 += rows_max;
    }
}
