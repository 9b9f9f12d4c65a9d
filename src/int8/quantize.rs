//! `DynamicQuantizeLinear` by kernel: the public entry points, and the choice of the min/max
//! and quantize primitives of each instruction set (the definition is in [`super::quant`]).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
// `!(scale > 0.0)` on purpose: NaN scales take the zero branch.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub use super::quant::QuantParams;
use super::quant::{min_max_scalar, quantize_scalar};
use super::Kernel;

/// `DynamicQuantizeLinear` of `x` (any shape, row-major) into `q` with the default kernel.
pub fn dynamic_quantize_linear(x: &[f32], q: &mut [u8]) -> QuantParams {
    dynamic_quantize_linear_with(Kernel::default_choice(), x, q)
}

/// `DynamicQuantizeLinear` of `x` into `q` (same length) with a given kernel (an unavailable
/// kernel falls back to the default choice).
pub fn dynamic_quantize_linear_with(kernel: Kernel, x: &[f32], q: &mut [u8]) -> QuantParams {
    assert_eq!(
        x.len(),
        q.len(),
        "dynamic_quantize_linear: input and output lengths differ"
    );
    let kernel = Kernel::resolve(Some(kernel));
    let (min, max) = min_max(kernel, x);
    let p = QuantParams::from_min_max(min, max);
    quantize(kernel, x, p, q);
    p
}

/// Min and max of `x` together with 0 (NaNs ignored).
pub(crate) fn min_max(kernel: Kernel, x: &[f32]) -> (f32, f32) {
    match kernel {
        // SAFETY: `kernel` is available (resolved by the callers), and each of these kernels
        // requires AVX2.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 | Kernel::AvxVnni | Kernel::Avx512Vnni => unsafe {
            super::x86::min_max_avx2(x)
        },
        // SAFETY: available kernel, each requires NEON.
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon | Kernel::Dotprod | Kernel::I8mm => unsafe { super::arm::min_max_neon(x) },
        _ => min_max_scalar(x),
    }
}

/// `q = saturate(round_half_even(x / scale) + zp)` with the given parameters.
pub(crate) fn quantize(kernel: Kernel, x: &[f32], p: QuantParams, q: &mut [u8]) {
    assert_eq!(x.len(), q.len());
    if !(p.scale > 0.0) {
        q.fill(p.zero_point);
        return;
    }
    match kernel {
        // SAFETY: available kernel (resolved by the callers), each requires AVX2; `x` and `q`
        // have the same length (asserted above) and scale > 0.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 | Kernel::AvxVnni | Kernel::Avx512Vnni => unsafe {
            super::x86::quantize_avx2(x, p, q)
        },
        // SAFETY: available kernel, each requires NEON; same lengths, scale > 0.
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon | Kernel::Dotprod | Kernel::I8mm => unsafe {
            super::arm::quantize_neon(x, p, q)
        },
        _ => quantize_scalar(x, p, q),
    }
}
