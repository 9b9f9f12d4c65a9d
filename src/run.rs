//! `electra-edge run`: JSON lines from stdin to stdout, in input order.

use std::io::{self, BufRead, Write};

use anyhow::Result;

use crate::engine::Engine;
use crate::protocol::{self, BoundedLine, Command, ErrorCode, ErrorReply, Line};

/// Longest request line kept in memory; longer lines are skipped with a `too_large` error.
/// Four bytes per character for the text plus room for the JSON around it.
pub fn max_line_bytes(max_chars: usize) -> usize {
    max_chars.saturating_mul(4).saturating_add(64 * 1024)
}

/// Serves every line of `input`, one response line each, until end of input. A closed output
/// (the reader went away) ends the loop without an error.
pub fn serve_lines(engine: &Engine, input: impl BufRead, output: impl Write) -> Result<()> {
    match serve_lines_inner(engine, input, output) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn serve_lines_inner(
    engine: &Engine,
    mut input: impl BufRead,
    mut output: impl Write,
) -> io::Result<()> {
    let limits = engine.limits();
    let max_bytes = max_line_bytes(limits.max_chars);
    let mut buf = Vec::new();
    while let Some(read) = protocol::read_bounded_line(&mut input, &mut buf, max_bytes)? {
        let line = match read {
            BoundedLine::TooLong { bytes } => protocol::line_too_long(bytes, max_bytes).to_line(),
            BoundedLine::Line => match protocol::parse_line(&buf, &limits) {
                Ok(Line::Infer(request)) => {
                    engine.respond(&request).unwrap_or_else(|e| e.to_line())
                }
                Ok(Line::Command {
                    id,
                    cmd: Command::Ping,
                }) => protocol::response_line(id.as_ref(), protocol::pong_body()),
                Ok(Line::Command {
                    id,
                    cmd: Command::Stats,
                }) => ErrorReply::new(
                    id,
                    ErrorCode::BadRequest,
                    "stats is served by `electra-edge serve`",
                )
                .to_line(),
                Err(reply) => reply.to_line(),
            },
        };
        output.write_all(line.as_bytes())?;
        output.write_all(b"\n")?;
        // One flush per answer: a client piping requests one by one sees each answer at once.
        output.flush()?;
    }
    Ok(())
}
