//! The driver's loops around a micro-tile: L2 blocks of weight panels, L1 row blocks of
//! packed activations, tiles of panels, and the store of each tile's raw sums with the
//! zero-point compensation and the f32 epilogue (see [`super`] for the arithmetic).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use crate::int8::layout::{DirectOut, PanelEpilogue, NO_BIAS, TILE_STRIDE};
use crate::int8::pack::{NR, QUAD_BYTES};

#[derive(Clone, Copy)]
pub(crate) enum Out<'a> {
    I32(*mut i32),
    /// `y = acc as f32 * scale[n] + bias[n]`, `scale[n] = sa * sw[n]` and `bias` padded to
    /// whole panels (see [`super::Epilogue`]).
    F32 {
        y: *mut f32,
        scale: &'a [f32],
        bias: Option<&'a [f32]>,
        /// `Some(div)`: torch's erf GELU on the result, applied by [`super::execute`] to each
        /// column range after its GEMM.
        gelu: Option<f32>,
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
    /// `za' * colsum[n]` (padded to whole panels), added to every output: `za'` is the
    /// kernel's A format's [`crate::int8::layout::AFormat::col_offset`].
    pub colterm: &'a [i32],
    pub zp: &'a [i32],
    pub zp_zero: bool,
    /// No weight is -128 (the NEON tile may add two products in one i16 lane).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub no_minus_128: bool,
    pub out: Out<'a>,
}

// SAFETY: the raw pointers are read-only inputs (A, W, scale, bias) that outlive the job, and
// the output, which threads share only through disjoint column ranges (`super::execute`).
unsafe impl Send for Job<'_> {}
// SAFETY: as for `Send`: shared use reads the inputs and writes disjoint output columns.
unsafe impl Sync for Job<'_> {}

/// Panels of W per L2 block (the block stays in L2 while the row blocks of A, each small
/// enough for L1, go over it).
fn panels_per_chunk(kq: usize) -> usize {
    let budget = 192 * 1024;
    (budget / (kq * QUAD_BYTES).max(1)).max(1)
}

/// A tile that applies the f32 epilogue itself: `direct(a, w, kq, out, rows)` computes a
/// whole panel of `rows` rows into [`DirectOut`] and returns true, or returns false (without
/// writing) for a height it does not handle.
pub(crate) type DirectFn = fn(*const u8, *const u8, usize, &DirectOut, usize) -> bool;

/// For the kernels without a [`DirectFn`].
pub(crate) const NO_DIRECT: Option<DirectFn> = None;

/// The generic driver over column panels `[p0, p1)`; `tile(a, w, kq, out, rows, np)` writes
/// the raw sums of `MR` rows x `np` panels (`1 <= np <= NP`; panel `i` at `w + i * kq * 32`)
/// into `out`, row-major with a row stride of [`TILE_STRIDE`] (only the first `rows` rows need
/// to be computed; see [`crate::int8::layout`]), and [`store`] writes the outputs. With
/// `direct` (kernels of one panel per tile), an f32 output, weights whose zero points are all
/// 0 and a whole panel, `direct` computes and stores the outputs itself when it handles the
/// height. Inlined into each kernel's `target_feature` wrapper so that the loops and the
/// epilogue are compiled for that kernel's features. Loop order: W chunk (L2) / row block
/// (L1) / panel group, so each row block's output is written in contiguous runs.
///
/// # Safety
/// `job` must describe valid buffers (see [`Job`]), `p0 <= p1 <= panels`, and `tile` must only
/// read A rows of its block and the `np` panels it is given, and write `MR x NP x 8` values;
/// `direct` only its block and panel, and the outputs [`DirectOut`] describes.
#[inline(always)]
pub(crate) unsafe fn drive<
    const MR: usize,
    const NP: usize,
    F: Fn(*const u8, *const u8, usize, *mut i32, usize, usize),
    D: Fn(*const u8, *const u8, usize, &DirectOut, usize) -> bool,
