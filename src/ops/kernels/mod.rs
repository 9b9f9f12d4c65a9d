//! f32 kernels of our transformer ops: multi-head attention (scores, masked softmax and the
//! product with V in one pass over blocks of query rows) and the fast `exp` they use.
//!
//! One generic body per kernel, `#[inline(always)]`, instantiated twice: inside an
//! `avx2,fma` `target_feature` wrapper on x86-64 (chosen at run time) and as the portable
//! path (plain multiply-add, `f32::exp`). On aarch64 NEON is baseline, so the portable body
//! is compiled with the fast `exp` and fused multiply-adds there.

use std::cell::RefCell;

/// Which instantiation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpsKernel {
    /// Portable Rust: separate multiply and add, `f32::exp` (the reference).
    Scalar,
    /// x86-64 AVX2 + FMA, or aarch64 NEON: fused multiply-adds and a polynomial `exp`
    /// (relative error below 2e-7), vectorised by the compiler.
    Simd,
}

impl OpsKernel {
    /// Whether this CPU can run it.
    pub fn is_available(self) -> bool {
        match self {
            OpsKernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            OpsKernel::Simd => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "aarch64")]
            OpsKernel::Simd => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The fastest available one.
    pub fn best() -> OpsKernel {
        if OpsKernel::Simd.is_available() {
            OpsKernel::Simd
        } else {
            OpsKernel::Scalar
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OpsKernel::Scalar => "scalar",
            OpsKernel::Simd => {
                if cfg!(target_arch = "aarch64") {
                    "neon"
                } else {
                    "avx2+fma"
                }
            }
        }
    }
}

/// `a * b + c`: fused when `FMA` (only instantiated so where the CPU has it).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `e^x` for `x <= 0` (the softmax's `x - max`), Cephes' polynomial on a Cody-Waite reduced
/// argument; branch-free arithmetic the compiler vectorises (the integer part is rounded with
/// the 1.5 * 2^23 shifter, whose low mantissa bits then hold it: no float-to-int conversion).
/// Below `ln(f32::MIN_POSITIVE)` it returns ~1.2e-38 instead of 0 (invisible after the
/// softmax's division by a sum >= 1).
#[inline(always)]
pub(crate) fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const SHIFTER: f32 = 12_582_912.0;
    const LO: f32 = -87.336_55;
    let x = if x < LO { LO } else { x };
    let t = x * LOG2E + SHIFTER;
    let n = t - SHIFTER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // t's bits are 0x4B40_0000 + n: the exponent field of 2^n is n + 127
    let scale = f32::from_bits(t.to_bits().wrapping_add(127u32.wrapping_sub(0x4B40_0000)) << 23);
    y * scale
}

/// Shapes of one attention call. Q and the output are `[batch, seq_q, heads * head_dim]`,
/// K and V `[batch, seq_k, heads * head_dim]`, all row-major (head `h` is columns
/// `h * head_dim ..`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub batch: usize,
    pub seq_q: usize,
    pub seq_k: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// An additive f32 mask: element `(b, h, i, j)` is `data[b * sb + h * sh + i * si + j]`
/// (a zero stride broadcasts that axis).
#[derive(Clone, Copy, Debug)]
pub struct MaskView<'a> {
    pub data: &'a [f32],
    pub sb: usize,
    pub sh: usize,
    pub si: usize,
}

/// Query rows per block: the scores of one block (`ROWS x seq_k`) are all that is ever
/// materialised. 6 x 16 keeps 12 of AVX2's 16 registers accumulating (NEON: 24 of 32); 4
/// rows measured 7% slower at 128 tokens and 15% at 512 (`cargo bench --bench attention`).
const ROWS: usize = 6;
/// Columns per register tile.
const COLS: usize = 16;

