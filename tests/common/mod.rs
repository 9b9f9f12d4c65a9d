//! Helpers shared by the integration tests: the crate's test support (`src/testutil.rs`:
//! fixtures, temp dirs, seeded RNG), and starting the electra-edge binary.
#![allow(dead_code)]

#[path = "../../src/testutil.rs"]
mod testutil;

pub use testutil::*;

mod client;
#[allow(unused_imports)]
pub use client::{stopped_counts, Client};

use std::process::Command;

/// The command prefix that runs a program built for the target (a qemu-user runner under
/// `.ci/aarch64.sh`: `ELECTRA_EDGE_TEST_RUNNER="qemu-aarch64 -L ..."`), or nothing.
pub fn runner() -> Vec<String> {
    std::env::var("ELECTRA_EDGE_TEST_RUNNER")
        .map(|r| r.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// The electra-edge binary of this build, as a command.
pub fn electra_edge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_electra-edge"))
}
