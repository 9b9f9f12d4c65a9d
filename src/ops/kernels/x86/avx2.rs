//! The AVX2 + FMA attention body: blocks of 6 query rows by 16 keys (`Q K^T`) or 16 columns of
//! the head (`P V`), 12 accumulating registers of 16, one broadcast per row and `k`; the
//! softmax 8 lanes at a time with the portable `exp` polynomial
//! ([`exp_neg`](super::super::portable::exp_neg)) on 8 lanes.

use std::arch::x86_64::*;

use super::super::attention::AttnBody;
use super::super::portable::exp_consts::{LN2_HI, LN2_LO, LO, LOG2E, P, SHIFTER};
use super::super::portable::exp_neg;
use super::{pack_kt_sse, pack_v_sse};

/// The AVX2 + FMA attention body.
pub(in super::super) struct Avx2;

/// One row of a 6 x 16 accumulator tile (named registers: plain values to the compiler).
#[derive(Clone, Copy)]
struct Row(__m256, __m256);

impl Row {
    #[inline(always)]
    unsafe fn zero() -> Row {
        Row(_mm256_setzero_ps(), _mm256_setzero_ps())
    }

    /// `self + b * x` with `x` broadcast from memory.
    #[inline(always)]
    unsafe fn fma(self, b0: __m256, b1: __m256, x: *const f32) -> Row {
        let a = _mm256_broadcast_ss(&*x);
        Row(
            _mm256_fmadd_ps(a, b0, self.0),
            _mm256_fmadd_ps(a, b1, self.1),
        )
    }

    /// Stores the first `w` (at most 16) of `self * s` at `p`.
    #[inline(always)]
    unsafe fn store_scaled(self, p: *mut f32, s: f32, w: usize) {
        let s = _mm256_set1_ps(s);
        let (y0, y1) = (_mm256_mul_ps(self.0, s), _mm256_mul_ps(self.1, s));
        if w == 16 {
            _mm256_storeu_ps(p, y0);
            _mm256_storeu_ps(p.add(8), y1);
        } else {
            let mut buf = [0f32; 16];
            _mm256_storeu_ps(buf.as_mut_ptr(), y0);
            _mm256_storeu_ps(buf.as_mut_ptr().add(8), y1);
            std::ptr::copy_nonoverlapping(buf.as_ptr(), p, w);
        }
    }
}

/// `sum_k a[r][k] * b[k][0..16]` for 6 rows: `a` row `r` at `a_rows[r]` (`n` values), `b` a
/// panel of 16 values per `k`, in order. The shared loop of `Q K^T` and `P V`.
#[inline(always)]
unsafe fn block_6x16(a: &[*const f32; 6], n: usize, b: *const f32) -> [Row; 6] {
    let (mut c0, mut c1, mut c2) = (Row::zero(), Row::zero(), Row::zero());
    let (mut c3, mut c4, mut c5) = (Row::zero(), Row::zero(), Row::zero());
    let mut bp = b;
    for k in 0..n {
        let (b0, b1) = (_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8)));
        c0 = c0.fma(b0, b1, a[0].add(k));
        c1 = c1.fma(b0, b1, a[1].add(k));
        c2 = c2.fma(b0, b1, a[2].add(k));
        c3 = c3.fma(b0, b1, a[3].add(k));
        c4 = c4.fma(b0, b1, a[4].add(k));
        c5 = c5.fma(b0, b1, a[5].add(k));
        bp = bp.add(16);
    }
    [c0, c1, c2, c3, c4, c5]
}

/// `e^x` for `x <= 0` on 8 lanes: [`exp_neg`]'s reduction and polynomial, fused.
#[inline(always)]
unsafe fn exp_neg8(x: __m256) -> __m256 {
    let x = _mm256_max_ps(x, _mm256_set1_ps(LO));
    let t = _mm256_fmadd_ps(x, _mm256_set1_ps(LOG2E), _mm256_set1_ps(SHIFTER));
    let n = _mm256_sub_ps(t, _mm256_set1_ps(SHIFTER));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(P[0]);
    for c in &P[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
    }
    let y = _mm256_fmadd_ps(
        p,
        _mm256_mul_ps(r, r),
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    // t's bits are 0x4B40_0000 + n: the exponent field of 2^n is n + 127
    let bias = _mm256_set1_epi32(127i32.wrapping_sub(0x4B40_0000));
    let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_castps_si256(t), bias));
    _mm256_mul_ps(y, _mm256_castsi256_ps(e))
}

