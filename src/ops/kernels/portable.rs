//! Portable bodies of the f32 kernels, plain Rust loops: the scalar reference (separate
//! multiply and add, `f32::exp`), and the fast `exp` whose polynomial the SIMD bodies use
//! ([`exp_neg`], [`exp_consts`]).

use super::attention::AttnBody;

/// Cephes' `exp` constants: `ln 2` split in two (Cody-Waite), the 1.5 * 2^23 rounding
/// shifter, the smallest argument, and the polynomial for `e^r`, `|r| <= ln(2) / 2`.
pub(super) mod exp_consts {
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    pub const SHIFTER: f32 = 12_582_912.0;
    pub const LO: f32 = -87.336_55;
    pub const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ];
}

/// `e^x` for `x <= 0` (the softmax's `x - max`), Cephes' polynomial on a Cody-Waite reduced
/// argument; branch-free arithmetic (the integer part is rounded with the 1.5 * 2^23 shifter,
/// whose low mantissa bits then hold it: no float-to-int conversion). Below
/// `ln(f32::MIN_POSITIVE)` it returns ~1.2e-38 instead of 0 (invisible after the softmax's
/// division by a sum >= 1).
#[inline(always)]
#[cfg_attr(not(any(test, target_arch = "x86_64")), allow(dead_code))]
pub(crate) fn exp_neg(x: f32) -> f32 {
    use exp_consts::*;
    let x = if x < LO { LO } else { x };
    let t = x * LOG2E + SHIFTER;
    let n = t - SHIFTER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = P[0];
    for c in &P[1..] {
        p = p * r + c;
    }
    let y = p * r * r + r + 1.0;
    // t's bits are 0x4B40_0000 + n: the exponent field of 2^n is n + 127
    let scale = f32::from_bits(t.to_bits().wrapping_add(127u32.wrapping_sub(0x4B40_0000)) << 23);
    y * scale
}

/// The portable attention body, the reference: blocks of 6 query rows by 16 keys (`Q K^T`)
/// or 16 columns of the head (`P V`), separate multiply and add, `f32::exp`.
pub(super) struct Portable;

/// Query rows per block of the portable body.
const ROWS: usize = 6;
/// Columns per register tile.
const COLS: usize = 16;

impl AttnBody for Portable {
    const ROWS: usize = ROWS;
    const KEYS: usize = COLS;
    const VCOLS: usize = COLS;

    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    unsafe fn scores(
        q: *const f32,
        q_stride: usize,
        rows: usize,
        d: usize,
        kt: *const f32,
        sp: usize,
        sc: *mut f32,
    ) {
        // rows past the end repeat the last real row (computed, never stored)
        let qp: [*const f32; ROWS] = std::array::from_fn(|r| q.add(r.min(rows - 1) * q_stride));
        let mut jc = 0;
        while jc < sp {
            let mut acc = [[0f32; COLS]; ROWS];
            // `kp` walks the panel of keys `jc..jc + COLS` (sp is a multiple of COLS, kt holds
            // d * sp values), each `qp[r]` reads `d` values of a Q row (caller)
            let mut kp = kt.add(jc * d);
            for dd in 0..d {
                let kv = &*(kp as *const [f32; COLS]);
                for r in 0..ROWS {
                    let x = *qp[r].add(dd);
                    for l in 0..COLS {
                        acc[r][l] += x * kv[l];
                    }
                }
                kp = kp.add(COLS);
            }
            for r in 0..ROWS {
                std::ptr::copy_nonoverlapping(acc[r].as_ptr(), sc.add(r * sp + jc), COLS);
            }
            jc += COLS;
        }
    }

