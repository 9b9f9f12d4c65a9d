//! Multi-head attention as one tract op ([`Attention`]) reading the Q, K and V projections
//! in their `[batch, seq, heads * head_dim]` layout and writing the context in the same
//! layout: no head transposes, no `heads x S x S` scores tensor, no separate scale, mask,
//! softmax and NaN-guard passes. The kernel is [`super::kernels::attention_f32`].

use tract_core::internal::*;

use super::kernels::{attention_f32, AttnDims, MaskView, OpsKernel};

/// `softmax(Q K^T * scale + mask) V` per head. Inputs: Q `[B, Sq, H*D]`, K and V
/// `[B, Sk, H*D]` (f32), optionally an additive f32 mask broadcastable to `[B, H, Sq, Sk]`
/// (rank <= 4, last axis `Sk`). Output `[B, Sq, H*D]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Attention {
    pub heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Rows with every key masked give 0 (torch's SDPA export guards softmax with
    /// `Where(IsNaN(p), 0, p)`), else NaN.
    pub nan_to_zero: bool,
    /// `None`: the best kernel for this CPU.
    pub kernel: Option<OpsKernel>,
    /// Heads split over this many threads (1 = calling thread only).
    pub threads: usize,
}

impl Eq for Attention {}

impl Attention {
    fn kernel(&self) -> OpsKernel {
        match self.kernel {
            Some(k) if k.is_available() => k,
            _ => OpsKernel::best(),
        }
    }
}

impl Op for Attention {
    fn name(&self) -> StaticName {
        "Attention".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "heads={} head_dim={} scale={} nan_to_zero={} kernel={} threads={}",
            self.heads,
            self.head_dim,
            self.scale,
            self.nan_to_zero,
            self.kernel().name(),
            self.threads
        )])
    }

    op_as_typed_op!();
}

/// Strides of an additive mask of `shape` broadcast to `[b, h, sq, sk]`.
fn mask_strides(
    shape: &[usize],
    b: usize,
    h: usize,
    sq: usize,
    sk: usize,
) -> TractResult<MaskStrides> {
    ensure!(shape.len() <= 4, "Attention: mask of rank {}", shape.len());
    let mut s = [1usize; 4];
    s[4 - shape.len()..].copy_from_slice(shape);
    let want = [b, h, sq, sk];
    for ax in 0..4 {
        ensure!(
            s[ax] == want[ax] || (s[ax] == 1 && ax < 3),
            "Attention: mask shape {shape:?} does not broadcast to {want:?}"
        );
    }
    let si = if s[2] == 1 { 0 } else { s[3] };
    let sh = if s[1] == 1 { 0 } else { s[2] * s[3] };
    let sb = if s[0] == 1 { 0 } else { s[1] * s[2] * s[3] };
    Ok(MaskStrides { sb, sh, si })
}

struct MaskStrides {
    sb: usize,
    sh: usize,
    si: usize,
}

impl EvalOp for Attention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 3 || inputs.len() == 4,
            "Attention: {} inputs",
            inputs.len()
        );
        let hd = self.heads * self.head_dim;
        let (qs, ks, vs) = (inputs[0].shape(), inputs[1].shape(), inputs[2].shape());
        ensure!(
            qs.len() == 3
                && qs[2] == hd
                && ks.len() == 3
                && ks == vs
                && ks[2] == hd
                && ks[0] == qs[0],
            "Attention: shapes Q {qs:?} K {ks:?} V {vs:?}, heads x head_dim = {hd}"
        );
        let dims = AttnDims {
            batch: qs[0],
            seq_q: qs[1],
            seq_k: ks[1],
            heads: self.heads,
            head_dim: self.head_dim,
        };
        // SAFETY: f32 has no invalid bit patterns, and the kernel writes every element
        // (every row of every head) before the tensor is read.
        let mut y = unsafe { Tensor::uninitialized::<f32>(qs)? };
        {
            let (q, k, v) = (
                inputs[0].try_as_plain_ram()?,
                inputs[1].try_as_plain_ram()?,
                inputs[2].try_as_plain_ram()?,
            );
            let mask_ram = inputs.get(3).map(|m| m.try_as_plain_ram()).transpose()?;
            let mask = match (&mask_ram, inputs.get(3)) {
                (Some(ram), Some(m)) => {
                    let st =
                        mask_strides(m.shape(), dims.batch, dims.heads, dims.seq_q, dims.seq_k)?;
                    Some(MaskView {
                        data: ram.as_slice::<f32>()?,
                        sb: st.sb,
                        sh: st.sh,
                        si: st.si,
                    })
                }
                _ => None,
            };
            let mut yr = y.try_as_plain_ram_mut()?;
            attention_f32(
                self.kernel(),
                q.as_slice::<f32>()?,
                k.as_slice::<f32>()?,
                v.as_slice::<f32>()?,
                mask,
                dims,
                self.scale,
                self.nan_to_zero,
                yr.as_slice_mut::<f32>()?,
                self.threads,
            );
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for Attention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 3 || inputs.len() == 4);
        let hd = (self.heads * self.head_dim).to_dim();
        for (i, f) in inputs.iter().enumerate() {
            ensure!(
                f.datum_type == f32::datum_type(),
                "Attention: input {i} is {:?}",
                f.datum_type
            );
        }
        for f in &inputs[..3] {
            ensure!(
                f.rank() == 3 && f.shape[2] == hd,
                "Attention: input {f:?}, H*D = {hd}"
            );
        }
        ensure!(
            inputs[1].shape == inputs[2].shape,
            "Attention: K {:?} V {:?}",
            inputs[1],
            inputs[2]
        );
        if let Some(m) = inputs.get(3) {
            ensure!(m.rank() <= 4, "Attention: mask {m:?}");
        }
        Ok(tvec!(inputs[0].without_value()))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let q = &inputs[0].shape;
        let sk = &inputs[1].shape[1];
        Ok(tvec!((
            Cost::FMA(f32::datum_type()),
            q[0].clone() * q[1].clone() * sk.clone() * (2 * self.heads * self.head_dim)
        )))
    }

    as_op!();
}
