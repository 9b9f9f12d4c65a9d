//! The integer GEMM driver: it owns every loop (A packing in [`apack`], tiling in [`drive`],
//! threads here) and the zero-point compensation and f32 epilogue; the instruction-set files
//! provide only micro-tiles and quantize primitives, chosen per kernel in [`runners`] (`MR`
//! rows x `NP` panels of 8 columns of raw i32 sums, see [`crate::int8::layout`]).
//!
//! Exactness: every kernel computes a *raw* sum `R[m,n] = sum_k â[m,k] * w[k,n]` over the
//! packed i8 weights, with `â = a - za` (scalar, AVX2: i16 activations), `â = a - 128`
//! (NEON: i8 activations) or `â = a` (VNNI, i8mm: the u8 activations as they are), then
//!
//! ```text
//! C[m,n] = R[m,n] + za' * colsum[n] - zw[n] * rowsum[m]
//!   za' = 0 (â = a - za), 128 - za (â = a - 128) or -za (â = a),
//!   rowsum[m] = sum_k (a[m,k] - za)
//! ```
//! which is `sum_k (a - za) * (w - zw)` exactly. All intermediate i32 arithmetic wraps, so the
//! result is exact whenever the true result fits in i32 (always for K <= 33025).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod apack;
mod drive;
mod runners;

#[cfg(test)]
pub(crate) use apack::ABuf;
pub(crate) use apack::{min_max_split, pack_a, quantize_pack_a, PackedA};
pub(crate) use drive::{Job, Out};
#[cfg(test)]
pub(crate) use runners::emulated;
pub(crate) use runners::Runner;

use super::pack::{PackedWeights, NR};
use super::quantize::QuantParams;
use super::Kernel;
use runners::{config, panels_per_tile, runner};

/// Smallest share of a matmul worth a thread of its own (~40 us of AVX2 work): waking a pool
/// thread costs microseconds on an idle host, but on a busy one a helper that is descheduled
/// with a claimed task makes the caller wait; at 0.5M MACs two threads were slower than one
/// on the shared dev host (8 x 256 x 1024).
pub(crate) const MIN_MACS_PER_THREAD: usize = 2 << 20;

/// Runs the job over all panels with `run`, split over up to `threads` threads of the pool
/// (1 = on the calling thread; fewer when the matmul is too small to pay for the wake-ups).
/// Column ranges are whole tiles of `np` panels; there are about twice as many ranges as
/// threads so that a thread that starts late (busy host) takes fewer.
fn execute(run: Runner, np: usize, job: &Job, panels: usize, threads: usize) {
    let macs = job.m * job.kq * 4 * job.n;
    // (unit tests split even tiny matmuls, to exercise the threaded path)
    let useful = if cfg!(test) {
        threads
    } else {
        macs / MIN_MACS_PER_THREAD
    };
    let groups = panels.div_ceil(np);
    let threads = threads.min(useful).clamp(1, groups.max(1));
    if threads == 1 {
        // SAFETY: the job's buffers are valid for all panels (built by the callers below),
        // and the epilogue's columns are the ones just computed, on this thread only.
        unsafe {
            run(job, 0, panels);
            gelu_columns(job, 0, panels);
        }
        return;
    }
    let tasks = (2 * threads).min(groups);
    let per = groups.div_ceil(tasks) * np;
    let tasks = panels.div_ceil(per);
    super::pool::Pool::global().run(tasks, threads, |i| {
        let p0 = i * per;
        let p1 = (p0 + per).min(panels);
        // SAFETY: as above; tasks cover disjoint column ranges, so no two threads write the
        // same output element, and the job outlives `run` (which waits for every task).
        unsafe {
            run(job, p0, p1);
            gelu_columns(job, p0, p1);
        }
    });
}

/// The GELU of an f32 job with one, over the columns of panels `[p0, p1)` of every row (the
/// whole output in one call when that is all of it).
///
/// # Safety
/// The job's output must be valid for `m x n` values, and the columns of panels `[p0, p1)`
/// written by no other thread meanwhile.
unsafe fn gelu_columns(job: &Job, p0: usize, p1: usize) {
    let Out::F32 {
        y, gelu: Some(div), ..
    } = job.out
    else {
        return;
    };
    let (c0, c1) = ((p0 * NR).min(job.n), (p1 * NR).min(job.n));
    if c0 == 0 && c1 == job.n {
        // SAFETY: the whole output (caller), no other thread writes it meanwhile.
        let all = unsafe { std::slice::from_raw_parts_mut(y, job.m * job.n) };
        super::gelu::gelu_f32(true, all, div);
        return;
    }
    for row in 0..job.m {
        // SAFETY: row `row`, columns c0..c1 <= n of the output (caller), which only this
        // call writes meanwhile.
        let part = unsafe { std::slice::from_raw_parts_mut(y.add(row * job.n + c0), c1 - c0) };
        super::gelu::gelu_f32(true, part, div);
    }
}

