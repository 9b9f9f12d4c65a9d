//! The fused quantized matmul as a tract op, and the graph rewrite that installs it.
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

use super::sidecar::Sidecar;
use super::{pack_weights, quantized_matmul_gelu_f32, Kernel, PackedWeights};

/// `y = DynamicQuantizeLinear(x) x W` dequantized, plus bias: the whole quantize_dynamic
/// MatMul chain in one op. Input f32 `[.., K]`, output f32 `[.., N]`.
#[derive(Clone, Debug)]
pub struct QMatMul {
    pub weights: PackedWeights,
    /// Weight scales: one (per tensor) or N (per column).
    pub w_scale: Arc<[f32]>,
    pub bias: Option<Arc<[f32]>>,
    /// `None`: [`Kernel::default_choice`] at run time.
    pub kernel: Option<Kernel>,
    /// Threads of the pool for min/max, quantize-and-pack, the GEMM's column ranges and the
    /// GELU (each step split when it is big enough); 1 = on the calling thread.
    pub threads: usize,
    /// `Some(div)`: torch's erf GELU applied to the output, `y * (erf(y / div) + 1) * 0.5`
    /// (installed by the `ops` rewrite).
    pub gelu: Option<f32>,
}

impl PartialEq for QMatMul {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.weights.data().as_ptr(), other.weights.data().as_ptr())
            && self.w_scale == other.w_scale
            && self.bias == other.bias
            && self.kernel == other.kernel
            && self.threads == other.threads
            && self.gelu == other.gelu
    }
}
impl Eq for QMatMul {}

