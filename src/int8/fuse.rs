//! The graph rewrite that installs the fused quantized matmul ([`QMatMul`]).
//!
//! [`fuse_quantized_matmuls`] runs on the typed model right after `into_typed()` (before
//! declutter and optimize). It finds what `MatMulInteger` and friends become in tract's typed
//! graph for onnxruntime's `quantize_dynamic` pattern:
//!
//! ```text
//! x ─ DynamicQuantizeLinearU8 ─┬ q ──────────────────────┐
//!                              ├ zp ─────────────────────┤
//!                              └ scale ─ Mul(·, W_scale) ─┼─ (AddAxis…) ─┐
//! W const ─ (AddAxis…) ─ EinSum(q, W, 0, zp, 1, W_zp, 1, 0, 1; i32) ─ Cast(f32) ─ Mul ─ [Add(bias const)]
//! ```
//!
//! and replaces each chain by one [`QMatMul`] node reading `x` (f32 `[.., K]`) and writing
//! f32 `[.., N]`. Weights: int8 or uint8, per-tensor or per-column zero point and scale.
//! Everything else stays tract's. The now unused nodes (and the weight constants, so their
//! heap copies) are dropped by a final `compact()`.

use std::sync::Arc;

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cast::Cast;
use tract_core::ops::change_axes::AxisOp;
use tract_core::ops::einsum::EinSum;

use super::op::QMatMul;
use super::sidecar::Sidecar;
use super::{pack_weights, Kernel, PackedWeights};

/// Options of [`fuse_quantized_matmuls_with`].
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// `None`: [`Kernel::default_choice`] at run time (honours `ELECTRA_EDGE_KERNEL`).
    pub kernel: Option<Kernel>,
    /// Threads per matmul (column split); 1 = no spawning.
    pub threads: usize,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            kernel: None,
            threads: 1,
        }
    }
}

/// Rewrites every `quantize_dynamic` MatMul chain of a freshly typed model into [`QMatMul`]
/// (one thread, default kernel). Returns how many chains were fused.
pub fn fuse_quantized_matmuls(model: &mut TypedModel) -> TractResult<usize> {
    fuse_quantized_matmuls_with(model, &FuseOptions::default())
}

/// [`fuse_quantized_matmuls`] with options.
pub fn fuse_quantized_matmuls_with(
    model: &mut TypedModel,
    opts: &FuseOptions,
) -> TractResult<usize> {
    Ok(fuse_quantized_matmuls_from(model, opts, None)?.fused)
}

/// What [`fuse_quantized_matmuls_from`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FuseReport {
    /// Chains replaced by a [`QMatMul`].
    pub fused: usize,
    /// Of those, how many take their weights from the sidecar (the others were packed on the
    /// heap: absent from the sidecar, or not matching the model's weights).
    pub from_sidecar: usize,
}

/// [`fuse_quantized_matmuls_with`], taking the packed weights from a [`Sidecar`] (memory
/// map) when it has them, checked against the model's weights (shape, signedness, zero
/// points, first and last panel's first k-quad); the caller checks the sidecar's fingerprint.
pub fn fuse_quantized_matmuls_from(
    model: &mut TypedModel,
    opts: &FuseOptions,
    sidecar: Option<&Sidecar>,
) -> TractResult<FuseReport> {
    let candidates: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| {
            n.op_as::<EinSum>()
                .is_some_and(|e| e.q_params == Some(DatumType::I32))
        })
        .map(|n| n.id)
        .collect();
    let mut report = FuseReport::default();
    for id in candidates {
        let Some(chain) = match_chain(model, id)? else {
            log::debug!("int8 fuse: {} left to tract", model.node(id).name);
            continue;
        };
        let name = format!("{}.qmatmul", model.node(id).name);
        let mapped = match sidecar.and_then(|s| s.get(&name)) {
            Some(Ok(w)) if chain.matches(&w) => Some(w),
            Some(Ok(_)) => {
                log::warn!("int8 sidecar: {name} does not match the model's weights, packing");
                None
            }
            Some(Err(e)) => {
                log::warn!("int8 sidecar: {name}: {e:#}, packing");
                None
            }
            None => None,
        };
        report.from_sidecar += mapped.is_some() as usize;
        let weights = match mapped {
            Some(w) => w,
            None => pack_weights(chain.w_bytes()?, chain.signed, chain.k, chain.n, &chain.zp),
        };
        let op = QMatMul {
            weights,
            w_scale: chain.w_scale,
            bias: chain.bias,
            kernel: opts.kernel,
            threads: opts.threads.max(1),
            gelu: None,
        };
        let mut patch = TypedModelPatch::new(format!("int8 fuse {name}"));
        let x = patch.tap_model(model, chain.x)?;
        let y = patch.wire_node(name, op, &[x])?[0];
        patch.shunt_outside(model, chain.last, y)?;
        patch.apply(model)?;
        report.fused += 1;
    }
    if report.fused > 0 {
        model.compact()?;
    }
    Ok(report)
}

