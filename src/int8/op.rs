//! The fused quantized matmul as a tract op ([`QMatMul`]): `DynamicQuantizeLinear`, the
//! integer GEMM and its f32 epilogue (and optionally a GELU) in one node. The graph rewrite
//! that installs it is [`super::fuse`].

use std::sync::Arc;

use tract_core::internal::*;

use super::{quantized_matmul_gelu_f32, Kernel, PackedWeights};

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
