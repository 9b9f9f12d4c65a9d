//! The rewrite stage that installs [`Attention`].
//!
//! What it recognises (the exporter's multi-head attention, as tract types it):
//!
//! ```text
//! q3 [B,S,H*D] ─ Reshape(H*D -> H,D) ─ Move… ─ [Mul c_q] ─┐
//! k3 [B,S,H*D] ─ Reshape ─ Move… ─ [Mul c_k] ─────────────┴ EinSum (Q K^T) ─ [Mul|Div c] ─ [Add mask]
//!   ─ Softmax(last) ─ [Iff(IsNan(p), 0, p)] ─┐
//! v3 [B,S,H*D] ─ Reshape ─ Move… ───────────┴ EinSum (P V) ─ Move… ─ Reshape(H,D -> H*D) ─ out [B,S,H*D]
//! ```
//!
//! Scalar multiplications may sit anywhere on the Q and K chains (they commute with the axis
//! moves) and are folded into one scale. Each chain's axis operations are replayed on axis
//! labels (batch, sequence, head, head_dim) and every einsum's axes checked against them, so
//! a match is the attention formula whatever order the moves come in; anything else is left
//! to tract. The mask (the other input of the `Add`) must broadcast to `[B, H, Sq, Sk]` in
//! that order.

use tract_core::internal::*;
use tract_core::ops::change_axes::AxisOp;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::logic::Iff;
use tract_core::ops::math::{Add, Div, Mul};
use tract_core::ops::nn::{Softmax, SoftmaxKind};

use super::{bin_is, producer, scalar_const, single_successor, OpsOptions, OpsReport};
use crate::ops::attention::Attention;

pub(super) fn fuse_attention(
    model: &mut TypedModel,
    opts: &OpsOptions,
    report: &mut OpsReport,
) -> TractResult<()> {
    let softmaxes: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| {
            n.op_as::<Softmax>()
                .is_some_and(|s| s.kind == SoftmaxKind::Softmax && s.quant_output_dt.is_none())
        })
        .map(|n| n.id)
        .collect();
    for id in softmaxes {
        let Some(m) = match_attention(model, id)? else {
            log::debug!("ops: attention at {} left to tract", model.node(id).name);
            continue;
        };
        let op = Attention {
            heads: m.heads,
            head_dim: m.head_dim,
            scale: m.scale,
            nan_to_zero: m.nan_to_zero,
            kernel: opts.kernel,
            threads: opts.threads.max(1),
        };
        let name = format!("{}.attention", model.node(id).name);
        let mut patch = TypedModelPatch::new(format!("ops {name}"));
        let mut inputs = tvec![
            patch.tap_model(model, m.q)?,
            patch.tap_model(model, m.k)?,
            patch.tap_model(model, m.v)?,
        ];
        if let Some(mask) = m.mask {
            inputs.push(patch.tap_model(model, mask)?);
        }
        let y = patch.wire_node(name, op, &inputs)?[0];
        patch.shunt_outside(model, m.out, y)?;
        patch.apply(model)?;
        report.attention += 1;
    }
    Ok(())
}

/// Axis labels for replaying axis operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lab {
    B,
    Sq,
    Sk,
    Sv,
    H,
    D,
    /// heads and head_dim merged (`H*D`, heads major)
    Hd,
    One,
}

struct Matched {
    q: OutletId,
    k: OutletId,
    v: OutletId,
    mask: Option<OutletId>,
    out: OutletId,
    heads: usize,
    head_dim: usize,
    scale: f32,
    nan_to_zero: bool,
}

/// Walks back from an einsum input through axis ops and scalar multiplications to a rank-3
/// tensor `[B, S, H*D]`; returns it, the axis ops (in forward order) and the scale.
fn chain_back(
    model: &TypedModel,
    mut o: OutletId,
) -> TractResult<Option<(OutletId, Vec<AxisOp>, f32)>> {
    let mut ops = vec![];
    let mut scale = 1f32;
    loop {
        let fact = model.outlet_fact(o)?;
        if fact.datum_type != f32::datum_type() {
            return Ok(None);
        }
        if fact.rank() == 3 && !ops.is_empty() {
            break;
        }
        let n = producer(model, o);
        if let Some(op) = n.op_as::<AxisOp>() {
            ops.push(op.clone());
            o = n.inputs[0];
        } else if bin_is::<Mul>(n) && n.inputs.len() == 2 {
            let (c, other) = match (
                scalar_const(model, n.inputs[0]),
                scalar_const(model, n.inputs[1]),
            ) {
                (_, Some(c)) => (c, n.inputs[0]),
                (Some(c), None) => (c, n.inputs[1]),
                _ => return Ok(None),
            };
            if model.outlet_fact(other)?.shape != model.outlet_fact(o)?.shape {
                return Ok(None);
            }
            scale *= c;
            o = other;
        } else {
            return Ok(None);
        }
    }
    ops.reverse();
    Ok(Some((o, ops, scale)))
}