/// The packed weights of every [`QMatMul`] of a (fused) model, by node name: what
/// [`super::sidecar::sidecar_bytes`] writes.
pub fn packed_weights_of(model: &TypedModel) -> Vec<(String, PackedWeights)> {
    model
        .nodes()
        .iter()
        .filter_map(|n| {
            n.op_as::<QMatMul>()
                .map(|op| (n.name.clone(), op.weights.clone()))
        })
        .collect()
}

struct Chain {
    /// The f32 input of the DynamicQuantizeLinear.
    x: OutletId,
    /// The outlet the fused op replaces (the Mul, or the bias Add).
    last: OutletId,
    /// The weight constant, `[.., K, N]` with leading 1s.
    w: Arc<Tensor>,
    signed: bool,
    k: usize,
    n: usize,
    /// Weight zero point bytes (1 or N), same signedness as the weights.
    zp: Vec<u8>,
    w_scale: Arc<[f32]>,
    bias: Option<Arc<[f32]>>,
}

impl Chain {
    /// The weight bytes as stored (i8 or u8, row-major `[K, N]`), borrowed from the tensor.
    fn w_bytes(&self) -> TractResult<&[u8]> {
        Ok(self.w.try_as_plain_ram()?.as_bytes())
    }

    /// Whether packed weights (from a sidecar) are this chain's: shape, signedness, zero
    /// points, and the first k-quad of the first and last panels.
    fn matches(&self, w: &PackedWeights) -> bool {
        if w.k() != self.k || w.n() != self.n || w.from_u8() == self.signed {
            return false;
        }
        let conv = |b: u8| -> i32 {
            if self.signed {
                b as i8 as i32
            } else {
                b as i32 - 128
            }
        };
        let zp_ok = (0..self.n).all(|j| {
            let z = match self.zp.len() {
                1 => self.zp[0],
                _ => self.zp[j],
            };
            w.zero_points()[j] == conv(z)
        });
        let Ok(raw) = self.w_bytes() else {
            return false;
        };
        let data = w.data();
        let panels = [0, w.panels() - 1];
        zp_ok
            && panels.iter().all(|&p| {
                (0..8).all(|j| {
                    let col = p * 8 + j;
                    (0..4.min(self.k)).all(|kk| {
                        let packed = data[p * w.kq() * 32 + j * 4 + kk] as i8 as i32;
                        let want = if col < self.n {
                            conv(raw[kk * self.n + col])
                        } else {
                            0
                        };
                        packed == want
                    })
                })
            })
    }
}

/// Follows pure shape changes (AddAxis, RmAxis, Reshape: row-major order unchanged) upwards.
fn through_axes(model: &TypedModel, mut o: OutletId) -> OutletId {
    loop {
        let n = model.node(o.node);
        match n.op_as::<AxisOp>() {
            Some(AxisOp::Add(_) | AxisOp::Rm(_) | AxisOp::Reshape(..)) if n.inputs.len() == 1 => {
                o = n.inputs[0]
            }
            _ => return o,
        }
    }
}

/// The constant behind an outlet, through pure shape changes.
fn const_of(model: &TypedModel, o: OutletId) -> Option<Arc<Tensor>> {
    let o = through_axes(model, o);
    model.outlet_fact(o).ok()?.konst.clone()
}

fn scalar_is<T: Datum + PartialEq + Copy>(model: &TypedModel, o: OutletId, v: T) -> bool {
    const_of(model, o).is_some_and(|t| {
        t.len() == 1
            && t.datum_type() == T::datum_type()
            && t.try_as_plain_ram()
                .ok()
                .and_then(|r| r.as_slice::<T>().ok().map(|s| s[0] == v))
                == Some(true)
    })
}

fn f32s(t: &Tensor) -> Option<Vec<f32>> {
    if t.datum_type() != DatumType::F32 {
        return None;
    }
    Some(t.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?.to_vec())
}

fn bin_op<'m>(model: &'m TypedModel, id: usize, name: &str) -> Option<&'m TypedNode> {
    let n = model.node(id);
    let b = n.op_as::<TypedBinOp>()?;
    (b.0.name() == name && n.inputs.len() == 2).then_some(n)
}

/// The single consumer of an outlet, if it has exactly one and is not a model output.
fn single_succ(model: &TypedModel, o: OutletId) -> Option<(usize, usize)> {
    let succ = model.outlet_successors(o);
    let is_output = model
        .output_outlets()
        .map(|os| os.contains(&o))
        .unwrap_or(true);
    (succ.len() == 1 && !is_output).then(|| (succ[0].node, succ[0].slot))
}

