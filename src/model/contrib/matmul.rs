//! The matmul ops: `FusedMatMul` (transposes and a scale around a `MatMul`),
//! `MatMulIntegerToFloat` and `DynamicQuantizeMatMul` (the `quantize_dynamic` int8 chain).

use anyhow::{anyhow, bail, Result};
use tract_onnx::pb::NodeProto;

use super::builder::Builder;
use super::graph::{attr_f, attr_i, input, required, GraphInfo};

/// `FusedMatMul(A, B)` into `out0`: `Mul(A, alpha)` + `Transpose` for `transA`/`transB` +
/// `MatMul`.
pub(super) fn fused_matmul(
    b: &mut Builder,
    n: &NodeProto,
    g: &GraphInfo,
    out0: &str,
) -> Result<()> {
    if attr_i(n, "transBatchA", 0) != 0 || attr_i(n, "transBatchB", 0) != 0 {
        bail!("transBatchA/transBatchB are not supported");
    }
    let mut ab = [
        required(n, 0, "A")?.to_string(),
        required(n, 1, "B")?.to_string(),
    ];
    for (i, t) in ["transA", "transB"].iter().enumerate() {
        if attr_i(n, t, 0) != 0 {
            let r = g
                .rank(&ab[i])
                .filter(|&r| r >= 2)
                .ok_or_else(|| anyhow!("{t}: the rank of {:?} is unknown", ab[i]))?
                as i64;
            let mut perm: Vec<i64> = (0..r).collect();
            perm.swap(r as usize - 2, r as usize - 1);
            ab[i] = b.transpose(&ab[i], &perm);
        }
    }
    // alpha scales A (as the scale on Q of a plain export: the attention rewrite
    // folds it from there, and finds the scores' mask `Add` right after the MatMul)
    let alpha = attr_f(n, "alpha", 1.0);
    if alpha != 1.0 {
        let a = b.f32s(&[alpha], &[]);
        ab[0] = b.node("Mul", &[&ab[0], &a], vec![]);
    }
    b.node_to("MatMul", &[&ab[0], &ab[1]], &[out0], vec![]);
    Ok(())
}

/// `MatMulIntegerToFloat(A, B, a_s, b_s, a_zp?, b_zp?, bias?)` into `out0`.
pub(super) fn matmul_integer_to_float(b: &mut Builder, n: &NodeProto, out0: &str) -> Result<()> {
    b.int_matmul(
        required(n, 0, "A")?,
        required(n, 1, "B")?,
        required(n, 2, "a_scale")?,
        required(n, 3, "b_scale")?,
        input(n, 4),
        input(n, 5),
        input(n, 6),
        Some(out0),
    );
    Ok(())
}

/// `DynamicQuantizeMatMul(A, B, b_s, b_zp?, bias?)` into `out0`: `DynamicQuantizeLinear(A)`
/// + the `MatMulIntegerToFloat` chain.
pub(super) fn dynamic_quantize_matmul(b: &mut Builder, n: &NodeProto, out0: &str) -> Result<()> {
    let a = required(n, 0, "A")?;
    let (q, s, z) = (b.fresh("q"), b.fresh("scale"), b.fresh("zp"));
    b.node_to("DynamicQuantizeLinear", &[a], &[&q, &s, &z], vec![]);
    b.int_matmul(
        &q,
        required(n, 1, "B")?,
        &s,
        required(n, 2, "b_scale")?,
        Some(&z),
        input(n, 3),
        input(n, 4),
        Some(out0),
    );
    Ok(())
}
