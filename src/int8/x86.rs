//! x86-64 kernels: AVX2 (below), and the [`DotOps`] of the VNNI tile ([`super::vnni`]) for
//! AVX-VNNI (ymm) and AVX-512 VNNI (zmm). Quantizing and min/max use AVX2 for all three (every
//! VNNI CPU has AVX2).
//!
//! AVX2
//! GEMM tile: 6 rows x 8 columns. Per k-quad (4 consecutive k), the packed weights of the
//! panel are 32 bytes: columns 0-3 then 4-7, 4 k each. Each 16-byte half is sign-extended to
//! 16 i16 (`vpmovsxbw`); the activations of one row (i16 `a - za`, 4 k) are broadcast as one
//! 64-bit value, so `vpmaddwd` gives, per i32 lane, the sum of 2 products for one column
//! (two lanes per column: k0+k1 and k2+k3). |a - za| <= 255 and |w| <= 128, so a pair sum is at
//! most 65280: no saturation anywhere (`vpmaddwd` only saturates for -32768 * -32768 pairs).
//! 12 accumulators (6 rows x 2 halves) + 2 weights + 1 broadcast = 15 ymm registers. The two
//! partial lanes of a column are added at the end (`vphaddd` + a cross-lane permute).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::arch::x86_64::*;

use super::layout::TILE_STRIDE;
use super::quant::{min_max_scalar, quantize_one, QuantParams};
use super::vnni::{ymm_tile, zmm_tile, DotOps};

/// Rows of the AVX2 tile.
pub(crate) const MR: usize = 6;

/// `R <= MR` rows of the tile (the packed A block always has MR rows per k-quad; a short last
/// block computes only its real rows).
///
/// # Safety
/// The CPU must have AVX2; `a` must hold one packed block (`kq * 6 * 4` i16), `w` one panel
/// (`kq * 32` bytes) and `out` `R` rows of `4 * 8` writable i32.
#[target_feature(enable = "avx2")]
unsafe fn tile_avx2_rows<const R: usize>(a: *const u8, w: *const u8, kq: usize, out: *mut i32) {
    // SAFETY: AVX2 is there and every pointer is in bounds (caller): A reads rows < R <= MR
    // of each k-quad, W 32 bytes per k-quad, stores R rows of 8 i32 into the tile buffer.
    unsafe {
        let a = a as *const i64;
        let z = _mm256_setzero_si256();
        let mut acc = [[z; 2]; R];
        let mut ap = a;
        let mut wp = w;
        for _ in 0..kq {
            let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wp as *const __m128i));
            let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(16) as *const __m128i));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_epi64x(ap.add(r).read_unaligned());
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(av, w0));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(av, w1));
            }
            ap = ap.add(MR);
            wp = wp.add(32);
        }
        for (r, acc) in acc.iter().enumerate() {
            // [c0 c1 c4 c5 | c2 c3 c6 c7] -> [c0 .. c7]
            let h = _mm256_hadd_epi32(acc[0], acc[1]);
            let h = _mm256_permute4x64_epi64::<0xD8>(h);
            _mm256_storeu_si256(out.add(r * TILE_STRIDE) as *mut __m256i, h);
        }
    }
}

/// The AVX2 tile for `rows <= MR` rows (see [`super::layout`] for the contract).
///
/// # Safety
/// As [`tile_avx2_rows`] with `R = rows`.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn tile_avx2(a: *const u8, w: *const u8, kq: usize, o: *mut i32, rows: usize) {
    // SAFETY: as guaranteed by the caller, for the `rows` rows asked.
    unsafe {
        match rows {
            6 => tile_avx2_rows::<6>(a, w, kq, o),
            5 => tile_avx2_rows::<5>(a, w, kq, o),
            4 => tile_avx2_rows::<4>(a, w, kq, o),
            3 => tile_avx2_rows::<3>(a, w, kq, o),
            2 => tile_avx2_rows::<2>(a, w, kq, o),
            _ => tile_avx2_rows::<1>(a, w, kq, o),
        }
    }
}

/// AVX-VNNI: ymm, VEX-encoded `vpdpbusd` (8 lanes = one panel).
pub(crate) struct Ymm;

