//! The integer GEMM driver: A packing, tiling, threads, zero-point compensation and the f32
//! epilogue, around per-kernel micro-tiles (`MR` rows x 8 columns of raw i32 sums).
//!
//! Exactness: every kernel computes a *raw* sum `R[m,n] = sum_k â[m,k] * w[k,n]` over the
//! packed i8 weights, with `â = a - za` (scalar, AVX2: i16 activations) or `â = a - 128`
//! (NEON: i8 activations), then
//!
//! ```text
//! C[m,n] = R[m,n] + (za' ) * colsum[n] - zw[n] * rowsum[m]
//!   za' = 0 (â = a - za) or 128 - za (â = a - 128),  rowsum[m] = sum_k (a[m,k] - za)
//! ```
//! which is `sum_k (a - za) * (w - zw)` exactly. All intermediate i32 arithmetic wraps, so the
//! result is exact whenever the true result fits in i32 (always for K <= 33025).

use super::pack::{PackedWeights, NR, QUAD_BYTES};
use super::quantize::{self, QuantParams};
use super::Kernel;

/// Packed-A formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AFormat {
    /// i16 `a - za`, k-quads of MR rows: `[block][q][r][4]`.
    I16MinusZa,
    /// i8 `a - 128` (`a ^ 0x80`), k-quads of MR rows: `[block][q][r][4]`.
    I8Shifted,
}

pub(crate) enum ABuf {
    I16(Vec<i16>),
    I8(Vec<i8>),
}

impl ABuf {
    fn ptr(&self) -> *const u8 {
        match self {
            ABuf::I16(v) => v.as_ptr() as *const u8,
            ABuf::I8(v) => v.as_ptr() as *const u8,
        }
    }
}

pub(crate) struct PackedA {
    pub buf: ABuf,
    pub rowsum: Vec<i32>,
    /// Bytes of one block of MR rows.
    pub block_bytes: usize,
}

/// Per-kernel configuration: rows per tile and A format.
pub(crate) fn config(kernel: Kernel) -> (usize, AFormat) {
    match kernel {
        Kernel::Scalar => (4, AFormat::I16MinusZa),
        Kernel::Avx2 => (6, AFormat::I16MinusZa),
        Kernel::Neon => (4, AFormat::I8Shifted),
        Kernel::Dotprod => (8, AFormat::I8Shifted),
    }
}

/// Packs u8 activations `[M, K]` (row-major) for a kernel.
pub(crate) fn pack_a(kernel: Kernel, a: &[u8], m: usize, k: usize, za: u8) -> PackedA {
    let (mr, fmt) = config(kernel);
    assert_eq!(a.len(), m * k);
    let kq = k.div_ceil(4);
    let blocks = m.div_ceil(mr);
    let per_block = kq * mr * 4;
    let mut rowsum = vec![0i32; m];
    let kza = (k as i32) * za as i32;
    match fmt {
        AFormat::I16MinusZa => {
            let mut buf = vec![0i16; blocks * per_block];
            for row in 0..m {
                let (b, r) = (row / mr, row % mr);
                let dst = &mut buf[b * per_block + r * 4..(b + 1) * per_block];
                let src = &a[row * k..(row + 1) * k];
                let s = match kernel {
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx2 => unsafe { super::x86::pack_row_i16_avx2(src, dst, mr * 4, za) },
                    _ => pack_row_i16(src, dst, mr * 4, za),
                };
                rowsum[row] = s - kza;
            }
            PackedA {
                buf: ABuf::I16(buf),
                rowsum,
                block_bytes: per_block * 2,
            }
        }
        AFormat::I8Shifted => {
            let mut buf = vec![0i8; blocks * per_block];
            for row in 0..m {
                let (b, r) = (row / mr, row % mr);
                let dst = &mut buf[b * per_block..(b + 1) * per_block];
                let src = &a[row * k..(row + 1) * k];
                let mut s = 0i32;
                for (q, chunk) in src.chunks(4).enumerate() {
                    let d = &mut dst[(q * mr + r) * 4..(q * mr + r) * 4 + 4];
                    for (d, &x) in d.iter_mut().zip(chunk) {
                        *d = (x ^ 0x80) as i8;
                        s += x as i32;
                    }
                }
                rowsum[row] = s - kza;
            }
            PackedA {
                buf: ABuf::I8(buf),
                rowsum,
                block_bytes: per_block,
            }
        }
    }
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

#[derive(Clone, Copy)]
pub(crate) enum Out {
    I32(*mut i32),
    /// `y = acc as f32 * scale[n] + bias[n]`; `scale` and `bias` padded to `panels * 8`.
    F32 {
        y: *mut f32,
        scale: *const f32,
        bias: Option<*const f32>,
    },
}

/// Everything a thread needs; raw pointers so column ranges can be shared across threads
/// (each thread writes disjoint columns).
pub(crate) struct Job<'a> {
    pub a: *const u8,
    pub block_bytes: usize,
    pub m: usize,
    pub n: usize,
    pub kq: usize,
    pub w: *const u8,
    pub rowsum: &'a [i32],
    /// `za' * colsum[n]`, padded.
    pub colterm: &'a [i32],
    pub zp: &'a [i32],
    pub zp_zero: bool,
    pub out: Out,
}