/// Replays axis ops on labels; `None` if one is not a move, a unit axis or the head
/// split/merge. Records heads and head_dim from the split/merge.
fn replay(mut labs: Vec<Lab>, ops: &[AxisOp], hd: &mut Option<(usize, usize)>) -> Option<Vec<Lab>> {
    for op in ops {
        match op {
            AxisOp::Move(from, to) => {
                if *from >= labs.len() || *to >= labs.len() {
                    return None;
                }
                let l = labs.remove(*from);
                labs.insert(*to, l);
            }
            AxisOp::Add(ax) => {
                if *ax > labs.len() {
                    return None;
                }
                labs.insert(*ax, Lab::One);
            }
            AxisOp::Rm(ax) => {
                if labs.get(*ax) != Some(&Lab::One) {
                    return None;
                }
                labs.remove(*ax);
            }
            AxisOp::Reshape(at, from, to) => {
                let dims = |v: &TVec<TDim>| {
                    v.iter()
                        .map(|d| d.to_usize().ok())
                        .collect::<Option<Vec<_>>>()
                };
                let (f, t) = (dims(from)?, dims(to)?);
                let seen = labs.get(*at..*at + f.len())?.to_vec();
                let (h, d) = if seen == [Lab::Hd] && t.len() == 2 {
                    labs.splice(*at..*at + 1, [Lab::H, Lab::D]);
                    (t[0], t[1])
                } else if seen == [Lab::H, Lab::D] && t.len() == 1 {
                    labs.splice(*at..*at + 2, [Lab::Hd]);
                    (f[0], f[1])
                } else {
                    return None;
                };
                if hd.is_some_and(|x| x != (h, d)) {
                    return None;
                }
                *hd = Some((h, d));
            }
        }
    }
    Some(labs)
}

/// For a two-input einsum with input labels `a` and `b`: the output's labels, if every axis
/// is one of `allowed` = (label in a, label in b, in the output).
fn einsum_labels(
    e: &EinSum,
    a: &[Lab],
    b: &[Lab],
    allowed: &[(Option<Lab>, Option<Lab>, bool)],
) -> Option<Vec<Lab>> {
    if e.axes.input_count() != 2 || e.axes.output_count() != 1 || e.q_params.is_some() {
        return None;
    }
    let mut out = vec![None; e.axes.rank(InOut::Out(0))];
    let mut seen = vec![];
    for axis in e.axes.iter_all_axes() {
        let one = |v: &TVec<usize>, labs: &[Lab]| -> Option<Option<Lab>> {
            match v.len() {
                0 => Some(None),
                1 => labs.get(v[0]).map(|l| Some(*l)),
                _ => None,
            }
        };
        let la = one(&axis.inputs[0], a)?;
        let lb = one(&axis.inputs[1], b)?;
        let o = &axis.outputs[0];
        if o.len() > 1 {
            return None;
        }
        let key = (la, lb, o.len() == 1);
        if !allowed.contains(&key) || seen.contains(&key) {
            return None;
        }
        seen.push(key);
        if let Some(&p) = o.first() {
            out[p] = la.or(lb);
        }
    }
    if seen.len() != allowed.len() {
        return None;
    }
    out.into_iter().collect()
}