impl Op for QMatMul {
    fn name(&self) -> StaticName {
        "QMatMul".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "K={} N={} weights={} scale={} bias={} gelu={} kernel={} threads={}",
            self.weights.k(),
            self.weights.n(),
            if self.weights.from_u8() { "u8" } else { "i8" },
            if self.w_scale.len() == 1 {
                "per-tensor"
            } else {
                "per-column"
            },
            self.bias.is_some(),
            self.gelu.is_some(),
            Kernel::resolve(self.kernel),
            self.threads
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QMatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let (k, n) = (self.weights.k(), self.weights.n());
        let shape = x.shape();
        ensure!(
            shape.last() == Some(&k),
            "QMatMul: input shape {shape:?}, K = {k}"
        );
        let m = x.len() / k;
        let mut out_shape: TVec<usize> = shape.into();
        *out_shape.last_mut().unwrap() = n;
        // SAFETY: f32 has no invalid bit patterns, and `quantized_matmul_f32` writes every one
        // of the m x n outputs (its epilogue stores whole tiles; shapes checked above) before
        // anything reads `y`.
        let mut y = unsafe { Tensor::uninitialized::<f32>(&out_shape)? };
        {
            let xr = x.try_as_plain_ram()?;
            let xs = xr.as_slice::<f32>()?;
            let mut yr = y.try_as_plain_ram_mut()?;
            let ys = yr.as_slice_mut::<f32>()?;
            quantized_matmul_gelu_f32(
                Kernel::resolve(self.kernel),
                xs,
                m,
                &self.weights,
                &self.w_scale,
                self.bias.as_deref(),
                self.gelu,
                ys,
                self.threads,
            );
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for QMatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.to_tvec();
        ensure!(
            shape.last() == Some(&self.weights.k().to_dim()),
            "QMatMul: input {:?}, K = {}",
            inputs[0],
            self.weights.k()
        );
        *shape.last_mut().unwrap() = self.weights.n().to_dim();
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let m: TDim = inputs[0].shape.iter().rev().skip(1).product();
        Ok(tvec!((
            Cost::FMA(i32::datum_type()),
            m * (self.weights.k() * self.weights.n())
        )))
    }

    as_op!();
}

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

/// Test support: an ONNX file parsed and typed with inputs `[1, S]` (S symbolic), the way
/// the loader binds them, without the loader's memory tricks.
#[cfg(test)]
pub(crate) fn typed_for_tests(path: impl AsRef<std::path::Path>) -> TractResult<TypedModel> {
    typed_for_tests_with(tract_onnx::onnx(), path)
}

/// [`typed_for_tests`] with this tract-onnx (e.g. a registry with some parsers replaced).
#[cfg(test)]
pub(crate) fn typed_for_tests_with(
    parser: tract_onnx::Onnx,
    path: impl AsRef<std::path::Path>,
) -> TractResult<TypedModel> {
    use tract_onnx::prelude::*;
    let mut model = parser.with_ignore_value_info(true).model_for_path(path)?;
    let s = model.symbols.sym("S");
    for ix in 0..model.input_outlets()?.len() {
        model.set_input_fact(ix, i64::fact([1.to_dim(), s.to_dim()]).into())?;
    }
    model.into_typed()
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::typed_for_tests as typed;

    /// The shared fixtures: `$ELECTRA_EDGE_FIXTURES`, else `../shared/fixtures` next to the repo
    /// (as in `tests/python/conftest.py`).
    /// A fixture file (a missing one fails the test, saying where it was expected).
    fn fixture(rel: &str) -> String {
        crate::testutil::fixture(rel).display().to_string()
    }

    fn tiny() -> String {
        fixture("electra-tiny-zh/discriminator/model.onnx")
    }

    fn inputs(model: &TypedModel, seq: usize) -> TractResult<TVec<TValue>> {
        let mut v = tvec![];
        for o in model.input_outlets()? {
            let name = &model.node(o.node).name;
            let t: Tensor = if name.contains("mask") {
                tract_ndarray::Array2::<i64>::ones((1, seq)).into()
            } else if name.contains("type") {
                tract_ndarray::Array2::<i64>::zeros((1, seq)).into()
            } else {
                tract_ndarray::Array2::from_shape_fn((1, seq), |(_, j)| {
                    (100 + 37 * j as i64) % 5000
                })
                .into()
            };
            v.push(t.into_tvalue());
        }
        Ok(v)
    }

    /// The int8 models to check: the tiny fixture's heads, the repo's demo models (uint8
    /// weights) and any `INT8_FUSE_MODELS` (colon-separated paths, e.g. per-channel exports).
    fn parity_models() -> Vec<String> {
        let mut v: Vec<String> = ["discriminator", "classifier", "tagger", "encoder"]
            .iter()
            .map(|h| fixture(&format!("electra-tiny-zh/{h}/model.onnx")))
            .collect();
        for h in ["discriminator", "classifier", "tagger", "encoder"] {
            let demo = crate::testutil::demo_models().join(h).join("model.onnx");
            v.push(demo.display().to_string());
        }
        for p in &v {
            assert!(std::path::Path::new(p).is_file(), "model {p} is missing");
        }
        if let Ok(extra) = std::env::var("INT8_FUSE_MODELS") {
            v.extend(extra.split(':').filter(|s| !s.is_empty()).map(String::from));
        }
        v
    }

    /// Fused vs tract's own int8 path, per kernel: the same outputs (to float rounding).
    #[test]
    fn fused_matches_tract_int8() -> TractResult<()> {
        for path in parity_models() {
            let base = typed(&path)?;
            let reference = base.clone().into_optimized()?.into_runnable()?;
            let total = base
                .nodes()
                .iter()
                .filter(|n| n.op_as::<EinSum>().is_some_and(|e| e.q_params.is_some()))
                .count();
            for kernel in Kernel::ALL.into_iter().filter(|k| k.is_available()) {
                let mut fused = base.clone();
                let opts = FuseOptions {
                    kernel: Some(kernel),
                    threads: 2,
                };
                let count = fuse_quantized_matmuls_with(&mut fused, &opts)?;
                assert_eq!(
                    count, total,
                    "{path} {kernel}: every MatMulInteger chain fused"
                );
                assert!(fused
                    .nodes()
                    .iter()
                    .all(|n| n.op.name() != "DynamicQuantizeLinearU8"));
                let plan = fused.into_optimized()?.into_runnable()?;
                for seq in [1, 7, 32] {
                    let t = std::time::Instant::now();
                    let want = reference.run(inputs(&base, seq)?)?;
                    let t_ref = t.elapsed().as_secs_f64() * 1e3;
                    let t = std::time::Instant::now();
                    let got = plan.run(inputs(&base, seq)?)?;
                    let t_fused = t.elapsed().as_secs_f64() * 1e3;
                    for (w, g) in want.iter().zip(&got) {
                        let (w, g) = (w.cast_to::<f32>()?, g.cast_to::<f32>()?);
                        let w = w.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
                        let g = g.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
                        assert_eq!(w.len(), g.len());
                        let max = w
                            .iter()
                            .zip(&g)
                            .map(|(a, b)| (a - b).abs())
                            .fold(0f32, f32::max);
                        let scale = w.iter().map(|a| a.abs()).fold(0f32, f32::max).max(1e-6);
                        eprintln!(
                            "{path} {kernel} seq {seq}: {count} fused, max |diff| {max:e} (max |y| {scale:e}), \
                             run {t_fused:.2} ms vs tract int8 {t_ref:.2} ms (one cold run each)"
                        );
                        assert!(
                            max <= 1e-4 * scale,
                            "{path} {kernel} seq {seq}: {max} vs {scale}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Weights written to a sidecar, mapped back, used by the fused op; a sidecar of another
    /// model is refused entry by entry; a truncated one is refused.
    #[test]
    fn sidecar_round_trip() -> TractResult<()> {
        use crate::int8::sidecar::{fingerprint, sidecar_bytes, write_sidecar};
        let demo = crate::testutil::demo_models()
            .join("discriminator/model.onnx")
            .display()
            .to_string();
        let tiny = tiny();
        assert!(std::path::Path::new(&demo).is_file(), "{demo} is missing");
        let base = typed(&tiny)?;
        let mut heap = base.clone();
        let fused = fuse_quantized_matmuls(&mut heap)?;
        let entries = packed_weights_of(&heap);
        assert_eq!(entries.len(), fused);
        let fp = fingerprint(&std::fs::read(&tiny)?);
        let bytes = sidecar_bytes(entries.iter().map(|(n, w)| (n.as_str(), w)), fp);
        let dir = std::env::temp_dir().join(format!("ee-int8-sidecar-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("model.onnx.int8pack");
        write_sidecar(&path, &bytes)?;
        // SAFETY: a file this test just wrote in its own temp folder; nobody changes it while
        // it is mapped.
        let map = unsafe { memmap2::Mmap::map(&std::fs::File::open(&path)?)? };
        let side = Sidecar::parse(Arc::new(map))?;
        assert_eq!((side.len(), side.fingerprint()), (fused, fp));

        let mut mapped = base.clone();
        let report =
            fuse_quantized_matmuls_from(&mut mapped, &FuseOptions::default(), Some(&side))?;
        assert_eq!(
            report,
            FuseReport {
                fused,
                from_sidecar: fused
            }
        );
        assert!(packed_weights_of(&mapped)
            .iter()
            .all(|(_, w)| w.is_shared()));
        let (a, b) = (
            heap.into_optimized()?.into_runnable()?,
            mapped.into_optimized()?.into_runnable()?,
        );
        let (ya, yb) = (a.run(inputs(&base, 9)?)?, b.run(inputs(&base, 9)?)?);
        assert_eq!(
            ya[0]
                .cast_to::<f32>()?
                .try_as_plain_ram()?
                .as_slice::<f32>()?,
            yb[0]
                .cast_to::<f32>()?
                .try_as_plain_ram()?
                .as_slice::<f32>()?
        );

        // another model's sidecar (same node names, uint8 weights): nothing taken from it
        let mut other = typed(&demo)?;
        let report = fuse_quantized_matmuls_from(&mut other, &FuseOptions::default(), Some(&side))?;
        assert_eq!(report.from_sidecar, 0);
        // the trained demo discriminator: 3 layers x 6, head 2, embedding projection 1
        assert_eq!(report.fused, 21);

        // truncated: refused at parse time or per entry
        let cut: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(bytes[..bytes.len() - 100].to_vec());
        match Sidecar::parse(cut) {
            Err(_) => {}
            Ok(s) => assert!(entries
                .iter()
                .any(|(n, _)| s.get(n).is_none_or(|r| r.is_err()))),
        }
        let short: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(bytes[..40].to_vec());
        assert!(Sidecar::parse(short).is_err());
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