unsafe impl Send for Job<'_> {}
unsafe impl Sync for Job<'_> {}

/// Panels of W per L2 block (the block stays in L2 while the row blocks of A, each small
/// enough for L1, go over it).
fn panels_per_chunk(kq: usize) -> usize {
    let budget = 192 * 1024;
    (budget / (kq * QUAD_BYTES).max(1)).max(1)
}

/// The generic driver over column panels `[p0, p1)`; `tile(a, w, kq, out, rows)` writes the
/// raw `MR x 8` sums row-major into `out` (only the first `rows` rows need to be computed).
/// Inlined into each kernel's `target_feature` wrapper so that the epilogue is compiled for
/// that kernel's features. Loop order: W chunk (L2) / row block (L1) / panel, so each row
/// block's output is written in contiguous runs.
#[inline(always)]
pub(crate) unsafe fn drive<const MR: usize, F: Fn(*const u8, *const u8, usize, *mut i32, usize)>(
    job: &Job,
    p0: usize,
    p1: usize,
    tile: F,
) {
    let chunk = panels_per_chunk(job.kq);
    let mut t = [[0i32; NR]; MR];
    let mut pc0 = p0;
    while pc0 < p1 {
        let pc1 = (pc0 + chunk).min(p1);
        let mut mb = 0;
        while mb < job.m {
            let rows = (job.m - mb).min(MR);
            let a = job.a.add(mb / MR * job.block_bytes);
            for p in pc0..pc1 {
                let w = job.w.add(p * job.kq * QUAD_BYTES);
                let n0 = p * NR;
                let cols = (job.n - n0).min(NR);
                tile(a, w, job.kq, t.as_mut_ptr() as *mut i32, rows);
                store::<MR>(job, &t, mb, rows, n0, cols);
            }
            mb += MR;
        }
        pc0 = pc1;
    }
}

#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn store<const MR: usize>(
    job: &Job,
    t: &[[i32; NR]; MR],
    m0: usize,
    rows: usize,
    n0: usize,
    cols: usize,
) {
    let colterm: &[i32; NR] = job.colterm[n0..n0 + NR].try_into().unwrap();
    let zp: &[i32; NR] = job.zp[n0..n0 + NR].try_into().unwrap();
    for r in 0..rows {
        let m = m0 + r;
        let rs = job.rowsum[m];
        let mut v = [0i32; NR];
        if job.zp_zero {
            for j in 0..NR {
                v[j] = t[r][j].wrapping_add(colterm[j]);
            }
        } else {
            for j in 0..NR {
                v[j] = t[r][j]
                    .wrapping_add(colterm[j])
                    .wrapping_sub(zp[j].wrapping_mul(rs));
            }
        }
        match job.out {
            Out::I32(c) => {
                let dst = c.add(m * job.n + n0);
                std::ptr::copy_nonoverlapping(v.as_ptr(), dst, cols);
            }
            Out::F32 { y, scale, bias } => {
                let s = &*(scale.add(n0) as *const [f32; NR]);
                let mut f = [0f32; NR];
                for j in 0..NR {
                    f[j] = v[j] as f32 * s[j];
                }
                if let Some(b) = bias {
                    let b = &*(b.add(n0) as *const [f32; NR]);
                    for j in 0..NR {
                        f[j] += b[j];
                    }
                }
                let dst = y.add(m * job.n + n0);
                std::ptr::copy_nonoverlapping(f.as_ptr(), dst, cols);
            }
        }
    }
}

/// Portable tile: MR = 4, A = i16 `a - za`.
pub(crate) unsafe fn tile_scalar(a: *const u8, w: *const u8, kq: usize, out: *mut i32) {
    const MR: usize = 4;
    let a = std::slice::from_raw_parts(a as *const i16, kq * MR * 4);
    let w = std::slice::from_raw_parts(w as *const i8, kq * QUAD_BYTES);
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
    std::ptr::copy_nonoverlapping(acc.as_ptr() as *const i32, out, MR * NR);
}

unsafe fn run_scalar(job: &Job, p0: usize, p1: usize) {
    drive::<4, _>(job, p0, p1, |a, w, kq, o, _| tile_scalar(a, w, kq, o))
}

fn runner(kernel: Kernel) -> unsafe fn(&Job, usize, usize) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => super::x86::run_avx2,
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon => super::arm::run_neon,
        #[cfg(target_arch = "aarch64")]
        Kernel::Dotprod => super::arm::run_dotprod,
        _ => run_scalar,
    }
}

/// Smallest share of a matmul worth a thread of its own.
pub(crate) const MIN_MACS_PER_THREAD: usize = 2 << 20;

