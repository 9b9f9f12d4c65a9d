//! The integer GEMM of every kernel (and of the emulated VNNI tiles) against the naive
//! reference: odd and random shapes, extremes, the largest K, packed weights in a shared
//! buffer; the kernels' names and dispatch.

use std::sync::Arc;

use super::*;
use crate::int8::pack::{pack_weights_bytes, MAX_K};

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
            check_case(
                kernel,
                m,
                k,
                n,
                &vec![255; m * k],
                0,
                &vec![0x80; k * n],
                true,
                &[],
                1,
            );
            // all 255 x all 127
            check_case(
                kernel,
                m,
                k,
                n,
                &vec![255; m * k],
                0,
                &vec![127; k * n],
                true,
                &[],
                2,
            );
            // (0 - 255) * (-128 - 127) = 65025 per k, the largest product
            check_case(
                kernel,
                m,
                k,
                n,
                &vec![0; m * k],
                255,
                &vec![0x80; k * n],
                true,
                &[127],
                1,
            );
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
        check_case(
            kernel,
            m,
            k,
            n,
            &vec![0; m * k],
            255,
            &vec![0x80; k * n],
            true,
            &[127],
            2,
        );
        check_case(
            kernel,
            m,
            k,
            n,
            &vec![255; m * k],
            0,
            &vec![0x80; k * n],
            true,
            &[127],
            1,
        );
    }
}

#[test]
fn packed_weights_round_trip_and_shared() {
    let mut rng = XorShift::new(3);
    let (m, k, n) = (5, 37, 19);
    let a = rng.bytes(m * k);
    let w = rng.bytes(k * n);
    let zp = rng.bytes(n);
    let bytes = pack_weights_bytes(&w, false, k, n, &zp);
    assert_eq!(bytes.len(), PackedWeights::packed_len(k, n));
    assert_eq!(&bytes[0..4], b"EEQW");
    // inside a bigger buffer at a 64-aligned offset, as in a sidecar file
    let mut file = vec![0xAAu8; 128];
    file.extend_from_slice(&bytes);
    file.extend_from_slice(&[0x55; 10]);
    let shared: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(file);
    let p = PackedWeights::from_shared(shared.clone(), 128).unwrap();
    assert!(p.is_shared() && p.from_u8());
    assert_eq!(p.as_bytes(), &bytes[..]);
    let want = reference(&a, m, k, 7, &w, false, n, &zp);
    for kernel in impls() {
        let mut c = vec![0i32; m * n];
        gemm_i32(kernel, &a, m, 7, &p, &mut c, 1);
        assert!(
            c.iter().zip(&want).all(|(&x, &y)| x as i64 == y),
            "{kernel}"
        );
    }
    // corrupted or truncated blobs are refused
    assert!(PackedWeights::from_shared(shared.clone(), 64).is_err());
    assert!(PackedWeights::from_vec(bytes[..bytes.len() - 1].to_vec()).is_err());
    let mut bad = bytes.clone();
    bad[4] = 9;
    assert!(PackedWeights::from_vec(bad).is_err());
    assert!(PackedWeights::from_shared(shared, 1 << 20).is_err());
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
