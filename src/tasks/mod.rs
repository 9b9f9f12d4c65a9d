//! From raw model outputs to typed answers, one module per task, plus what they share: the
//! answer options, stitching per-token outputs of overlapping windows back into one sequence,
//! and small math helpers.
//!
//! Each task module owns its answer type, the check of the graph's output shape (done once at
//! load) and the code that turns outputs into an answer. Adding a task touches one module and
//! the [`Answer`] enum (plus [`crate::config::Task`]). Nothing here knows the wire format:
//! `protocol` turns answers into JSON lines.

pub mod classify;
pub mod discriminator;
pub mod embed;
pub mod tag;

use anyhow::Result;

use crate::config::Task;
use crate::model::RowOutput;
use crate::tokenize::Token;
use crate::windows::WindowPlan;

pub use embed::Pooling;

/// How to answer one request, with every option resolved (defaults applied).
#[derive(Clone, Debug, PartialEq)]
pub struct AnswerOptions {
    /// Add `input_ids` and the raw model output to the answer.
    pub raw: bool,
    /// Discriminator: flag tokens whose replaced probability is above this.
    pub threshold: f32,
    /// Embed: pooling of `last_hidden_state`.
    pub pooling: Pooling,
    /// Embed: scale the vector to unit L2 norm.
    pub normalize: bool,
    /// Tag: include per-token labels.
    pub tokens: bool,
}

impl Default for AnswerOptions {
    fn default() -> Self {
        AnswerOptions {
            raw: false,
            threshold: 0.5,
            pooling: Pooling::Mean,
            normalize: false,
            tokens: false,
        }
    }
}

/// What a task turns into its answer: the text's tokens, the window plan and each window's
/// model output, and the label names of the head (empty for heads without labels).
pub struct Input<'a> {
    pub tokens: &'a [Token],
    pub plan: &'a WindowPlan,
    pub outputs: &'a [RowOutput],
    pub labels: &'a [String],
}

/// A task's answer. Character offsets (`start..end`) index the request's text.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Discriminator(discriminator::Answer),
    Classify(classify::Answer),
    Tag(tag::Answer),
    Embed(embed::Answer),
}

/// The raw model output of an answer, as the reference runtimes give it.
#[derive(Clone, Debug, PartialEq)]
pub enum Logits {
    /// One row per position (`[CLS]`, text tokens, `[SEP]`), stitched over windows.
    PerToken(PerToken),
    /// One vector for the whole text (classifier: the mean of the windows' logits).
    Pooled(Vec<f32>),
}

impl Logits {
    /// Every value, row after row.
    pub fn values(&self) -> &[f32] {
        match self {
            Logits::PerToken(p) => &p.data,
            Logits::Pooled(v) => v,
        }
    }
}

/// `input_ids` and the raw output, for answers asked with `raw`.
#[derive(Clone, Debug, PartialEq)]
pub struct Raw {
    /// The model's input ids for the whole text: `[CLS]`, text tokens, `[SEP]`.
    pub input_ids: Vec<i64>,
    /// The raw output (encoders have none: their answer is the raw output).
    pub logits: Option<Logits>,
}

/// One request's result: the task's answer, and the raw output when asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub answer: Answer,
    pub raw: Option<Raw>,
}

/// What one window's output looks like, known once the graph is loaded: the sizes after the
/// batch axis for a window of `positions` tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputShape {
    pub dims: Vec<usize>,
    pub positions: usize,
    /// Whether axis 0 is the sequence axis.
    pub per_token: bool,
}

impl OutputShape {
    /// Values per position (per-token outputs) or in all (pooled outputs).
    pub fn width(&self) -> usize {
        let skip = usize::from(self.per_token);
        self.dims[skip..].iter().product()
    }
}

/// Checks once, at load, that the graph's output fits `task`; returns how many labels the
/// head has (0 for heads without labels).
pub fn check_output(task: Task, shape: &OutputShape) -> Result<usize> {
    match task {
        Task::Discriminator => discriminator::check_output(shape),
        Task::Classify => classify::check_output(shape),
        Task::Tag => tag::check_output(shape),
        Task::Embed => embed::check_output(shape),
    }
}

/// The answer of `task` for one text's model outputs, and the raw output it was made from
/// (`None` for encoders, whose answer is the raw output).
pub fn answer(task: Task, input: &Input, options: &AnswerOptions) -> (Answer, Option<Logits>) {
    match task {
        Task::Discriminator => {
            let (a, logits) = discriminator::answer(input, options);
            (Answer::Discriminator(a), Some(Logits::PerToken(logits)))
        }
        Task::Classify => {
            let (a, logits) = classify::answer(input);
            (Answer::Classify(a), Some(Logits::Pooled(logits)))
        }
        Task::Tag => {
            let (a, logits) = tag::answer(input, options);
            (Answer::Tag(a), Some(Logits::PerToken(logits)))
        }
        Task::Embed => (Answer::Embed(embed::answer(input, options)), None),
    }
}

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
    }
}