/// Sum of the 8 lanes.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

impl AttnBody for Avx2 {
    const ROWS: usize = 6;
    const KEYS: usize = 16;
    const VCOLS: usize = 16;

    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    unsafe fn pack_kt(
        k: *const f32,
        k_stride: usize,
        seq_k: usize,
        d: usize,
        sp: usize,
        kt: *mut f32,
    ) {
        pack_kt_sse::<16>(k, k_stride, seq_k, d, sp, kt)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    unsafe fn pack_v(
        v: *const f32,
        v_stride: usize,
        seq_k: usize,
        d: usize,
        dp: usize,
        vt: *mut f32,
    ) {
        pack_v_sse::<16>(v, v_stride, seq_k, d, dp, vt)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
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
        let qr: [*const f32; 6] = std::array::from_fn(|r| q.add(r.min(rows - 1) * q_stride));
        for panel in 0..sp / 16 {
            let tile = block_6x16(&qr, d, kt.add(panel * d * 16));
            let at = sc.add(panel * 16);
            for (r, row) in tile.into_iter().enumerate() {
                _mm256_storeu_ps(at.add(r * sp), row.0);
                _mm256_storeu_ps(at.add(r * sp + 8), row.1);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    unsafe fn scale_mask_max(s: &mut [f32], mask: Option<&[f32]>, scale: f32) -> f32 {
        let n = s.len();
        let p = s.as_mut_ptr();
        let vs = _mm256_set1_ps(scale);
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        // any NaN seen (max_ps drops them)
        let mut nan = _mm256_setzero_ps();
        let mut j = 0;
        while j + 8 <= n {
            let x = _mm256_loadu_ps(p.add(j));
            let x = match mask {
                Some(mr) => _mm256_fmadd_ps(x, vs, _mm256_loadu_ps(mr.as_ptr().add(j))),
                None => _mm256_mul_ps(x, vs),
            };
            _mm256_storeu_ps(p.add(j), x);
            m = _mm256_max_ps(m, x);
            nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
            j += 8;
        }
        let mut buf = [0f32; 8];
        _mm256_storeu_ps(buf.as_mut_ptr(), m);
        let mut mx = buf.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut any_nan = _mm256_movemask_ps(nan) != 0;
        for (jj, x) in s.iter_mut().enumerate().skip(j) {
            *x = match mask {
                Some(mr) => x.mul_add(scale, mr[jj]),
                None => *x * scale,
            };
            any_nan |= x.is_nan();
            mx = mx.max(*x);
        }
        if any_nan {
            f32::NAN
        } else {
            mx
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    unsafe fn exp_sum(s: &mut [f32], mx: f32) -> f32 {
        let n = s.len();
        let p = s.as_mut_ptr();
        let m = _mm256_set1_ps(mx);
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut j = 0;
        while j + 16 <= n {
            let a = exp_neg8(_mm256_sub_ps(_mm256_loadu_ps(p.add(j)), m));
            let b = exp_neg8(_mm256_sub_ps(_mm256_loadu_ps(p.add(j + 8)), m));
            _mm256_storeu_ps(p.add(j), a);
            _mm256_storeu_ps(p.add(j + 8), b);
            s0 = _mm256_add_ps(s0, a);
            s1 = _mm256_add_ps(s1, b);
            j += 16;
        }
        if j + 8 <= n {
            let a = exp_neg8(_mm256_sub_ps(_mm256_loadu_ps(p.add(j)), m));
            _mm256_storeu_ps(p.add(j), a);
            s0 = _mm256_add_ps(s0, a);
            j += 8;
        }
        let mut sum = hsum(_mm256_add_ps(s0, s1));
        for x in &mut s[j..] {
            *x = exp_neg(*x - mx);
            sum += *x;
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
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
        let pr: [*const f32; 6] = std::array::from_fn(|r| p.add(r * sp));
        let mut dc = 0;
        while dc < d {
            let tile = block_6x16(&pr, seq_k, vt.add(dc * seq_k));
            let w = (d - dc).min(16);
            for (r, (row, &x)) in tile.into_iter().zip(inv).enumerate() {
                row.store_scaled(out.add(r * out_stride + dc), x, w);
            }
            dc += 16;
        }
    }
}
