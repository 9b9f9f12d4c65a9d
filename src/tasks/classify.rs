//! Sequence classification: one label for the whole text.
//!
//! A text longer than one window is classified from the mean of the windows' logits.

use serde::Serialize;

use super::{argmax, softmax};
use crate::model::RowOutput;

#[derive(Debug, Serialize, PartialEq)]
pub struct LabelScore {
    pub label: String,
    #[serde(serialize_with = "super::ser_f32")]
    pub score: f32,
}

#[derive(Debug, Serialize)]
pub struct Answer {
    pub label: String,
    #[serde(serialize_with = "super::ser_f32")]
    pub score: f32,
    /// Every label's probability, in class order.
    pub scores: Vec<LabelScore>,
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

pub fn answer(logits: &[f32], labels: &[String]) -> Answer {
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
        let a = answer(&logits, &labels);
        assert_eq!(a.label, "positive");
        // softmax([1,1,2]) = [e/(2e+e^2), e/(2e+e^2), e^2/(2e+e^2)]
        let e = std::f32::consts::E;
        let p = e * e / (2.0 * e + e * e);
        assert!((a.score - p).abs() < 1e-6);
        assert_eq!(a.scores[0].label, "negative");
        assert!((a.scores.iter().map(|s| s.score).sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
