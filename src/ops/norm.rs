//! Element-wise transformer ops: [`AddLayerNorm`] (the residual add and the LayerNorm after
//! it, one pass over each row) and [`Gelu`] (torch's erf GELU, one pass instead of five
//! tract ops).

use std::sync::Arc;

use tract_core::internal::*;

use super::kernels::{add_layer_norm_f32, gelu_f32, OpsKernel};

fn kernel_of(k: Option<OpsKernel>) -> OpsKernel {
    match k {
        Some(k) if k.is_available() => k,
        _ => OpsKernel::best(),
    }
}

/// `LayerNorm(x [+ residual])` over the last axis, `* gamma [+ beta]`. Inputs: `x` and
/// optionally the residual, f32, same shape. Output: same shape.
#[derive(Clone, Debug, PartialEq)]
pub struct AddLayerNorm {
    pub gamma: Arc<[f32]>,
    pub beta: Option<Arc<[f32]>>,
    pub eps: f32,
    pub kernel: Option<OpsKernel>,
    /// Ranges of rows split over this many threads when big enough (1 = calling thread).
    pub threads: usize,
}

impl Eq for AddLayerNorm {}

impl Op for AddLayerNorm {
    fn name(&self) -> StaticName {
        "AddLayerNorm".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "n={} eps={:e} beta={} kernel={} threads={}",
            self.gamma.len(),
            self.eps,
            self.beta.is_some(),
            kernel_of(self.kernel).name(),
            self.threads
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for AddLayerNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1 || inputs.len() == 2);
        let shape = inputs[0].shape();
        ensure!(
            shape.last() == Some(&self.gamma.len()),
            "AddLayerNorm: input {shape:?}, {} gammas",
            self.gamma.len()
        );
        if let Some(r) = inputs.get(1) {
            ensure!(
                r.shape() == shape,
                "AddLayerNorm: {:?} + {shape:?}",
                r.shape()
            );
        }
        // SAFETY: f32 has no invalid bit patterns, and the kernel writes every element (every
        // row) before the tensor is read.
        let mut y = unsafe { Tensor::uninitialized::<f32>(shape)? };
        {
            let x = inputs[0].try_as_plain_ram()?;
            let r = inputs.get(1).map(|r| r.try_as_plain_ram()).transpose()?;
            let r = r.as_ref().map(|r| r.as_slice::<f32>()).transpose()?;
            let mut yr = y.try_as_plain_ram_mut()?;
            add_layer_norm_f32(
                kernel_of(self.kernel),
                x.as_slice::<f32>()?,
                r,
                &self.gamma,
                self.beta.as_deref(),
                self.eps,
                yr.as_slice_mut::<f32>()?,
                self.threads,
            );
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for AddLayerNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 || inputs.len() == 2);
        for f in inputs {
            ensure!(f.datum_type == f32::datum_type() && f.shape == inputs[0].shape);
        }
        ensure!(inputs[0].shape.last() == Some(&self.gamma.len().to_dim()));
        Ok(tvec!(inputs[0].without_value()))
    }

    as_op!();
}

/// `x * (erf(x / div) + 1) * 0.5`, element-wise on f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Gelu {
    pub div: f32,
    pub kernel: Option<OpsKernel>,
    /// Chunks split over this many threads when big enough (1 = calling thread).
    pub threads: usize,
}

impl Eq for Gelu {}

impl Op for Gelu {
    fn name(&self) -> StaticName {
        "GeluErf".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Gelu {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let mut y = x.into_tensor();
        {
            let mut yr = y.try_as_plain_ram_mut()?;
            gelu_f32(
                kernel_of(self.kernel),
                yr.as_slice_mut::<f32>()?,
                self.div,
                self.threads,
            );
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for Gelu {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(inputs[0].without_value()))
    }

    as_op!();
}
