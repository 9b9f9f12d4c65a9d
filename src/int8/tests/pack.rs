//! The packed weights' format: a blob inside a shared buffer, the flag that no weight is
//! -128, and blobs and sidecars of an older format version refused.

use std::sync::Arc;

use super::*;
use crate::int8::pack::{pack_weights_bytes, VERSION};
use crate::int8::sidecar::{sidecar_bytes, SIDECAR_VERSION};

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

/// The flag is set exactly when no packed weight is -128: int8 weights without 0x80, uint8
/// weights without 0 (packed as `w - 128`); zero points and padding do not count.
#[test]
fn no_minus_128_flag() {
    let mut rng = XorShift::new(10);
    let (k, n) = (13, 11);
    let clean: Vec<u8> = (0..k * n).map(|_| rng.byte().max(1)).collect(); // no 0
    let i8_clean: Vec<u8> = clean
        .iter()
        .map(|&b| if b == 0x80 { 0x81 } else { b })
        .collect();
    assert!(pack_weights(&i8_clean, true, k, n, &[0x80]).no_minus_128());
    assert!(pack_weights(&clean, false, k, n, &[0]).no_minus_128());
    for at in [0, k * n / 2, k * n - 1] {
        let mut w = i8_clean.clone();
        w[at] = 0x80;
        assert!(
            !pack_weights(&w, true, k, n, &[]).no_minus_128(),
            "int8 -128 at {at}"
        );
        let mut w = clean.clone();
        w[at] = 0;
        assert!(
            !pack_weights(&w, false, k, n, &[]).no_minus_128(),
            "uint8 0 at {at}"
        );
    }
    // the flag survives the round trip through bytes
    let bytes = pack_weights_bytes(&i8_clean, true, k, n, &[]);
    assert!(PackedWeights::from_vec(bytes).unwrap().no_minus_128());
}

/// A blob or a sidecar of an older format version (made by an older build) is refused with a
/// message that says so, not read with another meaning.
#[test]
fn older_format_versions_are_refused() {
    let w = pack_weights(&[1, 2, 3, 4, 5, 6], true, 2, 3, &[]);
    let mut old = w.as_bytes().to_vec();
    old[4..8].copy_from_slice(&(VERSION - 1).to_le_bytes());
    let e = PackedWeights::from_vec(old).unwrap_err();
    assert!(format!("{e:#}").contains("format version 1"), "{e:#}");
    let side = sidecar_bytes([("m", &w)], 7);
    let ok: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(side.clone());
    assert_eq!(Sidecar::parse(ok).unwrap().len(), 1);
    let mut old = side;
    old[8..12].copy_from_slice(&(SIDECAR_VERSION - 1).to_le_bytes());
    let old: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(old);
    let Err(e) = Sidecar::parse(old) else {
        panic!("an older sidecar is read");
    };
    assert!(format!("{e:#}").contains("format version 1"), "{e:#}");
}
