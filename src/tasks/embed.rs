//! Sentence embeddings from `last_hidden_state`.
//!
//! `mean` averages every row the model saw, `[CLS]` and `[SEP]` included (no padding is ever
//! present); over several windows it averages all rows of all windows, so overlapping tokens
//! count once per window. `cls` takes the `[CLS]` row, averaged over windows. `normalize`
//! scales the vector to unit L2 norm.

use anyhow::{bail, Result};
use serde::Serialize;

use crate::model::RowOutput;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    #[default]
    Mean,
    Cls,
}

#[derive(Debug, Serialize)]
pub struct Answer {
    pub pooling: Pooling,
    pub normalized: bool,
    pub dim: usize,
    #[serde(serialize_with = "super::ser_f32s")]
    pub embedding: Vec<f32>,
}

pub fn pool(outputs: &[RowOutput], pooling: Pooling) -> Result<Vec<f32>> {
    let hidden = *outputs[0].shape.last().unwrap_or(&0);
    if outputs[0].shape.len() != 2 || hidden == 0 {
        bail!(
            "encoder output shape {:?} is not [sequence, hidden]",
            outputs[0].shape
        );
    }
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
    Ok(sum.into_iter().map(|s| (s / rows as f64) as f32).collect())
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
        assert_eq!(pool(&[w0.clone()], Pooling::Mean).unwrap(), [3., 4.]);
        assert_eq!(
            pool(&[w0.clone(), w1.clone()], Pooling::Mean).unwrap(),
            [5., 6.]
        );
        assert_eq!(pool(&[w0, w1], Pooling::Cls).unwrap(), [4., 5.]);
        let mut v = vec![3., 4.];
        normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
    }
}