>(
    job: &Job,
    p0: usize,
    p1: usize,
    tile: F,
    direct: Option<D>,
) {
    let direct = match (direct, job.out) {
        (Some(d), Out::F32 { y, scale, bias, .. }) if NP == 1 && job.zp_zero => {
            Some((d, y, scale, bias))
        }
        _ => None,
    };
    let chunk = panels_per_chunk(job.kq).div_ceil(NP) * NP;
    // MR x NP x 8, NP <= 4 (a fixed-size buffer: no allocation per call)
    let mut t = [[0i32; TILE_STRIDE]; MR];
    debug_assert!(NP <= 4);
    let mut pc0 = p0;
    while pc0 < p1 {
        let pc1 = (pc0 + chunk).min(p1);
        let mut mb = 0;
        while mb < job.m {
            let rows = (job.m - mb).min(MR);
            // SAFETY: block mb / MR of the packed A exists (mb < m; blocks = ceil(m / MR)).
            let a = unsafe { job.a.add(mb / MR * job.block_bytes) };
            let mut p = pc0;
            if let Some((d, y, scale, bias)) = &direct {
                // the whole panels of this chunk, while `d` takes this height
                let whole = pc1.min(job.n / NR);
                if p < whole {
                    let n0 = p * NR;
                    let (bias, bias_step) = match bias {
                        Some(b) => (b[n0..].as_ptr(), NR),
                        None => (NO_BIAS.as_ptr(), 0),
                    };
                    let mut out = DirectOut {
                        colterm: job.colterm[n0..].as_ptr(),
                        scale: scale[n0..].as_ptr(),
                        bias,
                        // SAFETY: row mb < m, column n0 < n of the output
                        y: unsafe { y.add(mb * job.n + n0) },
                        ldy: job.n,
                    };
                    // SAFETY: panel p < panels
                    let mut w = unsafe { job.w.add(p * job.kq * QUAD_BYTES) };
                    // rows mb..mb + rows, columns n0..n0 + 8 of each panel: this call's,
                    // written by no other thread; the vectors are padded to whole panels
                    while p < whole && d(a, w, job.kq, &out, rows) {
                        p += 1;
                        // SAFETY: one panel on (past the end only when the loop ends)
                        unsafe {
                            w = w.add(job.kq * QUAD_BYTES);
                            out.colterm = out.colterm.add(NR);
                            out.scale = out.scale.add(NR);
                            out.bias = out.bias.add(bias_step);
                            out.y = out.y.add(NR);
                        }
                    }
                }
            }
            while p < pc1 {
                let np = (pc1 - p).min(NP);
                // SAFETY: panel p < panels, so its kq * 32 bytes are inside the packed data.
                let w = unsafe { job.w.add(p * job.kq * QUAD_BYTES) };
                tile(a, w, job.kq, t.as_mut_ptr() as *mut i32, rows, np);
                for i in 0..np {
                    let n0 = (p + i) * NR;
                    let cols = (job.n - n0).min(NR);
                    // SAFETY: rows mb..mb + rows < m and columns n0..n0 + cols < n are inside
                    // the output; this call's column range is written by no other thread.
                    unsafe { store::<MR>(job, &t, i * NR, mb, rows, n0, cols) };
                }
                p += np;
            }
            mb += MR;
        }
        pc0 = pc1;
    }
}

/// Writes rows `m0..m0 + rows`, columns `n0..n0 + cols` of the output from the raw sums
/// `t[r][c0..c0 + 8]` with the zero-point compensation and the epilogue (on aarch64 the f32
/// epilogue is NEON's [`crate::int8::arm::store_f32`]).
///
/// # Safety
/// The output pointers of `job` must be valid for those rows and columns.
#[inline(always)]
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
unsafe fn store<const MR: usize>(
    job: &Job,
    t: &[[i32; TILE_STRIDE]; MR],
    c0: usize,
    m0: usize,
    rows: usize,
    n0: usize,
    cols: usize,
) {
    let colterm: &[i32; NR] = job.colterm[n0..n0 + NR].try_into().unwrap();
    let zp: &[i32; NR] = job.zp[n0..n0 + NR].try_into().unwrap();
    let (y, e) = match job.out {
        Out::I32(c) => {
            for r in 0..rows {
                let m = m0 + r;
                let rs = job.rowsum[m];
                let raw: &[i32; NR] = t[r][c0..c0 + NR].try_into().unwrap();
                let v: [i32; NR] = std::array::from_fn(|j| {
                    raw[j]
                        .wrapping_add(colterm[j])
                        .wrapping_sub(zp[j].wrapping_mul(rs))
                });
                // SAFETY: the caller guarantees row m, columns n0..n0 + cols of C.
                unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), c.add(m * job.n + n0), cols) };
            }
            return;
        }
        Out::F32 { y, scale, bias, .. } => (
            y,
            PanelEpilogue {
                colterm,
                zp: (!job.zp_zero).then_some(zp),
                scale: scale[n0..n0 + NR].try_into().unwrap(),
                bias: bias.map(|b| b[n0..n0 + NR].try_into().unwrap()),
            },
        ),
    };
    // SAFETY: rows m0..m0 + rows of the output, columns n0..n0 + cols (caller); `t` holds
    // `rows` rows of TILE_STRIDE raw sums from column c0; NEON is part of the aarch64 baseline.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        crate::int8::arm::store_f32(
            t.as_ptr().cast::<i32>().add(c0),
            rows,
            &job.rowsum[m0..m0 + rows],
            &e,
            y.add(m0 * job.n + n0),
            job.n,
            cols,
        )
    };
    // (the panel's vectors as local arrays: read through references, LLVM left the bias add
    // in scalar code on x86-64)
    #[cfg(not(target_arch = "aarch64"))]
    let (colterm, scale, bias, zp) = (*e.colterm, *e.scale, e.bias.copied(), e.zp.copied());
    #[cfg(not(target_arch = "aarch64"))]
    for r in 0..rows {
        let m = m0 + r;
        let rs = job.rowsum[m];
        let raw: &[i32; NR] = t[r][c0..c0 + NR].try_into().unwrap();
        let mut v = [0i32; NR];
        match &zp {
            None => {
                for j in 0..NR {
                    v[j] = raw[j].wrapping_add(colterm[j]);
                }
            }
            Some(zp) => {
                for j in 0..NR {
                    v[j] = raw[j]
                        .wrapping_add(colterm[j])
                        .wrapping_sub(zp[j].wrapping_mul(rs));
                }
            }
        }
        let mut f = [0f32; NR];
        for j in 0..NR {
            f[j] = v[j] as f32 * scale[j];
        }
        if let Some(b) = &bias {
            for j in 0..NR {
                f[j] += b[j];
            }
        }
        // SAFETY: the caller guarantees row m, columns n0..n0 + cols of Y; a whole panel is
        // one fixed-size (unaligned) store, not a call to memmove.
        unsafe {
            let dst = y.add(m * job.n + n0);
            if cols == NR {
                std::ptr::write_unaligned(dst as *mut [f32; NR], f);
            } else {
                std::ptr::copy_nonoverlapping(f.as_ptr(), dst, cols);
            }
        }
    }
}
