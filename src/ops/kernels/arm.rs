//! aarch64 NEON bodies (baseline on every aarch64 CPU): attention and LayerNorm written with
//! `std::arch::aarch64` intrinsics, so that what runs does not depend on what the compiler
//! vectorises (fat LTO with one codegen unit once lost the vectorised loops of the portable
//! attention body, and ran 3.7x its instructions).
//!
//! Attention: blocks of 4 query rows by 16 keys (`Q K^T`) or 16 columns of the head (`P V`):
//! 16 accumulators, `fmla` by element (a Q or P vector holds 4 consecutive `k`, one per
//! lane), 16 values of K^T or V per `k` from panels read in order (two `ldp`); the softmax's
//! `exp` is the portable [`exp_neg`](super::portable::exp_neg) polynomial on 4 lanes.
//!
//! LayerNorm: the portable body's operations in the same order (every product and sum
//! rounded separately, the same 8 partial sums), so that it gives the same bits.

use std::arch::aarch64::*;

use super::attention::{head, pack_kt_by_4x4, AttnBody};
use super::portable::exp_consts::{LN2_HI, LN2_LO, LO, LOG2E, P, SHIFTER};
use super::{AttnDims, MaskView};

/// The NEON attention body.
pub(super) struct Neon;

/// One row of a 4 x 16 accumulator tile: four registers, named rather than in an array so
/// that they are plain values to the compiler (an array of them was once kept in memory).
#[derive(Clone, Copy)]
struct Row(float32x4_t, float32x4_t, float32x4_t, float32x4_t);

impl Row {
    #[inline(always)]
    unsafe fn zero() -> Row {
        let z = vdupq_n_f32(0.0);
        Row(z, z, z, z)
    }

    /// `self + b * a[L]`, `fmla` by element.
    #[inline(always)]
    unsafe fn fma_lane<const L: i32>(self, b: float32x4x4_t, a: float32x4_t) -> Row {
        Row(
            vfmaq_laneq_f32::<L>(self.0, b.0, a),
            vfmaq_laneq_f32::<L>(self.1, b.1, a),
            vfmaq_laneq_f32::<L>(self.2, b.2, a),
            vfmaq_laneq_f32::<L>(self.3, b.3, a),
        )
    }

    /// `self + b * x`.
    #[inline(always)]
    unsafe fn fma_n(self, b: float32x4x4_t, x: f32) -> Row {
        Row(
            vfmaq_n_f32(self.0, b.0, x),
            vfmaq_n_f32(self.1, b.1, x),
            vfmaq_n_f32(self.2, b.2, x),
            vfmaq_n_f32(self.3, b.3, x),
        )
    }

    /// `self * x` as the 4 registers of a 16-value store.
    #[inline(always)]
    unsafe fn times(self, x: f32) -> float32x4x4_t {
        float32x4x4_t(
            vmulq_n_f32(self.0, x),
            vmulq_n_f32(self.1, x),
            vmulq_n_f32(self.2, x),
            vmulq_n_f32(self.3, x),
        )
    }

    /// Stores the 16 values at `p` with single-register stores (a 4-register `st1` would
    /// tie the accumulators to 4 consecutive registers, and the compiler then spills them).
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        vst1q_f32(p, self.0);
        vst1q_f32(p.add(4), self.1);
        vst1q_f32(p.add(8), self.2);
        vst1q_f32(p.add(12), self.3);
    }
}