fn check_a(a: &[u8], m: usize, w: &PackedWeights) {
    assert_eq!(
        a.len(),
        m * w.k(),
        "qgemm: A has {} elements, not M*K = {m}*{}",
        a.len(),
        w.k()
    );
}

fn prepare(kernel: Kernel, a: &[u8], m: usize, za: u8, w: &PackedWeights) -> (Kernel, PackedA) {
    let kernel = Kernel::resolve(Some(kernel));
    let pa = pack_a(kernel, a, m, w.k(), za);
    (kernel, pa)
}

/// The dequantization of an f32 output: `sa`, the weights' 1 or N scales, N bias values.
type Dequant<'a> = (f32, &'a [f32], Option<&'a [f32]>);

/// The epilogue's per-column vectors, padded to whole panels (0 past N), built once per
/// call so that each tile's store loads them as they are.
pub(crate) struct Epilogue {
    /// `za' * colsum[n]` for the kernel's A format.
    colterm: Vec<i32>,
    /// `sa * sw[n]` (empty for an i32 output).
    scale: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl Epilogue {
    /// For activations packed in `layout`'s format with zero point `za`, weights `w`, and for
    /// an f32 output `Some((sa, sw, bias))` (`sw`: 1 or N scales, `bias`: N values).
    fn new(layout: Kernel, za: u8, w: &PackedWeights, f32_out: Option<Dequant>) -> Epilogue {
        let (n, padded) = (w.n(), w.panels() * NR);
        let offset = config(layout).1.col_offset(za);
        let colterm = w.colsum().iter().map(|c| c.wrapping_mul(offset)).collect();
        let (mut scale, mut bias) = (Vec::new(), None);
        if let Some((sa, sw, b)) = f32_out {
            scale = (0..padded)
                .map(|j| match (j < n, sw.len()) {
                    (false, _) => 0.0,
                    (true, 1) => sa * sw[0],
                    (true, _) => sa * sw[j],
                })
                .collect();
            bias = b.map(|b| {
                let mut v = b.to_vec();
                v.resize(padded, 0.0);
                v
            });
        }
        Epilogue {
            colterm,
            scale,
            bias,
        }
    }

    /// The f32 output `y` with these scales and bias.
    fn f32_out(&self, y: &mut [f32], gelu: Option<f32>) -> Out<'_> {
        Out::F32 {
            y: y.as_mut_ptr(),
            scale: &self.scale,
            bias: self.bias.as_deref(),
            gelu,
        }
    }
}

impl<'a> Job<'a> {
    /// The job over `m` rows of packed activations, weights `w`, into `out`.
    fn new(
        pa: &'a PackedA,
        m: usize,
        w: &'a PackedWeights,
        epi: &'a Epilogue,
        out: Out<'a>,
    ) -> Job<'a> {
        Job {
            a: pa.buf.ptr(),
            block_bytes: pa.block_bytes,
            m,
            n: w.n(),
            kq: w.kq(),
            w: w.data().as_ptr(),
            rowsum: &pa.rowsum,
            colterm: &epi.colterm,
            zp: w.zero_points(),
            zp_zero: w.zero_points_all_zero(),
            no_minus_128: w.no_minus_128(),
            out,
        }
    }
}

/// Exact integer GEMM: `c[m,n] = sum_k (a[m,k] - za) * (w[k,n] - zw[n])`, `a` u8 `[M, K]`
/// row-major, `c` i32 `[M, N]` row-major.
pub fn qgemm_i32(
    kernel: Kernel,
    a: &[u8],
    m: usize,
    za: u8,
    w: &PackedWeights,
    c: &mut [i32],
    threads: usize,
) {
    check_a(a, m, w);
    assert_eq!(
        c.len(),
        m * w.n(),
        "qgemm_i32: C has {} elements, not M*N",
        c.len()
    );
    if m == 0 {
        return;
    }
    let (kernel, pa) = prepare(kernel, a, m, za, w);
    let (run, np) = (runner(kernel), panels_per_tile(kernel));
    let epi = Epilogue::new(kernel, za, w, None);
    let job = Job::new(&pa, m, w, &epi, Out::I32(c.as_mut_ptr()));
    execute(run, np, &job, w.panels(), threads);
}

