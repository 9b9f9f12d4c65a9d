//! Token classification: per-token labels, decoded into entity spans.
//!
//! Label schemes: BIO (`B-X`, `I-X`, `O`) and BIOES (also `E-X`, `S-X`; `M-X` is read as
//! `I-X`). Decoding is lenient the way Hugging Face's "simple" aggregation is: an `I-X` that
//! does not continue an `X` entity starts one, and a label without a prefix (other than `O`)
//! is an entity type of its own. An entity's score is the mean of its tokens' probabilities.

use anyhow::{bail, Result};

use super::{argmax, softmax, AnswerOptions, Input, OutputShape, PerToken};

#[derive(Clone, Debug, PartialEq)]
pub struct Entity {
    /// The entity type (`PER` of `B-PER`).
    pub kind: String,
    pub start: usize,
    pub end: usize,
    pub score: f32,
}

/// A text token's most probable label.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLabel {
    pub start: usize,
    pub end: usize,
    /// Index into the head's labels.
    pub label: usize,
    pub score: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub entities: Vec<Entity>,
    /// Per-token labels, when asked for.
    pub tokens: Option<Vec<TokenLabel>>,
    /// The head's label names ([`TokenLabel::label`] indexes them).
    pub labels: std::sync::Arc<[String]>,
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

/// `[sequence, labels]` per window; returns the number of labels.
pub fn check_output(shape: &OutputShape) -> Result<usize> {
    if !shape.per_token || shape.dims.len() != 2 {
        bail!(
            "a tagger outputs [sequence, labels], this graph {:?}",
            shape.dims
        );
    }
    Ok(shape.dims[1])
}

/// Entities (and per-token labels when asked), and the stitched logits they came from.
pub fn answer(input: &Input, options: &AnswerOptions) -> (Answer, PerToken) {
    let logits = PerToken::stitch(input.plan, input.outputs);
    let per_token: Vec<TokenLabel> = input
        .tokens
        .iter()
        .zip(logits.text_rows())
        .map(|(t, row)| {
            let (best, score) = argmax(&softmax(row));
            TokenLabel {
                start: t.start,
                end: t.end,
                label: best,
                score,
            }
        })
        .collect();
    let entities = decode(&per_token, input.labels);
    let answer = Answer {
        entities,
        tokens: options.tokens.then_some(per_token),
        labels: input.labels.into(),
    };
    (answer, logits)
}

/// Entity spans from labelled tokens.
pub fn decode(tokens: &[TokenLabel], labels: &[String]) -> Vec<Entity> {
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
        match parse_label(&labels[t.label]) {
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
    use crate::model::RowOutput;
    use crate::tokenize::Token;
    use crate::windows::WindowPlan;

    /// One token per character, token `i` labelled `labels[i]` (label index `i`).
    fn entities(text: &str, labels: &[&str]) -> Vec<(String, String, usize, usize, f32)> {
        let tokens: Vec<TokenLabel> = (0..labels.len())
            .map(|i| TokenLabel {
                start: i,
                end: i + 1,
                label: i,
                score: 0.5 + i as f32 / 100.0,
            })
            .collect();
        let names: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        decode(&tokens, &names)
            .into_iter()
            .map(|e| {
                let t: String = text.chars().skip(e.start).take(e.end - e.start).collect();
                (e.kind, t, e.start, e.end, e.score)
            })
            .collect()
    }

    fn spans(e: &[(String, String, usize, usize, f32)]) -> Vec<(&str, &str, usize, usize)> {
        e.iter()
            .map(|(k, t, s, end, _)| (k.as_str(), t.as_str(), *s, *end))
            .collect()
    }

    #[test]
    fn bio() {
        let text = "张伟在深圳腾讯公司";
        let labels = [
            "B-PER", "I-PER", "O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "I-ORG", "I-ORG",
        ];
        let e = entities(text, &labels);
        assert_eq!(
            spans(&e),
            [
                ("PER", "张伟", 0, 2),
                ("LOC", "深圳", 3, 5),
                ("ORG", "腾讯公司", 5, 9)
            ]
        );
        assert!((e[0].4 - (0.50 + 0.51) / 2.0).abs() < 1e-6);
    }

    #[test]
    fn bio_lenient_cases() {
        let text = "abcdefg";
        // I- without B- starts an entity; a type change inside closes and opens; B-B splits.
        let labels = ["I-LOC", "I-LOC", "I-PER", "O", "B-PER", "B-PER", "I-PER"];
        assert_eq!(
            spans(&entities(text, &labels)),
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
        assert_eq!(
            spans(&entities(text, &labels)),
            [
                ("ORG", "北京大学", 0, 4),
                ("LOC", "海", 5, 6),
                ("LOC", "淀", 6, 7)
            ]
        );
    }

    #[test]
    fn argmax_labels_from_logits() {
        // "张伟": two tokens in one window
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
        let plan = WindowPlan::new(2, 2, 0);
        let outputs = [RowOutput {
            shape: vec![4, 3],
            data,
        }];
        let input = Input {
            tokens: &tokens,
            plan: &plan,
            outputs: &outputs,
            labels: &labels,
        };
        let options = AnswerOptions {
            tokens: true,
            ..Default::default()
        };
        let (a, _) = answer(&input, &options);
        assert_eq!(a.entities.len(), 1);
        let e = &a.entities[0];
        assert_eq!((e.kind.as_str(), e.start, e.end), ("PER", 0, 2));
        let p = softmax(&[0., 3., 0.])[1];
        assert!((e.score - p).abs() < 1e-6);
        assert_eq!(a.labels[a.tokens.unwrap()[1].label], "I-PER");
    }
}
