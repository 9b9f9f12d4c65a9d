//! The JSON-lines contract, without I/O: one request line in, one response line out.
//!
//! A request line is either plain text (anything not starting with `{`), or a JSON object
//! `{"id": <any JSON>, "text": "...", <options>}`, or a command `{"id": ..., "cmd": "ping"}`.
//! Every line gets exactly one response line, which echoes `id` when the request had one. A
//! line that cannot be served gets `{"id": ..., "error": {"code": ..., "message": ...}}`.
//!
//! - [`request`]: parsing a request line (pure), the limits checked while parsing.
//! - [`answer`]: typed answers ([`crate::tasks::Response`]) as JSON lines.
//! - [`error`]: error codes and error lines.
//! - [`lines`]: reading one line with a byte limit.

pub mod answer;
pub mod error;
pub mod lines;
pub mod request;

use serde_json::{Map, Value};

pub use answer::{answer_line, write_answer};
pub use error::{line_too_long, ErrorCode, ErrorReply};
pub use lines::{read_bounded_line, BoundedLine};
pub use request::{
    max_line_bytes, parse_line, value_heap_bytes, Command, Limits, Line, Request, RequestOptions,
    MAX_ID_BYTES, MAX_ID_HEAP_BYTES,
};

/// Serializes a response body as one line (no trailing newline), `id` first when present.
pub fn response_line(id: Option<&Value>, body: Map<String, Value>) -> String {
    let mut out = Map::new();
    if let Some(id) = id {
        out.insert("id".into(), id.clone());
    }
    out.extend(body);
    Value::Object(out).to_string()
}

/// The answer to `{"cmd":"ping"}`.
pub fn pong_line(id: Option<&Value>) -> String {
    let mut body = Map::new();
    body.insert("pong".into(), true.into());
    response_line(id, body)
}
