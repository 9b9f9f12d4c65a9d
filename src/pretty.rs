//! Answers for a person to read: what `electra-edge run --pretty` prints (and `run` when its
//! output is a terminal), instead of JSON lines.
//!
//! A pure function of the answer: text in, text out, no I/O and no terminal detection (the
//! command picks the [`Style`]). Each answer is one line with the input text, flagged
//! characters or entities highlighted in it, then one indented line of detail:
//!
//! ```text
//! 我[门]今天去学校上课。
//!   flagged: 门 0.93
//! ```
//!
//! - discriminator: `flagged: 门 0.93, 课 0.61` (each flagged span and its score, the
//!   answer's own spans: the same threshold as the JSON answer), or `nothing flagged`;
//! - classify: the labels by score, highest first, the answer's label highlighted
//!   (`[positive] 0.97, negative 0.03`; five at most, then how many more);
//! - tag: entities inline (`[北京/LOC]`), then `entities: 北京 LOC 0.99, ...` or `no entities`;
//! - embed: `embedding: 64 dims, mean pooling, L2 norm 5.43, first values 0.123 -0.456 ...`;
//! - an error: `error (empty_text): ...`, on one line.
//!
//! A request with an `id` has it (as JSON) in front of its first line: `id 7: ...`. Scores are
//! shown with two decimals, values with three. `--raw` output (ids and logits) and per-token
//! tag labels are in the JSON form only.
//!
//! Two styles: [`Style::Color`] highlights with ANSI escapes (flagged characters bold red, the
//! answer's label bold, entities bold cyan with their type dimmed, `error` bold red);
//! [`Style::Plain`] marks the same places with brackets (`[门]`), readable in a log or a file.
//! Control characters of the input are shown escaped (`\n`, `\u{1b}`) in both, so that a text
//! cannot move the cursor or change a terminal's colours.

use std::fmt::Write;

use serde_json::Value;

use crate::protocol::ErrorReply;
use crate::tasks::{classify, discriminator, embed, tag, Answer, Response};

/// How highlights are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Brackets around highlighted text: `[门]`.
    Plain,
    /// ANSI escapes (bold, colours).
    Color,
}

/// Labels of a classifier shown at most.
const MAX_LABELS: usize = 5;
/// Values of an embedding shown.
const FIRST_VALUES: usize = 4;

const RESET: &str = "\x1b[0m";

/// The lines (each ending in `\n`) showing the answer to a request with `id` for `text`.
pub fn answer(id: Option<&Value>, text: &str, response: &Response, style: Style) -> String {
    let mut out = prefix(id);
    let detail = match &response.answer {
        Answer::Discriminator(a) => discriminator_lines(&mut out, text, a, style),
        Answer::Classify(a) => {
            out.push_str(&shown(text));
            classify_detail(a, style)
        }
        Answer::Tag(a) => tag_lines(&mut out, text, a, style),
        Answer::Embed(a) => {
            out.push_str(&shown(text));
            embed_detail(a)
        }
    };
    out.push_str("\n  ");
    out.push_str(&detail);
    out.push('\n');
    out
}

/// The line (ending in `\n`) showing an error reply.
pub fn error(reply: &ErrorReply, style: Style) -> String {
    let word = match style {
        Style::Plain => "error".to_string(),
        Style::Color => format!("\x1b[1;31merror{RESET}"),
    };
    format!(
        "{}{word} ({}): {}\n",
        prefix(reply.id.as_ref()),
        reply.code.as_str(),
        shown(&reply.message)
    )
}

/// `id <json>: ` when the request had an id.
fn prefix(id: Option<&Value>) -> String {
    id.map(|id| format!("id {id}: ")).unwrap_or_default()
}

/// The text with flagged spans highlighted into `out`; returns the detail line.
fn discriminator_lines(
    out: &mut String,
    text: &str,
    a: &discriminator::Answer,
    style: Style,
) -> String {
    let spans: Vec<(usize, usize)> = a
        .flagged
        .iter()
        .map(|s| (s.start as usize, s.end as usize))
        .collect();
    out.push_str(&marked(text, &spans, |_, s| flagged(s, style)));
    if a.flagged.is_empty() {
        return "nothing flagged".into();
    }
    let chars = CharIndex::new(text);
    let items: Vec<String> = a
        .flagged
        .iter()
        .map(|s| {
            let piece = shown(chars.slice(s.start as usize, s.end as usize));
            format!("{} {:.2}", flagged(&piece, style), s.score)
        })
        .collect();
    format!("flagged: {}", items.join(", "))
}