fn match_chain(model: &TypedModel, id: usize) -> TractResult<Option<Chain>> {
    let e = model.node(id);
    let Some(es) = e.op_as::<EinSum>() else {
        return Ok(None);
    };
    if e.inputs.len() != 9 || es.operating_dt != DatumType::I32 {
        return Ok(None);
    }
    // activations: output 0 of a DynamicQuantizeLinearU8, its zero point as input 3
    let q = through_axes(model, e.inputs[0]);
    let d = model.node(q.node);
    if d.op.name() != "DynamicQuantizeLinearU8" || q.slot != 0 || d.inputs.len() != 1 {
        return Ok(None);
    }
    if through_axes(model, e.inputs[3]) != OutletId::new(d.id, 2) {
        return Ok(None);
    }
    let x = d.inputs[0];
    let x_fact = model.outlet_fact(x)?;
    if x_fact.datum_type != DatumType::F32 || x_fact.rank() < 1 {
        return Ok(None);
    }
    // the plain MatMulInteger form: bias 0, scales 1, output zero point 0
    if !(scalar_is(model, e.inputs[2], 0i32)
        && scalar_is(model, e.inputs[4], 1f32)
        && scalar_is(model, e.inputs[6], 1f32)
        && scalar_is(model, e.inputs[7], 0i32)
        && scalar_is(model, e.inputs[8], 1f32))
    {
        return Ok(None);
    }
    // constant weights [K, N] (leading 1s from rank broadcasting), i8 or u8
    let Some(w) = const_of(model, e.inputs[1]) else {
        return Ok(None);
    };
    let signed = match w.datum_type() {
        DatumType::I8 => true,
        DatumType::U8 => false,
        _ => return Ok(None),
    };
    let wshape = w.shape();
    if wshape.len() < 2 || wshape[..wshape.len() - 2].iter().any(|&d| d != 1) {
        return Ok(None);
    }
    let (k, n) = (wshape[wshape.len() - 2], wshape[wshape.len() - 1]);
    if x_fact.shape.last() != Some(&k.to_dim()) || k > super::pack::MAX_K {
        return Ok(None);
    }
    // the EinSum must be the plain matmul over the last axes of its inputs
    let out_fact = model.outlet_fact(OutletId::new(id, 0))?;
    if out_fact.rank() != x_fact.rank() || out_fact.shape.last() != Some(&n.to_dim()) {
        return Ok(None);
    }
    // weight zero point: absent, one, or N, same type as the weights
    let Some(wzp) = const_of(model, e.inputs[5]) else {
        return Ok(None);
    };
    if wzp.datum_type() != w.datum_type() || !(wzp.len() == 1 || wzp.len() == n) {
        return Ok(None);
    }
    // -> Cast(f32)
    let Some((c, _)) = single_succ(model, OutletId::new(id, 0)) else {
        return Ok(None);
    };
    let cn = model.node(c);
    if cn.op_as::<Cast>().is_none_or(|c| c.to != DatumType::F32) {
        return Ok(None);
    }
    // -> Mul(acc, scale) with scale = Mul(x_scale, W_scale) (through rank fixes)
    let Some((mu, slot)) = single_succ(model, OutletId::new(c, 0)) else {
        return Ok(None);
    };
    let Some(mun) = bin_op(model, mu, "Mul") else {
        return Ok(None);
    };
    let s = through_axes(model, mun.inputs[1 - slot]);
    let Some(sm) = bin_op(model, s.node, "Mul") else {
        return Ok(None);
    };
    let (a0, a1) = (
        through_axes(model, sm.inputs[0]),
        through_axes(model, sm.inputs[1]),
    );
    let xs = OutletId::new(d.id, 1);
    let ws = if a0 == xs {
        sm.inputs[1]
    } else if a1 == xs {
        sm.inputs[0]
    } else {
        return Ok(None);
    };
    let Some(w_scale) = const_of(model, ws).as_deref().and_then(f32s) else {
        return Ok(None);
    };
    if !(w_scale.len() == 1 || w_scale.len() == n) {
        return Ok(None);
    }
    if w_scale.len() == n && n > 1 {
        // per column: the scale must vary along the last axis only
        let f = model.outlet_fact(mun.inputs[1 - slot])?;
        if f.shape.last() != Some(&n.to_dim()) {
            return Ok(None);
        }
    }
    let mul_out = OutletId::new(mu, 0);
    if model.outlet_fact(mul_out)?.shape != out_fact.shape {
        return Ok(None);
    }
    // -> optional Add(bias const [N])
    let mut last = mul_out;
    let mut bias = None;
    if let Some((ad, aslot)) = single_succ(model, mul_out) {
        if let Some(adn) = bin_op(model, ad, "Add") {
            let other = adn.inputs[1 - aslot];
            let of = model.outlet_fact(other)?;
            if let Some(b) = const_of(model, other).as_deref().and_then(f32s) {
                let add_out = OutletId::new(ad, 0);
                if b.len() == n
                    && of.shape.last() == Some(&n.to_dim())
                    && model.outlet_fact(add_out)?.shape == out_fact.shape
                {
                    bias = Some(Arc::from(b));
                    last = add_out;
                }
            }
        }
    }
    // i8 or u8 as stored, like the weights
    let zp = wzp.try_as_plain_ram()?.as_bytes().to_vec();
    Ok(Some(Chain {
        x,
        last,
        w,
        signed,
        k,
        n,
        zp,
        w_scale: Arc::from(w_scale),
        bias,
    }))
}