/// `sum_k a[r][k] * b[k][0..16]` for 4 rows: `a` row `r` at `a_rows[r]` (`n` values), `b` a
/// panel of 16 values per `k`, in order. The shared inner loop of `Q K^T` (b = a panel of K^T)
/// and `P V` (b = a panel of V): per 8 `k`, 8 loads of `a` (4 `ldp`), 16 `ldp` of `b` and 128
/// `fmla` by element (16 accumulators, 8 + 4 registers of operands).
#[inline(always)]
unsafe fn block_4x16(a_rows: &[*const f32; 4], n: usize, b: *const f32) -> [Row; 4] {
    let [p0, p1, p2, p3] = *a_rows;
    let (mut c0, mut c1, mut c2, mut c3) = (Row::zero(), Row::zero(), Row::zero(), Row::zero());
    let mut bp = b;
    let mut k = 0;
    macro_rules! step {
        ($a0:ident, $a1:ident, $a2:ident, $a3:ident, $lane:literal, $at:literal) => {{
            let bv = vld1q_f32_x4(bp.add(16 * $at));
            c0 = c0.fma_lane::<$lane>(bv, $a0);
            c1 = c1.fma_lane::<$lane>(bv, $a1);
            c2 = c2.fma_lane::<$lane>(bv, $a2);
            c3 = c3.fma_lane::<$lane>(bv, $a3);
        }};
    }
    while k + 8 <= n {
        let (a0, a1, a2, a3) = (
            vld1q_f32(p0.add(k)),
            vld1q_f32(p1.add(k)),
            vld1q_f32(p2.add(k)),
            vld1q_f32(p3.add(k)),
        );
        let (e0, e1, e2, e3) = (
            vld1q_f32(p0.add(k + 4)),
            vld1q_f32(p1.add(k + 4)),
            vld1q_f32(p2.add(k + 4)),
            vld1q_f32(p3.add(k + 4)),
        );
        step!(a0, a1, a2, a3, 0, 0);
        step!(a0, a1, a2, a3, 1, 1);
        step!(a0, a1, a2, a3, 2, 2);
        step!(a0, a1, a2, a3, 3, 3);
        step!(e0, e1, e2, e3, 0, 4);
        step!(e0, e1, e2, e3, 1, 5);
        step!(e0, e1, e2, e3, 2, 6);
        step!(e0, e1, e2, e3, 3, 7);
        bp = bp.add(128);
        k += 8;
    }
    if k + 4 <= n {
        let (a0, a1, a2, a3) = (
            vld1q_f32(p0.add(k)),
            vld1q_f32(p1.add(k)),
            vld1q_f32(p2.add(k)),
            vld1q_f32(p3.add(k)),
        );
        step!(a0, a1, a2, a3, 0, 0);
        step!(a0, a1, a2, a3, 1, 1);
        step!(a0, a1, a2, a3, 2, 2);
        step!(a0, a1, a2, a3, 3, 3);
        bp = bp.add(64);
        k += 4;
    }
    while k < n {
        let bv = vld1q_f32_x4(bp);
        bp = bp.add(16);
        c0 = c0.fma_n(bv, *p0.add(k));
        c1 = c1.fma_n(bv, *p1.add(k));
        c2 = c2.fma_n(bv, *p2.add(k));
        c3 = c3.fma_n(bv, *p3.add(k));
        k += 1;
    }
    [c0, c1, c2, c3]
}

/// Transposes a 4 x 4 block given as its 4 rows.
#[inline(always)]
unsafe fn transpose4(
    r0: float32x4_t,
    r1: float32x4_t,
    r2: float32x4_t,
    r3: float32x4_t,
) -> [float32x4_t; 4] {
    let t0 = vtrn1q_f32(r0, r1); // a0 b0 a2 b2
    let t1 = vtrn2q_f32(r0, r1); // a1 b1 a3 b3
    let t2 = vtrn1q_f32(r2, r3); // c0 d0 c2 d2
    let t3 = vtrn2q_f32(r2, r3); // c1 d1 c3 d3
    let (t0, t1, t2, t3) = (
        vreinterpretq_f64_f32(t0),
        vreinterpretq_f64_f32(t1),
        vreinterpretq_f64_f32(t2),
        vreinterpretq_f64_f32(t3),
    );
    [
        vreinterpretq_f32_f64(vtrn1q_f64(t0, t2)), // a0 b0 c0 d0
        vreinterpretq_f32_f64(vtrn1q_f64(t1, t3)), // a1 b1 c1 d1
        vreinterpretq_f32_f64(vtrn2q_f64(t0, t2)), // a2 b2 c2 d2
        vreinterpretq_f32_f64(vtrn2q_f64(t1, t3)), // a3 b3 c3 d3
    ]
}

