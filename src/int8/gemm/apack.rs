//! The activations' side of the driver: packing u8 activations into a kernel's A format
//! ([`crate::int8::layout::AFormat`]), with their row sums, or quantizing f32 activations
//! straight into it; both split over threads by whole row blocks when big enough.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::mem::MaybeUninit;

use super::runners::config;
use crate::int8::layout::AFormat;
use crate::int8::quantize::{self, QuantParams};
use crate::int8::scalar::{pack_row_i16, pack_row_i8, pack_row_u8};
use crate::int8::{pool, Kernel};

/// A packed-A buffer in its format's element type.
pub(crate) enum ABuf {
    I16(Vec<i16>),
    I8(Vec<i8>),
    U8(Vec<u8>),
}

impl ABuf {
    pub(crate) fn ptr(&self) -> *const u8 {
        match self {
            ABuf::I16(v) => v.as_ptr() as *const u8,
            ABuf::I8(v) => v.as_ptr() as *const u8,
            ABuf::U8(v) => v.as_ptr(),
        }
    }
}

/// Packed activations: the blocks, and each row's `sum_k (a - za)`.
pub(crate) struct PackedA {
    pub buf: ABuf,
    pub rowsum: Vec<i32>,
    /// Bytes of one block of MR rows.
    pub block_bytes: usize,
}

/// Packs u8 activations `[M, K]` (row-major) for a kernel.
pub(crate) fn pack_a(kernel: Kernel, a: &[u8], m: usize, k: usize, za: u8) -> PackedA {
    let (mr, fmt) = config(kernel);
    assert_eq!(a.len(), m * k);
    let per_block = fmt.block_len(mr, k);
    let len = m.div_ceil(mr) * per_block;
    let mut rowsum = vec![0i32; m];
    let buf = match fmt {
        AFormat::I16MinusZa => {
            let mut buf = vec![0i16; len];
            pack_rows_i16(kernel, a, k, za, mr, &mut buf, &mut rowsum);
            ABuf::I16(buf)
        }
        AFormat::I8Shifted => {
            let mut buf = vec![0i8; len];
            pack_rows_i8(a, k, za, mr, &mut buf, &mut rowsum);
            ABuf::I8(buf)
        }
        AFormat::U8 | AFormat::U8Pairs => {
            let mut buf = vec![0u8; len];
            pack_rows_u8(fmt, a, k, za, mr, &mut buf, &mut rowsum);
            ABuf::U8(buf)
        }
    };
    PackedA {
        buf,
        rowsum,
        block_bytes: per_block * fmt.elem_bytes(),
    }
}

/// The I16MinusZa layout of `rowsum.len()` rows of u8 `a` into `buf` (their blocks, zeroed);
/// `rowsum[m] = sum_k (a - za)`.
fn pack_rows_i16(
    kernel: Kernel,
    a: &[u8],
    k: usize,
    za: u8,
    mr: usize,
    buf: &mut [i16],
    rowsum: &mut [i32],
) {
    let per_block = AFormat::I16MinusZa.block_len(mr, k);
    let kza = (k as i32) * za as i32;
    for (row, rs) in rowsum.iter_mut().enumerate() {
        let (b, r) = (row / mr, row % mr);
        let dst = &mut buf[b * per_block + r * 4..(b + 1) * per_block];
        let src = &a[row * k..(row + 1) * k];
        let s = match kernel {
            // SAFETY: an available kernel (resolved by the callers): AVX2 is there.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { crate::int8::x86::pack_row_i16_avx2(src, dst, mr * 4, za) },
            _ => pack_row_i16(src, dst, mr * 4, za),
        };
        *rs = s - kza;
    }
}

/// The I8Shifted layout (`a - 128`) of `rowsum.len()` rows of u8 `a` into `buf` (their
/// blocks, zeroed); `rowsum[m] = sum_k (a - za)`.
fn pack_rows_i8(a: &[u8], k: usize, za: u8, mr: usize, buf: &mut [i8], rowsum: &mut [i32]) {
    let per_block = AFormat::I8Shifted.block_len(mr, k);
    let kza = (k as i32) * za as i32;
    for (row, rs) in rowsum.iter_mut().enumerate() {
        let (b, r) = (row / mr, row % mr);
        let dst = &mut buf[b * per_block..(b + 1) * per_block];
        *rs = pack_row_i8(&a[row * k..(row + 1) * k], dst, mr, r) - kza;
    }
}

