//! From raw model outputs to answers, one module per task, plus what they share: stitching
//! per-token outputs of overlapping windows back into one sequence.

pub mod classify;
pub mod discriminator;
pub mod embed;
pub mod tag;

use crate::model::RowOutput;
use crate::windows::WindowPlan;

/// Per-position outputs for `[CLS] + text tokens + [SEP]`, as if the model had seen the whole
/// text at once: `[CLS]` from the first window, `[SEP]` from the last, each text token from the
/// window that owns it. For a one-window text this is exactly the model's output row.
#[derive(Clone, Debug, PartialEq)]
pub struct PerToken {
    /// Values per position (1 for the discriminator, labels for the tagger, hidden for encoders).
    pub width: usize,
    /// Row-major `[positions][width]`.
    pub data: Vec<f32>,
}

impl PerToken {
    pub fn stitch(plan: &WindowPlan, outputs: &[RowOutput]) -> PerToken {
        let width: usize = outputs[0].shape[1..].iter().product();
        let row = |w: usize, pos: usize| &outputs[w].data[pos * width..(pos + 1) * width];
        let mut data = Vec::with_capacity((plan.owner.len() + 2) * width);
        data.extend_from_slice(row(0, 0));
        for i in 0..plan.owner.len() {
            let (w, pos) = plan.position_in_owner(i);
            data.extend_from_slice(row(w, pos));
        }
        let last = outputs.len() - 1;
        data.extend_from_slice(row(last, outputs[last].shape[0] - 1));
        PerToken { width, data }
    }

    pub fn positions(&self) -> usize {
        self.data.len() / self.width
    }

    pub fn row(&self, pos: usize) -> &[f32] {
        &self.data[pos * self.width..(pos + 1) * self.width]
    }

    /// The rows of the text tokens (without `[CLS]` and `[SEP]`).
    pub fn text_rows(&self) -> impl Iterator<Item = &[f32]> {
        (1..self.positions() - 1).map(|p| self.row(p))
    }
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Index and value of the largest element (the first one on ties).
pub fn argmax(values: &[f32]) -> (usize, f32) {
    values
        .iter()
        .copied()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
}

/// `x` as the shortest decimal that reads back as the same `f32`: JSON numbers are f64, and
/// widening an f32 directly would print noise digits (0.4912135 as 0.49121350049972534).
pub fn short_f64(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// serde `serialize_with` for f32 fields, see [`short_f64`].
pub fn ser_f32<S: serde::Serializer>(x: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(short_f64(*x))
}

/// serde `serialize_with` for f32 vectors, see [`short_f64`].
pub fn ser_f32s<S: serde::Serializer>(v: &[f32], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|&x| short_f64(x)))
}

/// JSON array of f32 values, see [`short_f64`].
pub fn json_f32s(v: &[f32]) -> serde_json::Value {
    v.iter()
        .map(|&x| serde_json::Value::from(short_f64(x)))
        .collect()
}

/// The characters `start..end` of `text` (character offsets, not bytes).
pub fn char_slice(text: &str, start: usize, end: usize) -> String {
    text.chars()
        .skip(start)
        .take(end.saturating_sub(start))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stitch_takes_each_token_from_its_owner() {
        // 5 tokens, windows of 3 overlapping by 1: 0..3, 2..5. Token 2 belongs to w0 (margin 0
        // in both: tie -> earlier window).
        let plan = WindowPlan::new(5, 3, 1);
        assert_eq!(plan.windows, [0..3, 2..5]);
        // outputs carry (window*100 + position) so the origin of each value is visible
        let out = |w: usize| RowOutput {
            shape: vec![5, 1],
            data: (0..5).map(|p| (w * 100 + p) as f32).collect(),
        };
        let stitched = PerToken::stitch(&plan, &[out(0), out(1)]);
        // CLS from w0 pos0; tokens 0,1,2 from w0 pos 1,2,3; tokens 3,4 from w1 pos 2,3; SEP w1 pos4
        assert_eq!(stitched.data, [0., 1., 2., 3., 102., 103., 104.]);
        assert_eq!(stitched.text_rows().count(), 5);
    }

    #[test]
    fn math_helpers() {
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
        assert!((sigmoid(2.0) - 0.880_797).abs() < 1e-6);
        let p = softmax(&[1.0, 2.0, 3.0]);
        let expect = [0.090_030_57, 0.244_728_47, 0.665_240_94];
        for (a, b) in p.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6);
        }
        assert_eq!(argmax(&[0.1, 0.7, 0.7]), (1, 0.7));
        assert_eq!(char_slice("我爱😀北京", 1, 4), "爱😀北");
        assert_eq!(
            json_f32s(&[0.491_213_5, 1.0]).to_string(),
            "[0.4912135,1.0]"
        );
    }
}