/// `e^x` for `x <= 0` on 4 lanes: [`exp_neg`](super::portable::exp_neg)'s reduction and
/// polynomial, with fused multiply-adds.
#[inline(always)]
pub(super) unsafe fn exp_neg4(x: float32x4_t) -> float32x4_t {
    let x = vmaxq_f32(x, vdupq_n_f32(LO));
    let t = vfmaq_f32(vdupq_n_f32(SHIFTER), x, vdupq_n_f32(LOG2E));
    let n = vsubq_f32(t, vdupq_n_f32(SHIFTER));
    let r = vfmsq_f32(x, n, vdupq_n_f32(LN2_HI));
    let r = vfmsq_f32(r, n, vdupq_n_f32(LN2_LO));
    let mut p = vdupq_n_f32(P[0]);
    p = vfmaq_f32(vdupq_n_f32(P[1]), p, r);
    p = vfmaq_f32(vdupq_n_f32(P[2]), p, r);
    p = vfmaq_f32(vdupq_n_f32(P[3]), p, r);
    p = vfmaq_f32(vdupq_n_f32(P[4]), p, r);
    p = vfmaq_f32(vdupq_n_f32(P[5]), p, r);
    let y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), p, vmulq_f32(r, r));
    // t's bits are 0x4B40_0000 + n: the exponent field of 2^n is n + 127
    let bias = vdupq_n_u32(127u32.wrapping_sub(0x4B40_0000));
    let e = vshlq_n_u32::<23>(vaddq_u32(vreinterpretq_u32_f32(t), bias));
    vmulq_f32(y, vreinterpretq_f32_u32(e))
}

impl AttnBody for Neon {
    const ROWS: usize = 4;
    const KEYS: usize = 16;
    const VCOLS: usize = 16;

    /// 4 keys x 4 elements at a time through [`transpose4`]; the odd ones one by one.
    #[inline(never)]
    unsafe fn pack_kt(
        k: *const f32,
        k_stride: usize,
        seq_k: usize,
        d: usize,
        sp: usize,
        kt: *mut f32,
    ) {
        pack_kt_by_4x4::<16>(k, k_stride, seq_k, d, sp, kt, |rows, to| {
            let cols = transpose4(
                vld1q_f32(rows[0]),
                vld1q_f32(rows[1]),
                vld1q_f32(rows[2]),
                vld1q_f32(rows[3]),
            );
            for (c, col) in cols.into_iter().enumerate() {
                vst1q_f32(to[c], col);
            }
        })
    }

