//! Parsing within the budget: lines whose JSON tree may be big are parsed one at a time.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, SyncSender};
use std::sync::Mutex;

use anyhow::{Context, Result};

use crate::protocol::{self, ErrorCode, ErrorReply, Line};

/// Lines whose parse tree may be larger than this are parsed one at a time.
pub const FREE_PARSE_BYTES: usize = 64 * 1024;

/// Lines whose parse tree may be larger than this are refused unparsed (`too_large`): a request
/// line of `max_line_bytes` is its text (twice its bytes, with the string's growth), an id of
/// at most [`protocol::MAX_ID_BYTES`] (under 512 values) and a few options, so 256 KiB of
/// values leaves room; a line of `[0],[0],...` would be a tree ~100 times its size.
pub fn max_tree_bytes(max_line_bytes: usize) -> usize {
    max_line_bytes.saturating_mul(2).saturating_add(256 * 1024)
}

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
pub(super) struct ParseGate {
    jobs: Mutex<SyncSender<ParseJob>>,
    max_tree: usize,
}

impl ParseGate {
    /// The parser thread, for lines of up to `max_line_bytes`.
    pub(super) fn start(max_line_bytes: usize) -> Result<ParseGate> {
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
        Ok(ParseGate {
            jobs: Mutex::new(tx),
            max_tree: max_tree_bytes(max_line_bytes),
        })
    }
}

impl ParseGate {
    /// Parses `buf` (on the parser thread when its tree may be big; `buf` comes back). A line
    /// whose tree may exceed [`max_tree_bytes`] is refused without parsing.
    pub(super) fn parse(
        &self,
        buf: &mut Vec<u8>,
        limits: &protocol::Limits,
    ) -> Result<Line, ErrorReply> {
        let tree = json_tree_bound(buf);
        if tree <= FREE_PARSE_BYTES {
            return protocol::parse_line(buf, limits);
        }
        if tree > self.max_tree {
            return Err(ErrorReply::new(
                None,
                ErrorCode::TooLarge,
                format!(
                    "a line this dense in JSON values would parse into ~{} KiB (limit {} KiB)",
                    tree >> 10,
                    self.max_tree >> 10
                ),
            ));
        }
        let gate = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
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
