//! A real trained BERT-family encoder: sentence-transformers' all-MiniLM-L6-v2 (`BertModel`,
//! 6 layers, hidden 384) from `../shared/fixtures/minilm-l6` (see its README), served by
//! `electra-edge run --task embed --normalize --raw` as a user runs it.
//!
//! For every sentence of the fixture's `reference.jsonl`:
//! - our token ids equal the reference ids (the model's own tokenizer);
//! - the int8 per-channel graph (`model.onnx`) gives an embedding with cosine >= 0.99 to
//!   sentence-transformers' own fp32 embedding (`sentence_transformers_fp32`), the figure asked
//!   of an int8 folder;
//! - it agrees with onnxruntime on the same graph (`ort_int8_per_channel`); onnxruntime's AVX2
//!   u8 x s8 kernel saturates on x86-64 without VNNI and tract accumulates exactly in i32, so
//!   the two differ by more than rounding but stay close;
//! - the per-tensor graph agrees with onnxruntime's per-tensor run (`ort_int8_per_tensor`),
//!   and is measurably worse than per-channel against sentence-transformers (trained weights
//!   have outliers), which the test records.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{fixtures, read_jsonl};
use serde_json::Value;

/// Lower bound of cosine(ours, sentence-transformers fp32), per sentence.
const MIN_COSINE_TO_ST: f64 = 0.99;
/// Lower bound of cosine(ours, onnxruntime on the same int8 graph), per sentence.
const MIN_COSINE_TO_ORT: f64 = 0.995;

fn minilm() -> PathBuf {
    let dir = fixtures().join("minilm-l6");
    assert!(
        dir.join("reference.jsonl").is_file() && dir.join("model.per-tensor.onnx").is_file(),
        "missing fixture {}: put the shared minilm-l6 folder (model.onnx, model.per-tensor.onnx, \
         reference.jsonl, config.json, tokenizer.json) beside the repository",
        dir.display()
    );
    dir
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Runs `electra-edge run` on the texts (one per line); returns one answer per text.
fn embed(dir: &Path, onnx: Option<&str>, texts: &[String]) -> Vec<Value> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_electra-edge"));
    cmd.args(["run", "--model"])
        .arg(dir)
        .args(["--task", "embed", "--normalize", "--raw"]);
    if let Some(file) = onnx {
        cmd.arg("--onnx").arg(dir.join(file));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input: String = texts.iter().map(|t| format!("{t}\n")).collect();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "electra-edge run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert_eq!(answers.len(), texts.len(), "one answer per line");
    answers
}

struct Scores {
    to_st: Vec<f64>,
    to_ort: Vec<f64>,
}

fn scores(onnx: Option<&str>, ort_key: &str) -> Scores {
    let dir = minilm();
    let refs = read_jsonl(&dir.join("reference.jsonl"));
    assert_eq!(refs.len(), 30, "expected 30 reference sentences");
    let texts: Vec<String> = refs
        .iter()
        .map(|r| r["text"].as_str().unwrap().to_string())
        .collect();
    let answers = embed(&dir, onnx, &texts);
    let mut s = Scores {
        to_st: vec![],
        to_ort: vec![],
    };
    for (r, a) in refs.iter().zip(&answers) {
        let text = r["text"].as_str().unwrap();
        assert_eq!(
            ids(&a["input_ids"]),
            ids(&r["input_ids"]),
            "ids of {text:?}"
        );
        let ours = floats(&a["embedding"]);
        assert_eq!(ours.len(), 384, "{text:?}");
        let norm: f64 = ours.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{text:?}: norm {norm}");
        s.to_st
            .push(cosine(&ours, &floats(&r["sentence_transformers_fp32"])));
        s.to_ort.push(cosine(&ours, &floats(&r[ort_key])));
    }
    s
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn per_channel_int8_matches_sentence_transformers() {
    let s = scores(None, "ort_int8_per_channel");
    eprintln!(
        "minilm per-channel int8: cosine to sentence-transformers min {:.5} mean {:.5}; \
         to onnxruntime min {:.5}",
        min(&s.to_st),
        mean(&s.to_st),
        min(&s.to_ort)
    );
    for (i, c) in s.to_st.iter().enumerate() {
        assert!(
            *c >= MIN_COSINE_TO_ST,
            "sentence {i}: cosine {c:.5} to sentence-transformers < {MIN_COSINE_TO_ST}"
        );
    }
    for (i, c) in s.to_ort.iter().enumerate() {
        assert!(
            *c >= MIN_COSINE_TO_ORT,
            "sentence {i}: cosine {c:.5} to onnxruntime per-channel < {MIN_COSINE_TO_ORT}"
        );
    }
}

#[test]
fn per_tensor_int8_agrees_with_onnxruntime_and_loses_to_per_channel() {
    let pt = scores(Some("model.per-tensor.onnx"), "ort_int8_per_tensor");
    eprintln!(
        "minilm per-tensor int8: cosine to sentence-transformers min {:.5} mean {:.5}; \
         to onnxruntime min {:.5}",
        min(&pt.to_st),
        mean(&pt.to_st),
        min(&pt.to_ort)
    );
    for (i, c) in pt.to_ort.iter().enumerate() {
        assert!(
            *c >= MIN_COSINE_TO_ORT,
            "sentence {i}: cosine {c:.5} to onnxruntime per-tensor < {MIN_COSINE_TO_ORT}"
        );
    }
    // The fixture's README: per-tensor int8 reaches only ~0.96-0.97 on this trained model.
    let pc = scores(None, "ort_int8_per_channel");
    assert!(
        mean(&pt.to_st) < mean(&pc.to_st),
        "per-tensor mean cosine {:.5} should be below per-channel {:.5}",
        mean(&pt.to_st),
        mean(&pc.to_st)
    );
    assert!(
        min(&pt.to_st) > 0.9,
        "per-tensor min cosine {:.5}",
        min(&pt.to_st)
    );
}
