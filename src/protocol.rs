//! The JSON-lines contract, without I/O: one request line in, one response line out.
//!
//! A request line is either plain text (anything not starting with `{`), or a JSON object
//! `{"id": <any JSON>, "text": "...", <options>}`, or a command `{"id": ..., "cmd": "ping"}`.
//! Every line gets exactly one response line, which echoes `id` when the request had one. A
//! line that cannot be served gets `{"id": ..., "error": {"code": ..., "message": ...}}`.

use std::io::{self, BufRead};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::tasks::embed::Pooling;

/// Per-request options; each overrides the command line's default for this request only.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RequestOptions {
    /// Add `input_ids` and the raw model output (`logits`) to the answer.
    pub raw: Option<bool>,
    /// Discriminator: flag tokens whose probability is above this.
    pub threshold: Option<f32>,
    /// Embed: `mean` or `cls`.
    pub pooling: Option<Pooling>,
    /// Embed: scale to unit L2 norm.
    pub normalize: Option<bool>,
    /// Tag: include per-token labels.
    pub tokens: Option<bool>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub id: Option<Value>,
    pub text: String,
    pub options: RequestOptions,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Ping,
    Stats,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    Infer(Request),
    Command { id: Option<Value>, cmd: Command },
}

/// Why a request line got no answer; `code` is the stable, machine-readable part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidUtf8,
    BadJson,
    BadRequest,
    EmptyText,
    TooLarge,
    Busy,
    Internal,
}

impl ErrorCode {
    /// Every code, in declaration order (`code as usize` is its index here).
    pub const ALL: [ErrorCode; 7] = [
        ErrorCode::InvalidUtf8,
        ErrorCode::BadJson,
        ErrorCode::BadRequest,
        ErrorCode::EmptyText,
        ErrorCode::TooLarge,
        ErrorCode::Busy,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidUtf8 => "invalid_utf8",
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::EmptyText => "empty_text",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ErrorReply {
    pub id: Option<Value>,
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorReply {
    pub fn new(id: Option<Value>, code: ErrorCode, message: impl Into<String>) -> ErrorReply {
        ErrorReply {
            id,
            code,
            message: message.into(),
        }
    }

    pub fn to_line(&self) -> String {
        let mut error = Map::new();
        error.insert("code".into(), self.code.as_str().into());
        error.insert("message".into(), self.message.clone().into());
        let mut body = Map::new();
        body.insert("error".into(), Value::Object(error));
        response_line(self.id.as_ref(), body)
    }
}

/// Serializes a response body as one line (no trailing newline), `id` first when present.
pub fn response_line(id: Option<&Value>, body: Map<String, Value>) -> String {
    let mut out = Map::new();
    if let Some(id) = id {
        out.insert("id".into(), id.clone());
    }
    out.extend(body);
    Value::Object(out).to_string()
}

/// The reply to a request line longer than `max_bytes` (it was not kept, so it has no `id`).
pub fn line_too_long(bytes: usize, max_bytes: usize) -> ErrorReply {
    ErrorReply::new(
        None,
        ErrorCode::TooLarge,
        format!("request line of {bytes} bytes is longer than {max_bytes}"),
    )
}

/// The body of the answer to `{"cmd":"ping"}`.
pub fn pong_body() -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("pong".into(), true.into());
    body
}

/// Limits checked while parsing.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest accepted text, in characters.
    pub max_chars: usize,
}

/// Parses one request line (without its newline; a trailing `\r` is ignored).
pub fn parse_line(line: &[u8], limits: &Limits) -> Result<Line, ErrorReply> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).map_err(|e| {
        ErrorReply::new(
            None,
            ErrorCode::InvalidUtf8,
            format!("request is not UTF-8: {e}"),
        )
    })?;
    if !line.trim_start().starts_with('{') {
        return check_text(None, line.to_string(), RequestOptions::default(), limits);
    }
    let value: Value = serde_json::from_str(line)
        .map_err(|e| ErrorReply::new(None, ErrorCode::BadJson, format!("malformed JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(ErrorReply::new(
            None,
            ErrorCode::BadJson,
            "a request must be a JSON object",
        ));
    };
    let id = object.remove("id");
    let bad = |message: String| ErrorReply::new(id.clone(), ErrorCode::BadRequest, message);
    if let Some(cmd) = object.remove("cmd") {
        if let Some(extra) = object.keys().next() {
            return Err(bad(format!("unknown field {extra:?} in a command")));
        }
        let cmd = match cmd.as_str() {
            Some("ping") => Command::Ping,
            Some("stats") => Command::Stats,
            _ => {
                return Err(bad(format!(
                    "unknown command {cmd} (expected \"ping\" or \"stats\")"
                )))
            }
        };
        return Ok(Line::Command { id, cmd });
    }
    let text = match object.remove("text") {
        Some(Value::String(text)) => text,
        Some(other) => {
            return Err(bad(format!(
                "\"text\" must be a string, not {}",
                kind(&other)
            )))
        }
        None => return Err(bad("missing \"text\"".into())),
    };
    let options: RequestOptions =
        serde_json::from_value(Value::Object(object)).map_err(|e| bad(format!("{e}")))?;
    if let Some(t) = options.threshold {
        if !(0.0..=1.0).contains(&t) {
            return Err(bad(format!("threshold {t} is outside [0, 1]")));
        }
    }
    check_text(id, text, options, limits)
}