fn classify_detail(a: &classify::Answer, style: Style) -> String {
    let mut scores: Vec<&classify::LabelScore> = a.scores.iter().collect();
    // highest first; equal scores keep the head's order
    scores.sort_by(|x, y| y.score.total_cmp(&x.score));
    let mut marked_one = false;
    let mut items: Vec<String> = scores
        .iter()
        .take(MAX_LABELS)
        .map(|s| {
            let label = shown(&s.label);
            let label = if !marked_one && s.label == a.label {
                marked_one = true;
                strong(&label, style)
            } else {
                label
            };
            format!("{label} {:.2}", s.score)
        })
        .collect();
    if scores.len() > MAX_LABELS {
        items.push(format!("(+{} more)", scores.len() - MAX_LABELS));
    }
    items.join(", ")
}

/// The text with entities inline into `out`; returns the detail line.
fn tag_lines(out: &mut String, text: &str, a: &tag::Answer, style: Style) -> String {
    let mut order: Vec<&tag::Entity> = a.entities.iter().collect();
    order.sort_by_key(|e| (e.start, e.end));
    let spans: Vec<(usize, usize)> = order.iter().map(|e| (e.start, e.end)).collect();
    out.push_str(&marked(text, &spans, |i, s| {
        entity(s, &shown(&order[i].kind), style)
    }));
    if a.entities.is_empty() {
        return "no entities".into();
    }
    let chars = CharIndex::new(text);
    let items: Vec<String> = a
        .entities
        .iter()
        .map(|e| {
            format!(
                "{} {} {:.2}",
                shown(chars.slice(e.start, e.end)),
                shown(&e.kind),
                e.score
            )
        })
        .collect();
    format!("entities: {}", items.join(", "))
}

fn embed_detail(a: &embed::Answer) -> String {
    let norm = a
        .embedding
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    let mut line = format!(
        "embedding: {} dims, {} pooling{}, L2 norm {norm:.2}, first values",
        a.embedding.len(),
        a.pooling.name(),
        if a.normalized { ", normalized" } else { "" },
    );
    for v in a.embedding.iter().take(FIRST_VALUES) {
        let _ = write!(line, " {v:.3}");
    }
    if a.embedding.len() > FIRST_VALUES {
        line.push_str(" ...");
    }
    line
}

fn flagged(s: &str, style: Style) -> String {
    match style {
        Style::Plain => format!("[{s}]"),
        Style::Color => format!("\x1b[1;31m{s}{RESET}"),
    }
}

fn strong(s: &str, style: Style) -> String {
    match style {
        Style::Plain => format!("[{s}]"),
        Style::Color => format!("\x1b[1m{s}{RESET}"),
    }
}

fn entity(s: &str, kind: &str, style: Style) -> String {
    match style {
        Style::Plain => format!("[{s}/{kind}]"),
        Style::Color => format!("\x1b[1;36m{s}{RESET}\x1b[2m/{kind}{RESET}"),
    }
}

/// `text` with control characters escaped (`\n`, `\u{1b}`): safe to print on a terminal.
fn shown(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` with the character ranges `spans` (sorted; one overlapping the one before, or empty
/// once clamped to the text, is skipped) drawn by
/// `draw(span index, shown text of the span)`, the rest shown as it is.
fn marked(text: &str, spans: &[(usize, usize)], draw: impl Fn(usize, &str) -> String) -> String {
    let chars = CharIndex::new(text);
    let mut out = String::with_capacity(text.len() + 16 * spans.len());
    let mut at = 0;
    for (i, &(start, end)) in spans.iter().enumerate() {
        let (start, end) = (start.min(chars.len()), end.min(chars.len()));
        if start < at || end <= start {
            continue;
        }
        out.push_str(&shown(chars.slice(at, start)));
        out.push_str(&draw(i, &shown(chars.slice(start, end))));
        at = end;
    }
    out.push_str(&shown(chars.slice(at, usize::MAX)));
    out
}

/// Character offsets (the answers' unit) to byte offsets of one text.
struct CharIndex<'a> {
    text: &'a str,
    /// Byte offset of each character, then the text's length.
    starts: Vec<usize>,
}

impl<'a> CharIndex<'a> {
    fn new(text: &'a str) -> CharIndex<'a> {
        let mut starts: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
        starts.push(text.len());
        CharIndex { text, starts }
    }

    /// The number of characters.
    fn len(&self) -> usize {
        self.starts.len() - 1
    }

    /// Characters `start..end`, clamped to the text.
    fn slice(&self, start: usize, end: usize) -> &'a str {
        let (s, e) = (start.min(self.len()), end.min(self.len()));
        &self.text[self.starts[s]..self.starts[e.max(s)]]
    }
}

#[cfg(test)]
mod tests;
