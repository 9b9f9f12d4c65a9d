//! Start-up self-check against the golden outputs that `models/export.py` writes into
//! `manifest.json`: a broken kernel on a new board, a wrong tokenizer or a damaged file is
//! caught before the service answers anything.
//!
//! The rule is the parity tests' rule: for each golden text our token ids must be equal, and
//! our output must be as close to onnxruntime fp32 as onnxruntime's own int8 output is (at most
//! twice its error, plus [`EPSILON`]).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

/// Absolute slack on top of twice onnxruntime's int8 error (goldens are rounded to 6 decimals).
pub const EPSILON: f32 = 2e-3;

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    golden: Vec<Golden>,
    #[serde(default)]
    files: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Golden {
    text: String,
    input_ids: Vec<i64>,
    ort_int8: Value,
    ort_fp32: Value,
}

/// What the check saw.
#[derive(Clone, Copy, Debug)]
pub struct Report {
    /// Golden texts checked (0 when the folder has no manifest).
    pub checked: usize,
    /// Largest |ours - ort_fp32| over all values.
    pub max_error: f32,
    /// The bound for the sentence with the largest error.
    pub bound: f32,
}

/// Runs every golden text of `dir/manifest.json` through `raw_output` (token ids and raw output
/// in the references' shape: `Engine::raw_output`); texts longer than
/// `max_ids` ids (one window) are left out. No manifest: nothing to check (`checked == 0`). A
/// drift beyond the bound is an error naming the text.
pub fn check(
    dir: &Path,
    max_ids: usize,
    raw_output: impl Fn(&str) -> Result<(Vec<i64>, Vec<f32>)>,
) -> Result<Report> {
    let path = dir.join("manifest.json");
    let mut report = Report {
        checked: 0,
        max_error: 0.0,
        bound: 0.0,
    };
    if !path.exists() {
        return Ok(report);
    }
    let manifest = load(&path)?;
    for golden in &manifest.golden {
        if golden.input_ids.len() > max_ids {
            // With a window smaller than the text, outputs are stitched, not the reference's.
            log::warn!(
                "self-check: {:?} is longer than one window, skipped",
                golden.text
            );
            continue;
        }
        let (ids, ours) = raw_output(&golden.text)?;
        if ids != golden.input_ids {
            bail!(
                "self-check: token ids of {:?} differ from the manifest's ({ids:?} vs {:?}): wrong tokenizer files?",
                golden.text,
                golden.input_ids
            );
        }
        let fp32 = flatten(&golden.ort_fp32);
        let int8 = flatten(&golden.ort_int8);
        if ours.len() != fp32.len() || int8.len() != fp32.len() {
            bail!(
                "self-check: output of {:?} has {} values, the manifest {}",
                golden.text,
                ours.len(),
                fp32.len()
            );
        }
        let error = max_abs_diff(&ours, &fp32);
        let bound = 2.0 * max_abs_diff(&int8, &fp32) + EPSILON;
        // NaN on either side fails the check
        if error.partial_cmp(&bound).is_none_or(|o| o.is_gt()) {
            bail!(
                "self-check failed on {:?}: outputs differ from the reference by {error} (allowed {bound}); \
                 this build computes wrong results on this machine, or the model file is damaged",
                golden.text
            );
        }
        if error >= report.max_error {
            report.max_error = error;
            report.bound = bound;
        }
        report.checked += 1;
    }
    Ok(report)
}

/// Names of the manifest's files whose sha256 differs from the file on disk.
pub fn mismatched_files(dir: &Path) -> Result<Vec<String>> {
    use sha2::{Digest, Sha256};
    let path = dir.join("manifest.json");
    let manifest = load(&path)?;
    let mut bad = vec![];
    for (name, expected) in &manifest.files {
        let file = dir.join(name);
        let digest = match std::fs::read(&file) {
            Ok(bytes) => Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            Err(e) => format!("unreadable: {e}"),
        };
        if &digest != expected {
            bad.push(name.clone());
        }
    }
    Ok(bad)
}

fn load(path: &Path) -> Result<Manifest> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))
}

/// Numbers of a JSON value in document order; encoder references are `{"cls": [...], "mean": [...]}`
/// and give `cls` then `mean`.
pub fn flatten(v: &Value) -> Vec<f32> {
    match v {
        Value::Number(n) => vec![n.as_f64().unwrap_or(f64::NAN) as f32],
        Value::Array(items) => items.iter().flat_map(flatten).collect(),
        Value::Object(o) => ["cls", "mean"]
            .iter()
            .flat_map(|k| o.get(*k).map(flatten).unwrap_or_default())
            .collect(),
        _ => vec![f32::NAN],
    }
}

/// Largest absolute difference; NaN if either side has a NaN.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    // NaN-propagating: a NaN output must fail the check, not pass it.
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| {
            if d.is_nan() || m.is_nan() {
                f32::NAN
            } else {
                m.max(d)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_and_distance() {
        let v: Value = serde_json::json!({"mean": [3.0], "cls": [1.0, 2.0]});
        assert_eq!(flatten(&v), [1.0, 2.0, 3.0]);
        assert_eq!(flatten(&serde_json::json!([[1.0], [2.5]])), [1.0, 2.5]);
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.5, 1.0]), 1.0);
        assert!(max_abs_diff(&[f32::NAN, 2.0], &[1.0, 2.0]).is_nan());
    }
}
