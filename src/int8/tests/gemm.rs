//! The integer GEMM of every kernel (and of the emulated VNNI tiles) against the naive
//! reference: odd and random shapes, extremes, the largest K, the NEON tile's two paths at
//! their limits; the kernels' names and dispatch.

use super::*;
use crate::int8::pack::MAX_K;

const ODD: [usize; 8] = [1, 2, 3, 7, 8, 17, 33, 65];

#[test]
fn gemm_odd_shapes_exact() {
    let mut rng = XorShift::new(1);
    for kernel in impls() {
        for &m in &ODD {
            for &k in &ODD {
                for &n in &ODD {
                    let signed = rng.below(2) == 0;
                    let a = rng.bytes(m * k);
                    let w = rng.bytes(k * n);
                    let zp = match rng.below(3) {
                        0 => vec![],
                        1 => vec![rng.byte()],
                        _ => rng.bytes(n),
                    };
                    let za = rng.byte();
                    check_case(kernel, m, k, n, &a, za, &w, signed, &zp, 1 + rng.below(3));
                }
            }
        }
    }
}

#[test]
fn gemm_random_shapes_exact() {
    let mut rng = XorShift::new(2);
    for kernel in impls() {
        for _ in 0..40 {
            let (m, k, n) = (1 + rng.below(140), 1 + rng.below(600), 1 + rng.below(150));
            let signed = rng.below(2) == 0;
            let a = rng.bytes(m * k);
            let w = rng.bytes(k * n);
            let zp = match rng.below(3) {
                0 => vec![],
                1 => vec![rng.byte()],
                _ => rng.bytes(n),
            };
            check_case(
                kernel,
                m,
                k,
                n,
                &a,
                rng.byte(),
                &w,
                signed,
                &zp,
                1 + rng.below(4),
            );
        }
    }
}

#[test]
fn gemm_extremes_exact() {
    for kernel in impls() {
        for &(m, k, n) in &[
            (7, 1024, 17),
            (13, 3071, 9),
            (1, 1, 1),
            (6, 4, 8),
            (8, 256, 16),
        ] {
            // all 255 x all -128, zero points 0
            check_uniform(kernel, (m, k, n), 255, 0, 0x80, &[], 1);
            // all 255 x all 127
            check_uniform(kernel, (m, k, n), 255, 0, 127, &[], 2);
            // (0 - 255) * (-128 - 127) = 65025 per k, the largest product
            check_uniform(kernel, (m, k, n), 0, 255, 0x80, &[127], 1);
            // (255 - 0) * (-128 - 127) = -65025 per k, per-column zero points at the limit
            check_case(
                kernel,
                m,
                k,
                n,
                &vec![255; m * k],
                0,
                &vec![0x80; k * n],
                true,
                &vec![127; n],
                1,
            );
            // uint8 weights: (255 - 0) * (0 - 255)
            check_case(
                kernel,
                m,
                k,
                n,
                &vec![255; m * k],
                0,
                &vec![0; k * n],
                false,
                &[255],
                1,
            );
            check_case(
                kernel,
                m,
                k,
                n,
                &vec![0; m * k],
                255,
                &vec![255; k * n],
                false,
                &vec![0; n],
                3,
            );
            // alternating extremes
            let a: Vec<u8> = (0..m * k)
                .map(|i| if i % 3 == 0 { 0 } else { 255 })
                .collect();
            let w: Vec<u8> = (0..k * n)
                .map(|i| if i % 5 < 2 { 0x80 } else { 0x7f })
                .collect();
            check_case(kernel, m, k, n, &a, 128, &w, true, &[0x80], 1);
        }
    }
}

#[test]
fn gemm_largest_k_no_overflow() {
    // 255 * 255 * MAX_K < 2^31: the exact result is the largest that fits.
    let (m, k, n) = (3, MAX_K, 9);
    for kernel in impls() {
        check_uniform(kernel, (m, k, n), 0, 255, 0x80, &[127], 2);
        check_uniform(kernel, (m, k, n), 255, 0, 0x80, &[127], 1);
    }
}