    /// Whole panels 16 values (4 registers) per row; the last, partial one through the
    /// portable loop.
    #[inline(never)]
    unsafe fn pack_v(
        v: *const f32,
        v_stride: usize,
        seq_k: usize,
        d: usize,
        dp: usize,
        vt: *mut f32,
    ) {
        let full = d / 16 * 16;
        for c0 in (0..full).step_by(16) {
            let (mut src, mut dst) = (v.add(c0), vt.add(c0 * seq_k));
            for _ in 0..seq_k {
                Row(
                    vld1q_f32(src),
                    vld1q_f32(src.add(4)),
                    vld1q_f32(src.add(8)),
                    vld1q_f32(src.add(12)),
                )
                .store(dst);
                src = src.add(v_stride);
                dst = dst.add(16);
            }
        }
        if full < dp {
            let panel = vt.add(full * seq_k);
            for j in 0..seq_k {
                for l in 0..16 {
                    *panel.add(j * 16 + l) = if full + l < d {
                        *v.add(j * v_stride + full + l)
                    } else {
                        0.0
                    };
                }
            }
        }
    }

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
        let qr: [*const f32; 4] = std::array::from_fn(|r| q.add(r.min(rows - 1) * q_stride));
        for panel in 0..sp / 16 {
            let [c0, c1, c2, c3] = block_4x16(&qr, d, kt.add(panel * d * 16));
            let at = sc.add(panel * 16);
            c0.store(at);
            c1.store(at.add(sp));
            c2.store(at.add(2 * sp));
            c3.store(at.add(3 * sp));
        }
    }

    #[inline(never)]
    unsafe fn scale_mask_max(s: &mut [f32], mask: Option<&[f32]>, scale: f32) -> f32 {
        let n = s.len();
        let sp = s.as_mut_ptr();
        let mut m0 = vdupq_n_f32(f32::NEG_INFINITY);
        let mut m1 = m0;
        let mut j = 0;
        match mask {
            Some(mr) => {
                let mp = mr.as_ptr();
                while j + 8 <= n {
                    let a = vfmaq_n_f32(vld1q_f32(mp.add(j)), vld1q_f32(sp.add(j)), scale);
                    let b = vfmaq_n_f32(vld1q_f32(mp.add(j + 4)), vld1q_f32(sp.add(j + 4)), scale);
                    vst1q_f32(sp.add(j), a);
                    vst1q_f32(sp.add(j + 4), b);
                    m0 = vmaxq_f32(m0, a);
                    m1 = vmaxq_f32(m1, b);
                    j += 8;
                }
            }
            None => {
                while j + 8 <= n {
                    let a = vmulq_n_f32(vld1q_f32(sp.add(j)), scale);
                    let b = vmulq_n_f32(vld1q_f32(sp.add(j + 4)), scale);
                    vst1q_f32(sp.add(j), a);
                    vst1q_f32(sp.add(j + 4), b);
                    m0 = vmaxq_f32(m0, a);
                    m1 = vmaxq_f32(m1, b);
                    j += 8;
                }
            }
        }
        // fmax and fmaxv return NaN when an operand is NaN
        let mut mx = vmaxvq_f32(vmaxq_f32(m0, m1));
        for (jj, x) in s.iter_mut().enumerate().skip(j) {
            *x = match mask {
                Some(mr) => x.mul_add(scale, mr[jj]),
                None => *x * scale,
            };
            mx = if x.is_nan() || mx.is_nan() {
                f32::NAN
            } else {
                mx.max(*x)
            };
        }
        mx
    }

    #[inline(never)]
    unsafe fn exp_sum(s: &mut [f32], mx: f32) -> f32 {
        let n = s.len();
        let sp = s.as_mut_ptr();
        let m = vdupq_n_f32(mx);
        let mut s0 = vdupq_n_f32(0.0);
        let mut s1 = s0;
        let mut j = 0;
        while j + 8 <= n {
            let a = exp_neg4(vsubq_f32(vld1q_f32(sp.add(j)), m));
            let b = exp_neg4(vsubq_f32(vld1q_f32(sp.add(j + 4)), m));
            vst1q_f32(sp.add(j), a);
            vst1q_f32(sp.add(j + 4), b);
            s0 = vaddq_f32(s0, a);
            s1 = vaddq_f32(s1, b);
            j += 8;
        }
        if j + 4 <= n {
            let a = exp_neg4(vsubq_f32(vld1q_f32(sp.add(j)), m));
            vst1q_f32(sp.add(j), a);
            s0 = vaddq_f32(s0, a);
            j += 4;
        }
        let mut sum = vaddvq_f32(vaddq_f32(s0, s1));
        // the last 0..3 one at a time, lane 0 of the same vector code
        for x in &mut s[j..] {
            *x = vgetq_lane_f32::<0>(exp_neg4(vdupq_n_f32(*x - mx)));
            sum += *x;
        }
        sum
    }

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
        let pr: [*const f32; 4] = std::array::from_fn(|r| p.add(r * sp));
        let mut dc = 0;
        while dc < d {
            let [c0, c1, c2, c3] = block_4x16(&pr, seq_k, vt.add(dc * seq_k));
            // rows past `inv.len()` are not stored (named rows, no indexing of the tile)
            let w = (d - dc).min(16);
            let at = out.add(dc);
            store_row(at, c0.times(inv[0]), w);
            if let Some(&x) = inv.get(1) {
                store_row(at.add(out_stride), c1.times(x), w);
            }
            if let Some(&x) = inv.get(2) {
                store_row(at.add(2 * out_stride), c2.times(x), w);
            }
            if let Some(&x) = inv.get(3) {
                store_row(at.add(3 * out_stride), c3.times(x), w);
            }
            dc += 16;
        }
    }
}

