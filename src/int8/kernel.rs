//! The kernels of the int8 path and their choice at run time: one [`Kernel`] per instruction
//! set, what each needs of the CPU, which is the best here, and the `ELECTRA_EDGE_KERNEL`
//! override.

use std::sync::OnceLock;

/// The environment variable that overrides the kernel choice.
pub const KERNEL_ENV: &str = "ELECTRA_EDGE_KERNEL";

/// One implementation of the quantized kernels (quantize, A packing, integer GEMM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Portable Rust, the reference semantics; available everywhere.
    Scalar,
    /// x86-64 AVX2.
    Avx2,
    /// aarch64 NEON without dotprod (Cortex-A72, Raspberry Pi 4).
    Neon,
    /// aarch64 NEON with `sdot` (Cortex-A76 and later, Raspberry Pi 5).
    Dotprod,
    /// x86-64 AVX-VNNI: VEX-encoded `vpdpbusd` on ymm (Alder Lake and later, Zen 5), for CPUs
    /// with VNNI but without AVX-512.
    AvxVnni,
    /// x86-64 AVX-512 VNNI: `vpdpbusd` on zmm (Ice Lake / Cascade Lake and later, Zen 4).
    Avx512Vnni,
    /// aarch64 `usmmla` (FEAT_I8MM: Cortex-A510/A710/X2 and later, Neoverse V1/N2, Apple M2).
    I8mm,
}

impl Kernel {
    /// Every kernel, available here or not.
    pub const ALL: [Kernel; 7] = [
        Kernel::Scalar,
        Kernel::Avx2,
        Kernel::AvxVnni,
        Kernel::Avx512Vnni,
        Kernel::Neon,
        Kernel::Dotprod,
        Kernel::I8mm,
    ];

    /// Name as accepted by [`Kernel::parse`] and `ELECTRA_EDGE_KERNEL`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Neon => "neon",
            Kernel::Dotprod => "dotprod",
            Kernel::AvxVnni => "avxvnni",
            Kernel::Avx512Vnni => "avx512vnni",
            Kernel::I8mm => "i8mm",
        }
    }

    /// The CPU features the kernel needs, as named by `is_x86_feature_detected!` /
    /// `is_aarch64_feature_detected!` (for messages).
    pub fn features(self) -> &'static str {
        match self {
            Kernel::Scalar => "none",
            Kernel::Avx2 => "x86-64 avx2",
            Kernel::AvxVnni => "x86-64 avx2 + avxvnni",
            Kernel::Avx512Vnni => "x86-64 avx2 + avx512f + avx512bw + avx512vnni",
            Kernel::Neon => "aarch64 neon",
            Kernel::Dotprod => "aarch64 neon + dotprod",
            Kernel::I8mm => "aarch64 neon + dotprod + i8mm",
        }
    }

    /// A kernel name (see [`Kernel::name`], case-insensitive).
    pub fn parse(s: &str) -> Option<Kernel> {
        Kernel::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether this CPU can run the kernel (runtime detection).
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("avxvnni")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Kernel::Dotprod => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[cfg(target_arch = "aarch64")]
            Kernel::I8mm => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
                    && std::arch::is_aarch64_feature_detected!("i8mm")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The fastest kernel this CPU can run.
    pub fn best() -> Kernel {
        [
            Kernel::I8mm,
            Kernel::Dotprod,
            Kernel::Neon,
            Kernel::Avx512Vnni,
            Kernel::AvxVnni,
            Kernel::Avx2,
        ]
        .into_iter()
        .find(|k| k.is_available())
        .unwrap_or(Kernel::Scalar)
    }

    /// The kernel to use by default: `ELECTRA_EDGE_KERNEL` if set (and available here),
    /// otherwise [`Kernel::best`]. Read once per process. An unknown or unavailable name is
    /// reported once on the log and ignored.
    pub fn default_choice() -> Kernel {
        static CHOICE: OnceLock<Kernel> = OnceLock::new();
        *CHOICE.get_or_init(|| match std::env::var(KERNEL_ENV) {
            Ok(v) if !v.trim().is_empty() => match Kernel::parse(&v) {
                Some(k) if k.is_available() => k,
                Some(k) => {
                    log::warn!(
                        "{KERNEL_ENV}={v}: kernel {} not available on this CPU",
                        k.name()
                    );
                    Kernel::best()
                }
                None => {
                    log::warn!(
                        "{KERNEL_ENV}={v}: unknown kernel ({})",
                        Kernel::ALL.map(Kernel::name).join("|")
                    );
                    Kernel::best()
                }
            },
            _ => Kernel::best(),
        })
    }

    /// `Some(k)` if available, else the default choice. Kernels not available on this CPU are
    /// never run (it would be undefined behaviour).
    pub fn resolve(choice: Option<Kernel>) -> Kernel {
        match choice {
            Some(k) if k.is_available() => k,
            _ => Kernel::default_choice(),
        }
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
