//! The kernel table: each [`Kernel`]'s tile height, packed-A format and panels per tile, and
//! its runner: the driver's loops ([`drive`]) around the kernel's micro-tile from its
//! instruction-set file, compiled with the kernel's target features (so that the loops and
//! the epilogue are too).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use super::drive::{drive, Job, NO_DIRECT};
use crate::int8::layout::AFormat;
#[cfg(target_arch = "aarch64")]
use crate::int8::layout::DirectOut;
use crate::int8::{scalar, vnni, Kernel};

#[cfg(target_arch = "aarch64")]
use crate::int8::arm;
#[cfg(target_arch = "x86_64")]
use crate::int8::x86;

/// A kernel's GEMM over panels `[p0, p1)` of a job.
pub(crate) type Runner = unsafe fn(&Job, usize, usize);

/// Per-kernel configuration: rows per tile and A format.
pub(crate) fn config(kernel: Kernel) -> (usize, AFormat) {
    match kernel {
        Kernel::Scalar => (scalar::MR, AFormat::I16MinusZa),
        Kernel::Avx2 => (6, AFormat::I16MinusZa),
        Kernel::AvxVnni => (vnni::MR_YMM, AFormat::U8),
        Kernel::Avx512Vnni => (vnni::MR_ZMM, AFormat::U8),
        Kernel::Neon => (4, AFormat::I8Shifted),
        Kernel::Dotprod => (12, AFormat::I8Shifted),
        Kernel::I8mm => (8, AFormat::U8Pairs),
    }
}

/// Panels (of 8 columns) per tile: the unit in which columns are split between threads.
pub(crate) fn panels_per_tile(kernel: Kernel) -> usize {
    match kernel {
        Kernel::AvxVnni => vnni::NP_YMM,
        Kernel::Avx512Vnni => vnni::NP_ZMM,
        _ => 1,
    }
}

/// The runner of an available kernel.
pub(crate) fn runner(kernel: Kernel) -> Runner {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => run_avx2,
        #[cfg(target_arch = "x86_64")]
        Kernel::AvxVnni => run_avxvnni,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => run_avx512vnni,
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon => run_neon,
        #[cfg(target_arch = "aarch64")]
        Kernel::Dotprod => run_dotprod,
        #[cfg(target_arch = "aarch64")]
        Kernel::I8mm => run_i8mm,
        _ => run_scalar,
    }
}

/// # Safety
/// As [`drive`].
unsafe fn run_scalar(job: &Job, p0: usize, p1: usize) {
    // SAFETY: the driver hands the tile one packed block, one panel and its tile buffer.
    unsafe {
        drive::<{ scalar::MR }, 1, _, _>(
            job,
            p0,
            p1,
            |a, w, kq, o, _, _| scalar::tile_scalar(a, w, kq, o),
            NO_DIRECT,
        )
    }
}

/// # Safety
/// The CPU must have AVX2; as [`drive`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2(job: &Job, p0: usize, p1: usize) {
    // SAFETY: AVX2 is there (caller); the driver passes valid blocks, panels and buffers.
    unsafe {
        drive::<{ x86::MR }, 1, _, _>(
            job,
            p0,
            p1,
            |a, w, kq, o, rows, _| x86::tile_avx2(a, w, kq, o, rows),
            NO_DIRECT,
        )
    }
}

/// # Safety
/// The CPU must have AVX2 and AVX-VNNI; as [`drive`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn run_avxvnni(job: &Job, p0: usize, p1: usize) {
    // SAFETY: the features are there (caller); the driver passes valid blocks and panels.
    unsafe {
        drive::<{ vnni::MR_YMM }, { vnni::NP_YMM }, _, _>(
            job,
            p0,
            p1,
            |a, w, kq, o, rows, np| x86::tile_avxvnni(a, w, kq, o, rows, np),
            NO_DIRECT,
        )
    }
}

/// # Safety
/// The CPU must have AVX2, AVX-512F/BW and AVX-512 VNNI; as [`drive`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
unsafe fn run_avx512vnni(job: &Job, p0: usize, p1: usize) {
    // SAFETY: the features are there (caller); the driver passes valid blocks and panels.
    unsafe {
        drive::<{ vnni::MR_ZMM }, { vnni::NP_ZMM }, _, _>(
            job,
            p0,
            p1,
            |a, w, kq, o, rows, np| x86::tile_avx512vnni(a, w, kq, o, rows, np),
            NO_DIRECT,
        )
    }
}

