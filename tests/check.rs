//! The self-check against `manifest.json` golden outputs, on the committed demo models (made by
//! `models/export.py`), and on damaged copies of them.

mod common;

use common::{copy_folder, demo_models, electra_edge, TempDir};
use electra_edge::engine::{Engine, EngineOptions};
use electra_edge::selfcheck;

#[test]
fn demo_models_pass_their_golden_outputs() {
    for head in ["discriminator", "classifier", "tagger", "encoder"] {
        let dir = demo_models().join(head);
        let engine = Engine::load(&dir, EngineOptions::default()).unwrap();
        let report = engine.self_check.unwrap();
        assert!(report.checked >= 3, "{head}: {report:?}");
        assert!(report.max_error <= report.bound, "{head}: {report:?}");
        assert!(
            selfcheck::mismatched_files(&dir).unwrap().is_empty(),
            "{head}"
        );
    }
}

fn check_command(dir: &std::path::Path) -> (bool, String) {
    let out = electra_edge()
        .args(["check", "--model", &dir.display().to_string()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn check_command_reports_drift_and_damage() {
    let (ok, text) = check_command(&demo_models().join("tagger"));
    assert!(ok && text.starts_with("ok: "), "{text}");

    // Golden outputs that the model does not produce: the check must refuse.
    let dir = TempDir::new("drift");
    copy_folder(&demo_models().join("discriminator"), dir.path());
    let manifest_path = dir.path().join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    let golden = &mut manifest["golden"][0];
    let shifted: Vec<f64> = golden["ort_fp32"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() + 0.5)
        .collect();
    golden["ort_fp32"] = shifted.clone().into();
    golden["ort_int8"] = shifted.into();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let unchecked = EngineOptions {
        self_check: false,
        ..Default::default()
    };
    let engine = Engine::load(dir.path(), unchecked).unwrap();
    let err = engine.self_check().unwrap_err().to_string();
    assert!(err.contains("self-check failed"), "{err}");
    // Loading runs the same check and refuses to start.
    let err = Engine::load(dir.path(), EngineOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("self-check failed"), "{err}");
    let (ok, text) = check_command(dir.path());
    assert!(!ok && text.contains("self-check failed"), "{text}");

    // A model file that differs from its checksum.
    let dir = TempDir::new("damaged");
    copy_folder(&demo_models().join("classifier"), dir.path());
    let model = dir.path().join("model.onnx");
    let mut bytes = std::fs::read(&model).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&model, bytes).unwrap();
    let (ok, text) = check_command(dir.path());
    assert!(!ok && text.contains("model.onnx"), "{text}");
}
