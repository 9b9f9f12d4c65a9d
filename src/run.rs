//! `electra-edge run`: JSON lines from stdin to stdout, in input order.

use std::io::{self, BufRead, Write};

use anyhow::Result;

use crate::dispatch::{self, Routed};
use crate::engine::Engine;
use crate::protocol::{self, ErrorCode, ErrorReply, Limits};

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
    let limits = Limits::new(engine.options.max_chars);
    let max_bytes = protocol::max_line_bytes(limits.max_chars);
    let mut buf = Vec::new();
    while let Some(read) = protocol::read_bounded_line(&mut input, &mut buf, max_bytes)? {
        let line = match dispatch::route(read, max_bytes, || protocol::parse_line(&buf, &limits)) {
            Routed::Reply(line) => line,
            Routed::Error(reply) => reply.to_line(),
            Routed::Stats(id) => ErrorReply::new(
                id,
                ErrorCode::BadRequest,
                "stats is served by `electra-edge serve`",
            )
            .to_line(),
            Routed::Infer(request) => {
                dispatch::respond(engine, &request).unwrap_or_else(|e| e.to_line())
            }
        };
        output.write_all(line.as_bytes())?;
        output.write_all(b"\n")?;
        // One flush per answer: a client piping requests one by one sees each answer at once.
        output.flush()?;
    }
    Ok(())
}