fn check_text(
    id: Option<Value>,
    text: String,
    options: RequestOptions,
    limits: &Limits,
) -> Result<Line, ErrorReply> {
    if text.trim().is_empty() {
        return Err(ErrorReply::new(id, ErrorCode::EmptyText, "text is empty"));
    }
    // Counting stops at the limit: a huge text costs no more than the limit to reject.
    if text.chars().nth(limits.max_chars).is_some() {
        return Err(ErrorReply::new(
            id,
            ErrorCode::TooLarge,
            format!("text is longer than {} characters", limits.max_chars),
        ));
    }
    Ok(Line::Infer(Request { id, text, options }))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One line read with a byte limit.
#[derive(Debug, PartialEq, Eq)]
pub enum BoundedLine {
    /// The line's bytes are in the buffer (newline removed).
    Line,
    /// The line was longer than the limit; it was read to its end and discarded.
    TooLong { bytes: usize },
}

/// Reads one line into `buf` (cleared first) keeping at most `max_bytes` bytes in memory: a
/// longer line is consumed and dropped. `Ok(None)` at end of input. A last line without a
/// newline still counts as a line.
pub fn read_bounded_line(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max_bytes: usize,
) -> io::Result<Option<BoundedLine>> {
    buf.clear();
    let mut total = 0usize;
    let mut seen_any = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(match (seen_any, total > max_bytes) {
                (false, _) => None,
                (true, true) => Some(BoundedLine::TooLong { bytes: total }),
                (true, false) => Some(BoundedLine::Line),
            });
        }
        seen_any = true;
        let (part, consumed, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], i + 1, true),
            None => (chunk, chunk.len(), false),
        };
        total += part.len();
        if total <= max_bytes {
            buf.extend_from_slice(part);
        } else {
            buf.clear();
        }
        reader.consume(consumed);
        if done {
            return Ok(Some(if total > max_bytes {
                BoundedLine::TooLong { bytes: total }
            } else {
                BoundedLine::Line
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: Limits = Limits { max_chars: 10 };

    fn err(line: &[u8]) -> ErrorReply {
        parse_line(line, &LIMITS).unwrap_err()
    }

    #[test]
    fn plain_and_json_requests() {
        let Line::Infer(r) = parse_line("我爱北京\r".as_bytes(), &LIMITS).unwrap() else {
            panic!()
        };
        assert_eq!((r.id, r.text.as_str()), (None, "我爱北京"));
        let line = br#"{"id":{"k":[1]},"text":"abc","raw":true,"threshold":0.9}"#;
        let Line::Infer(r) = parse_line(line, &LIMITS).unwrap() else {
            panic!()
        };
        assert_eq!(r.id, Some(json!({"k":[1]})));
        assert_eq!(r.options.raw, Some(true));
        assert_eq!(r.options.threshold, Some(0.9));
        let cmd = parse_line(br#"{"id":7,"cmd":"ping"}"#, &LIMITS).unwrap();
        assert_eq!(
            cmd,
            Line::Command {
                id: Some(json!(7)),
                cmd: Command::Ping
            }
        );
    }

    #[test]
    fn error_codes_and_echoed_ids() {
        assert_eq!(err(b"\xff\xfe").code, ErrorCode::InvalidUtf8);
        assert_eq!(err(b"{\"text\": ").code, ErrorCode::BadJson);
        assert_eq!(err(b"{}garbage").code, ErrorCode::BadJson);
        let deep = format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
        assert_eq!(err(deep.as_bytes()).code, ErrorCode::BadJson);
        let e = err(br#"{"id":3,"text":"x","treshold":0.2}"#);
        assert_eq!((e.code, e.id), (ErrorCode::BadRequest, Some(json!(3))));
        assert!(e.message.contains("treshold"), "{}", e.message);
        assert_eq!(err(br#"{"id":4,"text":5}"#).code, ErrorCode::BadRequest);
        assert_eq!(err(br#"{"id":4}"#).code, ErrorCode::BadRequest);
        assert_eq!(
            err(br#"{"id":4,"cmd":"reboot"}"#).code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            err(br#"{"text":"a","threshold":2}"#).code,
            ErrorCode::BadRequest
        );
        assert_eq!(err(b"   ").code, ErrorCode::EmptyText);
        assert_eq!(err(br#"{"id":"e","text":""}"#).id, Some(json!("e")));
        assert_eq!(
            err("一二三四五六七八九十一".as_bytes()).code,
            ErrorCode::TooLarge
        );
        assert!(parse_line("一二三四五六七八九十".as_bytes(), &LIMITS).is_ok());
    }

    #[test]
    fn error_line_shape() {
        let line = ErrorReply::new(Some(json!(1)), ErrorCode::TooLarge, "big").to_line();
        assert_eq!(
            line,
            r#"{"id":1,"error":{"code":"too_large","message":"big"}}"#
        );
        let line = ErrorReply::new(None, ErrorCode::BadJson, "x").to_line();
        assert_eq!(line, r#"{"error":{"code":"bad_json","message":"x"}}"#);
    }

    #[test]
    fn bounded_lines() {
        let input = b"short\nthis line is too long\n\nlast";
        let mut reader = io::BufReader::with_capacity(4, &input[..]);
        let mut buf = vec![];
        let mut got = vec![];
        while let Some(line) = read_bounded_line(&mut reader, &mut buf, 8).unwrap() {
            got.push((line, String::from_utf8(buf.clone()).unwrap()));
        }
        assert_eq!(
            got,
            [
                (BoundedLine::Line, "short".to_string()),
                (BoundedLine::TooLong { bytes: 21 }, String::new()),
                (BoundedLine::Line, String::new()),
                (BoundedLine::Line, "last".to_string()),
            ]
        );
    }
}
