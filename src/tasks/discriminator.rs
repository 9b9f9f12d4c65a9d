//! Replaced-token detection: per-token probability that the token was replaced, and the
//! spans of consecutive tokens above a threshold (likely typos).

use serde::Serialize;

use super::{char_slice, sigmoid, PerToken};
use crate::tokenize::Token;

#[derive(Debug, Serialize, PartialEq)]
pub struct ScoredToken {
    pub text: String,
    pub start: usize,
    pub end: usize,
    #[serde(serialize_with = "super::ser_f32")]
    pub score: f32,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Span {
    pub text: String,
    pub start: usize,
    pub end: usize,
    /// The highest token score in the span.
    #[serde(serialize_with = "super::ser_f32")]
    pub score: f32,
}

#[derive(Debug, Serialize)]
pub struct Answer {
    pub tokens: Vec<ScoredToken>,
    pub flagged: Vec<Span>,
}

pub fn answer(text: &str, tokens: &[Token], logits: &PerToken, threshold: f32) -> Answer {
    let scored: Vec<ScoredToken> = tokens
        .iter()
        .zip(logits.text_rows())
        .map(|(t, row)| ScoredToken {
            text: char_slice(text, t.start, t.end),
            start: t.start,
            end: t.end,
            score: sigmoid(row[0]),
        })
        .collect();
    let flagged = flag_spans(text, &scored, threshold);
    Answer {
        tokens: scored,
        flagged,
    }
}

/// Runs of consecutive tokens whose score is above `threshold`.
pub fn flag_spans(text: &str, tokens: &[ScoredToken], threshold: f32) -> Vec<Span> {
    let mut spans: Vec<Span> = vec![];
    let mut previous_flagged = false;
    for t in tokens {
        let flagged = t.score > threshold;
        if flagged {
            match spans.last_mut() {
                Some(span) if previous_flagged => {
                    span.end = t.end;
                    span.score = span.score.max(t.score);
                }
                _ => spans.push(Span {
                    text: String::new(),
                    start: t.start,
                    end: t.end,
                    score: t.score,
                }),
            }
        }
        previous_flagged = flagged;
    }
    for span in &mut spans {
        span.text = char_slice(text, span.start, span.end);
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_runs_above_threshold() {
        let text = "我门今天去学校";
        let tokens: Vec<Token> = (0..7)
            .map(|i| Token {
                id: 0,
                start: i,
                end: i + 1,
            })
            .collect();
        // logits: positions [CLS], 7 tokens, [SEP]; sigmoid(2)=0.88, sigmoid(-2)=0.12
        let logits = [-5., -2., 2., -2., 2., 3., -2., -2., -5.];
        let per_token = PerToken {
            width: 1,
            data: logits.to_vec(),
        };
        let answer = answer(text, &tokens, &per_token, 0.5);
        assert_eq!(answer.tokens.len(), 7);
        assert_eq!(answer.tokens[1].text, "门");
        assert!((answer.tokens[1].score - 0.880_797).abs() < 1e-6);
        let spans: Vec<(&str, usize, usize)> = answer
            .flagged
            .iter()
            .map(|s| (s.text.as_str(), s.start, s.end))
            .collect();
        assert_eq!(spans, [("门", 1, 2), ("天去", 3, 5)]);
        assert!((answer.flagged[1].score - sigmoid(3.0)).abs() < 1e-7);
        assert!(flag_spans(text, &answer.tokens, 0.99).is_empty());
    }
}