impl DotOps for Ymm {
    type V = __m256i;
    const PANELS: usize = 1;
    #[inline(always)]
    unsafe fn zero() -> __m256i {
        // SAFETY: AVX (implied by the kernels' features).
        unsafe { _mm256_setzero_si256() }
    }
    #[inline(always)]
    unsafe fn load_w(w: *const u8, _stride: usize, _panels: usize) -> __m256i {
        // SAFETY: the caller guarantees 32 readable bytes at w.
        unsafe { _mm256_loadu_si256(w as *const __m256i) }
    }
    #[inline(always)]
    unsafe fn bcast(a: *const u8) -> __m256i {
        // SAFETY: the caller guarantees 4 readable bytes at a.
        unsafe { _mm256_set1_epi32((a as *const i32).read_unaligned()) }
    }
    #[inline(always)]
    unsafe fn dot(acc: __m256i, a: __m256i, w: __m256i) -> __m256i {
        // SAFETY: only called from functions with `avxvnni` enabled (run_avxvnni).
        unsafe { _mm256_dpbusd_avx_epi32(acc, a, w) }
    }
    #[inline(always)]
    unsafe fn store(out: *mut i32, v: __m256i) {
        // SAFETY: the caller guarantees 8 writable i32 at out.
        unsafe { _mm256_storeu_si256(out as *mut __m256i, v) }
    }
}

/// AVX-512 VNNI: zmm `vpdpbusd` (16 lanes = the same k-quad of two neighbouring panels).
pub(crate) struct Zmm;

impl DotOps for Zmm {
    type V = __m512i;
    const PANELS: usize = 2;
    #[inline(always)]
    unsafe fn zero() -> __m512i {
        // SAFETY: AVX-512F (the kernel's features).
        unsafe { _mm512_setzero_si512() }
    }
    #[inline(always)]
    unsafe fn load_w(w: *const u8, stride: usize, panels: usize) -> __m512i {
        // SAFETY: the caller guarantees 32 readable bytes at w, and at w + stride when
        // panels > 1.
        unsafe {
            let lo = _mm256_loadu_si256(w as *const __m256i);
            if panels > 1 {
                let hi = _mm256_loadu_si256(w.add(stride) as *const __m256i);
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
            } else {
                _mm512_zextsi256_si512(lo)
            }
        }
    }
    #[inline(always)]
    unsafe fn bcast(a: *const u8) -> __m512i {
        // SAFETY: the caller guarantees 4 readable bytes at a.
        unsafe { _mm512_set1_epi32((a as *const i32).read_unaligned()) }
    }
    #[inline(always)]
    unsafe fn dot(acc: __m512i, a: __m512i, w: __m512i) -> __m512i {
        // SAFETY: only called from functions with `avx512vnni` enabled (run_avx512vnni).
        unsafe { _mm512_dpbusd_epi32(acc, a, w) }
    }
    #[inline(always)]
    unsafe fn store(out: *mut i32, v: __m512i) {
        // SAFETY: the caller guarantees 16 writable i32 at out.
        unsafe { _mm512_storeu_si512(out as *mut __m512i, v) }
    }
}

/// One ymm VNNI tile call, compiled with the AVX-VNNI features.
///
/// # Safety
/// The CPU must have AVX2 and AVX-VNNI; as [`super::vnni::tile`].
#[target_feature(enable = "avx2,avxvnni")]
pub(crate) unsafe fn tile_avxvnni(
    a: *const u8,
    w: *const u8,
    kq: usize,
    o: *mut i32,
    rows: usize,
    np: usize,
) {
    // SAFETY: features and extents as guaranteed by the caller.
    unsafe { ymm_tile!(Ymm, a, w, kq, o, rows, np) }
}

/// One zmm VNNI tile call, compiled with the AVX-512 VNNI features.
///
/// # Safety
/// The CPU must have AVX2, AVX-512F/BW and AVX-512 VNNI; as [`super::vnni::tile`].
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn tile_avx512vnni(
    a: *const u8,
    w: *const u8,
    kq: usize,
    o: *mut i32,
    rows: usize,
    np: usize,
) {
    // SAFETY: features and extents as guaranteed by the caller.
    unsafe { zmm_tile!(Zmm, a, w, kq, o, rows, np) }
}

