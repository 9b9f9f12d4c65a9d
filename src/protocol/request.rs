//! Parsing one request line: plain text, a JSON request or a command.

use serde::Deserialize;
use serde_json::Value;

use super::{ErrorCode, ErrorReply};
use crate::tasks::{AnswerOptions, Pooling};

/// Longest `id`, serialized; a longer one gets `too_large` (it is echoed in every answer and
/// held while the request waits).
pub const MAX_ID_BYTES: usize = 1024;

/// Most heap an `id` of up to [`MAX_ID_BYTES`] serialized can hold as parsed (see
/// [`value_heap_bytes`]): at most ~48 bytes per serialized byte, for `[[],[],...]` (a 72-byte
/// `Value` per 3 bytes, and the array's capacity up to twice its length).
pub const MAX_ID_HEAP_BYTES: usize = 64 * MAX_ID_BYTES;

/// Longest request line kept in memory for texts of up to `max_chars` characters; longer
/// lines are skipped with a `too_large` error. Four bytes per character for the text plus room
/// for the JSON around it.
pub fn max_line_bytes(max_chars: usize) -> usize {
    max_chars.saturating_mul(4).saturating_add(64 * 1024)
}

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

impl Request {
    /// Bytes this request holds on the heap while it waits and until its answer is written
    /// (the text, the id's tree, the struct; what a server reserves for it, with the answer).
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Request>()
            + self.text.capacity()
            + self.id.as_ref().map_or(0, value_heap_bytes)
    }
}

/// An upper estimate of the heap a parsed JSON value holds (`serde_json` with
/// `preserve_order`): strings their capacity, arrays one `Value` per element, objects ~96 bytes
/// per entry (key, value and index slots) besides the key's text.
pub fn value_heap_bytes(value: &Value) -> usize {
    const VALUE: usize = std::mem::size_of::<Value>();
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(s) => s.capacity(),
        Value::Array(a) => a.capacity() * VALUE + a.iter().map(value_heap_bytes).sum::<usize>(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| 96 + VALUE + k.capacity() + value_heap_bytes(v))
            .sum(),
    }
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

impl RequestOptions {
    /// The options for this request: each one set here, else the default.
    pub fn resolve(&self, defaults: &AnswerOptions) -> AnswerOptions {
        AnswerOptions {
            raw: self.raw.unwrap_or(defaults.raw),
            threshold: self.threshold.unwrap_or(defaults.threshold),
            pooling: self.pooling.unwrap_or(defaults.pooling),
            normalize: self.normalize.unwrap_or(defaults.normalize),
            tokens: self.tokens.unwrap_or(defaults.tokens),
        }
    }
}

/// Limits checked while parsing.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest accepted text, in characters.
    pub max_chars: usize,
    /// Longest `id`, serialized.
    pub max_id_bytes: usize,
}

impl Limits {
    /// Texts up to `max_chars` characters, ids up to [`MAX_ID_BYTES`].
    pub fn new(max_chars: usize) -> Limits {
        Limits {
            max_chars,
            max_id_bytes: MAX_ID_BYTES,
        }
    }
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
    let id_bytes = id.as_ref().map_or(0, |id| id.to_string().len());
    if id_bytes > limits.max_id_bytes {
        return Err(ErrorReply::new(
            None,
            ErrorCode::TooLarge,
            format!(
                "id of {id_bytes} bytes is longer than {}",
                limits.max_id_bytes
            ),
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: Limits = Limits {
        max_chars: 10,
        max_id_bytes: MAX_ID_BYTES,
    };

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

    /// The heap bound of an id holds for the densest ids of [`MAX_ID_BYTES`] serialized.
    #[test]
    fn the_heaviest_ids_stay_within_their_bound() {
        let dense = |unit: &str, open: char, close: char| {
            let mut s = String::from(open);
            while s.len() + unit.len() + 1 < MAX_ID_BYTES {
                s.push_str(unit);
            }
            s.pop();
            s.push(close);
            s
        };
        let mut object = String::from("{");
        for key in 0.. {
            let entry = format!("\"{key}\":0,");
            if object.len() + entry.len() >= MAX_ID_BYTES {
                break;
            }
            object.push_str(&entry);
        }
        object.pop();
        object.push('}');
        for id in [
            object,
            dense("[],", '[', ']'),
            dense("0,", '[', ']'),
            format!("{}{}", "[".repeat(100), "]".repeat(100)),
            format!("\"{}\"", "x".repeat(MAX_ID_BYTES - 2)),
        ] {
            assert!(id.len() <= MAX_ID_BYTES, "{}", id.len());
            let line = format!(r#"{{"id":{id},"text":"a"}}"#);
            let Line::Infer(r) = parse_line(line.as_bytes(), &LIMITS).unwrap() else {
                panic!("{id}")
            };
            let heap = value_heap_bytes(r.id.as_ref().unwrap());
            assert!(heap > id.len() / 2, "{heap} for {id}");
            assert!(heap <= MAX_ID_HEAP_BYTES, "{heap} for {id}");
            assert!(r.heap_bytes() >= heap + r.text.len());
        }
    }

    #[test]
    fn long_ids_are_refused() {
        let id = "x".repeat(MAX_ID_BYTES);
        let e = err(format!(r#"{{"id":"{id}","text":"a"}}"#).as_bytes());
        assert_eq!((e.code, e.id), (ErrorCode::TooLarge, None));
        assert!(e.message.contains("id of 1026 bytes"), "{}", e.message);
        let ok = "x".repeat(MAX_ID_BYTES - 2);
        assert!(parse_line(
            format!(r#"{{"id":"{ok}","cmd":"ping"}}"#).as_bytes(),
            &LIMITS
        )
        .is_ok());
    }
}
