//! Sentence embeddings from `last_hidden_state`.
//!
//! `mean` averages every row the model saw, `[CLS]` and `[SEP]` included (no padding is ever
//! present); over several windows it averages all rows of all windows, so overlapping tokens
//! count once per window. `cls` takes the `[CLS]` row, averaged over windows. `normalize`
//! scales the vector to unit L2 norm.

use anyhow::{bail, Result};

use super::{AnswerOptions, Input, OutputShape};
use crate::model::RowOutput;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    #[default]
    Mean,
    Cls,
}

impl Pooling {
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub pooling: Pooling,
    pub normalized: bool,
    pub embedding: Vec<f32>,
}

/// `[sequence, hidden]` per window; returns 0 (no labels).
pub fn check_output(shape: &OutputShape) -> Result<usize> {
    if !shape.per_token || shape.dims.len() != 2 || shape.dims[1] == 0 {
        bail!(
            "encoder output shape {:?} is not [sequence, hidden]",
            shape.dims
        );
    }
    Ok(0)
}

/// The pooled (and, if asked, normalized) embedding.
pub fn answer(input: &Input, options: &AnswerOptions) -> Answer {
    let mut embedding = pool(input.outputs, options.pooling);
    if options.normalize {
        normalize(&mut embedding);
    }
    Answer {
        pooling: options.pooling,
        normalized: options.normalize,
        embedding,
    }
}

/// Mean or `[CLS]` pooling over every window's `[sequence, hidden]` output (checked at load
/// by [`check_output`]).
pub fn pool(outputs: &[RowOutput], pooling: Pooling) -> Vec<f32> {
    let hidden = *outputs[0].shape.last().unwrap_or(&1);
    let mut sum = vec![0f64; hidden];
    let mut rows = 0usize;
    for out in outputs {
        let take = match pooling {
            Pooling::Mean => out.shape[0],
            Pooling::Cls => 1,
        };
        for row in out.data.chunks_exact(hidden).take(take) {
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += f64::from(v);
            }
        }
        rows += take;
    }
    sum.into_iter().map(|s| (s / rows as f64) as f32).collect()
}

pub fn normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        v.iter_mut()
            .for_each(|x| *x = (f64::from(*x) / norm) as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_cls_over_windows() {
        let w0 = RowOutput {
            shape: vec![3, 2],
            data: vec![1., 2., 3., 4., 5., 6.],
        };
        let w1 = RowOutput {
            shape: vec![2, 2],
            data: vec![7., 8., 9., 10.],
        };
        assert_eq!(pool(std::slice::from_ref(&w0), Pooling::Mean), [3., 4.]);
        assert_eq!(pool(&[w0.clone(), w1.clone()], Pooling::Mean), [5., 6.]);
        assert_eq!(pool(&[w0, w1], Pooling::Cls), [4., 5.]);
        let mut v = vec![3., 4.];
        normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
    }
}