fn match_attention(model: &TypedModel, softmax: usize) -> TractResult<Option<Matched>> {
    let sm = model.node(softmax);
    let sm_op = sm.op_as::<Softmax>().unwrap();
    let sm_fact = model.outlet_fact(OutletId::new(softmax, 0))?;
    if sm_fact.rank() != 4
        || sm_op.axes.as_slice() != [3]
        || sm_fact.datum_type != f32::datum_type()
    {
        return Ok(None);
    }
    // back: [Add mask] <- [Mul|Div scalar] <- EinSum(Q, K)
    let mut o = sm.inputs[0];
    let mut mask = None;
    let mut scale = 1f32;
    loop {
        let n = producer(model, o);
        if n.op_as::<EinSum>().is_some() {
            break;
        }
        if single_successor(model, o).is_none() {
            return Ok(None);
        }
        if bin_is::<Add>(n) && mask.is_none() && scale == 1.0 {
            let shape = &model.outlet_fact(o)?.shape;
            // the scores are the operand with the full shape, the mask the other one
            let (s, m) = if model.outlet_fact(n.inputs[0])?.shape == *shape
                && producer(model, n.inputs[0]).op_as::<EinSum>().is_some()
            {
                (n.inputs[0], n.inputs[1])
            } else if model.outlet_fact(n.inputs[1])?.shape == *shape {
                (n.inputs[1], n.inputs[0])
            } else {
                return Ok(None);
            };
            let mf = model.outlet_fact(m)?;
            if mf.datum_type != f32::datum_type() || mf.rank() != 4 || mf.shape[3] != shape[3] {
                return Ok(None);
            }
            mask = Some(m);
            o = s;
        } else if bin_is::<Mul>(n) || bin_is::<Div>(n) {
            let Some(c) = scalar_const(model, n.inputs[1]) else {
                return Ok(None);
            };
            scale *= if bin_is::<Mul>(n) { c } else { 1.0 / c };
            o = n.inputs[0];
        } else {
            return Ok(None);
        }
    }
    let qk = producer(model, o);
    let qk_op = qk.op_as::<EinSum>().unwrap();
    if qk_op.operating_dt != f32::datum_type() || single_successor(model, o).is_none() {
        return Ok(None);
    }
    // forward: [Iff(IsNan(p), 0, p)] -> EinSum(P, V)
    let p_out = OutletId::new(softmax, 0);
    let mut p = p_out;
    let mut nan_to_zero = false;
    let succ = model.outlet_successors(p_out);
    if succ.len() == 2 {
        let (a, b) = (model.node(succ[0].node), model.node(succ[1].node));
        let (isnan, iff) = if a.op.name() == "IsNan" {
            (a, b)
        } else {
            (b, a)
        };
        if isnan.op.name() != "IsNan" || iff.op_as::<Iff>().is_none() {
            return Ok(None);
        }
        let isnan_out = OutletId::new(isnan.id, 0);
        if iff.inputs[0] != isnan_out
            || iff.inputs[2] != p_out
            || scalar_const(model, iff.inputs[1]) != Some(0.0)
            || model.outlet_fact(OutletId::new(iff.id, 0))?.shape != sm_fact.shape
        {
            return Ok(None);
        }
        nan_to_zero = true;
        p = OutletId::new(iff.id, 0);
    } else if succ.len() != 1 {
        return Ok(None);
    }
    let Some(pv) = single_successor(model, p) else {
        return Ok(None);
    };
    let Some(pv_op) = pv.op_as::<EinSum>() else {
        return Ok(None);
    };
    if pv.inputs.len() != 2 || pv.inputs[0] != p || pv_op.operating_dt != f32::datum_type() {
        return Ok(None);
    }
    // the three projections and their axis labels
    let Some((q3, q_ops, q_scale)) = chain_back(model, qk.inputs[0])? else {
        return Ok(None);
    };
    let Some((k3, k_ops, k_scale)) = chain_back(model, qk.inputs[1])? else {
        return Ok(None);
    };
    let Some((v3, v_ops, v_scale)) = chain_back(model, pv.inputs[1])? else {
        return Ok(None);
    };
    if v_scale != 1.0 {
        return Ok(None);
    }
    let mut hd = None;
    let (Some(ql), Some(kl), Some(vl)) = (
        replay(vec![Lab::B, Lab::Sq, Lab::Hd], &q_ops, &mut hd),
        replay(vec![Lab::B, Lab::Sk, Lab::Hd], &k_ops, &mut hd),
        replay(vec![Lab::B, Lab::Sv, Lab::Hd], &v_ops, &mut hd),
    ) else {
        return Ok(None);
    };
    let Some((heads, head_dim)) = hd else {
        return Ok(None);
    };
    use Lab::*;
    let Some(sl) = einsum_labels(
        qk_op,
        &ql,
        &kl,
        &[
            (Some(B), Some(B), true),
            (Some(H), Some(H), true),
            (Some(Sq), None, true),
            (Some(D), Some(D), false),
            (None, Some(Sk), true),
        ],
    ) else {
        return Ok(None);
    };
    if sl != [B, H, Sq, Sk] {
        return Ok(None);
    }
    let Some(ol) = einsum_labels(
        pv_op,
        &sl,
        &vl,
        &[
            (Some(B), Some(B), true),
            (Some(H), Some(H), true),
            (Some(Sq), None, true),
            (Some(Sk), Some(Sv), false),
            (None, Some(D), true),
        ],
    ) else {
        return Ok(None);
    };
    // forward from P V through axis ops to [B, Sq, H*D]
    let mut ops = vec![];
    let mut out = OutletId::new(pv.id, 0);
    let mut labs = ol;
    while labs != [B, Sq, Hd] {
        let Some(n) = single_successor(model, out) else {
            return Ok(None);
        };
        let Some(op) = n.op_as::<AxisOp>() else {
            return Ok(None);
        };
        ops.push(op.clone());
        let mut hd2 = hd;
        labs = match replay(labs, std::slice::from_ref(op), &mut hd2) {
            Some(l) if hd2 == hd => l,
            _ => return Ok(None),
        };
        out = OutletId::new(n.id, 0);
        if ops.len() > 8 {
            return Ok(None);
        }
    }
    // same batch, same width; K and V of the same length
    let (qf, kf, vf) = (
        model.outlet_fact(q3)?,
        model.outlet_fact(k3)?,
        model.outlet_fact(v3)?,
    );
    let width = (heads * head_dim).to_dim();
    if qf.shape[2] != width
        || kf.shape != vf.shape
        || kf.shape[2] != width
        || qf.shape[0] != kf.shape[0]
    {
        return Ok(None);
    }
    if let Some(m) = mask {
        let ms = &model.outlet_fact(m)?.shape;
        let want = [
            qf.shape[0].clone(),
            heads.to_dim(),
            qf.shape[1].clone(),
            kf.shape[1].clone(),
        ];
        if !ms.iter().zip(&want).all(|(a, b)| a.is_one() || a == b) {
            return Ok(None);
        }
    }
    Ok(Some(Matched {
        q: q3,
        k: k3,
        v: v3,
        mask,
        out,
        heads,
        head_dim,
        scale: scale * q_scale * k_scale,
        nan_to_zero,
    }))
}