/// Quantized GEMM with the f32 epilogue:
/// `y[m,n] = c[m,n] as f32 * (sa * sw[n]) + bias[n]` (`sw`: 1 or N scales; `bias`: N values).
#[allow(clippy::too_many_arguments)]
pub fn qgemm_f32(
    kernel: Kernel,
    a: &[u8],
    m: usize,
    za: u8,
    sa: f32,
    w: &PackedWeights,
    sw: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    threads: usize,
) {
    check_a(a, m, w);
    check_f32_epilogue("qgemm_f32", m, w, sw, bias, y);
    if m == 0 {
        return;
    }
    let (kernel, pa) = prepare(kernel, a, m, za, w);
    run_f32(kernel, &pa, za, m, sa, w, sw, bias, None, y, threads);
}

/// Shapes of the f32 epilogue's operands: `y` `[M, N]`, 1 or N weight scales, N bias values.
fn check_f32_epilogue(
    who: &str,
    m: usize,
    w: &PackedWeights,
    sw: &[f32],
    bias: Option<&[f32]>,
    y: &[f32],
) {
    let n = w.n();
    assert_eq!(y.len(), m * n, "{who}: Y has {} elements, not M*N", y.len());
    assert!(
        sw.len() == 1 || sw.len() == n,
        "{who}: {} weight scales for N = {n}",
        sw.len()
    );
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "{who}: bias has {} values for N = {n}", b.len());
    }
}

/// The f32 GEMM over packed activations (shapes already checked).
#[allow(clippy::too_many_arguments)]
fn run_f32(
    kernel: Kernel,
    pa: &PackedA,
    za: u8,
    m: usize,
    sa: f32,
    w: &PackedWeights,
    sw: &[f32],
    bias: Option<&[f32]>,
    gelu: Option<f32>,
    y: &mut [f32],
    threads: usize,
) {
    let epi = Epilogue::new(kernel, za, w, Some((sa, sw, bias)));
    let job = Job::new(pa, m, w, &epi, epi.f32_out(y, gelu));
    execute(
        runner(kernel),
        panels_per_tile(kernel),
        &job,
        w.panels(),
        threads,
    );
}

/// The whole fused op on f32 activations `x` `[M, K]`: `DynamicQuantizeLinear`, then
/// [`qgemm_f32`] into `y` `[M, N]`. Returns the activations' quantization parameters.
#[allow(clippy::too_many_arguments)]
pub fn quantized_matmul_f32(
    kernel: Kernel,
    x: &[f32],
    m: usize,
    w: &PackedWeights,
    sw: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    threads: usize,
) -> QuantParams {
    quantized_matmul_gelu_f32(kernel, x, m, w, sw, bias, None, y, threads)
}

/// [`quantized_matmul_f32`], then with `gelu = Some(div)` torch's erf GELU on every output,
/// `y * (erf(y / div) + 1) * 0.5` ([`super::gelu`]), applied by each thread to the columns
/// it computed (no separate pass). Every step is split over up to `threads` threads when it
/// is big enough (min/max by chunks, quantize-and-pack by row blocks, the GEMM and the GELU
/// by column ranges); the result is the same for any number of threads.
#[allow(clippy::too_many_arguments)]
pub fn quantized_matmul_gelu_f32(
    kernel: Kernel,
    x: &[f32],
    m: usize,
    w: &PackedWeights,
    sw: &[f32],
    bias: Option<&[f32]>,
    gelu: Option<f32>,
    y: &mut [f32],
    threads: usize,
) -> QuantParams {
    assert_eq!(
        x.len(),
        m * w.k(),
        "quantized_matmul_f32: X has {} elements, not M*K",
        x.len()
    );
    check_f32_epilogue("quantized_matmul_f32", m, w, sw, bias, y);
    let kernel = Kernel::resolve(Some(kernel));
    let (lo, hi) = min_max_split(kernel, x, threads);
    let p = QuantParams::from_min_max(lo, hi);
    if m == 0 {
        return p;
    }
    let pa = quantize_pack_a(kernel, x, m, w.k(), p, threads);
    run_f32(
        kernel,
        &pa,
        p.zero_point,
        m,
        p.scale,
        w,
        sw,
        bias,
        gelu,
        y,
        threads,
    );
    p
}

/// [`qgemm_i32`] with the A layout of `layout` (available here or not) and a given runner:
/// the tests run the VNNI tile with an emulated instruction through this.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn qgemm_i32_with_runner(
    layout: Kernel,
    run: Runner,
    np: usize,
    a: &[u8],
    m: usize,
    za: u8,
    w: &PackedWeights,
    c: &mut [i32],
    threads: usize,
) {
    check_a(a, m, w);
    assert_eq!(c.len(), m * w.n());
    if m == 0 {
        return;
    }
    let pa = pack_a(layout, a, m, w.k(), za);
    let epi = Epilogue::new(layout, za, w, None);
    let job = Job::new(&pa, m, w, &epi, Out::I32(c.as_mut_ptr()));
    execute(run, np, &job, w.panels(), threads);
}
