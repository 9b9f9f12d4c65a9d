//! `MatMulInteger` typed as tract-onnx types it (a rank-broadcast, then one quantized
//! `EinSum`), with the `EinSum`'s axes mapping derived once per combination of input ranks.

use std::sync::Mutex;

use tract_onnx::model::{optional_inputs, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::axes::AxesMapping;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::binary::wire_rank_broadcast;
use tract_onnx::tract_hir::ops::expandable::expand;

/// Our parser of ONNX `MatMulInteger` nodes.
pub(super) fn parse(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    // inputs: A, B, then the optional zero points of A and B (absent or named "")
    let mut zero_points = optional_inputs(node).skip(2);
    let op = MatMulInteger {
        a_zero_point: zero_points.next().flatten(),
        b_zero_point: zero_points.next().flatten(),
    };
    Ok((expand(op), vec![]))
}

/// ONNX `MatMulInteger`: `(A - a_zero_point) x (B - b_zero_point)` in i32, with numpy matmul
/// broadcasting.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct MatMulInteger {
    /// index among the node's inputs, when given
    a_zero_point: Option<usize>,
    b_zero_point: Option<usize>,
}

impl Expansion for MatMulInteger {
    fn name(&self) -> StaticName {
        "MatMulInteger".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> TractResult<()> {
        let optional = self.a_zero_point.is_some() as usize + self.b_zero_point.is_some() as usize;
        check_input_arity(inputs, 2 + optional)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, i32::datum_type())?;
        if let Some(z) = self.a_zero_point {
            s.equals(&inputs[z].datum_type, &inputs[0].datum_type)?
        }
        if let Some(z) = self.b_zero_point {
            s.equals(&inputs[z].datum_type, &inputs[1].datum_type)?
        }
        s.given_2(&inputs[0].shape, &inputs[1].shape, move |s, a, b| {
            let (_, _, c, _) =
                tract_onnx::tract_hir::ops::matmul::compute_shapes(a, b, false, false, false)?;
            s.equals(&outputs[0].shape, c)
        })?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        target: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        // the EinSum's inputs, as tract's quantized EinSum takes them: A, B (same rank), bias,
        // then zero point and scale of A, of B, and of the output
        let mut wires = wire_rank_broadcast(prefix, target, &[inputs[0], inputs[1]])?;
        wires.push(target.add_const(format!("{prefix}.bias"), tensor0(0i32))?);
        wires.push(match self.a_zero_point {
            Some(z) => inputs[z],
            None => target.add_const(format!("{prefix}.a0"), tensor0(0i32))?,
        });
        wires.push(target.add_const(format!("{prefix}.a_scale"), tensor0(1f32))?);
        wires.push(match self.b_zero_point {
            Some(z) => inputs[z],
            None => target.add_const(format!("{prefix}.b0"), tensor0(0i32))?,
        });
        wires.push(target.add_const(format!("{prefix}.b_scale"), tensor0(1f32))?);
        wires.push(target.add_const(format!("{prefix}.c0"), tensor0(0i32))?);
        wires.push(target.add_const(format!("{prefix}.c_scale"), tensor0(1f32))?);
        let ranks = wires
            .iter()
            .map(|w| Ok(target.outlet_fact(*w)?.rank()))
            .collect::<TractResult<Vec<usize>>>()?;
        let op = EinSum {
            axes: matmul_axes(&ranks)?,
            operating_dt: i32::datum_type(),
            q_params: Some(i32::datum_type()),
        };
        target.wire_node(prefix, op, &wires)
    }
}

/// The axes mapping of a quantized matmul `EinSum` with inputs of these ranks, derived once per
/// combination of ranks.
fn matmul_axes(ranks: &[usize]) -> TractResult<AxesMapping> {
    // one or two combinations per model: a list is enough
    static DERIVED: Mutex<Vec<(Vec<usize>, AxesMapping)>> = Mutex::new(Vec::new());
    let mut derived = DERIVED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, axes)) = derived.iter().find(|(r, _)| r == ranks) {
        return Ok(axes.clone());
    }
    let axes = derive_matmul_axes(ranks)?;
    derived.push((ranks.to_vec(), axes.clone()));
    Ok(axes)
}

/// `[.., m, k] x [.., k, n] -> [.., m, n]` over the leading axes of A and B; the zero point of
/// A, when a vector, runs along m, B's along n; the other quantization inputs are the scalars
/// `wire` adds. The steps and their order are tract-onnx's, so that the axis labels come out
/// the same.
fn derive_matmul_axes(ranks: &[usize]) -> TractResult<AxesMapping> {
    let scalars = [2, 4, 6, 7, 8];
    if ranks.len() != 9
        || ranks[0] < 2
        || ranks[1] != ranks[0]
        || scalars.iter().any(|&i| ranks[i] != 0)
        || ranks[3] > 1
        || ranks[5] > 1
    {
        bail!("MatMulInteger: unexpected input ranks {ranks:?}");
    }
    let rank = ranks[0];
    let mut axes = AxesMapping::disconnected_for_ranks(ranks, &ranks[0..1])?
        .renaming((InOut::In(0), rank - 2), 'm')?
        .linking('m', (InOut::Out(0), rank - 2))?
        .renaming((InOut::In(1), rank - 1), 'n')?
        .linking('n', (InOut::Out(0), rank - 1))?
        .renaming((InOut::In(0), rank - 1), 'k')?
        .linking('k', (InOut::In(1), rank - 2))?;
    for ax in 0..rank - 2 {
        axes = axes
            .linking((InOut::In(0), ax), (InOut::In(1), ax))?
            .linking((InOut::In(0), ax), (InOut::Out(0), ax))?;
    }
    for (slot, along) in [(3, 'm'), (5, 'n')] {
        if ranks[slot] == 1 {
            axes = axes.linking(along, (InOut::In(slot), 0))?;
        }
    }
    Ok(axes)
}
