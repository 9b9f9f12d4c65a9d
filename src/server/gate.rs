//! Parsing within the budget: lines whose JSON tree may be big are parsed one at a time.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, SyncSender};
use std::sync::Mutex;

use anyhow::{Context, Result};

use crate::protocol::{self, ErrorCode, ErrorReply, Line};

/// Lines whose parse tree may be larger than this are parsed one at a time.
pub const FREE_PARSE_BYTES: usize = 64 * 1024;
/// Upper bound of a parsed JSON tree's size over its text's (measured: ~93x for `[0],[0],...`).
pub(super) const JSON_AMPLIFICATION: u64 = 128;

/// An upper bound of the memory `protocol::parse_line` may use for `line`: plain text is copied
/// once; JSON costs its bytes (strings, with vector growth) plus 256 bytes per value.
pub fn json_tree_bound(line: &[u8]) -> usize {
    if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return line.len();
    }
    let (mut in_string, mut escaped, mut values) = (false, false, 0usize);
    for &b in line {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'{' | b'[' | b',' | b':' => values += 1,
                _ => {}
            }
        }
    }
    2 * line.len() + 256 * values
}

type Parsed = (Vec<u8>, Result<Line, ErrorReply>);

/// A line for the parser thread, and where to send it back with its result.
struct ParseJob {
    line: Vec<u8>,
    limits: protocol::Limits,
    reply: SyncSender<Parsed>,
}

/// Parses lines whose tree may be big, one at a time, on one thread: their transient trees
/// then live in one allocator arena instead of one per connection thread (glibc keeps freed
/// memory per arena, so 64 readers parsing in turn would still keep 64 trees' worth).
pub(super) struct ParseGate(Mutex<SyncSender<ParseJob>>);

impl ParseGate {
    pub(super) fn start() -> Result<ParseGate> {
        let (tx, rx) = mpsc::sync_channel::<ParseJob>(0);
        std::thread::Builder::new()
            .name("big-line-parser".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    let result = catch_unwind(AssertUnwindSafe(|| {
                        protocol::parse_line(&job.line, &job.limits)
                    }))
                    .unwrap_or_else(|_| {
                        Err(ErrorReply::new(
                            None,
                            ErrorCode::Internal,
                            "parser panicked",
                        ))
                    });
                    let _ = job.reply.send((job.line, result));
                }
            })
            .context("cannot start the parser thread")?;
        Ok(ParseGate(Mutex::new(tx)))
    }
}

impl ParseGate {
    /// Parses `buf` (on the parser thread when its tree may be big; `buf` comes back).
    pub(super) fn parse(
        &self,
        buf: &mut Vec<u8>,
        limits: &protocol::Limits,
    ) -> Result<Line, ErrorReply> {
        if json_tree_bound(buf) <= FREE_PARSE_BYTES {
            return protocol::parse_line(buf, limits);
        }
        let gate = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (reply, result) = mpsc::sync_channel(1);
        let job = ParseJob {
            line: std::mem::take(buf),
            limits: *limits,
            reply,
        };
        if let Err(mpsc::SendError(job)) = gate.send(job) {
            *buf = job.line;
            return Err(ErrorReply::new(
                None,
                ErrorCode::Internal,
                "the parser thread is gone",
            ));
        }
        match result.recv() {
            Ok((line, parsed)) => {
                *buf = line;
                parsed
            }
            Err(_) => Err(ErrorReply::new(
                None,
                ErrorCode::Internal,
                "the parser thread is gone",
            )),
        }
    }
}
