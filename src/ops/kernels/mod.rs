//! f32 kernels of our transformer ops: multi-head attention (scores, masked softmax and the
//! product with V in one pass over blocks of query rows), the residual add + LayerNorm, and
//! GELU (whose body is [`crate::int8::gelu`], shared with the int8 matmul's epilogue).
//!
//! This file holds the entry points: checks, threads and the choice of instruction set
//! ([`OpsKernel`]). [`attention`] is the attention driver (the loops of one head over blocks
//! of query rows, the packing of K and V); the instruction sets provide the bodies, written
//! with their intrinsics so that what runs does not depend on what the compiler vectorises
//! (fat LTO with one codegen unit once lost the vectorised loops of an auto-vectorised body):
//! [`portable`] (plain Rust, the scalar reference), `x86` (AVX2 + FMA and AVX-512F, chosen at
//! run time) and `arm` (NEON, baseline on aarch64).

use std::cell::RefCell;

#[cfg(target_arch = "aarch64")]
mod arm;
mod attention;
mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(target_arch = "aarch64")]
use arm::{add_layer_norm_neon, head_neon};
use attention::head;
use portable::{add_layer_norm_body, Portable};
#[cfg(target_arch = "x86_64")]
use x86::{add_layer_norm_avx2, head_avx2, head_avx512};

#[cfg(test)]
pub(crate) use portable::exp_neg;

/// Which instantiation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpsKernel {
    /// Portable Rust: separate multiply and add, `f32::exp` (the reference).
    Scalar,
    /// x86-64 AVX2 + FMA, or aarch64 NEON: fused multiply-adds and a polynomial `exp`
    /// (relative error below 2e-7), written with the instruction set's intrinsics.
    Simd,
    /// x86-64 AVX-512F (with AVX2 + FMA): attention on 512-bit registers; LayerNorm and GELU
    /// as [`OpsKernel::Simd`].
    Avx512,
}

impl OpsKernel {
    /// Every kernel of this architecture, available here or not.
    pub fn of_this_arch() -> &'static [OpsKernel] {
        if cfg!(target_arch = "x86_64") {
            &[OpsKernel::Scalar, OpsKernel::Simd, OpsKernel::Avx512]
        } else if cfg!(target_arch = "aarch64") {
            &[OpsKernel::Scalar, OpsKernel::Simd]
        } else {
            &[OpsKernel::Scalar]
        }
    }

    /// Whether this CPU can run it.
    pub fn is_available(self) -> bool {
        match self {
            OpsKernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            OpsKernel::Simd => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            OpsKernel::Avx512 => {
                OpsKernel::Simd.is_available() && std::arch::is_x86_feature_detected!("avx512f")
            }
            #[cfg(target_arch = "aarch64")]
            OpsKernel::Simd => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The fastest available one.
    pub fn best() -> OpsKernel {
        [OpsKernel::Avx512, OpsKernel::Simd]
            .into_iter()
            .find(|k| k.is_available())
            .unwrap_or(OpsKernel::Scalar)
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
            OpsKernel::Avx512 => "avx512",
        }
    }

    /// The instruction-set features it needs, as `SKIPPED` messages name them.
    pub fn features(self) -> &'static str {
        match self {
            OpsKernel::Scalar => "nothing",
            OpsKernel::Simd if cfg!(target_arch = "aarch64") => "neon",
            OpsKernel::Simd => "avx2, fma",
            OpsKernel::Avx512 => "avx512f, avx2, fma",
        }
    }
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
        #[cfg(target_arch = "x86_64")]
        OpsKernel::Avx512 => {
            head_avx512(q, k, v, mask, dims, scale, nan_to_zero, out, b, h, scratch)
        }
        #[cfg(target_arch = "aarch64")]
        OpsKernel::Simd => head_neon(q, k, v, mask, dims, scale, nan_to_zero, out, b, h, scratch),
        _ => head::<Portable>(q, k, v, mask, dims, scale, nan_to_zero, out, b, h, scratch),
    }
}

/// The softmax's `exp` pass of `kernel`'s attention body: `s[j] = exp(s[j] - mx)`, returns
/// their sum (for the tests of the bodies' `exp`).
#[cfg(test)]
pub(crate) fn exp_sum_with(kernel: OpsKernel, s: &mut [f32], mx: f32) -> f32 {
    use attention::AttnBody;
    assert!(kernel.is_available());
    // SAFETY: the CPU has the kernel's features (asserted just above).
    unsafe {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            OpsKernel::Simd => x86::exp_sum_avx2(s, mx),
            #[cfg(target_arch = "x86_64")]
            OpsKernel::Avx512 => x86::exp_sum_avx512(s, mx),
            #[cfg(target_arch = "aarch64")]
            OpsKernel::Simd => arm::Neon::exp_sum(s, mx),
            _ => Portable::exp_sum(s, mx),
        }
    }
}

/// Smallest share of an element-wise pass (LayerNorm, GELU) worth a thread of its own, in
/// elements: about 10 us of work; below it a pool wake-up costs about what it saves.
pub(crate) const MIN_ELEMS_PER_THREAD: usize = 1 << 14;

/// GELU as torch exports it, in place (see [`crate::int8::gelu`], which the fused int8 matmul
/// also applies in its epilogue), with the kernel's instruction set, split in chunks over up
/// to `threads` threads when it is big enough (element-wise: the same result for any split).
pub fn gelu_f32(kernel: OpsKernel, xs: &mut [f32], div: f32, threads: usize) {
    use crate::int8::pool;
    let simd = kernel != OpsKernel::Scalar && kernel.is_available();
    let t = pool::threads_for(xs.len(), threads, MIN_ELEMS_PER_THREAD);
    if t <= 1 {
        return crate::int8::gelu::gelu_f32(simd, xs, div);
    }
    // whole vectors per chunk
    let per = pool::units_per_task(xs.len(), t).next_multiple_of(64);
    let chunks: Vec<&mut [f32]> = xs.chunks_mut(per).collect();
    pool::for_each_item(chunks, t, |_, c| crate::int8::gelu::gelu_f32(simd, c, div));
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
        // SAFETY: `Simd` and `Avx512` are only resolved when the CPU has AVX2 and FMA
        // (`is_available`).
        OpsKernel::Simd | OpsKernel::Avx512 if kernel.is_available() => unsafe {
            add_layer_norm_avx2(x, r, gamma, beta, eps, y)
        },
        #[cfg(target_arch = "aarch64")]
        OpsKernel::Simd => add_layer_norm_neon(x, r, gamma, beta, eps, y),
        _ => add_layer_norm_body(x, r, gamma, beta, eps, y),
    }
}
