//! Sequence classification: one label for the whole text.
//!
//! A text longer than one window is classified from the mean of the windows' logits.

use anyhow::{bail, Result};

use super::{argmax, softmax, Input, OutputShape};
use crate::model::RowOutput;

#[derive(Clone, Debug, PartialEq)]
pub struct LabelScore {
    pub label: String,
    pub score: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub label: String,
    pub score: f32,
    /// Every label's probability, in class order.
    pub scores: Vec<LabelScore>,
}

/// One vector of logits for the whole window; returns the number of labels.
pub fn check_output(shape: &OutputShape) -> Result<usize> {
    if shape.dims.len() != 1 || shape.per_token {
        bail!("a classifier outputs [labels], this graph {:?}", shape.dims);
    }
    Ok(shape.dims[0])
}

/// Mean of the windows' logits (the raw output for a multi-window text).
pub fn combine(outputs: &[RowOutput]) -> Vec<f32> {
    let mut sum = vec![0f32; outputs[0].data.len()];
    for out in outputs {
        for (s, v) in sum.iter_mut().zip(&out.data) {
            *s += v;
        }
    }
    sum.iter().map(|s| s / outputs.len() as f32).collect()
}

/// The label of the text, and the combined logits it came from.
pub fn answer(input: &Input) -> (Answer, Vec<f32>) {
    let logits = combine(input.outputs);
    (label(&logits, input.labels), logits)
}

/// The most probable label and every label's probability.
pub fn label(logits: &[f32], labels: &[String]) -> Answer {
    let probs = softmax(logits);
    let (best, score) = argmax(&probs);
    Answer {
        label: labels[best].clone(),
        score,
        scores: labels
            .iter()
            .zip(&probs)
            .map(|(label, &score)| LabelScore {
                label: label.clone(),
                score,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_most_probable_label() {
        let labels: Vec<String> = ["negative", "neutral", "positive"]
            .map(String::from)
            .to_vec();
        let windows = [
            RowOutput {
                shape: vec![3],
                data: vec![0.0, 1.0, 3.0],
            },
            RowOutput {
                shape: vec![3],
                data: vec![2.0, 1.0, 1.0],
            },
        ];
        let logits = combine(&windows);
        assert_eq!(logits, [1.0, 1.0, 2.0]);
        let a = label(&logits, &labels);
        assert_eq!(a.label, "positive");
        // softmax([1,1,2]) = [e/(2e+e^2), e/(2e+e^2), e^2/(2e+e^2)]
        let e = std::f32::consts::E;
        let p = e * e / (2.0 * e + e * e);
        assert!((a.score - p).abs() < 1e-6);
        assert_eq!(a.scores[0].label, "negative");
        assert!((a.scores.iter().map(|s| s.score).sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