/// The U8 / U8Pairs layout of `rowsum.len()` rows of u8 `a` into `buf` (their blocks,
/// zeroed); `rowsum[m] = sum_k (a - za)`.
fn pack_rows_u8(
    fmt: AFormat,
    a: &[u8],
    k: usize,
    za: u8,
    mr: usize,
    buf: &mut [u8],
    rowsum: &mut [i32],
) {
    let per_block = fmt.block_len(mr, k);
    let kza = (k as i32) * za as i32;
    for (row, rs) in rowsum.iter_mut().enumerate() {
        let (b, r) = (row / mr, row % mr);
        let dst = &mut buf[b * per_block..(b + 1) * per_block];
        let src = &a[row * k..(row + 1) * k];
        *rs = pack_row_u8(fmt, src, dst, mr, r) - kza;
    }
}

/// Smallest share of a quantize-and-pack pass worth a thread of its own, in elements (about
/// 10 us of AVX2 work: 128 tokens x K = 256 is two shares).
pub(crate) const MIN_QUANT_ELEMS_PER_THREAD: usize = 1 << 14;

/// Smallest share of the min/max pass worth a thread of its own, in elements (min/max is
/// several times cheaper per element than quantizing).
pub(crate) const MIN_MINMAX_ELEMS_PER_THREAD: usize = 1 << 16;

/// Min and max of `x` together with 0 (NaNs ignored), split over up to `threads` threads
/// when it is big enough: each chunk's min/max, then the min/max of those, which is exact
/// (and the chunks' results are never NaN; only a zero's sign may differ, NEON's `fminnm`
/// giving -0, which [`QuantParams::from_min_max`] ignores), so the quantization parameters
/// are the same for any split.
pub(crate) fn min_max_split(kernel: Kernel, x: &[f32], threads: usize) -> (f32, f32) {
    let t = pool::threads_for(x.len(), threads, MIN_MINMAX_ELEMS_PER_THREAD);
    if t <= 1 {
        return quantize::min_max(kernel, x);
    }
    let per = pool::units_per_task(x.len(), t);
    let mut parts = vec![(0f32, 0f32); x.len().div_ceil(per)];
    let items: Vec<_> = x.chunks(per).zip(parts.iter_mut()).collect();
    pool::for_each_item(items, t, |_, (c, part)| {
        *part = quantize::min_max(kernel, c)
    });
    parts.iter().fold((0f32, 0f32), |(lo, hi), &(l, h)| {
        (if l < lo { l } else { lo }, if h > hi { h } else { hi })
    })
}

/// `DynamicQuantizeLinear` of `x` `[M, K]` with parameters `p`, packed for `kernel`, split
/// over up to `threads` threads by ranges of whole row blocks when it is big enough. AVX2
/// quantizes straight into its layout (`a - za = clamp(round(x / s), -zp, 255 - zp)`, no u8
/// tensor), and so do the VNNI layout (u8 `a`, with AVX2) and, on aarch64, the NEON and
/// dotprod layout (`a - 128`); the others quantize a range of rows to u8, then pack it. `kernel` must be available (resolved), or (tests) a layout whose
/// quantizer this CPU can run (the x86-64 layouts need AVX2).
pub(crate) fn quantize_pack_a(
    kernel: Kernel,
    x: &[f32],
    m: usize,
    k: usize,
    p: QuantParams,
    threads: usize,
) -> PackedA {
    assert_eq!(
        x.len(),
        m * k,
        "quantize_pack_a: X has {} elements, not M*K",
        x.len()
    );
    let (mr, fmt) = config(kernel);
    let per_block = fmt.block_len(mr, k);
    let mut rowsum = vec![0i32; m];
    let za = p.zero_point;
    let quantized = |xs: &[f32]| {
        let mut q = vec![0u8; xs.len()];
        quantize::quantize(kernel, xs, p, &mut q);
        q
    };
    let rs = &mut rowsum;
    let buf = match fmt {
        AFormat::I16MinusZa => ABuf::I16(build_blocks(x, k, mr, per_block, threads, rs, {
            |xs: &[f32], buf: &mut [i16], rs: &mut [i32]| match kernel {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => {
                    // (scale > 0 is what the AVX2 quantizers require; with scale 0, every q is
                    // zp = 0, and the zeroed blocks and row sums are already the result)
                    if p.scale > 0.0 {
                        // SAFETY: an available kernel (resolved by the callers): AVX2 is
                        // there; `xs` holds the rows, `buf` their blocks; scale > 0.
                        unsafe { crate::int8::x86::quantize_rows_i16_avx2(xs, k, p, buf, rs) }
                    }
                }
                _ => pack_rows_i16(kernel, &quantized(xs), k, za, mr, buf, rs),
            }
        })),
        AFormat::I8Shifted => ABuf::I8(build_blocks(x, k, mr, per_block, threads, rs, {
            |xs: &[f32], buf: &mut [i8], rs: &mut [i32]| match kernel {
                // (scale 0: every q is zp = 0, packed as -128: the quantize-then-pack path)
                #[cfg(target_arch = "aarch64")]
                Kernel::Neon | Kernel::Dotprod if p.scale > 0.0 => {
                    // SAFETY: NEON is part of the aarch64 baseline; `xs` holds the rows, `buf`
                    // their blocks; mr (4 or 12) is a multiple of 4; scale > 0.
                    unsafe { crate::int8::arm::quantize_rows_i8(xs, k, p, mr, buf, rs) }
                }
                _ => pack_rows_i8(&quantized(xs), k, za, mr, buf, rs),
            }
        })),
        AFormat::U8 | AFormat::U8Pairs => {
            ABuf::U8(build_blocks(x, k, mr, per_block, threads, rs, {
                |xs: &[f32], buf: &mut [u8], rs: &mut [i32]| match (kernel, fmt) {
                    #[cfg(target_arch = "x86_64")]
                    (Kernel::AvxVnni | Kernel::Avx512Vnni, AFormat::U8) => {
                        // (scale > 0 is what the AVX2 quantizers require; with scale 0, every q is
                        // zp = 0, and the zeroed blocks and row sums are already the result)
                        if p.scale > 0.0 {
                            // SAFETY: AVX2 is there: a resolved VNNI kernel's availability
                            // includes it (`Kernel::is_available`), and the tests pass these
                            // layouts only where AVX2 is detected; `xs` holds the rows, `buf`
                            // their blocks; scale > 0.
                            unsafe { crate::int8::x86::quantize_rows_u8(xs, k, p, mr, buf, rs) }
                        }
                    }
                    _ => pack_rows_u8(fmt, &quantized(xs), k, za, mr, buf, rs),
                }
            }))
        }
    };
    PackedA {
        buf,
        rowsum,
        block_bytes: per_block * fmt.elem_bytes(),
    }
}

