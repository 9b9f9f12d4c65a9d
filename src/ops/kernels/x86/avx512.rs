//! The AVX-512F attention body: blocks of 8 query rows by 32 keys (`Q K^T`) or 32 columns of
//! the head (`P V`), 16 accumulating registers of 32, the Q or P value broadcast from memory
//! into the multiply-add; the softmax 16 lanes at a time, the last partial vector under a
//! mask, with the portable `exp` polynomial
//! ([`exp_neg`](super::super::portable::exp_neg)) on 16 lanes.

use std::arch::x86_64::*;

use super::super::attention::AttnBody;
use super::super::portable::exp_consts::{LN2_HI, LN2_LO, LO, LOG2E, P, SHIFTER};
use super::{pack_kt_sse, pack_v_sse};

/// The AVX-512F attention body.
pub(in super::super) struct Avx512;

/// One row of an 8 x 32 accumulator tile (named registers: plain values to the compiler).
#[derive(Clone, Copy)]
struct Row(__m512, __m512);

/// The lanes `0..w` of a vector (`w <= 16`).
#[inline(always)]
fn lanes(w: usize) -> __mmask16 {
    ((1u32 << w) - 1) as __mmask16
}

impl Row {
    #[inline(always)]
    unsafe fn zero() -> Row {
        Row(_mm512_setzero_ps(), _mm512_setzero_ps())
    }

    /// `self + b * x` with `x` broadcast from memory.
    #[inline(always)]
    unsafe fn fma(self, b0: __m512, b1: __m512, x: *const f32) -> Row {
        let a = _mm512_set1_ps(*x);
        Row(
            _mm512_fmadd_ps(a, b0, self.0),
            _mm512_fmadd_ps(a, b1, self.1),
        )
    }

    /// Stores the first `w` (at most 32) of `self * s` at `p`.
    #[inline(always)]
    unsafe fn store_scaled(self, p: *mut f32, s: f32, w: usize) {
        let s = _mm512_set1_ps(s);
        let (y0, y1) = (_mm512_mul_ps(self.0, s), _mm512_mul_ps(self.1, s));
        if w == 32 {
            _mm512_storeu_ps(p, y0);
            _mm512_storeu_ps(p.add(16), y1);
        } else {
            _mm512_mask_storeu_ps(p, lanes(w.min(16)), y0);
            if w > 16 {
                _mm512_mask_storeu_ps(p.add(16), lanes(w - 16), y1);
            }
        }
    }
}

/// `sum_k a[r][k] * b[k][0..32]` for 8 rows: `a` row `r` at `a_rows[r]` (`n` values), `b` a
/// panel of 32 values per `k`, in order. The shared loop of `Q K^T` and `P V`.
#[inline(always)]
unsafe fn block_8x32(a: &[*const f32; 8], n: usize, b: *const f32) -> [Row; 8] {
    let (mut c0, mut c1, mut c2, mut c3) = (Row::zero(), Row::zero(), Row::zero(), Row::zero());
    let (mut c4, mut c5, mut c6, mut c7) = (Row::zero(), Row::zero(), Row::zero(), Row::zero());
    let mut bp = b;
    for k in 0..n {
        let (b0, b1) = (_mm512_loadu_ps(bp), _mm512_loadu_ps(bp.add(16)));
        c0 = c0.fma(b0, b1, a[0].add(k));
        c1 = c1.fma(b0, b1, a[1].add(k));
        c2 = c2.fma(b0, b1, a[2].add(k));
        c3 = c3.fma(b0, b1, a[3].add(k));
        c4 = c4.fma(b0, b1, a[4].add(k));
        c5 = c5.fma(b0, b1, a[5].add(k));
        c6 = c6.fma(b0, b1, a[6].add(k));
        c7 = c7.fma(b0, b1, a[7].add(k));
        bp = bp.add(32);
    }
    [c0, c1, c2, c3, c4, c5, c6, c7]
}

