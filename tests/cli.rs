//! `electra-edge run` as a user runs it: a real process, stdin in, JSON lines out (or, with
//! `--pretty` or on a terminal, answers for a person to read).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Output, Stdio};

use common::{copy_folder, demo_models, electra_edge, fixtures, TempDir};
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

fn demo_discriminator() -> String {
    demo_models().join("discriminator").display().to_string()
}

/// What the pretty form of a discriminator answer is, built from its JSON line: the text with
/// the flagged spans wrapped in `open` .. `close`, then the detail line.
fn pretty_from_json(json: &Value, open: &str, close: &str) -> String {
    let text: String = json["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    let flagged = json["flagged"].as_array().unwrap();
    let at = |f: &Value, k: &str| f[k].as_u64().unwrap() as usize;
    let mut first = String::new();
    for (i, c) in text.chars().enumerate() {
        if flagged.iter().any(|f| at(f, "start") == i) {
            first.push_str(open);
        }
        first.push(c);
        if flagged.iter().any(|f| at(f, "end") == i + 1) {
            first.push_str(close);
        }
    }
    let detail = if flagged.is_empty() {
        "nothing flagged".to_string()
    } else {
        let items: Vec<String> = flagged
            .iter()
            .map(|f| {
                let score = f["score"].as_f64().unwrap() as f32;
                format!("{open}{}{close} {score:.2}", f["text"].as_str().unwrap())
            })
            .collect();
        format!("flagged: {}", items.join(", "))
    };
    format!("{first}\n  {detail}\n")
}

const PLAIN: (&str, &str) = ("[", "]");
const COLOR: (&str, &str) = ("\x1b[1;31m", "\x1b[0m");

/// `--pretty` on a pipe is the plain form (brackets, no escapes), showing what the JSON answer
/// of the same input at the same threshold flags; `--json` and no flag on a pipe are the same
/// JSON lines; `--color always` draws the highlights with escapes; error lines are one line.
#[test]
fn pretty_and_json_through_the_binary() {
    let model = demo_discriminator();
    let input = "我门今天去学校上课。\n他在图书馆看书\n\n";
    for threshold in ["0.5", "0.1"] {
        let args = |extra: &[&'static str]| {
            let mut a = vec!["run", "--model", &model, "--threshold", threshold];
            a.extend_from_slice(extra);
            a.iter().map(|s| s.to_string()).collect::<Vec<String>>()
        };
        let run = |extra: &[&'static str]| {
            let a = args(extra);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let out = run_with_input(&a, input.as_bytes());
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out
        };
        let json = run(&["--json"]);
        assert_eq!(
            json.stdout,
            run(&[]).stdout,
            "JSON lines by default on a pipe"
        );
        let answers = lines(&json);
        assert_eq!(answers[2]["error"]["code"], "empty_text");
        let message = answers[2]["error"]["message"].as_str().unwrap();
        for (flags, (open, close), error) in [
            (&["--pretty"][..], PLAIN, "error"),
            (
                &["--pretty", "--color", "always"][..],
                COLOR,
                "\x1b[1;31merror\x1b[0m",
            ),
        ] {
            let pretty = String::from_utf8(run(flags).stdout).unwrap();
            let want = format!(
                "{}{}{error} (empty_text): {message}\n",
                pretty_from_json(&answers[0], open, close),
                pretty_from_json(&answers[1], open, close),
            );
            assert_eq!(pretty, want, "{flags:?} at {threshold}");
        }
    }
}

/// Runs `run` with its stdout on a pseudo-terminal (stdin and stderr piped), `input` on stdin;
/// returns what the terminal received, its line ends back to `\n`.
fn run_on_terminal(args: &[&str], env: &[(&str, &str)], input: &str) -> String {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes the two descriptors it opens into `master` and `slave`; a null
    // name, termios and window size are allowed (no name returned, default settings).
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and nothing else owns them.
    let (master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            OwnedFd::from_raw_fd(slave),
        )
    };
    // the command (and its copy of the terminal's slave end) is dropped once spawned: the
    // master then reads end of file (EIO) when the child exits
    let mut child = {
        let mut command = electra_edge();
        command
            .args(args)
            .env_remove("NO_COLOR")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::from(slave))
            .stderr(Stdio::piped());
        command.spawn().unwrap()
    };
    let reader = std::thread::spawn(move || {
        let mut master = master;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = reader.join().unwrap();
    String::from_utf8(got).unwrap().replace("\r\n", "\n")
}

/// On a terminal: the pretty form in colour by default, plain with NO_COLOR or `--color
/// never`, JSON lines with `--json`; each the same answer as on a pipe.
#[test]
fn a_terminal_gets_the_pretty_form_unless_json_is_asked() {
    let model = demo_discriminator();
    let input = "我门今天去学校上课。\n";
    let base = ["run", "--model", model.as_str()];
    let piped = run_with_input(&[&base[..], &["--json"]].concat(), input.as_bytes());
    let answer = &lines(&piped)[0];
    let terminal = run_on_terminal(&base, &[], input);
    assert_eq!(terminal, pretty_from_json(answer, COLOR.0, COLOR.1));
    let plain = pretty_from_json(answer, PLAIN.0, PLAIN.1);
    assert_eq!(run_on_terminal(&base, &[("NO_COLOR", "1")], input), plain);
    let never = [&base[..], &["--color", "never"]].concat();
    assert_eq!(run_on_terminal(&never, &[], input), plain);
    let json = [&base[..], &["--json"]].concat();
    assert_eq!(
        run_on_terminal(&json, &[], input).as_bytes(),
        &piped.stdout[..]
    );
}

#[test]
fn run_help_documents_the_output_forms() {
    let out = electra_edge().args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--pretty",
        "--json",
        "--color <WHEN>",
        "terminal",
        "NO_COLOR",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}
