//! `electra-edge run`: one answer per line of stdin to stdout, in input order: JSON lines (the
//! contract `serve` has too), or for a person to read ([`crate::pretty`]).

use std::io::{self, BufRead, Write};

use anyhow::Result;

use crate::dispatch::{self, Routed};
use crate::engine::Engine;
use crate::pretty::{self, Style};
use crate::protocol::{self, ErrorCode, ErrorReply, Limits};

/// How answers are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON line per request line: the wire format.
    Json,
    /// For a person to read ([`crate::pretty`]); commands (`ping`) are still answered in JSON.
    Pretty(Style),
}

/// Serves every line of `input`, one JSON response line each, until end of input. A closed
/// output (the reader went away) ends the loop without an error.
pub fn serve_lines(engine: &Engine, input: impl BufRead, output: impl Write) -> Result<()> {
    serve_lines_as(engine, input, output, Format::Json)
}

/// [`serve_lines`], answers written in `format`.
pub fn serve_lines_as(
    engine: &Engine,
    input: impl BufRead,
    output: impl Write,
    format: Format,
) -> Result<()> {
    match serve_lines_inner(engine, input, output, format) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn serve_lines_inner(
    engine: &Engine,
    mut input: impl BufRead,
    mut output: impl Write,
    format: Format,
) -> io::Result<()> {
    let limits = Limits::new(engine.options.max_chars);
    let max_bytes = protocol::max_line_bytes(limits.max_chars);
    let mut buf = Vec::new();
    while let Some(read) = protocol::read_bounded_line(&mut input, &mut buf, max_bytes)? {
        let routed = dispatch::route(read, max_bytes, || protocol::parse_line(&buf, &limits));
        let text = match (routed, format) {
            (Routed::Reply(line), _) => line + "\n",
            (Routed::Error(reply), _) => error_text(&reply, format),
            (Routed::Stats(id), _) => {
                let message = "stats is served by `electra-edge serve`";
                error_text(&ErrorReply::new(id, ErrorCode::BadRequest, message), format)
            }
            (Routed::Infer(request), Format::Json) => {
                dispatch::respond(engine, &request).unwrap_or_else(|e| e.to_line()) + "\n"
            }
            (Routed::Infer(request), Format::Pretty(style)) => {
                match dispatch::infer(engine, &request) {
                    Ok(response) => {
                        pretty::answer(request.id.as_ref(), &request.text, &response, style)
                    }
                    Err(e) => pretty::error(&e, style),
                }
            }
        };
        output.write_all(text.as_bytes())?;
        // One flush per answer: a client piping requests one by one sees each answer at once.
        output.flush()?;
    }
    Ok(())
}

/// An error reply in `format`, ending in a newline.
fn error_text(reply: &ErrorReply, format: Format) -> String {
    match format {
        Format::Json => reply.to_line() + "\n",
        Format::Pretty(style) => pretty::error(reply, style),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::engine::EngineOptions;
    use crate::testutil::demo_models;

    fn answers(engine: &Engine, input: &str, format: Format) -> String {
        let mut out = Vec::new();
        serve_lines_as(engine, input.as_bytes(), &mut out, format).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Every kind of line through the loop, JSON and pretty: each error line of the pretty
    /// form says what the JSON line says (code, message, id), each answer is its text then one
    /// line of detail, a ping is answered in JSON in both.
    #[test]
    fn pretty_lines_say_what_json_lines_say() {
        let options = EngineOptions {
            max_chars: 12,
            ..EngineOptions::default()
        };
        let engine = Engine::load(&demo_models().join("discriminator"), options).unwrap();
        let input = [
            "我门今天去学校上课。".to_string(),
            String::new(),
            "长".repeat(13),
            "长".repeat(100_000), // longer than the line limit
            r#"{"id":5,"text":"好","bogus":1}"#.into(),
            r#"{"id":6,"cmd":"stats"}"#.into(),
            r#"{"id":7,"cmd":"ping"}"#.into(),
            r#"{"id":"x","text":"天气很好"}"#.into(),
        ]
        .join("\n");
        let json = answers(&engine, &input, Format::Json);
        let pretty = answers(&engine, &input, Format::Pretty(Style::Plain));
        let mut lines = pretty.lines();
        let mut codes = vec![];
        for line in json.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let prefix = match v.get("id") {
                Some(id) => format!("id {id}: "),
                None => String::new(),
            };
            if let Some(e) = v.get("error") {
                let code = e["code"].as_str().unwrap();
                codes.push(code.to_string());
                let want = format!("{prefix}error ({code}): {}", e["message"].as_str().unwrap());
                assert_eq!(lines.next(), Some(want.as_str()));
            } else if v.get("pong").is_some() {
                assert_eq!(lines.next(), Some(line));
            } else {
                let text: String = v["tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["text"].as_str().unwrap())
                    .collect();
                let first = lines.next().unwrap();
                assert_eq!(first.replace(['[', ']'], ""), format!("{prefix}{text}"));
                let detail = lines.next().unwrap();
                let flagged = v["flagged"].as_array().unwrap();
                assert_eq!(
                    detail.starts_with("  flagged: "),
                    !flagged.is_empty(),
                    "{detail}"
                );
                assert_eq!(detail == "  nothing flagged", flagged.is_empty());
            }
        }
        assert_eq!(lines.next(), None);
        assert_eq!(
            codes,
            [
                "empty_text",
                "too_large",
                "too_large",
                "bad_request",
                "bad_request"
            ]
        );
    }
}
