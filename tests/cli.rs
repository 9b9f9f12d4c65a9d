//! `electra-edge run` as a user runs it: a real process, stdin in, JSON lines out.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Output, Stdio};

use common::{copy_folder, electra_edge, fixtures, TempDir};
use serde_json::Value;

fn run_with_input(args: &[&str], input: &[u8]) -> Output {
    let mut child = electra_edge()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    output
}

fn lines(output: &Output) -> Vec<Value> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn tiny(head: &str) -> String {
    fixtures()
        .join("electra-tiny-zh")
        .join(head)
        .display()
        .to_string()
}

#[test]
fn plain_line_gets_per_character_scores() {
    let out = run_with_input(
        &["run", "--model", &tiny("discriminator")],
        "我爱北京天安门\n".as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = lines(&out);
    assert_eq!(lines.len(), 1);
    let tokens = lines[0]["tokens"].as_array().unwrap();
    let chars: Vec<&str> = tokens.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(chars, ["我", "爱", "北", "京", "天", "安", "门"]);
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(
            (t["start"].as_u64(), t["end"].as_u64()),
            (Some(i as u64), Some(i as u64 + 1))
        );
        let score = t["score"].as_f64().unwrap();
        assert!(score > 0.0 && score < 1.0);
    }
    assert_eq!(lines[0]["task"], "discriminator");
    assert!(lines[0]["flagged"].is_array());
}

#[test]
fn every_line_gets_one_answer_in_order_bad_ones_included() {
    let mut input = Vec::new();
    input.extend_from_slice("{\"id\":1,\"text\":\"我爱北京\"}\n".as_bytes());
    input.extend_from_slice(b"\xff\xfe not utf-8\n");
    input.extend_from_slice(b"{\"id\":2,\"text\": \n");
    input.extend_from_slice(b"\n");
    input.extend_from_slice(
        "{\"id\":\"long\",\"text\":\"一二三四五六七八九十一二三\"}\n".as_bytes(),
    );
    input.extend_from_slice(format!("{}\n", "长".repeat(200_000)).as_bytes());
    input.extend_from_slice(b"{\"id\":[3],\"text\":\"x\",\"bogus\":1}\n");
    input.extend_from_slice("{\"id\":4,\"cmd\":\"ping\"}\n".as_bytes());
    input.extend_from_slice("天安门".as_bytes()); // last line without a newline
    let out = run_with_input(
        &[
            "run",
            "--model",
            &tiny("discriminator"),
            "--max-chars",
            "12",
        ],
        &input,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = lines(&out);
    let codes: Vec<Option<&str>> = lines.iter().map(|l| l["error"]["code"].as_str()).collect();
    assert_eq!(
        codes,
        [
            None,
            Some("invalid_utf8"),
            Some("bad_json"),
            Some("empty_text"),
            Some("too_large"),
            Some("too_large"),
            Some("bad_request"),
            None,
            None
        ]
    );
    assert_eq!(lines[0]["id"], 1);
    assert_eq!(lines[0]["tokens"].as_array().unwrap().len(), 4);
    assert_eq!(lines[4]["id"], "long");
    assert_eq!(lines[6]["id"], serde_json::json!([3]));
    assert_eq!(lines[7], serde_json::json!({"id": 4, "pong": true}));
    assert_eq!(lines[8]["tokens"].as_array().unwrap().len(), 3);
}

#[test]
fn each_task_answers_in_its_shape() {
    let text =
        "{\"id\":\"a\",\"text\":\"张伟在深圳腾讯公司工作。\",\"raw\":true,\"tokens\":true}\n";
    let out = run_with_input(&["run", "--model", &tiny("classifier")], text.as_bytes());
    let c = &lines(&out)[0];
    let labels: Vec<&str> = c["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["negative", "neutral", "positive"]);
    assert!(labels.contains(&c["label"].as_str().unwrap()));
    assert_eq!(c["logits"].as_array().unwrap().len(), 3);

    let out = run_with_input(&["run", "--model", &tiny("tagger")], text.as_bytes());
    let t = &lines(&out)[0];
    assert!(t["entities"].is_array());
    assert_eq!(t["tokens"].as_array().unwrap().len(), 12);
    assert_eq!(t["logits"].as_array().unwrap().len(), 14); // [CLS] + 12 + [SEP]
    assert_eq!(t["logits"][0].as_array().unwrap().len(), 7);

    let out = run_with_input(
        &[
            "run",
            "--model",
            &tiny("encoder"),
            "--normalize",
            "--pooling",
            "cls",
        ],
        text.as_bytes(),
    );
    let e = &lines(&out)[0];
    assert_eq!(
        (
            e["dim"].as_u64(),
            e["pooling"].as_str(),
            e["normalized"].as_bool()
        ),
        (Some(64), Some("cls"), Some(true))
    );
    let norm: f64 = e["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap().powi(2))
        .sum();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");
}

#[test]
fn closed_stdout_is_a_clean_exit() {
    let mut child = electra_edge()
        .args(["run", "--model", &tiny("discriminator")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdin.write_all("我爱北京\n".as_bytes()).unwrap();
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("tokens"));
    drop(stdout);
    // Keep writing until the process notices its closed output and exits.
    for _ in 0..200 {
        if stdin.write_all("我爱北京\n".as_bytes()).is_err() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    drop(stdin);
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "exit {status:?}, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Runs `run` on a broken copy of the tiny discriminator folder and returns (exit ok, stderr).
fn run_broken(break_it: impl Fn(&Path)) -> (bool, String) {
    let dir = TempDir::new("broken");
    copy_folder(
        &fixtures().join("electra-tiny-zh/discriminator"),
        dir.path(),
    );
    break_it(dir.path());
    let out = run_with_input(
        &["run", "--model", &dir.path().display().to_string()],
        "我\n".as_bytes(),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Breaks a copy of a model folder in one way.
type Damage = Box<dyn Fn(&Path)>;

#[test]
fn broken_model_folders_give_one_clear_error() {
    let cases: Vec<(&str, Damage)> = vec![
        (
            "model.onnx",
            Box::new(|d: &Path| std::fs::remove_file(d.join("model.onnx")).unwrap()),
        ),
        (
            "model.onnx",
            Box::new(|d: &Path| {
                let bytes = std::fs::read(d.join("model.onnx")).unwrap();
                std::fs::write(d.join("model.onnx"), &bytes[..bytes.len() / 2]).unwrap();
            }),
        ),
        (
            "model.onnx",
            Box::new(|d: &Path| std::fs::write(d.join("model.onnx"), b"").unwrap()),
        ),
        (
            "model.onnx",
            Box::new(|d: &Path| {
                std::fs::write(d.join("model.onnx"), b"\x08\x07garbage\xff\xff").unwrap()
            }),
        ),
        (
            "config.json",
            Box::new(|d: &Path| std::fs::write(d.join("config.json"), b"{not json").unwrap()),
        ),
        (
            "config.json",
            Box::new(|d: &Path| std::fs::remove_file(d.join("config.json")).unwrap()),
        ),
        (
            "tokenizer.json",
            Box::new(|d: &Path| std::fs::write(d.join("tokenizer.json"), b"[]").unwrap()),
        ),
    ];
    for (file, break_it) in cases {
        let (ok, stderr) = run_broken(break_it);
        assert!(!ok, "a broken {file} must fail the start");
        assert!(
            stderr.contains(file),
            "the error must name {file}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    let out = run_with_input(&["run", "--model", "/nonexistent/model"], b"x\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model"));
}
