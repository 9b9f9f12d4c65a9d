//! `electra-edge serve`: real Unix sockets in temp folders, in-process (`server::serve`) and as
//! a process (the binary, SIGTERM). Run with `cargo test --release --test server`.
//!
//! One concern per file, their helpers in `harness.rs`:
//! - `protocol.rs`: answers, stats, one error line per bad line, the parser fuzz;
//! - `limits.rs`: per-connection limits and backpressure (slow readers, the connection cap, a
//!   full queue, idle connections);
//! - `shutdown.rs`: drain on shutdown, and a listener that stops accepting;
//! - `socket.rs`: the socket file (stale, live, mode, removal), in-process and as a process;
//! - `load.rs`: the binary under load from 64 clients, and SIGTERM under load;
//! - `budget.rs`: the memory budget against the worst case the limits allow.

#[path = "../common/mod.rs"]
mod common;
mod harness;

mod budget;
mod limits;
mod load;
mod protocol;
mod shutdown;
mod socket;