thread_local! {
    /// Per-thread scratch (transposed K of one head + one block of scores); grows, never
    /// shrinks, so steady-state calls do not allocate.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The output pointer shared by the per-head tasks.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a disjoint set of elements (its batch's rows, its head's columns)
// and the scope that runs the tasks ends before the output is used again.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Multi-head attention, `out = softmax(Q K^T * scale + mask) V` per batch and head.
/// With `nan_to_zero`, a row whose scores are all `-inf` gives zeros (the `IsNaN -> Where`
/// guard of torch's SDPA export), otherwise NaN (plain softmax). `threads` splits the heads.
#[allow(clippy::too_many_arguments)]
pub fn attention_f32(
    kernel: OpsKernel,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<MaskView>,
    dims: AttnDims,
    scale: f32,
    nan_to_zero: bool,
    out: &mut [f32],
    threads: usize,
) {
    let AttnDims {
        batch,
        seq_q,
        seq_k,
        heads,
        head_dim,
    } = dims;
    let hd = heads * head_dim;
    assert_eq!(q.len(), batch * seq_q * hd, "attention: Q size");
    assert_eq!(k.len(), batch * seq_k * hd, "attention: K size");
    assert_eq!(v.len(), batch * seq_k * hd, "attention: V size");
    assert_eq!(out.len(), batch * seq_q * hd, "attention: output size");
    if let Some(m) = &mask {
        let last = (batch - 1) * m.sb + (heads - 1) * m.sh + (seq_q - 1) * m.si + seq_k;
        assert!(
            batch == 0 || seq_q == 0 || seq_k == 0 || m.data.len() >= last,
            "attention: mask too small"
        );
    }
    if batch * seq_q * hd == 0 {
        return;
    }
    let kernel = if kernel.is_available() {
        kernel
    } else {
        OpsKernel::Scalar
    };
    let o = OutPtr(out.as_mut_ptr());
    // below ~1M multiply-adds a thread costs more than it saves
    let work = batch * heads * seq_q * seq_k * head_dim * 2;
    let threads = if work < (1 << 20) { 1 } else { threads };
    super::par::for_each_task(batch * heads, threads, move |t| {
        let o = o;
        let (b, h) = (t / heads, t % heads);
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            // SAFETY: `o` points to `out` (length checked above), alive for the whole call;
            // `run_head` writes only rows of batch `b`, columns of head `h`: disjoint
            // between tasks.
            unsafe {
                run_head(
                    kernel,
                    q,
                    k,
                    v,
                    mask,
                    dims,
                    scale,
                    nan_to_zero,
                    o.0,
                    b,
                    h,
                    &mut s,
                )
            }
        })
    });
}