/// The packed-A buffer of the rows of `x` (`rowsum.len()` rows of `k`): `ceil(rows / mr)`
/// blocks of `per_block` values, built by `fill(rows of x, their blocks, their row sums)`
/// over ranges of whole blocks, on up to `threads` threads of the pool when the input is big
/// enough. Each range is zeroed (the padding: k past K, rows past the last) by the task that
/// fills it, so no serial memset precedes the split.
fn build_blocks<T, F>(
    x: &[f32],
    k: usize,
    mr: usize,
    per_block: usize,
    threads: usize,
    rowsum: &mut [i32],
    fill: F,
) -> Vec<T>
where
    T: Copy + Default + Send,
    F: Fn(&[f32], &mut [T], &mut [i32]) + Sync,
{
    let m = rowsum.len();
    let blocks = m.div_ceil(mr);
    let len = blocks * per_block;
    if len == 0 {
        return Vec::new();
    }
    let t = pool::threads_for(blocks, threads, MIN_QUANT_ELEMS_PER_THREAD.div_ceil(mr * k));
    let per = pool::units_per_task(blocks, t);
    let mut buf: Vec<T> = Vec::with_capacity(len);
    type Item<'a, T> = (usize, &'a mut [MaybeUninit<T>], &'a mut [i32]);
    let items: Vec<Item<T>> = buf.spare_capacity_mut()[..len]
        .chunks_mut(per * per_block)
        .zip(rowsum.chunks_mut(per * mr))
        .enumerate()
        .map(|(i, (b, r))| (i * per * mr, b, r))
        .collect();
    // every block is in one of the ranges (so all `len` values get initialised below)
    assert_eq!(items.len(), len.div_ceil(per * per_block));
    pool::for_each_item(items, t, |_, (row0, b, rs)| {
        b.fill(MaybeUninit::new(T::default()));
        // SAFETY: every element of `b` was initialised just above, and `MaybeUninit<T>` has
        // the layout of `T`.
        let b = unsafe { &mut *(b as *mut [MaybeUninit<T>] as *mut [T]) };
        fill(&x[row0 * k..(row0 + rs.len()) * k], b, rs);
    });
    // SAFETY: the ranges cover the first `len` values of the capacity (asserted above) and
    // each task initialised its whole range; `for_each_item` returns only after every task
    // has finished (a panicking task is re-raised before this line is reached).
    unsafe { buf.set_len(len) };
    buf
}