/// `e^x` for `x <= 0` on 16 lanes: [`exp_neg`](super::super::portable::exp_neg)'s reduction
/// and polynomial, fused, and `y * 2^n` by `vscalefps`.
#[inline(always)]
unsafe fn exp_neg16(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(LO));
    let t = _mm512_fmadd_ps(x, _mm512_set1_ps(LOG2E), _mm512_set1_ps(SHIFTER));
    let n = _mm512_sub_ps(t, _mm512_set1_ps(SHIFTER));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(P[0]);
    for c in &P[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    let y = _mm512_fmadd_ps(
        p,
        _mm512_mul_ps(r, r),
        _mm512_add_ps(r, _mm512_set1_ps(1.0)),
    );
    // n is a whole number in [-126, 0]: y * 2^n exactly
    _mm512_scalef_ps(y, n)
}

impl AttnBody for Avx512 {
    const ROWS: usize = 8;
    const KEYS: usize = 32;
    const VCOLS: usize = 32;

    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline(never)]
    unsafe fn pack_kt(
        k: *const f32,
        k_stride: usize,
        seq_k: usize,
        d: usize,
        sp: usize,
        kt: *mut f32,
    ) {
        pack_kt_sse::<32>(k, k_stride, seq_k, d, sp, kt)
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline(never)]
    unsafe fn pack_v(
        v: *const f32,
        v_stride: usize,
        seq_k: usize,
        d: usize,
        dp: usize,
        vt: *mut f32,
    ) {
        pack_v_sse::<32>(v, v_stride, seq_k, d, dp, vt)
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
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
        let qr: [*const f32; 8] = std::array::from_fn(|r| q.add(r.min(rows - 1) * q_stride));
        for panel in 0..sp / 32 {
            let tile = block_8x32(&qr, d, kt.add(panel * d * 32));
            let at = sc.add(panel * 32);
            for (r, row) in tile.into_iter().enumerate() {
                _mm512_storeu_ps(at.add(r * sp), row.0);
                _mm512_storeu_ps(at.add(r * sp + 16), row.1);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline(never)]
    unsafe fn scale_mask_max(s: &mut [f32], mask: Option<&[f32]>, scale: f32) -> f32 {
        let n = s.len();
        let p = s.as_mut_ptr();
        let vs = _mm512_set1_ps(scale);
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        // lanes that saw a NaN (max_ps drops them)
        let mut nan: __mmask16 = 0;
        let mut j = 0;
        while j < n {
            let k = lanes((n - j).min(16));
            let x = _mm512_maskz_loadu_ps(k, p.add(j));
            let x = match mask {
                Some(mr) => _mm512_fmadd_ps(x, vs, _mm512_maskz_loadu_ps(k, mr.as_ptr().add(j))),
                None => _mm512_mul_ps(x, vs),
            };
            _mm512_mask_storeu_ps(p.add(j), k, x);
            m = _mm512_mask_max_ps(m, k, m, x);
            nan |= _mm512_mask_cmp_ps_mask::<_CMP_UNORD_Q>(k, x, x);
            j += 16;
        }
        if nan != 0 {
            f32::NAN
        } else {
            _mm512_reduce_max_ps(m)
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline(never)]
    unsafe fn exp_sum(s: &mut [f32], mx: f32) -> f32 {
        let n = s.len();
        let p = s.as_mut_ptr();
        let m = _mm512_set1_ps(mx);
        let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut j = 0;
        while j + 32 <= n {
            let a = exp_neg16(_mm512_sub_ps(_mm512_loadu_ps(p.add(j)), m));
            let b = exp_neg16(_mm512_sub_ps(_mm512_loadu_ps(p.add(j + 16)), m));
            _mm512_storeu_ps(p.add(j), a);
            _mm512_storeu_ps(p.add(j + 16), b);
            s0 = _mm512_add_ps(s0, a);
            s1 = _mm512_add_ps(s1, b);
            j += 32;
        }
        while j < n {
            let k = lanes((n - j).min(16));
            let a = exp_neg16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p.add(j)), m));
            _mm512_mask_storeu_ps(p.add(j), k, a);
            s0 = _mm512_mask_add_ps(s0, k, s0, a);
            j += 16;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
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
        let pr: [*const f32; 8] = std::array::from_fn(|r| p.add(r * sp));
        let mut dc = 0;
        while dc < d {
            let tile = block_8x32(&pr, seq_k, vt.add(dc * seq_k));
            let w = (d - dc).min(32);
            for (r, (row, &x)) in tile.into_iter().zip(inv).enumerate() {
                row.store_scaled(out.add(r * out_stride + dc), x, w);
            }
            dc += 32;
        }
    }
}