/// Stores the first `w` (at most 16) of 16 values.
#[inline(always)]
unsafe fn store_row(p: *mut f32, y: float32x4x4_t, w: usize) {
    if w == 16 {
        vst1q_f32_x4(p, y);
    } else {
        let mut buf = [0f32; 16];
        vst1q_f32_x4(buf.as_mut_ptr(), y);
        std::ptr::copy_nonoverlapping(buf.as_ptr(), p, w);
    }
}

/// [`head`] with the NEON body.
///
/// # Safety
/// As [`head`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn head_neon(
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
    head::<Neon>(q, k, v, mask, dims, scale, nan_to_zero, out, b, h, scratch)
}

/// `((a0 + a2) + (a1 + a3))` of `a = lo + hi`: the portable body's reduction of its 8 lanes.
#[inline(always)]
unsafe fn reduce8(lo: float32x4_t, hi: float32x4_t) -> f32 {
    let a = vaddq_f32(lo, hi);
    vpadds_f32(vadd_f32(vget_low_f32(a), vget_high_f32(a)))
}

/// The portable LayerNorm body ([`add_layer_norm_body`](super::portable::add_layer_norm_body))
/// on NEON registers: the same operations in the same order, hence the same bits: rows of
/// `n`, `y = LayerNorm(x [+ r]) * gamma [+ beta]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn add_layer_norm_neon(
    x: &[f32],
    r: Option<&[f32]>,
    gamma: &[f32],
    beta: Option<&[f32]>,
    eps: f32,
    y: &mut [f32],
) {
    let n = gamma.len();
    let len = n as f32;
    assert!(x.len() == y.len() && r.is_none_or(|r| r.len() == y.len()));
    assert!(beta.is_none_or(|b| b.len() == n));
    for (row, yr) in y.chunks_exact_mut(n).enumerate() {
        let xr = &x[row * n..][..n];
        let rr = r.map(|r| &r[row * n..][..n]);
        // SAFETY: every pointer below reads or writes inside its row of n values (`j + 16`,
        // `j + 8 <= n` in the vector loops, `j < n` in the scalar tails); NEON is baseline.
        unsafe {
            let (xp, yp, gp) = (xr.as_ptr(), yr.as_mut_ptr(), gamma.as_ptr());
            // y = x + r, and the sum of y in 8 lanes
            let (mut lo, mut hi) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            let mut j = 0;
            while j + 16 <= n {
                let mut a = vld1q_f32_x4(xp.add(j));
                if let Some(rr) = rr {
                    let b = vld1q_f32_x4(rr.as_ptr().add(j));
                    a = float32x4x4_t(
                        vaddq_f32(a.0, b.0),
                        vaddq_f32(a.1, b.1),
                        vaddq_f32(a.2, b.2),
                        vaddq_f32(a.3, b.3),
                    );
                }
                vst1q_f32_x4(yp.add(j), a);
                lo = vaddq_f32(vaddq_f32(lo, a.0), a.2);
                hi = vaddq_f32(vaddq_f32(hi, a.1), a.3);
                j += 16;
            }
            if j + 8 <= n {
                let mut a = vld1q_f32_x2(xp.add(j));
                if let Some(rr) = rr {
                    let b = vld1q_f32_x2(rr.as_ptr().add(j));
                    a = float32x4x2_t(vaddq_f32(a.0, b.0), vaddq_f32(a.1, b.1));
                }
                vst1q_f32_x2(yp.add(j), a);
                lo = vaddq_f32(lo, a.0);
                hi = vaddq_f32(hi, a.1);
                j += 8;
            }
            let tail = j;
            let mut t = 0f32;
            for j in tail..n {
                let v = match rr {
                    Some(rr) => xr[j] + rr[j],
                    None => xr[j],
                };
                *yp.add(j) = v;
                t += v;
            }
            let mean = (reduce8(lo, hi) + t) / len;
            // d = y - mean in place, and the sum of d^2 in 8 lanes
            let m = vdupq_n_f32(mean);
            let (mut lo, mut hi) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            let mut j = 0;
            while j + 16 <= n {
                let a = vld1q_f32_x4(yp.add(j));
                let d = float32x4x4_t(
                    vsubq_f32(a.0, m),
                    vsubq_f32(a.1, m),
                    vsubq_f32(a.2, m),
                    vsubq_f32(a.3, m),
                );
                vst1q_f32_x4(yp.add(j), d);
                lo = vaddq_f32(lo, vmulq_f32(d.0, d.0));
                hi = vaddq_f32(hi, vmulq_f32(d.1, d.1));
                lo = vaddq_f32(lo, vmulq_f32(d.2, d.2));
                hi = vaddq_f32(hi, vmulq_f32(d.3, d.3));
                j += 16;
            }
            if j + 8 <= n {
                let a = vld1q_f32_x2(yp.add(j));
                let d = float32x4x2_t(vsubq_f32(a.0, m), vsubq_f32(a.1, m));
                vst1q_f32_x2(yp.add(j), d);
                lo = vaddq_f32(lo, vmulq_f32(d.0, d.0));
                hi = vaddq_f32(hi, vmulq_f32(d.1, d.1));
            }
            let mut t = 0f32;
            for j in tail..n {
                let d = *yp.add(j) - mean;
                *yp.add(j) = d;
                t += d * d;
            }
            let var = (reduce8(lo, hi) + t) / len;
            let inv = (var + eps).sqrt().recip();
            // y = d * inv * gamma (+ beta)
            let vi = vdupq_n_f32(inv);
            let bp = beta.map(|b| b.as_ptr());
            let mut j = 0;
            while j + 16 <= n {
                let (a, g) = (vld1q_f32_x4(yp.add(j)), vld1q_f32_x4(gp.add(j)));
                let mut o = float32x4x4_t(
                    vmulq_f32(vmulq_f32(a.0, vi), g.0),
                    vmulq_f32(vmulq_f32(a.1, vi), g.1),
                    vmulq_f32(vmulq_f32(a.2, vi), g.2),
                    vmulq_f32(vmulq_f32(a.3, vi), g.3),
                );
                if let Some(bp) = bp {
                    let b = vld1q_f32_x4(bp.add(j));
                    o = float32x4x4_t(
                        vaddq_f32(o.0, b.0),
                        vaddq_f32(o.1, b.1),
                        vaddq_f32(o.2, b.2),
                        vaddq_f32(o.3, b.3),
                    );
                }
                vst1q_f32_x4(yp.add(j), o);
                j += 16;
            }
            while j + 4 <= n {
                let mut a = vmulq_f32(vmulq_f32(vld1q_f32(yp.add(j)), vi), vld1q_f32(gp.add(j)));
                if let Some(bp) = bp {
                    a = vaddq_f32(a, vld1q_f32(bp.add(j)));
                }
                vst1q_f32(yp.add(j), a);
                j += 4;
            }
            for j in j..n {
                let v = *yp.add(j) * inv * gamma[j];
                *yp.add(j) = match beta {
                    Some(b) => v + b[j],
                    None => v,
                };
            }
        }
    }
}
