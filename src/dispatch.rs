//! The one request dispatcher of `run` and `serve`: what a request line asks for, and the
//! answer to an inference request. Both commands therefore have one contract (the same
//! parsing, limits, errors and answers); they differ only in I/O and in `stats`, which only
//! the server keeps.

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde_json::Value;

use crate::engine::Engine;
use crate::protocol::{self, BoundedLine, Command, ErrorCode, ErrorReply, Line, Request};
use crate::tasks::Response;

/// What to do with one request line.
#[derive(Debug)]
pub enum Routed {
    /// Answer at once with this line (`ping`).
    Reply(String),
    /// Answer at once with this error.
    Error(ErrorReply),
    /// Answer with the server's statistics.
    Stats(Option<Value>),
    /// Run the model.
    Infer(Request),
}

/// Routes one line read by [`protocol::read_bounded_line`] (`buf` holds it unless it was too
/// long); `parse` parses `buf` (directly, or on the server's parser thread).
pub fn route(
    read: BoundedLine,
    max_line_bytes: usize,
    parse: impl FnOnce() -> Result<Line, ErrorReply>,
) -> Routed {
    match read {
        BoundedLine::TooLong { bytes } => {
            Routed::Error(protocol::line_too_long(bytes, max_line_bytes))
        }
        BoundedLine::Line => match parse() {
            Err(e) => Routed::Error(e),
            Ok(Line::Command {
                id,
                cmd: Command::Ping,
            }) => Routed::Reply(protocol::pong_line(id.as_ref())),
            Ok(Line::Command {
                id,
                cmd: Command::Stats,
            }) => Routed::Stats(id),
            Ok(Line::Infer(request)) => Routed::Infer(request),
        },
    }
}

/// The engine's answer to one request, with the request's options over the engine's
/// defaults. A model failure or a panic is logged and becomes an `internal` error.
pub fn infer(engine: &Engine, request: &Request) -> Result<Response, ErrorReply> {
    let options = request.options.resolve(&engine.options.defaults);
    let internal =
        |message: String| ErrorReply::new(request.id.clone(), ErrorCode::Internal, message);
    match catch_unwind(AssertUnwindSafe(|| engine.answer(&request.text, &options))) {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => {
            log::error!("request failed: {e:#}");
            Err(internal(format!("{e:#}")))
        }
        Err(_) => {
            log::error!("request panicked");
            Err(internal("inference panicked".into()))
        }
    }
}

/// The answer line of an inference request (see [`infer`]), or its error line.
pub fn respond(engine: &Engine, request: &Request) -> Result<String, ErrorReply> {
    infer(engine, request)
        .map(|response| protocol::answer_line(request.id.as_ref(), &request.text, &response))
}