/// Runs the job over all panels, split over up to `threads` threads (1 = on the calling
/// thread; fewer when the matmul is too small to pay for the spawns).
fn execute(kernel: Kernel, job: &Job, panels: usize, threads: usize) {
    let run = runner(kernel);
    // a spawned thread costs tens of microseconds: give each at least ~2M MACs (~30 us)
    let macs = job.m * job.kq * 4 * job.n;
    // (unit tests split even tiny matmuls, to exercise the threaded path)
    let useful = if cfg!(test) {
        threads
    } else {
        macs / MIN_MACS_PER_THREAD
    };
    let threads = threads.min(useful).clamp(1, panels.max(1));
    if threads == 1 {
        unsafe { run(job, 0, panels) };
        return;
    }
    let per = panels.div_ceil(threads);
    std::thread::scope(|s| {
        let mut p0 = per;
        while p0 < panels {
            let p1 = (p0 + per).min(panels);
            s.spawn(move || unsafe { run(job, p0, p1) });
            p0 = p1;
        }
        unsafe { run(job, 0, per.min(panels)) };
    });
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

fn prepare(
    kernel: Kernel,
    a: &[u8],
    m: usize,
    za: u8,
    w: &PackedWeights,
) -> (Kernel, PackedA, Vec<i32>) {
    let kernel = Kernel::resolve(Some(kernel));
    let pa = pack_a(kernel, a, m, w.k(), za);
    let colterm = colterm_for(kernel, za, w);
    (kernel, pa, colterm)
}

/// `za' * colsum[n]` for the kernel's A format.
fn colterm_for(kernel: Kernel, za: u8, w: &PackedWeights) -> Vec<i32> {
    let off = match config(kernel).1 {
        AFormat::I16MinusZa => 0,
        AFormat::I8Shifted => 128 - za as i32,
    };
    w.colsum().iter().map(|c| c.wrapping_mul(off)).collect()
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
    let (kernel, pa, colterm) = prepare(kernel, a, m, za, w);
    let job = Job {
        a: pa.buf.ptr(),
        block_bytes: pa.block_bytes,
        m,
        n: w.n(),
        kq: w.kq(),
        w: w.data().as_ptr(),
        rowsum: &pa.rowsum,
        colterm: &colterm,
        zp: w.zero_points(),
        zp_zero: w.zero_points_all_zero(),
        out: Out::I32(c.as_mut_ptr()),
    };
    execute(kernel, &job, w.panels(), threads);
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
    let (kernel, pa, colterm) = prepare(kernel, a, m, za, w);
    run_f32(kernel, &pa, &colterm, m, sa, w, sw, bias, y, threads);
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
    colterm: &[i32],
    m: usize,
    sa: f32,
    w: &PackedWeights,
    sw: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    threads: usize,
) {
    let n = w.n();
    let padded = w.panels() * NR;
    let mut scale = vec![0f32; padded];
    for (j, s) in scale.iter_mut().enumerate().take(n) {
        *s = sa * if sw.len() == 1 { sw[0] } else { sw[j] };
    }
    let bias = bias.map(|b| {
        let mut v = vec![0f32; padded];
        v[..n].copy_from_slice(b);
        v
    });
    let job = Job {
        a: pa.buf.ptr(),
        block_bytes: pa.block_bytes,
        m,
        n,
        kq: w.kq(),
        w: w.data().as_ptr(),
        rowsum: &pa.rowsum,
        colterm,
        zp: w.zero_points(),
        zp_zero: w.zero_points_all_zero(),
        out: Out::F32 {
            y: y.as_mut_ptr(),
            scale: scale.as_ptr(),
            bias: bias.as_ref().map(|b| b.as_ptr()),
        },
    };
    execute(kernel, &job, w.panels(), threads);
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
    assert_eq!(
        x.len(),
        m * w.k(),
        "quantized_matmul_f32: X has {} elements, not M*K",
        x.len()
    );
    check_f32_epilogue("quantized_matmul_f32", m, w, sw, bias, y);
    let kernel = Kernel::resolve(Some(kernel));
    let (lo, hi) = quantize::min_max(kernel, x);
    let p = QuantParams::from_min_max(lo, hi);
    if m == 0 {
        return p;
    }
    let pa = quantize_pack_a(kernel, x, m, w.k(), p);
    let colterm = colterm_for(kernel, p.zero_point, w);
    run_f32(kernel, &pa, &colterm, m, p.scale, w, sw, bias, y, threads);
    p
}

/// `DynamicQuantizeLinear` of `x` `[M, K]` with parameters `p`, packed for `kernel`: AVX2
/// quantizes straight into its layout (`a - za = clamp(round(x / s), -zp, 255 - zp)`, no u8
/// tensor); the others quantize to u8, then pack.
fn quantize_pack_a(kernel: Kernel, x: &[f32], m: usize, k: usize, p: QuantParams) -> PackedA {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { super::x86::quantize_pack_a_avx2(x, m, k, p) },
        _ => {
            let mut q = vec![0u8; x.len()];
            quantize::quantize(kernel, x, p, &mut q);
            pack_a(kernel, &q, m, k, p.zero_point)
        }
    }
}
