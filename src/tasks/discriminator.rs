//! Replaced-token detection: per-token probability that the token was replaced, and the
//! spans of consecutive tokens above a threshold (likely typos).

use anyhow::{bail, Result};

use super::{sigmoid, AnswerOptions, Input, OutputShape, PerToken};

/// A text token and its probability of having been replaced.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoredToken {
    /// Character range in the text.
    pub start: usize,
    pub end: usize,
    pub score: f32,
}

/// A run of consecutive tokens above the threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    /// The highest token score in the span.
    pub score: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub tokens: Vec<ScoredToken>,
    pub flagged: Vec<Span>,
}

/// One logit per token.
pub fn check_output(shape: &OutputShape) -> Result<usize> {
    if !shape.per_token {
        bail!("the discriminator task needs per-token outputs; this graph's are pooled");
    }
    if shape.width() != 1 {
        bail!(
            "a discriminator has 1 logit per token, this graph has {}",
            shape.width()
        );
    }
    Ok(0)
}

/// Scores and flagged spans, and the stitched logits they came from.
pub fn answer(input: &Input, options: &AnswerOptions) -> (Answer, PerToken) {
    let logits = PerToken::stitch(input.plan, input.outputs);
    let tokens: Vec<ScoredToken> = input
        .tokens
        .iter()
        .zip(logits.text_rows())
        .map(|(t, row)| ScoredToken {
            start: t.start,
            end: t.end,
            score: sigmoid(row[0]),
        })
        .collect();
    let flagged = flag_spans(&tokens, options.threshold);
    (Answer { tokens, flagged }, logits)
}

/// Runs of consecutive tokens whose score is above `threshold`.
pub fn flag_spans(tokens: &[ScoredToken], threshold: f32) -> Vec<Span> {
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
                    start: t.start,
                    end: t.end,
                    score: t.score,
                }),
            }
        }
        previous_flagged = flagged;
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::Token;

    #[test]
    fn flags_runs_above_threshold() {
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
        // "我门今天去学校": one window holding all 7 tokens
        let plan = crate::windows::WindowPlan::new(7, 7, 0);
        let outputs = [crate::model::RowOutput {
            shape: vec![9],
            data: per_token.data.clone(),
        }];
        let input = Input {
            tokens: &tokens,
            plan: &plan,
            outputs: &outputs,
            labels: &[],
        };
        let (answer, logits) = answer(&input, &AnswerOptions::default());
        assert_eq!(logits, per_token);
        assert_eq!(answer.tokens.len(), 7);
        assert_eq!((answer.tokens[1].start, answer.tokens[1].end), (1, 2));
        assert!((answer.tokens[1].score - 0.880_797).abs() < 1e-6);
        let spans: Vec<(usize, usize)> = answer.flagged.iter().map(|s| (s.start, s.end)).collect();
        assert_eq!(spans, [(1, 2), (3, 5)]);
        assert!((answer.flagged[1].score - sigmoid(3.0)).abs() < 1e-7);
        assert!(flag_spans(&answer.tokens, 0.99).is_empty());
    }
}