/// [`super::scalar::pack_row_i16`] with AVX2: 16 activations per step (`vpmovzxbw`, minus za,
/// four 8-byte stores, one per k-quad).
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn pack_row_i16_avx2(src: &[u8], dst: &mut [i16], stride: usize, za: u8) -> i32 {
    // SAFETY: AVX2 is there (caller). Bounds: loads of 16 bytes at kk + 16 <= k = src.len();
    // stores of 4 i16 at (kk / 4 + i) * stride for quads < kq, inside dst by the assert above.
    unsafe {
        let k = src.len();
        let kq = k.div_ceil(4);
        assert!(kq == 0 || dst.len() >= (kq - 1) * stride + 4);
        let vza = _mm256_set1_epi16(za as i16);
        let ones = _mm256_set1_epi16(1);
        let mut sum = _mm256_setzero_si256();
        let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
        let mut kk = 0;
        while kk + 16 <= k {
            let v = _mm256_cvtepu8_epi16(_mm_loadu_si128(sp.add(kk) as *const __m128i));
            sum = _mm256_add_epi32(sum, _mm256_madd_epi16(v, ones));
            store_quads(dp.add(kk / 4 * stride), stride, _mm256_sub_epi16(v, vza));
            kk += 16;
        }
        let mut s = hsum_epi32(sum);
        while kk < k {
            let x = *sp.add(kk);
            s += x as i32;
            *dp.add(kk / 4 * stride + kk % 4) = x as i16 - za as i16;
            kk += 1;
        }
        s
    }
}

/// 16 i16 values (4 k-quads of one row) into the packed-A layout: quad `i` goes to
/// `dst + i * stride`.
///
/// # Safety
/// The CPU must have AVX2; `dst + i * stride` must have 4 writable i16 for i in 0..4.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn store_quads(dst: *mut i16, stride: usize, v: __m256i) {
    // SAFETY: AVX2 is there and the 4 destinations are writable (caller).
    unsafe {
        let (lo, hi) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        _mm_storel_epi64(dst as *mut __m128i, lo);
        _mm_storeh_pd(dst.add(stride) as *mut f64, _mm_castsi128_pd(lo));
        _mm_storel_epi64(dst.add(2 * stride) as *mut __m128i, hi);
        _mm_storeh_pd(dst.add(3 * stride) as *mut f64, _mm_castsi128_pd(hi));
    }
}

/// Sum of the 8 i32 lanes.
#[target_feature(enable = "avx2")]
#[inline]
fn hsum_epi32(v: __m256i) -> i32 {
    let s4 = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s2 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b01_00_11_10>(s4));
    let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32::<0b10_11_00_01>(s2));
    _mm_cvtsi128_si32(s1)
}

/// DynamicQuantizeLinear of the rows of `x` (`rowsum.len()` rows of `k`) straight into the
/// AVX2 packed-A layout (i16 `a - za`, MR-row blocks of k-quads), skipping the u8 tensor:
/// `a - za = clamp(round(x / s), -zp, 255 - zp)`, bit-identical to quantizing then packing.
/// `rowsum[m] = sum_k (a - za)`. `buf` holds the rows' blocks, zeroed (so the padding, k past
/// K and rows past the last, stays 0); a caller may hand each thread a range of whole blocks.
///
/// # Safety
/// The CPU must have AVX2; `x` must hold `rowsum.len() * k` values, `buf` at least
/// `ceil(rows / MR) * ceil(k / 4) * MR * 4` values; `p.scale > 0`.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn quantize_rows_i16_avx2(
    x: &[f32],
    k: usize,
    p: QuantParams,
    buf: &mut [i16],
    rowsum: &mut [i32],
) {
    let kq = k.div_ceil(4);
    let per_block = kq * MR * 4;
    assert!(x.len() >= rowsum.len() * k && buf.len() >= rowsum.len().div_ceil(MR) * per_block);
    // SAFETY: AVX2 is there (caller). Bounds: x has rows * k values (asserted), loads of 8 at
    // kk + 16 <= k within a row; the block of a row holds kq quads of MR rows (per_block, in
    // `buf`: asserted), and stores go to quad kk / 4 .. kk / 4 + 3 < kq of row row % MR.
    unsafe {
        let zpf = p.zero_point as f32;
        let vs = _mm256_set1_ps(p.scale);
        let lo = _mm256_set1_ps(-zpf);
        let hi = _mm256_set1_ps(255.0 - zpf);
        macro_rules! one {
            ($v:expr) => {{
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm256_div_ps($v, vs),
                );
                let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
                _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi))
            }};
        }
        let stride = MR * 4;
        let bp = buf.as_mut_ptr();
        for (row, rs) in rowsum.iter_mut().enumerate() {
            let dp = bp.add(row / MR * per_block + row % MR * 4);
            let sp = x.as_ptr().add(row * k);
            let mut sum = _mm256_setzero_si256();
            let mut kk = 0;
            while kk + 16 <= k {
                let v0 = one!(_mm256_loadu_ps(sp.add(kk)));
                let v1 = one!(_mm256_loadu_ps(sp.add(kk + 8)));
                sum = _mm256_add_epi32(sum, _mm256_add_epi32(v0, v1));
                // [v0 0-3, v1 0-3 | v0 4-7, v1 4-7] -> [v0 0-7, v1 0-7]
                let d = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(v0, v1));
                store_quads(dp.add(kk / 4 * stride), stride, d);
                kk += 16;
            }
            let mut s = hsum_epi32(sum);
            while kk < k {
                let a =
                    quantize_one(*sp.add(kk), p.scale, p.zero_point) as i32 - p.zero_point as i32;
                *dp.add(kk / 4 * stride + kk % 4) = a as i16;
                s += a;
                kk += 1;
            }
            *rs = s;
        }
    }
}

