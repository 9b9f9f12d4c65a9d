//! The rewrite stage that installs [`AddLayerNorm`]: tract-onnx's `LayerNormalization`
//! expansion, and the LayerNorms the loader's parser already typed, each with the residual add
//! before it when that sum has no other use.

use tract_core::internal::*;
use tract_core::ops::cast::Cast;
use tract_core::ops::math::Add;
use tract_core::ops::nn::{Reduce, Reducer};

use std::collections::HashMap;

use super::{bin_is, const_tensor, f32s, producer, scalar_const, OpsOptions, OpsReport};
use crate::ops::norm::AddLayerNorm;

/// ONNX `LayerNormalization` as tract-onnx 0.23.9 expands it (`{node}.cast_x`,
/// `.reduced_sum`, `.reduced_sum_dd`, `.var_eps`, `.inv_std_dev`, `.cast_scale`,
/// `.cast_bias`, `.cast_y`: the names locate the parts, their ops are checked), over the
/// last axis only; with the residual `Add` before it when the sum has no other use.
pub(super) fn fuse_layer_norms(
    model: &mut TypedModel,
    opts: &OpsOptions,
    report: &mut OpsReport,
) -> TractResult<()> {
    // AddLayerNorm nodes typed at parse time (one input, the calling thread, best kernel:
    // `model::onnx_ops`), taken before the expansions below become more of them
    let parsed: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| n.inputs.len() == 1 && n.op_is::<AddLayerNorm>())
        .map(|n| n.id)
        .collect();
    let by_name: HashMap<String, usize> = model
        .nodes()
        .iter()
        .map(|n| (n.name.clone(), n.id))
        .collect();
    let ends: Vec<(usize, String)> = model
        .nodes()
        .iter()
        .filter_map(|n| {
            let p = n.name.strip_suffix(".cast_y")?;
            n.op_as::<Cast>().map(|_| (n.id, p.to_string()))
        })
        .collect();
    for (end, p) in ends {
        let part = |s: &str| by_name.get(&format!("{p}.{s}")).map(|&id| model.node(id));
        let (Some(cast_x), Some(rs), Some(rsdd), Some(eps), Some(inv), Some(scale)) = (
            part("cast_x"),
            part("reduced_sum"),
            part("reduced_sum_dd"),
            part("var_eps"),
            part("inv_std_dev"),
            part("cast_scale"),
        ) else {
            continue;
        };
        let x = cast_x.inputs[0];
        let xf = model.outlet_fact(x)?;
        let rank = xf.rank();
        let last = |n: &TypedNode| {
            n.op_as::<Reduce>()
                .is_some_and(|r| r.reducer == Reducer::Sum && r.axes.as_slice() == [rank - 1])
        };
        if xf.datum_type != f32::datum_type()
            || model.outlet_fact(OutletId::new(end, 0))?.datum_type != f32::datum_type()
            || !last(rs)
            || !last(rsdd)
            || rs.inputs[0] != OutletId::new(cast_x.id, 0)
            || inv.op.name() != "Rsqrt"
        {
            continue;
        }
        let Some(eps) = eps.inputs.get(1).and_then(|&e| scalar_const(model, e)) else {
            continue;
        };
        let Some(gamma) = const_tensor(model, OutletId::new(scale.id, 0)).and_then(|t| f32s(&t))
        else {
            continue;
        };
        let beta = match part("cast_bias") {
            Some(b) => match const_tensor(model, OutletId::new(b.id, 0)).and_then(|t| f32s(&t)) {
                Some(b) => Some(b),
                None => continue,
            },
            None => None,
        };
        if xf.shape.last() != Some(&gamma.len().to_dim())
            || beta.as_ref().is_some_and(|b| b.len() != gamma.len())
        {
            continue;
        }
        // the residual add before, when the sum is used by this LayerNorm only
        let inputs = residual_sum(model, x)?.unwrap_or_else(|| tvec![x]);
        let op = AddLayerNorm {
            gamma: gamma.into(),
            beta: beta.map(Into::into),
            eps,
            kernel: opts.kernel,
            threads: opts.threads.max(1),
        };
        let fused_add = inputs.len() == 2;
        let mut patch = TypedModelPatch::new(format!("ops layer norm {p}"));
        let taps = inputs
            .iter()
            .map(|i| patch.tap_model(model, *i))
            .collect::<TractResult<TVec<_>>>()?;
        let y = patch.wire_node(format!("{p}.add_layer_norm"), op, &taps)?[0];
        patch.shunt_outside(model, OutletId::new(end, 0), y)?;
        patch.apply(model)?;
        report.layer_norms += 1;
        report.residual_adds += fused_add as usize;
    }
    // the loader's parser already typed plain LayerNorms as AddLayerNorm (found above, before
    // this stage added its own): give them the options, and the residual add before, on the
    // same conditions as above
    for id in parsed {
        let sum = residual_sum(model, model.node(id).inputs[0])?;
        let residual = sum.is_some();
        for (slot, &input) in sum.iter().flatten().enumerate() {
            model.add_edge(input, InletId::new(id, slot))?;
        }
        let Some(op) = model.node_mut(id).op_as_mut::<AddLayerNorm>() else {
            continue;
        };
        op.kernel = opts.kernel;
        op.threads = opts.threads.max(1);
        report.layer_norms += 1;
        report.residual_adds += residual as usize;
    }
    Ok(())
}

/// The two inputs of the residual `Add` producing the LayerNorm input `x`, when that sum is
/// used by the LayerNorm only and adds two f32 tensors of `x`'s shape (no broadcasting).
fn residual_sum(model: &TypedModel, x: OutletId) -> TractResult<Option<TVec<OutletId>>> {
    let xf = model.outlet_fact(x)?;
    let xn = producer(model, x);
    let fits = bin_is::<Add>(xn)
        && model.outlet_successors(x).len() == 1
        && xf.datum_type == f32::datum_type()
        && xn.inputs.iter().all(|i| {
            model
                .outlet_fact(*i)
                .is_ok_and(|f| f.shape == xf.shape && f.datum_type == f32::datum_type())
        });
    Ok(fits.then(|| xn.inputs.iter().copied().collect()))
}
