//! The rewrite stage that installs torch's erf GELU: one [`Gelu`] op, or the epilogue of the
//! [`QMatMul`] that feeds it.

use tract_core::internal::*;
use tract_core::ops::math::{Add, Div, Mul};

use super::{bin_is, producer, scalar_const, single_successor, OpsOptions, OpsReport};
use crate::int8::QMatMul;
use crate::ops::norm::Gelu;

/// torch's erf GELU: `Mul(Mul(x, Add(Erf(Div(x, c)), 1)), 0.5)`, into [`Gelu`], or into the
/// [`QMatMul`] producing `x` when the chain is its only consumer.
pub(super) fn fuse_gelus(
    model: &mut TypedModel,
    opts: &OpsOptions,
    report: &mut OpsReport,
) -> TractResult<()> {
    let erfs: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| n.op.name() == "Erf")
        .map(|n| n.id)
        .collect();
    for erf in erfs {
        let Some(m) = match_gelu(model, erf)? else {
            continue;
        };
        let name = format!("{}.gelu", model.node(erf).name);
        let mut patch = TypedModelPatch::new(format!("ops {name}"));
        // folded into the QMatMul in place (same node, same name: the packed-weights
        // sidecar is keyed by node name), or one Gelu op
        let folded = model
            .node(m.x.node)
            .op_as::<QMatMul>()
            .is_some_and(|q| q.gelu.is_none() && model.outlet_successors(m.x).len() == 2);
        let y = if folded {
            if let Some(q) = model.node_mut(m.x.node).op_as_mut::<QMatMul>() {
                q.gelu = Some(m.div);
            }
            patch.tap_model(model, m.x)?
        } else {
            let x = patch.tap_model(model, m.x)?;
            patch.wire_node(
                name,
                Gelu {
                    div: m.div,
                    kernel: opts.kernel,
                    threads: opts.threads.max(1),
                },
                &[x],
            )?[0]
        };
        patch.shunt_outside(model, m.out, y)?;
        patch.apply(model)?;
        report.gelus += 1;
        report.gelus_in_matmul += folded as usize;
    }
    Ok(())
}

struct GeluMatch {
    x: OutletId,
    div: f32,
    out: OutletId,
}

fn match_gelu(model: &TypedModel, erf: usize) -> TractResult<Option<GeluMatch>> {
    let e = model.node(erf);
    let dv = producer(model, e.inputs[0]);
    if !bin_is::<Div>(dv) || model.outlet_successors(e.inputs[0]).len() != 1 {
        return Ok(None);
    }
    let x = dv.inputs[0];
    let xf = model.outlet_fact(x)?;
    if xf.datum_type != f32::datum_type() || model.outlet_fact(e.inputs[0])?.shape != xf.shape {
        return Ok(None);
    }
    let Some(div) = scalar_const(model, dv.inputs[1]) else {
        return Ok(None);
    };
    let Some(add) = single_successor(model, OutletId::new(erf, 0)) else {
        return Ok(None);
    };
    let erf_out = OutletId::new(erf, 0);
    let other = |n: &TypedNode, o: OutletId| -> Option<OutletId> {
        match (n.inputs.first(), n.inputs.get(1)) {
            (Some(&a), Some(&b)) if a == o => Some(b),
            (Some(&a), Some(&b)) if b == o => Some(a),
            _ => None,
        }
    };
    if !bin_is::<Add>(add) || other(add, erf_out).and_then(|c| scalar_const(model, c)) != Some(1.0)
    {
        return Ok(None);
    }
    let add_out = OutletId::new(add.id, 0);
    let Some(mul) = single_successor(model, add_out) else {
        return Ok(None);
    };
    if !bin_is::<Mul>(mul) || other(mul, add_out) != Some(x) {
        return Ok(None);
    }
    let mul_out = OutletId::new(mul.id, 0);
    let Some(half) = single_successor(model, mul_out) else {
        return Ok(None);
    };
    if !bin_is::<Mul>(half)
        || other(half, mul_out).and_then(|c| scalar_const(model, c)) != Some(0.5)
    {
        return Ok(None);
    }
    let out = OutletId::new(half.id, 0);
    for o in [add_out, mul_out, out] {
        if model.outlet_fact(o)?.shape != xf.shape {
            return Ok(None);
        }
    }
    Ok(Some(GeluMatch { x, div, out }))
}