#[target_feature(enable = "avx2")]
fn hmin(v: __m256) -> f32 {
    let m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_min_ss(m, _mm_shuffle_ps::<1>(m, m));
    _mm_cvtss_f32(m)
}

#[target_feature(enable = "avx2")]
fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
    _mm_cvtss_f32(m)
}

/// Min and max together with 0, NaNs ignored (`vminps(x, acc)` returns `acc` when x is NaN).
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn min_max_avx2(x: &[f32]) -> (f32, f32) {
    // SAFETY: AVX2 is there (caller); loads of 8 floats at 8 * i < 32 inside each chunk of 32.
    unsafe {
        let z = _mm256_setzero_ps();
        let (mut lo, mut hi) = ([z; 4], [z; 4]);
        let chunks = x.chunks_exact(32);
        let rest = chunks.remainder();
        for c in chunks {
            let p = c.as_ptr();
            for i in 0..4 {
                let v = _mm256_loadu_ps(p.add(8 * i));
                lo[i] = _mm256_min_ps(v, lo[i]);
                hi[i] = _mm256_max_ps(v, hi[i]);
            }
        }
        let l = _mm256_min_ps(_mm256_min_ps(lo[0], lo[1]), _mm256_min_ps(lo[2], lo[3]));
        let h = _mm256_max_ps(_mm256_max_ps(hi[0], hi[1]), _mm256_max_ps(hi[2], hi[3]));
        let (l, h) = (hmin(l), hmax(h));
        let (rl, rh) = min_max_scalar(rest);
        (l.min(rl), h.max(rh))
    }
}

/// `q = saturate(round_half_even(x / scale) + zp)`, NaN -> zp; `scale > 0`.
///
/// # Safety
/// The CPU must have AVX2; `q` as long as `x`; `p.scale > 0`.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn quantize_avx2(x: &[f32], p: QuantParams, q: &mut [u8]) {
    // SAFETY: AVX2 is there (caller); loads and stores at i < n32 <= len, 32 at a time, and
    // q is as long as x (caller).
    unsafe {
        let zpf = p.zero_point as f32;
        let vs = _mm256_set1_ps(p.scale);
        let vz = _mm256_set1_ps(zpf);
        let lo = _mm256_set1_ps(-zpf);
        let hi = _mm256_set1_ps(255.0 - zpf);
        let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let n32 = x.len() / 32 * 32;
        // a macro, not a closure, so that the code is compiled with this function's features
        macro_rules! one {
            ($v:expr) => {{
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm256_div_ps($v, vs),
                );
                let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
                let r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
                _mm256_cvttps_epi32(_mm256_add_ps(r, vz))
            }};
        }
        let (xp, qp) = (x.as_ptr(), q.as_mut_ptr());
        let mut i = 0;
        while i < n32 {
            let a = one!(_mm256_loadu_ps(xp.add(i)));
            let b = one!(_mm256_loadu_ps(xp.add(i + 8)));
            let c = one!(_mm256_loadu_ps(xp.add(i + 16)));
            let d = one!(_mm256_loadu_ps(xp.add(i + 24)));
            let ab = _mm256_packs_epi32(a, b);
            let cd = _mm256_packs_epi32(c, d);
            let u = _mm256_packus_epi16(ab, cd);
            let u = _mm256_permutevar8x32_epi32(u, perm);
            _mm256_storeu_si256(qp.add(i) as *mut __m256i, u);
            i += 32;
        }
        for j in n32..x.len() {
            q[j] = quantize_one(x[j], p.scale, p.zero_point);
        }
    }
}