#[test]
fn kernel_names_and_dispatch() {
    for k in Kernel::ALL {
        assert_eq!(Kernel::parse(k.name()), Some(k));
    }
    assert_eq!(Kernel::parse(" AVX2 "), Some(Kernel::Avx2));
    assert_eq!(Kernel::parse("sse"), None);
    assert!(Kernel::Scalar.is_available());
    assert!(Kernel::best().is_available());
    assert!(Kernel::default_choice().is_available());
    #[cfg(target_arch = "x86_64")]
    assert!([Kernel::Neon, Kernel::Dotprod, Kernel::I8mm]
        .iter()
        .all(|k| !k.is_available()));
    #[cfg(target_arch = "aarch64")]
    assert!(
        [Kernel::Avx2, Kernel::AvxVnni, Kernel::Avx512Vnni]
            .iter()
            .all(|k| !k.is_available())
            && Kernel::Neon.is_available()
    );
    // the best kernel is the last available one of this architecture's list
    let best = kernels_of_this_arch()
        .into_iter()
        .rfind(|k| k.is_available());
    assert_eq!(Some(Kernel::best()), best);
    // an unavailable kernel is never run: it resolves to the default
    for k in Kernel::ALL {
        assert!(Kernel::resolve(Some(k)).is_available());
    }
}

/// The NEON tile adds two products in one i16 lane only when no weight is -128: at the
/// limit of that path (every activation `a - 128 = -128`, weights -127 or 127) every kernel is
/// exact; with -128 weights (the other path) too, where adding two products in one lane would
/// give (-128) * (-128) * 2 = 32768, past i16.
#[test]
fn neon_paths_exact_at_their_limits() {
    for kernel in impls() {
        for &(m, k, n) in &[
            (4, 8, 8),
            (5, 9, 17),
            (8, 256, 16),
            (13, 1023, 9),
            (128, 64, 24),
        ] {
            // paired path: |-128 * -127| twice per lane = 32512
            check_uniform(kernel, (m, k, n), 0, 0, 0x81, &[], 1);
            check_uniform(kernel, (m, k, n), 0, 9, 0x7f, &[3], 2);
            let w: Vec<u8> = (0..k * n).map(|i| [0x81, 0x7f][i % 3 % 2]).collect();
            check_case(kernel, m, k, n, &vec![0; m * k], 0, &w, true, &[], 1);
            // unpaired path: -128 weights
            check_uniform(kernel, (m, k, n), 0, 0, 0x80, &[], 1);
            // uint8 weights: 0 is -128 once packed
            check_case(
                kernel,
                m,
                k,
                n,
                &vec![0; m * k],
                0,
                &vec![0; k * n],
                false,
                &[1],
                1,
            );
        }
    }
}

/// The paired NEON tile really overflows on -128 weights (so the exact results above on
/// such weights show that the driver did not take it), and the unpaired tile does not.
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_paired_tile_would_overflow_on_minus_128() {
    use crate::int8::arm::tile_neon;
    use crate::int8::layout::TILE_STRIDE;
    let (k, n) = (8, 8);
    let w = pack_weights(&vec![0x80; k * n], true, k, n, &[]);
    assert!(!w.no_minus_128());
    // 4 rows of a - 128 = -128 (a = 0), in the NEON layout: 2 quads x 4 rows x 4 bytes
    let a = [0x80u8; 2 * 4 * 4];
    let run = |paired: bool| {
        let mut out = vec![0i32; 4 * TILE_STRIDE];
        // SAFETY: NEON is part of the aarch64 baseline; `a` is one block of kq = 2 quads of 4
        // rows, the packed data one panel of 2 quads, `out` 4 rows of TILE_STRIDE.
        unsafe {
            if paired {
                tile_neon::<true>(a.as_ptr(), w.data().as_ptr(), 2, out.as_mut_ptr())
            } else {
                tile_neon::<false>(a.as_ptr(), w.data().as_ptr(), 2, out.as_mut_ptr())
            }
        }
        out[..8].to_vec()
    };
    let exact = vec![8 * 128 * 128; 8];
    assert_eq!(run(false), exact);
    assert_ne!(run(true), exact);
}

/// [`check_case`] for an `m x k` activation block of one value `a` (zero point `za`) and a
/// `k x n` int8 weight matrix of one byte `w` (zero points `zp`), on `threads` threads.
fn check_uniform(
    kernel: Impl,
    (m, k, n): (usize, usize, usize),
    a: u8,
    za: u8,
    w: u8,
    zp: &[u8],
    threads: usize,
) {
    check_case(
        kernel,
        m,
        k,
        n,
        &vec![a; m * k],
        za,
        &vec![w; k * n],
        true,
        zp,
        threads,
    );
}
