//! `LayerNormalization` typed as one [`AddLayerNorm`] node when its form allows (last axis, f32,
//! constant scale and bias, no extra outputs), tract-onnx's own expansion otherwise.

use std::sync::OnceLock;

use tract_onnx::model::{optional_outputs, OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::expandable::expand;

use crate::ops::AddLayerNorm;

/// An ONNX op parser, as tract-onnx's registry holds them.
type Parser = fn(&ParsingContext, &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// tract-onnx's own `LayerNormalization` parser, which ours wraps.
static TRACT_LAYER_NORM: OnceLock<Parser> = OnceLock::new();

/// Puts our parser in place of tract-onnx's `LayerNormalization` (which it keeps, to wrap).
pub(super) fn register_over_tracts(reg: &mut OnnxOpRegister) {
    if let Some(&tract) = reg.0.get("LayerNormalization") {
        TRACT_LAYER_NORM.get_or_init(|| tract);
        reg.insert("LayerNormalization", layer_normalization);
    }
}

fn layer_normalization(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let tract = TRACT_LAYER_NORM
        .get()
        .context("LayerNormalization: tract-onnx's parser is not registered")?;
    // tract's parse checks the attributes the same way for both forms
    let (op, extra) = tract(ctx, node)?;
    let Some(expansion) = op.as_op().downcast_ref::<Box<dyn Expansion>>() else {
        return Ok((op, extra));
    };
    let extra_outputs = optional_outputs(node).skip(1).take(2).any(|o| o.is_some());
    let op = LayerNormalization {
        tract: expansion.clone(),
        last_axis: node.get_attr_opt::<i64>("axis")?.unwrap_or(-1),
        epsilon: node.get_attr_opt::<f32>("epsilon")?.unwrap_or(1e-5),
        plain: !extra_outputs
            && node
                .get_attr_opt::<DatumType>("stash_type")?
                .unwrap_or(DatumType::F32)
                == DatumType::F32,
    };
    Ok((expand(op), extra))
}

/// ONNX `LayerNormalization`: tract-onnx's expansion, or one [`AddLayerNorm`] node when the
/// form allows it (module docs).
#[derive(Debug, Clone)]
struct LayerNormalization {
    tract: Box<dyn Expansion>,
    /// the `axis` attribute
    last_axis: i64,
    epsilon: f32,
    /// one output, statistics in f32
    plain: bool,
}

impl LayerNormalization {
    /// The [`AddLayerNorm`] this node is, if its form allows one.
    fn as_ours(
        &self,
        target: &TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<Option<AddLayerNorm>> {
        if !self.plain || !(2..=3).contains(&inputs.len()) {
            return Ok(None);
        }
        let x = target.outlet_fact(inputs[0])?;
        let rank = x.rank() as i64;
        if x.datum_type != f32::datum_type()
            || rank == 0
            || !(self.last_axis == -1 || self.last_axis == rank - 1)
        {
            return Ok(None);
        }
        let Some(n) = x.shape.last().and_then(|d| d.to_usize().ok()) else {
            return Ok(None);
        };
        let values = |o: OutletId| -> TractResult<Option<Arc<[f32]>>> {
            let f = target.outlet_fact(o)?;
            Ok(f.konst
                .as_ref()
                .filter(|k| k.datum_type() == f32::datum_type() && k.len() == n && !k.is_exotic())
                .and_then(|k| {
                    k.try_as_plain_ram()
                        .ok()?
                        .as_slice::<f32>()
                        .ok()
                        .map(Arc::from)
                }))
        };
        let Some(gamma) = values(inputs[1])? else {
            return Ok(None);
        };
        let beta = match inputs.get(2) {
            Some(&b) => match values(b)? {
                Some(b) => Some(b),
                None => return Ok(None),
            },
            None => None,
        };
        Ok(Some(AddLayerNorm {
            gamma,
            beta,
            eps: self.epsilon,
            kernel: None,
            threads: 1,
        }))
    }
}

impl Expansion for LayerNormalization {
    fn name(&self) -> StaticName {
        Expansion::name(self.tract.as_ref())
    }

    fn validation(&self) -> Validation {
        Expansion::validation(self.tract.as_ref())
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Expansion::info(self.tract.as_ref())
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Expansion::nboutputs(self.tract.as_ref())
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        Expansion::rules(self.tract.as_ref(), s, inputs, outputs)
    }

    // (tract-onnx's LayerNorm wires through `wire` only: the default
    // `wire_with_inference_model_and_node` calls this)
    fn wire(
        &self,
        prefix: &str,
        target: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        match self.as_ours(target, inputs)? {
            Some(op) => target.wire_node(format!("{prefix}.add_layer_norm"), op, &inputs[..1]),
            None => Expansion::wire(self.tract.as_ref(), prefix, target, inputs),
        }
    }
}
