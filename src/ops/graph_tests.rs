//! The rewrite on the fixtures' real graphs: every attention, LayerNorm and GELU replaced,
//! and the outputs equal to tract's own (unfused) result.

use tract_onnx::prelude::*;

use super::tests::kernels_here;
use super::*;
use crate::int8::fuse_quantized_matmuls;

use crate::testutil::fixture;

use crate::int8::op::typed_for_tests as typed;

/// Token ids, and an attention mask with the last `pad` positions masked.
fn inputs(model: &TypedModel, seq: usize, pad: usize) -> TractResult<TVec<TValue>> {
    let mut v = tvec![];
    for o in model.input_outlets()? {
        let name = &model.node(o.node).name;
        let t: Tensor = if name.contains("mask") {
            tract_ndarray::Array2::<i64>::from_shape_fn((1, seq), |(_, j)| (j + pad < seq) as i64)
                .into()
        } else if name.contains("type") {
            tract_ndarray::Array2::<i64>::zeros((1, seq)).into()
        } else {
            tract_ndarray::Array2::from_shape_fn((1, seq), |(_, j)| (100 + 37 * j as i64) % 5000)
                .into()
        };
        v.push(t.into_tvalue());
    }
    Ok(v)
}

fn layers(dir: &std::path::Path) -> usize {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg["num_hidden_layers"].as_u64().unwrap() as usize
}

fn max_abs_diff(a: &TValue, b: &TValue) -> TractResult<(f32, f32)> {
    let (a, b) = (a.cast_to::<f32>()?, b.cast_to::<f32>()?);
    let (a, b) = (
        a.try_as_plain_ram()?.as_slice::<f32>()?.to_vec(),
        b.try_as_plain_ram()?.as_slice::<f32>()?.to_vec(),
    );
    assert_eq!(a.len(), b.len());
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let m = a.iter().map(|x| x.abs()).fold(0f32, f32::max);
    Ok((d, m))
}

/// fp32 graphs: fused vs tract to 1e-5 (relative to the largest output, at least 1; seen:
/// <= 1e-6). int8 graphs (int8 matmuls fused on both sides): a 1e-7 difference in an f32 op
/// may flip a rounding in the next dynamic quantization, so two equally good int8 results
/// differ by the quantization noise (seen: up to 3e-3 of the output scale); bound 1e-2 here,
/// the parity suite checks int8 against fp32.
#[test]
fn fused_graphs_match_tract() -> TractResult<()> {
    let heads = ["discriminator", "classifier", "tagger", "encoder"];
    for head in heads {
        let dir = fixture(&format!("electra-tiny-zh/{head}"));
        assert!(dir.exists(), "fixture {} missing", dir.display());
        let n = layers(&dir);
        for (file, tol) in [("model.fp32.onnx", 1e-5f32), ("model.onnx", 1e-2)] {
            let path = dir.join(file);
            let mut base = typed(&path)?;
            let int8 = fuse_quantized_matmuls(&mut base)? > 0;
            let count = |name: &str| base.nodes().iter().filter(|x| x.op.name() == name).count();
            let (erfs, norms) = (count("Erf"), count("Rsqrt"));
            let reference = base.clone().into_optimized()?.into_runnable()?;
            for kernel in kernels_here() {
                let mut fused = base.clone();
                let opts = OpsOptions {
                    kernel: Some(kernel),
                    threads: 2,
                };
                let report = fuse_transformer_ops(&mut fused, &opts)?;
                assert_eq!(report.attention, n, "{head} {file}: {report:?}");
                // two per layer, one after the embeddings, all after an add
                assert!(norms > 2 * n, "{head} {file}: {norms} LayerNorms");
                assert_eq!(report.layer_norms, norms, "{head} {file}: {report:?}");
                assert_eq!(report.residual_adds, norms, "{head} {file}: {report:?}");
                // one per layer, plus the discriminator's prediction head
                assert!(erfs >= n, "{head} {file}: {erfs} Erf");
                assert_eq!(report.gelus, erfs, "{head} {file}: {report:?}");
                assert_eq!(report.gelus_in_matmul, if int8 { erfs } else { 0 });
                for name in ["Softmax", "IsNan", "Erf", "Rsqrt"] {
                    assert!(
                        fused.nodes().iter().all(|x| x.op.name() != name),
                        "{head} {file}: a {name} is left"
                    );
                }
                let plan = fused.into_optimized()?.into_runnable()?;
                for (seq, pad) in [(1, 0), (7, 2), (33, 0), (70, 5)] {
                    let want = reference.run(inputs(&base, seq, pad)?)?;
                    let got = plan.run(inputs(&base, seq, pad)?)?;
                    for (w, g) in want.iter().zip(&got) {
                        let (d, m) = max_abs_diff(w, g)?;
                        eprintln!(
                            "{head} {file} {} seq {seq} pad {pad}: max |diff| {d:e} (max |y| {m:e})",
                            kernel.name()
                        );
                        assert!(
                            d <= tol * m.max(1.0),
                            "{head} {file} {} seq {seq}: {d} vs {m}",
                            kernel.name()
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// The whole rewritten graph (int8 matmuls with their GELU, attention, LayerNorms; fp32
/// graphs: GELU op) gives the same bits on 1, 2 and 3 threads: every op splits its work so
/// that each element is computed the same way wherever it runs (unit tests split even tiny
/// inputs).
#[test]
fn rewritten_graphs_are_the_same_on_any_threads() -> TractResult<()> {
    use crate::int8::{fuse_quantized_matmuls_with, FuseOptions};
    for head in ["discriminator", "tagger"] {
        let dir = fixture(&format!("electra-tiny-zh/{head}"));
        for file in ["model.onnx", "model.fp32.onnx"] {
            let base = typed(dir.join(file))?;
            let plan = |threads: usize| -> TractResult<_> {
                let mut m = base.clone();
                let fuse = FuseOptions {
                    kernel: None,
                    threads,
                };
                fuse_quantized_matmuls_with(&mut m, &fuse)?;
                let ops = OpsOptions {
                    kernel: None,
                    threads,
                };
                let report = fuse_transformer_ops(&mut m, &ops)?;
                assert!(report.attention > 0 && report.layer_norms > 0 && report.gelus > 0);
                m.into_optimized()?.into_runnable()
            };
            let one = plan(1)?;
            for threads in [2, 3] {
                let many = plan(threads)?;
                for (seq, pad) in [(1, 0), (7, 2), (33, 0), (70, 5)] {
                    let want = one.run(inputs(&base, seq, pad)?)?;
                    let got = many.run(inputs(&base, seq, pad)?)?;
                    for (w, g) in want.iter().zip(&got) {
                        let (w, g) = (w.cast_to::<f32>()?, g.cast_to::<f32>()?);
                        let (w, g) = (
                            w.try_as_plain_ram()?.as_slice::<f32>()?.to_vec(),
                            g.try_as_plain_ram()?.as_slice::<f32>()?.to_vec(),
                        );
                        assert_eq!(w.len(), g.len());
                        assert!(
                            w.iter().zip(&g).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{head} {file} seq {seq} pad {pad}: x{threads} differs from x1"
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
