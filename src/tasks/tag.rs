//! Token classification: per-token labels, decoded into entity spans.
//!
//! Label schemes: BIO (`B-X`, `I-X`, `O`) and BIOES (also `E-X`, `S-X`; `M-X` is read as
//! `I-X`). Decoding is lenient the way Hugging Face's "simple" aggregation is: an `I-X` that
//! does not continue an `X` entity starts one, and a label without a prefix (other than `O`)
//! is an entity type of its own. An entity's score is the mean of its tokens' probabilities.

use serde::Serialize;

use super::{argmax, char_slice, softmax, PerToken};
use crate::tokenize::Token;

#[derive(Debug, Serialize, PartialEq)]
pub struct Entity {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
    pub start: usize,
    pub end: usize,
    #[serde(serialize_with = "super::ser_f32")]
    pub score: f32,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct TokenLabel {
    pub text: String,
    pub start: usize,
    pub end: usize,
    pub label: String,
    #[serde(serialize_with = "super::ser_f32")]
    pub score: f32,
}

#[derive(Debug, Serialize)]
pub struct Answer {
    pub entities: Vec<Entity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<TokenLabel>>,
}

/// A label split into its position tag and entity type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag<'a> {
    Outside,
    Begin(&'a str),
    Inside(&'a str),
    End(&'a str),
    Single(&'a str),
}

fn parse_label(label: &str) -> Tag<'_> {
    if label == "O" {
        return Tag::Outside;
    }
    let split = label.split_once('-').or_else(|| label.split_once('_'));
    match split {
        Some(("B", t)) => Tag::Begin(t),
        Some(("I" | "M", t)) => Tag::Inside(t),
        Some(("E" | "L", t)) => Tag::End(t),
        Some(("S" | "U", t)) => Tag::Single(t),
        _ => Tag::Inside(label),
    }
}

pub fn answer(
    text: &str,
    tokens: &[Token],
    logits: &PerToken,
    labels: &[String],
    with_tokens: bool,
) -> Answer {
    let per_token: Vec<TokenLabel> = tokens
        .iter()
        .zip(logits.text_rows())
        .map(|(t, row)| {
            let (best, score) = argmax(&softmax(row));
            TokenLabel {
                text: char_slice(text, t.start, t.end),
                start: t.start,
                end: t.end,
                label: labels[best].clone(),
                score,
            }
        })
        .collect();
    let entities = decode(text, &per_token);
    Answer {
        entities,
        tokens: with_tokens.then_some(per_token),
    }
}

/// Entity spans from labelled tokens.
pub fn decode(text: &str, tokens: &[TokenLabel]) -> Vec<Entity> {
    struct Open<'a> {
        kind: &'a str,
        start: usize,
        end: usize,
        scores: Vec<f32>,
    }
    let mut entities = vec![];
    let mut open: Option<Open> = None;
    let close = |open: Option<Open>, entities: &mut Vec<Entity>| {
        if let Some(o) = open {
            entities.push(Entity {
                kind: o.kind.to_string(),
                text: char_slice(text, o.start, o.end),
                start: o.start,
                end: o.end,
                score: o.scores.iter().sum::<f32>() / o.scores.len() as f32,
            });
        }
    };
    for t in tokens {
        let start_new = |kind| {
            Some(Open {
                kind,
                start: t.start,
                end: t.end,
                scores: vec![t.score],
            })
        };
        match parse_label(&t.label) {
            Tag::Outside => close(open.take(), &mut entities),
            Tag::Begin(kind) => {
                close(open.take(), &mut entities);
                open = start_new(kind);
            }
            Tag::Single(kind) => {
                close(open.take(), &mut entities);
                close(start_new(kind), &mut entities);
            }
            tag @ (Tag::Inside(kind) | Tag::End(kind)) => {
                match open.as_mut() {
                    Some(o) if o.kind == kind => {
                        o.end = t.end;
                        o.scores.push(t.score);
                    }
                    _ => {
                        close(open.take(), &mut entities);
                        open = start_new(kind);
                    }
                }
                if matches!(tag, Tag::End(_)) {
                    close(open.take(), &mut entities);
                }
            }
        }
    }
    close(open, &mut entities);
    entities
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labelled(text: &str, labels: &[&str]) -> Vec<TokenLabel> {
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| TokenLabel {
                text: char_slice(text, i, i + 1),
                start: i,
                end: i + 1,
                label: l.to_string(),
                score: 0.5 + i as f32 / 100.0,
            })
            .collect()
    }

    fn spans(entities: &[Entity]) -> Vec<(&str, &str, usize, usize)> {
        entities
            .iter()
            .map(|e| (e.kind.as_str(), e.text.as_str(), e.start, e.end))
            .collect()
    }

    #[test]
    fn bio() {
        let text = "张伟在深圳腾讯公司";
        let labels = [
            "B-PER", "I-PER", "O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "I-ORG", "I-ORG",
        ];
        let e = decode(text, &labelled(text, &labels));
        assert_eq!(
            spans(&e),
            [
                ("PER", "张伟", 0, 2),
                ("LOC", "深圳", 3, 5),
                ("ORG", "腾讯公司", 5, 9)
            ]
        );
        assert!((e[0].score - (0.50 + 0.51) / 2.0).abs() < 1e-6);
    }

    #[test]
    fn bio_lenient_cases() {
        let text = "abcdefg";
        // I- without B- starts an entity; a type change inside closes and opens; B-B splits.
        let labels = ["I-LOC", "I-LOC", "I-PER", "O", "B-PER", "B-PER", "I-PER"];
        let e = decode(text, &labelled(text, &labels));
        assert_eq!(
            spans(&e),
            [
                ("LOC", "ab", 0, 2),
                ("PER", "c", 2, 3),
                ("PER", "e", 4, 5),
                ("PER", "fg", 5, 7)
            ]
        );
    }

    #[test]
    fn bioes() {
        let text = "北京大学在海淀";
        let labels = ["B-ORG", "I-ORG", "I-ORG", "E-ORG", "O", "S-LOC", "S-LOC"];
        let e = decode(text, &labelled(text, &labels));
        assert_eq!(
            spans(&e),
            [
                ("ORG", "北京大学", 0, 4),
                ("LOC", "海", 5, 6),
                ("LOC", "淀", 6, 7)
            ]
        );
    }

    #[test]
    fn argmax_labels_from_logits() {
        let text = "张伟";
        let tokens = [
            Token {
                id: 1,
                start: 0,
                end: 1,
            },
            Token {
                id: 2,
                start: 1,
                end: 2,
            },
        ];
        let labels: Vec<String> = ["O", "B-PER", "I-PER"].map(String::from).to_vec();
        let data = vec![
            0., 0., 0., /* 张 */ 0., 3., 0., /* 伟 */ 0., 0., 3., 0., 0., 0.,
        ];
        let a = answer(text, &tokens, &PerToken { width: 3, data }, &labels, true);
        assert_eq!(spans(&a.entities), [("PER", "张伟", 0, 2)]);
        let p = softmax(&[0., 3., 0.])[1];
        assert!((a.entities[0].score - p).abs() < 1e-6);
        assert_eq!(a.tokens.unwrap()[1].label, "I-PER");
    }
}
