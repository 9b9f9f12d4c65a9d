//! Error codes and error lines.

use serde_json::{Map, Value};

use super::response_line;

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

/// The reply to a request line longer than `max_bytes` (it was not kept, so it has no `id`).
pub fn line_too_long(bytes: usize, max_bytes: usize) -> ErrorReply {
    ErrorReply::new(
        None,
        ErrorCode::TooLarge,
        format!("request line of {bytes} bytes is longer than {max_bytes}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
