//! Protocol and error paths, in-process: pings, stats and answers equal to `run`'s; one error
//! line per bad line with the connection still usable; a 100 MB line; clients that disconnect
//! mid-request; the line parser and the bounded line reader fuzzed (std-only, bounded).

use std::io::{BufReader, Write};
use std::time::{Duration, Instant};

use crate::common::XorShift;
use crate::harness::{code, engine, Running};
use electra_edge::protocol::{self, Limits};
use serde_json::{json, Value};

#[test]
fn ping_stats_and_answers_match_run() {
    let server = Running::start("basic", |_| {});
    let mut c = server.client();
    assert_eq!(
        c.ask(r#"{"id":"p","cmd":"ping"}"#),
        json!({"id":"p","pong":true})
    );
    let a = c.ask(r#"{"id":1,"text":"我爱北京天安门"}"#);
    assert_eq!(a["id"], 1);
    assert_eq!(a["task"], "discriminator");
    assert_eq!(a["tokens"].as_array().unwrap().len(), 7);
    // Same bytes as the stdin loop gives.
    let mut out = Vec::new();
    electra_edge::run::serve_lines(
        &engine(),
        &b"{\"id\":1,\"text\":\"\xe6\x88\x91\xe7\x88\xb1\xe5\x8c\x97\xe4\xba\xac\xe5\xa4\xa9\xe5\xae\x89\xe9\x97\xa8\"}\n"[..],
        &mut out,
    )
    .unwrap();
    let run: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(a, run);
    // Plain text lines work too.
    assert_eq!(
        c.ask("北京").as_object().unwrap()["tokens"][1]["text"],
        "京"
    );

    let s = c.ask(r#"{"id":[2],"cmd":"stats"}"#);
    assert_eq!(s["id"], json!([2]));
    let st = &s["stats"];
    for key in [
        "uptime_s",
        "model",
        "task",
        "requests",
        "answered",
        "errors",
        "latency_ms",
        "queue_depth",
        "connections",
        "rss",
        "rss_peak",
        "budget",
        "limits",
    ] {
        assert!(!st[key].is_null(), "stats lack {key}: {st}");
    }
    assert_eq!(st["task"], "discriminator");
    assert_eq!(st["inferences"], 2);
    assert_eq!(st["connections"], 1);
    assert!(st["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    let budget = st["budget"]["total"].as_u64().unwrap();
    assert!(st["rss"].as_u64().unwrap() > 0 && st["rss_peak"].as_u64().unwrap() < budget);
    drop(c);
    let report = server.stop();
    assert_eq!(report.requests, 4);
    assert_eq!((report.answered, report.unanswered), (4, 0));
}

#[test]
fn every_bad_line_gets_one_error_and_the_connection_stays_usable() {
    let server = Running::start("errors", |_| {});
    let mut c = server.client();
    // past serde_json's 128 levels: refused by the parser
    let nested = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
    // so dense in values that its tree could be ~5 MB: refused before parsing
    let dense = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    // 127 levels: parsed on the connection's reader thread (its stack holds that depth)
    let deep_id = format!(
        r#"{{"id":{}0{},"text":"深"}}"#,
        "[".repeat(126),
        "]".repeat(126)
    );
    let long_text = format!(r#"{{"id":"long","text":"{}"}}"#, "长".repeat(20_001));
    let lines: Vec<(Vec<u8>, Option<&str>)> = vec![
        (b"\xff\xfe\x00 not utf-8".to_vec(), Some("invalid_utf8")),
        (b"{\"id\":1,\"text\":\"a\x00b\"}".to_vec(), Some("bad_json")), // raw NUL in a string
        (
            b"{\"id\":2,\"text\":\"a\x01\x1fb\"}".to_vec(),
            Some("bad_json"),
        ), // raw controls
        (br#"{"id":3,"text":"a\u0000b\u0001c"}"#.to_vec(), None),       // escaped: fine
        (b"plain\x00text\x07with controls".to_vec(), None),
        (b"{\"id\":4,\"text\":".to_vec(), Some("bad_json")),
        (b"{}}".to_vec(), Some("bad_json")),
        (b"{\"id\":5,\"text\":\"x\"".to_vec(), Some("bad_json")),
        (nested.into_bytes(), Some("bad_json")),
        (dense.into_bytes(), Some("too_large")),
        (deep_id.into_bytes(), None),
        (
            br#"{"id":6,"text":"x","colour":"red"}"#.to_vec(),
            Some("bad_request"),
        ),
        (
            br#"{"id":7,"cmd":"ping","extra":1}"#.to_vec(),
            Some("bad_request"),
        ),
        (br#"{"id":8,"cmd":"reboot"}"#.to_vec(), Some("bad_request")),
        (br#"{"id":9,"text":42}"#.to_vec(), Some("bad_request")),
        (br#"{"id":10,"text":"  "}"#.to_vec(), Some("empty_text")),
        (b"".to_vec(), Some("empty_text")),
        (long_text.into_bytes(), Some("too_large")),
        (vec![b'x'; 200_000], Some("too_large")), // over max_line_bytes
        (
            format!(r#"{{"id":"{}","text":"a"}}"#, "i".repeat(2_000)).into_bytes(),
            Some("too_large"), // id over MAX_ID_BYTES
        ),
        (
            r#"{"id":11,"text":"好","threshold":7}"#.as_bytes().to_vec(),
            Some("bad_request"),
        ),
        (br#"[1,2,3]"#.to_vec(), None), // not an object: plain text
        (r#"{"id":12,"text":"最后"}"#.as_bytes().to_vec(), None),
    ];
    for (line, _) in &lines {
        c.send(line);
        c.send(b"\n");
    }
    for (i, (line, want)) in lines.iter().enumerate() {
        let got = c.recv().expect("one answer per line");
        assert_eq!(
            code(&got),
            *want,
            "line {i} ({:?}...) got {got}",
            String::from_utf8_lossy(&line[..line.len().min(40)])
        );
    }
    // The ids that could be read are echoed.
    let last = c.ask(r#"{"id":"after","text":"还在"}"#);
    assert_eq!(last["id"], "after");
    assert_eq!(last["tokens"].as_array().unwrap().len(), 2);
    let s = server.stats();
    assert_eq!(s["errors"]["bad_json"], 6);
    assert_eq!(s["errors"]["too_large"], 4);
    drop(c);
    let report = server.stop();
    assert_eq!(report.answered, report.requests);
}

#[test]
fn a_100_megabyte_line_is_streamed_through_and_refused() {
    let server = Running::start("huge", |_| {});
    let mut c = server.client();
    let mut writer = c.writer.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = vec![b'a'; 1 << 20];
        writer.write_all(b"{\"id\":1,\"text\":\"").unwrap();
        for _ in 0..100 {
            writer.write_all(&chunk).unwrap();
        }
        writer
            .write_all("\"}\n{\"id\":2,\"text\":\"之后\"}\n".as_bytes())
            .unwrap();
    });
    let first = c.recv().unwrap();
    assert_eq!(code(&first), Some("too_large"), "{first}");
    assert!(first["error"]["message"]
        .as_str()
        .unwrap()
        .contains("104857618 bytes"));
    let second = c.recv().unwrap();
    assert_eq!(second["id"], 2);
    assert!(second["tokens"].is_array());
    sender.join().unwrap();
    drop(c);
    server.stop();
}

#[test]
fn disconnecting_mid_request_harms_nobody() {
    let server = Running::start("disconnect", |_| {});
    for partial in [
        &b"{\"id\":1,\"te"[..],
        &b"\xe6\x88"[..], // half a character
        &b"{\"id\":2,\"text\":\"a long text that never ends"[..],
    ] {
        let mut c = server.client();
        c.send(partial);
        drop(c);
    }
    // Requests in flight when the client goes away.
    let mut c = server.client();
    for i in 0..4 {
        c.send(format!("{{\"id\":{i},\"text\":\"{}\"}}\n", "字".repeat(500)).as_bytes());
    }
    drop(c);
    let mut c = server.client();
    assert_eq!(c.ask(r#"{"cmd":"ping"}"#)["pong"], true);
    drop(c);
    let report = server.stop();
    assert_eq!(report.requests, report.answered + report.unanswered);
}

#[test]
fn parser_fuzz_never_panics_and_keeps_its_contract() {
    let seeds: [&[u8]; 8] = [
        r#"{"id":1,"text":"我爱北京","raw":true,"threshold":0.3}"#.as_bytes(),
        br#"{"id":{"a":[1,2]},"cmd":"stats"}"#,
        br#"{"text":"x","pooling":"cls","normalize":false,"tokens":true}"#,
        "纯文本的一行".as_bytes(),
        b"[[[[[[[[[[]]]]]]]]]]",
        br#"{"id":"\ud800","text":"\u0000"}"#,
        b"{\"a\":{\"a\":{\"a\":{\"a\":1}}}}",
        b"\r\n\t {",
    ];
    let alphabet: &[u8] =
        b"{}[]\":,\\0123456789.eE+-truefalsn \t\r\x00\x7f\xff\xe6\x88\x91idtextcmd";
    let limits = Limits::new(64);
    let mut rng = XorShift::new(1);
    let mut rand = move || rng.next_u64();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut cases = 0u64;
    while Instant::now() < deadline {
        let mut line = seeds[(rand() % seeds.len() as u64) as usize].to_vec();
        for _ in 0..(rand() % 6) {
            let at = (rand() as usize) % (line.len() + 1);
            match rand() % 4 {
                0 if !line.is_empty() => {
                    line.remove(at.min(line.len() - 1));
                }
                1 => line.insert(at, alphabet[(rand() as usize) % alphabet.len()]),
                2 => {
                    let b = line.clone();
                    let from = (rand() as usize) % (b.len() + 1);
                    line.splice(at..at, b[from..].iter().copied());
                }
                _ => line.truncate(at),
            }
        }
        line.truncate(4096);
        match protocol::parse_line(&line, &limits) {
            Ok(protocol::Line::Infer(r)) => {
                assert!(!r.text.trim().is_empty());
                assert!(r.text.chars().count() <= 64);
            }
            Ok(protocol::Line::Command { .. }) => {}
            Err(e) => {
                // The error line is one valid JSON line.
                let l = e.to_line();
                assert!(!l.contains('\n'));
                let v: Value = serde_json::from_str(&l).unwrap();
                assert_eq!(v["error"]["code"], e.code.as_str());
            }
        }
        // The bounded reader splits the same bytes into the same lines at any buffer size.
        let cap = 1 + (rand() as usize) % 16;
        let mut reader = BufReader::with_capacity(cap, &line[..]);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(r) = protocol::read_bounded_line(&mut reader, &mut buf, 8).unwrap() {
            got.push((r, buf.clone()));
        }
        let want: Vec<_> = if line.is_empty() {
            vec![]
        } else {
            let mut parts: Vec<&[u8]> = line.split(|&b| b == b'\n').collect();
            if line.ends_with(b"\n") {
                parts.pop();
            }
            parts
                .into_iter()
                .map(|p| {
                    if p.len() > 8 {
                        (protocol::BoundedLine::TooLong { bytes: p.len() }, vec![])
                    } else {
                        (protocol::BoundedLine::Line, p.to_vec())
                    }
                })
                .collect()
        };
        assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&line));
        cases += 1;
    }
    assert!(cases > 1_000, "only {cases} cases");
}
