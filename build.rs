//! Links the aarch64 Linux executables as position-dependent (non-PIE) programs.
//!
//! A position-independent executable carries one dynamic relocation for every absolute address
//! in its data (vtables, string tables, jump tables): about 70,000 here, 1.6 MiB of `.rela.dyn`
//! that the dynamic loader applies at every start. Linked at a fixed address, those addresses
//! are final and the table is gone (docs/binary-size.md). The cost is that the program's own
//! code and data are not placed at a random address (libraries, heap and stack still are).
//! Set `ELECTRA_EDGE_PIE=1` to build a PIE anyway.
//!
//! Only the binaries get the flag (`rustc-link-arg-bins`): proc macros and build scripts are
//! shared objects and must stay position independent, which a `-no-pie` in `RUSTFLAGS` or
//! `.cargo/config.toml` would break for builds without `--target`. The objects themselves stay
//! position-independent code; the linker resolves their GOT and absolute addresses at link
//! time. Works with Debian's cross gcc and with `cargo zigbuild` (zig cc takes `-no-pie`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ELECTRA_EDGE_PIE");
    let cfg = |key: &str| std::env::var(key).unwrap_or_default();
    let aarch64_linux_gnu = cfg("CARGO_CFG_TARGET_ARCH") == "aarch64"
        && cfg("CARGO_CFG_TARGET_OS") == "linux"
        && cfg("CARGO_CFG_TARGET_ENV") == "gnu";
    let pie_asked = std::env::var_os("ELECTRA_EDGE_PIE").is_some_and(|v| v != "0" && !v.is_empty());
    if aarch64_linux_gnu && !pie_asked {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