/// DynamicQuantizeLinear of the rows of `x` (`rowsum.len()` rows of `k`) straight into the
/// VNNI packed-A layout (u8 `a`, `mr`-row blocks of k-quads, `[block][q][r][4]`), skipping
/// the u8 tensor; bit-identical to quantizing with [`quantize_avx2`] then packing.
/// `rowsum[m] = sum_k (a - za)`. `buf` holds the rows' blocks, zeroed; a caller may hand each
/// thread a range of whole blocks.
///
/// # Safety
/// The CPU must have AVX2; `x` must hold `rowsum.len() * k` values, `buf` at least
/// `ceil(rows / mr) * ceil(k / 4) * mr * 4` bytes; `p.scale > 0`.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn quantize_rows_u8(
    x: &[f32],
    k: usize,
    p: QuantParams,
    mr: usize,
    buf: &mut [u8],
    rowsum: &mut [i32],
) {
    let kq = k.div_ceil(4);
    let per_block = kq * mr * 4;
    let stride = mr * 4;
    let kza = k as i32 * p.zero_point as i32;
    let zpf = p.zero_point as f32;
    assert!(x.len() >= rowsum.len() * k && buf.len() >= rowsum.len().div_ceil(mr) * per_block);
    // SAFETY: AVX2 is there (caller). Bounds: loads of 8 floats at kk + 16 <= k inside row
    // `row` of x (rows * k values: asserted); 4-byte stores to quads kk / 4 .. kk / 4 + 3 < kq of row
    // `row % mr` in the row's block, which `buf` holds (asserted).
    unsafe {
        let vs = _mm256_set1_ps(p.scale);
        let vz = _mm256_set1_ps(zpf);
        let lo = _mm256_set1_ps(-zpf);
        let hi = _mm256_set1_ps(255.0 - zpf);
        // the same steps as `quantize_avx2`
        macro_rules! one {
            ($v:expr) => {{
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm256_div_ps($v, vs),
                );
                let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
                let r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
                _mm256_cvttps_epi32(_mm256_add_ps(r, vz))
            }};
        }
        let bp = buf.as_mut_ptr();
        for (row, rs) in rowsum.iter_mut().enumerate() {
            let dp = bp.add(row / mr * per_block + row % mr * 4);
            let sp = x.as_ptr().add(row * k);
            let mut sum = _mm256_setzero_si256();
            let mut kk = 0;
            while kk + 16 <= k {
                let v0 = one!(_mm256_loadu_ps(sp.add(kk)));
                let v1 = one!(_mm256_loadu_ps(sp.add(kk + 8)));
                sum = _mm256_add_epi32(sum, _mm256_add_epi32(v0, v1));
                // i16 [v0 0-7 | v1 0-7] -> u8 [v0 0-7, (dup) | v1 0-7, (dup)]
                let d = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(v0, v1));
                let u = _mm256_packus_epi16(d, d);
                let q = dp.add(kk / 4 * stride);
                (q as *mut i32).write_unaligned(_mm256_extract_epi32::<0>(u));
                (q.add(stride) as *mut i32).write_unaligned(_mm256_extract_epi32::<1>(u));
                (q.add(2 * stride) as *mut i32).write_unaligned(_mm256_extract_epi32::<4>(u));
                (q.add(3 * stride) as *mut i32).write_unaligned(_mm256_extract_epi32::<5>(u));
                kk += 16;
            }
            let mut s = hsum_epi32(sum);
            while kk < k {
                let a = quantize_one(*sp.add(kk), p.scale, p.zero_point);
                *dp.add(kk / 4 * stride + kk % 4) = a;
                s += a as i32;
                kk += 1;
            }
            *rs = s - kza;
        }
    }
}