    #[inline(always)]
    unsafe fn scale_mask_max(s: &mut [f32], mask: Option<&[f32]>, scale: f32) -> f32 {
        match mask {
            Some(mr) => {
                for (x, &a) in s.iter_mut().zip(mr) {
                    *x = *x * scale + a;
                }
            }
            None => s.iter_mut().for_each(|x| *x *= scale),
        }
        max8(s)
    }

    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    unsafe fn exp_sum(s: &mut [f32], mx: f32) -> f32 {
        let mut sums = [0f32; 8];
        let mut chunks = s.chunks_exact_mut(8);
        for c in &mut chunks {
            for l in 0..8 {
                let e = (c[l] - mx).exp();
                c[l] = e;
                sums[l] += e;
            }
        }
        let mut sum = 0f32;
        for x in chunks.into_remainder() {
            let e = (*x - mx).exp();
            *x = e;
            sum += e;
        }
        sum + sums.iter().sum::<f32>()
    }

    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    unsafe fn pv(
        p: *const f32,
        sp: usize,
        seq_k: usize,
        vt: *const f32,
        d: usize,
        inv: &[f32],
        out: *mut f32,
        out_stride: usize,
    ) {
        let mut dc = 0;
        while dc < d {
            let w = (d - dc).min(COLS);
            let mut acc = [[0f32; COLS]; ROWS];
            // `vp` walks the panel of columns dc..dc + COLS (seq_k rows of COLS values),
            // `pp[r]` the scores row r (sp >= seq_k values): both inside what the caller
            // guarantees
            let pp: [*const f32; ROWS] = std::array::from_fn(|r| p.add(r * sp));
            let mut vp = vt.add(dc * seq_k);
            for j in 0..seq_k {
                let vr = &*(vp as *const [f32; COLS]);
                for r in 0..ROWS {
                    let p = *pp[r].add(j);
                    for l in 0..COLS {
                        acc[r][l] += p * vr[l];
                    }
                }
                vp = vp.add(COLS);
            }
            for (r, &inv) in inv.iter().enumerate() {
                let dst = out.add(r * out_stride + dc);
                for l in 0..w {
                    *dst.add(l) = acc[r][l] * inv;
                }
            }
            dc += COLS;
        }
    }
}

/// Maximum of a slice (NaN if any element is NaN), eight lanes at a time.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn max8(s: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 8];
    let mut nan = false;
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            m[l] = if c[l] > m[l] { c[l] } else { m[l] };
            nan |= c[l].is_nan();
        }
    }
    for &x in chunks.remainder() {
        m[0] = if x > m[0] { x } else { m[0] };
        nan |= x.is_nan();
    }
    if nan {
        return f32::NAN;
    }
    m.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Sum of a slice, eight lanes at a time.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn sum8(s: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    let mut t = 0f32;
    for &x in chunks.remainder() {
        t += x;
    }
    let a = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (a[0] + a[2]) + (a[1] + a[3]) + t
}

/// Rows of `n`: `y = LayerNorm(x [+ r]) * gamma [+ beta]` with the ONNX formula in tract's
/// operation order (mean = sum / n, d = x - mean, var = sum(d^2) / n,
/// y = d * (1 / sqrt(var + eps)) * gamma + beta); only the summation order differs.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
pub(super) fn add_layer_norm_body(
    x: &[f32],
    r: Option<&[f32]>,
    gamma: &[f32],
    beta: Option<&[f32]>,
    eps: f32,
    y: &mut [f32],
) {
    let n = gamma.len();
    let len = n as f32;
    for (row, yr) in y.chunks_exact_mut(n).enumerate() {
        let xr = &x[row * n..][..n];
        match r {
            Some(r) => {
                let rr = &r[row * n..][..n];
                for j in 0..n {
                    yr[j] = xr[j] + rr[j];
                }
            }
            None => yr.copy_from_slice(xr),
        }
        let mean = sum8(yr) / len;
        let mut acc = [0f32; 8];
        let mut chunks = yr.chunks_exact_mut(8);
        for c in &mut chunks {
            for l in 0..8 {
                c[l] -= mean;
                acc[l] += c[l] * c[l];
            }
        }
        let mut t = 0f32;
        for v in chunks.into_remainder() {
            *v -= mean;
            t += *v * *v;
        }
        let a = [
            acc[0] + acc[4],
            acc[1] + acc[5],
            acc[2] + acc[6],
            acc[3] + acc[7],
        ];
        let var = ((a[0] + a[2]) + (a[1] + a[3]) + t) / len;
        let inv = (var + eps).sqrt().recip();
        match beta {
            Some(b) => {
                for j in 0..n {
                    yr[j] = yr[j] * inv * gamma[j] + b[j];
                }
            }
            None => {
                for j in 0..n {
                    yr[j] = yr[j] * inv * gamma[j];
                }
            }
        }
    }
}
