//! The graph's inputs (`input_ids`, `attention_mask`, `token_type_ids`, bound to `[1, S]`),
//! the one output kept, and the input tensors of one run.

use anyhow::{anyhow, bail, Result};
use tract_onnx::prelude::*;

/// Which model input a graph input is, matched by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum InputKind {
    InputIds,
    AttentionMask,
    TokenTypeIds,
}

/// Declares every graph input as i64 `[1, S]` and records which one is which. The batch
/// is fixed at one row: with a symbolic batch too, the exporter's mask arithmetic
/// (`Flatten` over batch x sequence) is beyond tract's shape inference.
pub(super) fn bind_inputs(model: &mut InferenceModel) -> Result<Vec<InputKind>> {
    let seq = model.symbols.sym("S");
    let mut kinds = vec![];
    for (ix, outlet) in model.input_outlets()?.to_vec().into_iter().enumerate() {
        let name = model.node(outlet.node).name.as_str();
        let kind = match name {
            "input_ids" => InputKind::InputIds,
            "attention_mask" => InputKind::AttentionMask,
            "token_type_ids" => InputKind::TokenTypeIds,
            other => bail!("unexpected graph input {other:?} (expected input_ids, attention_mask, token_type_ids)"),
        };
        kinds.push(kind);
        let fact = InferenceFact::dt_shape(i64::datum_type(), tvec![1.to_dim(), seq.to_dim()]);
        model.set_input_fact(ix, fact)?;
    }
    if !kinds.contains(&InputKind::InputIds) {
        bail!("the graph has no input_ids input");
    }
    Ok(kinds)
}

pub(super) fn select_output(model: &mut InferenceModel, name: Option<&str>) -> Result<()> {
    let outputs = model.output_outlets()?.to_vec();
    let chosen = match name {
        None => outputs[0],
        Some(name) => *outputs
            .iter()
            .find(|o| model.node(o.node).name == name || model.outlet_label(**o) == Some(name))
            .or_else(|| outputs.first().filter(|_| outputs.len() == 1))
            .ok_or_else(|| anyhow!("the graph has no output named {name:?}"))?,
    };
    model.select_output_outlets(&[chosen])?;
    Ok(())
}

/// The input tensors for one row of ids, in the graph's input order: every token attended to,
/// one segment.
pub(super) fn input_tensors(kinds: &[InputKind], ids: &[i64]) -> Result<TVec<TValue>> {
    let seq = ids.len();
    kinds
        .iter()
        .map(|kind| {
            let tensor = match kind {
                InputKind::InputIds => Tensor::from_shape(&[1, seq], ids)?,
                InputKind::AttentionMask => {
                    tract_ndarray::Array2::<i64>::ones((1, seq)).into_tensor()
                }
                InputKind::TokenTypeIds => {
                    tract_ndarray::Array2::<i64>::zeros((1, seq)).into_tensor()
                }
            };
            Ok(tensor.into_tvalue())
        })
        .collect()
}