/// NEON: the tile that adds two products in one i16 lane when no weight is -128 (see
/// `arm::neon`), else the one that widens every product on its own; whole tiles of weights
/// with zero points 0 store their f32 outputs themselves.
///
/// # Safety
/// The CPU must have NEON; as [`drive`].
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn run_neon(job: &Job, p0: usize, p1: usize) {
    // SAFETY: NEON is there (caller); the driver passes valid blocks, panels and buffers; the
    // paired tile only for weights without -128.
    unsafe {
        if job.no_minus_128 {
            drive::<{ arm::MR_NEON }, 1, _, _>(
                job,
                p0,
                p1,
                |a, w, kq, o, _, _| arm::tile_neon::<true>(a, w, kq, o),
                Some(|a, w, kq, d: &DirectOut, rows| {
                    rows == arm::MR_NEON && {
                        arm::tile_neon_direct::<true>(a, w, kq, d);
                        true
                    }
                }),
            )
        } else {
            drive::<{ arm::MR_NEON }, 1, _, _>(
                job,
                p0,
                p1,
                |a, w, kq, o, _, _| arm::tile_neon::<false>(a, w, kq, o),
                Some(|a, w, kq, d: &DirectOut, rows| {
                    rows == arm::MR_NEON && {
                        arm::tile_neon_direct::<false>(a, w, kq, d);
                        true
                    }
                }),
            )
        }
    }
}

/// # Safety
/// The CPU must have NEON and dotprod; as [`drive`].
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon,dotprod")]
unsafe fn run_dotprod(job: &Job, p0: usize, p1: usize) {
    // SAFETY: the features are there (caller); the driver passes valid blocks and panels.
    unsafe {
        drive::<{ arm::MR_DOT }, 1, _, _>(
            job,
            p0,
            p1,
            |a, w, kq, o, rows, _| arm::tile_dotprod(a, w, kq, o, rows),
            Some(|a, w, kq, d: &DirectOut, rows| {
                (rows == 12 || rows == 8) && {
                    arm::tile_dotprod_direct(a, w, kq, d, rows);
                    true
                }
            }),
        )
    }
}

/// # Safety
/// The CPU must have NEON and i8mm; as [`drive`].
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon,i8mm")]
unsafe fn run_i8mm(job: &Job, p0: usize, p1: usize) {
    // SAFETY: the features are there (caller); the driver passes valid blocks and panels.
    unsafe {
        drive::<{ arm::MR_I8MM }, 1, _, _>(
            job,
            p0,
            p1,
            |a, w, kq, o, _, _| arm::tile_i8mm(a, w, kq, o),
            NO_DIRECT,
        )
    }
}

/// The VNNI tiles with a portable emulation of `vpdpbusd` ([`vnni::emulated`]), in the
/// driver: the tests check their indexing bit for bit on any machine.
#[cfg(test)]
pub(crate) mod emulated {
    use super::*;
    use crate::int8::vnni::emulated::Emu;
    use crate::int8::vnni::{ymm_tile, zmm_tile};

    /// The ymm kernel's driver and tile with emulated `vpdpbusd`.
    ///
    /// # Safety
    /// As [`drive`].
    pub(crate) unsafe fn run_ymm(job: &Job, p0: usize, p1: usize) {
        // SAFETY: the driver passes valid blocks, panels and its tile buffer.
        unsafe {
            drive::<{ vnni::MR_YMM }, { vnni::NP_YMM }, _, _>(
                job,
                p0,
                p1,
                |a, w, kq, o, rows, np| ymm_tile!(Emu<8>, a, w, kq, o, rows, np),
                NO_DIRECT,
            )
        }
    }

    /// The zmm kernel's driver and tile with emulated `vpdpbusd`.
    ///
    /// # Safety
    /// As [`drive`].
    pub(crate) unsafe fn run_zmm(job: &Job, p0: usize, p1: usize) {
        // SAFETY: the driver passes valid blocks, panels and its tile buffer.
        unsafe {
            drive::<{ vnni::MR_ZMM }, { vnni::NP_ZMM }, _, _>(
                job,
                p0,
                p1,
                |a, w, kq, o, rows, np| zmm_tile!(Emu<16>, a, w, kq, o, rows, np),
                NO_DIRECT,
            )
        }
    }
}