/// # Safety
/// As [`head`]; `kernel` must be available on this CPU (`attention_f32` resolves it).
#[allow(clippy::too_many_arguments)]
unsafe fn run_head(
    kernel: OpsKernel,
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
    match kernel {
        #[cfg(target_arch = "x86_64")]
        OpsKernel::Simd => head_avx2(q, k, v, mask, dims, scale, nan_to_zero, out, b, h, scratch),
        #[cfg(target_arch = "aarch64")]
        OpsKernel::Simd => {
            head::<true, true>(q, k, v, mask, dims, scale, nan_to_zero, out, b, h, scratch)
        }
        _ => head::<false, false>(q, k, v, mask, dims, scale, nan_to_zero, out, b, h, scratch),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn head_avx2(
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
    head::<true, true>(q, k, v, mask, dims, scale, nan_to_zero, out, b, h, scratch)
}

/// One (batch, head): K^T packed once (`head_dim x padded seq_k`), then blocks of `ROWS`
/// query rows: scores, masked softmax (unnormalised), `P V`, divided by the row sums.
///
/// # Safety
/// `out` must point to `batch * seq_q * heads * head_dim` writable f32 that no one else
/// writes in this batch/head's elements meanwhile.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn head<const FMA: bool, const FAST_EXP: bool>(
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
    let AttnDims {
        seq_q,
        seq_k,
        heads,
        head_dim: d,
        ..
    } = dims;
    let hd = heads * d;
    let sp = seq_k.div_ceil(COLS) * COLS;
    if scratch.len() < d * sp + ROWS * sp {
        scratch.resize(d * sp + ROWS * sp, 0.0);
    }
    let (kt, sc) = scratch.split_at_mut(d * sp);
    let sc = &mut sc[..ROWS * sp];
    // K^T of this head, zero-padded to whole column tiles
    for j in 0..seq_k {
        let row = &k[(b * seq_k + j) * hd + h * d..][..d];
        for (dd, &x) in row.iter().enumerate() {
            kt[dd * sp + j] = x;
        }
    }
    for dd in 0..d {
        kt[dd * sp + seq_k..(dd + 1) * sp].fill(0.0);
    }
    let q_row = |i: usize| &q[(b * seq_q + i) * hd + h * d..][..d];
    let v_base = b * seq_k * hd + h * d;
    let mut i0 = 0;
    while i0 < seq_q {
        let rows = (seq_q - i0).min(ROWS);
        // rows past the end repeat the last real row (computed, never stored)
        let qr: [&[f32]; ROWS] = std::array::from_fn(|r| q_row(i0 + r.min(rows - 1)));
        // scores = Q K^T for the block
        let qp: [*const f32; ROWS] = std::array::from_fn(|r| qr[r].as_ptr());
        let mut jc = 0;
        while jc < sp {
            let mut acc = [[0f32; COLS]; ROWS];
            // raw pointers in the hot loops (no bounds checks, no reloads of slice headers):
            // `kp` walks K^T's rows `jc..jc + COLS` (sp is a multiple of COLS, kt holds
            // d * sp values), each `qp[r]` reads `d` values of a Q row (checked above)
            let mut kp = kt.as_ptr().add(jc);
            for dd in 0..d {
                let kv = &*(kp as *const [f32; COLS]);
                for r in 0..ROWS {
                    let x = *qp[r].add(dd);
                    for l in 0..COLS {
                        acc[r][l] = madd::<FMA>(x, kv[l], acc[r][l]);
                    }
                }
                kp = kp.add(sp);
            }
            for r in 0..ROWS {
                sc[r * sp + jc..r * sp + jc + COLS].copy_from_slice(&acc[r]);
            }
            jc += COLS;
        }
        // masked softmax, unnormalised: p = exp(x - max); inv = 1 / sum
        let mut inv = [0f32; ROWS];
        for r in 0..rows {
            let i = i0 + r;
            let s = &mut sc[r * sp..r * sp + seq_k];
            match &mask {
                Some(m) => {
                    let mr = &m.data[b * m.sb + h * m.sh + i * m.si..][..seq_k];
                    for (x, &a) in s.iter_mut().zip(mr) {
                        *x = *x * scale + a;
                    }
                }
                None => s.iter_mut().for_each(|x| *x *= scale),
            }
            let mx = max8(s);
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
            let mut sums = [0f32; 8];
            let mut chunks = s.chunks_exact_mut(8);
            for c in &mut chunks {
                for l in 0..8 {
                    let e = if FAST_EXP {
                        exp_neg(c[l] - mx)
                    } else {
                        (c[l] - mx).exp()
                    };
                    c[l] = e;
                    sums[l] += e;
                }
            }
            let mut sum = 0f32;
            for x in chunks.into_remainder() {
                let e = if FAST_EXP {
                    exp_neg(*x - mx)
                } else {
                    (*x - mx).exp()
                };
                *x = e;
                sum += e;
            }
            sum += sums.iter().sum::<f32>();
            inv[r] = 1.0 / sum;
        }
        // out = P V / sum, in column tiles of the head
        let mut dc = 0;
        while dc < d {
            let w = (d - dc).min(COLS);
            let mut acc = [[0f32; COLS]; ROWS];
            if w == COLS {
                // `vp` walks V's rows 0..seq_k at columns dc..dc + COLS of this head (inside v:
                // checked by the caller's size assertions), `pp[r]` the scores row r (sp >= seq_k
                // values)
                let pp: [*const f32; ROWS] = std::array::from_fn(|r| sc.as_ptr().add(r * sp));
                let mut vp = v.as_ptr().add(v_base + dc);
                for j in 0..seq_k {
                    let vr = &*(vp as *const [f32; COLS]);
                    for r in 0..ROWS {
                        let p = *pp[r].add(j);
                        for l in 0..COLS {
                            acc[r][l] = madd::<FMA>(p, vr[l], acc[r][l]);
                        }
                    }
                    vp = vp.add(hd);
                }
            } else {
                for j in 0..seq_k {
                    let vr = &v[v_base + j * hd + dc..][..w];
                    for r in 0..ROWS {
                        let p = sc[r * sp + j];
                        for l in 0..w {
                            acc[r][l] = madd::<FMA>(p, vr[l], acc[r][l]);
                        }
                    }
                }
            }
            for r in 0..rows {
                let dst = out.add((b * seq_q + i0 + r) * hd + h * d + dc);
                for l in 0..w {
                    *dst.add(l) = acc[r][l] * inv[r];
                }
            }
            dc += COLS;
        }
        i0 += ROWS;
    }
}

/// Maximum of a slice (NaN if any element is NaN), eight lanes at a time.
#[inline(always)]
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

/// Plain reference: the textbook formula, f64 accumulation, one head at a time.
#[cfg(test)]
pub(crate) fn attention_reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<MaskView>,
    dims: AttnDims,
    scale: f32,
    nan_to_zero: bool,
) -> Vec<f32> {
    let AttnDims {
        batch,
        seq_q,
        seq_k,
        heads,
        head_dim: d,
    } = dims;
    let hd = heads * d;
    let mut out = vec![0f32; batch * seq_q * hd];
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..seq_q {
                let mut x = vec![0f64; seq_k];
                for (j, x) in x.iter_mut().enumerate() {
                    let mut s = 0f64;
                    for dd in 0..d {
                        s += q[(b * seq_q + i) * hd + h * d + dd] as f64
                            * k[(b * seq_k + j) * hd + h * d + dd] as f64;
                    }
                    let a = mask.map_or(0.0, |m| m.data[b * m.sb + h * m.sh + i * m.si + j]);
                    *x = s * scale as f64 + a as f64;
                }
                let mx = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = x.iter().map(|&x| (x - mx).exp()).collect();
                let sum: f64 = p.iter().sum();
                for dd in 0..d {
                    let mut o = 0f64;
                    for j in 0..seq_k {
                        o += p[j] / sum * v[(b * seq_k + j) * hd + h * d + dd] as f64;
                    }
                    if o.is_nan() && nan_to_zero {
                        o = 0.0;
                    }
                    out[(b * seq_q + i) * hd + h * d + dd] = o as f32;
                }
            }
        }
    }
    out
}

