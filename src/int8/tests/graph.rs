//! The graph rewrite against tract's own int8 path on the fixtures' models (every kernel
//! available here), and packed weights through a sidecar file.

use std::sync::Arc;

use tract_core::internal::*;
use tract_core::ops::einsum::EinSum;

use crate::int8::op::typed_for_tests as typed;
use crate::int8::*;

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
            tract_ndarray::Array2::from_shape_fn((1, seq), |(_, j)| (100 + 37 * j as i64) % 5000)
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
    let report = fuse_quantized_matmuls_from(&mut mapped, &FuseOptions::default(), Some(&side))?;
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
