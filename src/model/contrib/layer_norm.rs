//! The LayerNorm family: `SkipLayerNormalization` (residual add + LayerNorm) and
//! `EmbedLayerNormalization` / `QEmbedLayerNormalization` (embedding lookups + LayerNorm).

use anyhow::{anyhow, bail, Result};
use tract_onnx::pb::{tensor_proto::DataType, NodeProto};

use super::builder::{int_attr, ints_attr, Builder};
use super::graph::{attr_f, input, required, GraphInfo};

/// `SkipLayerNormalization(x, skip, gamma, beta?, bias?)` into `out0`: `Add(Add(x, bias),
/// skip)` + `LayerNormalization`, its sum output kept when used.
pub(super) fn skip_layer_norm(
    b: &mut Builder,
    n: &NodeProto,
    g: &GraphInfo,
    out0: &str,
) -> Result<()> {
    for (i, what) in [(1, "mean"), (2, "inv_std_var")] {
        if n.output.get(i).is_some_and(|o| g.is_used(o)) {
            bail!("its {what} output is not supported");
        }
    }
    let x = required(n, 0, "input")?;
    let skip = required(n, 1, "skip")?;
    let gamma = required(n, 2, "gamma")?;
    let x = match input(n, 4) {
        Some(bias) => b.node("Add", &[x, bias], vec![]),
        None => x.to_string(),
    };
    let sum = match n.output.get(3).filter(|o| g.is_used(o)) {
        Some(o) => {
            b.node_to("Add", &[&x, skip], &[o], vec![]);
            o.clone()
        }
        None => b.node("Add", &[&x, skip], vec![]),
    };
    b.layer_norm(&sum, gamma, input(n, 3), attr_f(n, "epsilon", 1e-12), out0);
    Ok(())
}

/// `EmbedLayerNormalization`, or with `quantized` `QEmbedLayerNormalization`: tables, gamma
/// and beta as u8 with a scale and zero point each (inputs 8..=12 and 13..=17), the rows
/// gathered first and then dequantized.
pub(super) fn embed_layer_norm(
    b: &mut Builder,
    n: &NodeProto,
    g: &GraphInfo,
    out0: &str,
    quantized: bool,
) -> Result<()> {
    // input i, dequantized when the node is the quantized one (after `gather` for tables)
    let deq = |b: &mut Builder, x: String, i: usize| -> Result<String> {
        if !quantized {
            return Ok(x);
        }
        let scale = required(n, i + 6, "scale")?;
        let mut ins = vec![x.as_str(), scale];
        ins.extend(input(n, i + 11));
        Ok(b.node("DequantizeLinear", &ins, vec![]))
    };
    let ids = required(n, 0, "input_ids")?;
    let word = required(n, 2, "word_embedding")?;
    let pos = required(n, 3, "position_embedding")?;
    let gamma = required(n, 5, "gamma")?.to_string();
    let beta = required(n, 6, "beta")?.to_string();
    let gamma = deq(b, gamma, 5)?;
    let beta = deq(b, beta, 6)?;
    let gather = |b: &mut Builder, table: &str, idx: &str, i: usize| -> Result<String> {
        let rows = b.node("Gather", &[table, idx], vec![int_attr("axis", 0)]);
        deq(b, rows, i)
    };
    let w = gather(b, word, ids, 2)?;
    let p = match input(n, 8).filter(|_| !quantized) {
        Some(pos_ids) => gather(b, pos, pos_ids, 3)?,
        None => {
            // positions 0..S
            let shape = b.node("Shape", &[ids], vec![]);
            let one = b.i64s(&[1], &[]);
            let len = b.node("Gather", &[&shape, &one], vec![int_attr("axis", 0)]);
            let start = b.i64s(&[0], &[]);
            let range = b.node("Range", &[&start, &len, &one], vec![]);
            gather(b, pos, &range, 3)?
        }
    };
    let mut sum = b.node("Add", &[&w, &p], vec![]);
    if let (Some(seg), Some(table)) = (input(n, 1), input(n, 4)) {
        let s = gather(b, table, seg, 4)?;
        sum = b.node("Add", &[&sum, &s], vec![]);
    }
    if let Some(o) = n.output.get(2).filter(|o| g.is_used(o)) {
        b.node_to("Identity", &[&sum], &[o], vec![]);
    }
    b.layer_norm(&sum, &gamma, Some(&beta), attr_f(n, "epsilon", 1e-12), out0);
    if let Some(o) = n.output.get(1).filter(|o| g.is_used(o)) {
        let mask = input(n, 7).ok_or_else(|| {
            anyhow!("its mask_index output is used but it has no mask input (not supported)")
        })?;
        let m = b.cast(mask, DataType::Int32);
        let s = if b.opset >= 13 {
            let axes = b.i64s(&[1], &[1]);
            b.node("ReduceSum", &[&m, &axes], vec![int_attr("keepdims", 0)])
        } else {
            b.node(
                "ReduceSum",
                &[&m],
                vec![ints_attr("axes", &[1]), int_attr("keepdims", 0)],
            )
        };
        b.node_to("Identity", &[&s], &[o], vec![]);
    }
    Ok(())
}