/// Smallest share of an element-wise pass (LayerNorm, GELU) worth a thread of its own, in
/// elements: about 10 us of work; below it a pool wake-up costs about what it saves.
pub(crate) const MIN_ELEMS_PER_THREAD: usize = 1 << 14;

/// GELU as torch exports it, in place (see [`crate::int8::gelu`], which the fused int8 matmul
/// also applies in its epilogue), with the kernel's instruction set, split in chunks over up
/// to `threads` threads when it is big enough (element-wise: the same result for any split).
pub fn gelu_f32(kernel: OpsKernel, xs: &mut [f32], div: f32, threads: usize) {
    use crate::int8::pool;
    let simd = kernel == OpsKernel::Simd && kernel.is_available();
    let t = pool::threads_for(xs.len(), threads, MIN_ELEMS_PER_THREAD);
    if t <= 1 {
        return crate::int8::gelu::gelu_f32(simd, xs, div);
    }
    // whole vectors per chunk
    let per = pool::units_per_task(xs.len(), t).next_multiple_of(64);
    let chunks: Vec<&mut [f32]> = xs.chunks_mut(per).collect();
    pool::for_each_item(chunks, t, |_, c| crate::int8::gelu::gelu_f32(simd, c, div));
}

/// Sum of a slice, eight lanes at a time.
#[inline(always)]
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
#[allow(clippy::too_many_arguments)]
fn add_layer_norm_body(
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn add_layer_norm_avx2(
    x: &[f32],
    r: Option<&[f32]>,
    gamma: &[f32],
    beta: Option<&[f32]>,
    eps: f32,
    y: &mut [f32],
) {
    add_layer_norm_body(x, r, gamma, beta, eps, y)
}

/// `y = LayerNorm(x + r)` over the last axis (`gamma.len()` values per row); `r` (the
/// residual) and `beta` optional. Ranges of rows go to up to `threads` threads of the pool
/// when there are enough (each row is computed the same way wherever it runs).
#[allow(clippy::too_many_arguments)]
pub fn add_layer_norm_f32(
    kernel: OpsKernel,
    x: &[f32],
    r: Option<&[f32]>,
    gamma: &[f32],
    beta: Option<&[f32]>,
    eps: f32,
    y: &mut [f32],
    threads: usize,
) {
    use crate::int8::pool;
    let n = gamma.len();
    assert!(
        n > 0 && x.len().is_multiple_of(n),
        "layer norm: {} values, rows of {n}",
        x.len()
    );
    assert_eq!(y.len(), x.len(), "layer norm: output size");
    assert!(
        r.is_none_or(|r| r.len() == x.len()),
        "layer norm: residual size"
    );
    assert!(beta.is_none_or(|b| b.len() == n), "layer norm: beta size");
    let rows = x.len() / n;
    let t = pool::threads_for(rows, threads, MIN_ELEMS_PER_THREAD.div_ceil(n));
    if t <= 1 {
        return add_layer_norm_rows(kernel, x, r, gamma, beta, eps, y);
    }
    let per = pool::units_per_task(rows, t) * n;
    let chunks: Vec<&mut [f32]> = y.chunks_mut(per).collect();
    pool::for_each_item(chunks, t, |i, y| {
        let at = i * per..i * per + y.len();
        let r = r.map(|r| &r[at.clone()]);
        add_layer_norm_rows(kernel, &x[at], r, gamma, beta, eps, y)
    });
}

/// [`add_layer_norm_f32`] on the calling thread.
fn add_layer_norm_rows(
    kernel: OpsKernel,
    x: &[f32],
    r: Option<&[f32]>,
    gamma: &[f32],
    beta: Option<&[f32]>,
    eps: f32,
    y: &mut [f32],
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Simd` is only resolved when the CPU has AVX2 and FMA (`is_available`).
        OpsKernel::Simd if kernel.is_available() => unsafe {
            add_layer_norm_avx2(x, r, gamma, beta, eps, y)
        },
        _ => add_layer_norm_body(x, r, gamma, beta, eps, y),
    }
}
