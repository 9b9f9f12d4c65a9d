//! The memory budget: `--print-budget`'s parts add up to its total; the worst case the limits
//! allow (every answer held, none read) and JSON bombs from 63 clients stay within it.

use std::time::{Duration, Instant};

use crate::common::{electra_edge, TempDir};
use crate::harness::{code, tiny, Client, Process};
use electra_edge::server;
use serde_json::Value;

#[test]
fn print_budget_prints_the_formula_parts() {
    let out = electra_edge()
        .args(["serve", "--print-budget", "--max-chars", "2000", "--model"])
        .arg(tiny())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b: Value = serde_json::from_slice(&out.stdout).unwrap();
    let get = |k: &str| b[k].as_u64().unwrap();
    assert_eq!(
        get("total"),
        get("base")
            + get("reload")
            + get("workers")
            + get("connections")
            + get("held")
            + get("parsing")
            + get("slack")
    );
    assert_eq!(get("connections"), 64 * get("per_connection"));
    assert!(get("base") > get("model_file"));
    // a reload holds a second model: the model's share of the base
    assert_eq!(get("reload"), get("base") - get("floor"));
    assert!(get("floor") > 0 && get("reload") > get("model_file"));
}

#[test]
fn worst_case_the_limits_allow_stays_within_budget() {
    // Every connection has `max_in_flight` of the longest requests (max_chars characters, raw
    // logits on) read while its client reads nothing: their answers pile up until the held
    // bytes reach `--max-held-mib` (the other requests wait for room); both workers build
    // such answers.
    let dir = TempDir::new("worst");
    let server = Process::start(
        dir.path(),
        &[
            "--workers",
            "2",
            "--max-chars",
            "2000",
            "--raw",
            // 64 clients and the stats one, plus the readiness ping's, which the server may
            // still count for a moment after `Process::start` closed it
            "--max-connections",
            "66",
            "--max-queue",
            "256",
            "--write-timeout",
            "120",
        ],
    );
    let mut stats = Client::connect(&server.path);
    let budget = stats.ask(r#"{"cmd":"stats"}"#)["stats"]["budget"]["total"]
        .as_u64()
        .unwrap();
    let text: String = "我爱北京天安门，今天天气很好。"
        .chars()
        .cycle()
        .take(2000)
        .collect();
    let clients: Vec<Client> = (0..64)
        .map(|i| {
            let mut c = Client::connect(&server.path);
            for j in 0..4 {
                c.send(format!("{{\"id\":\"{i}-{j}\",\"text\":\"{text}\"}}\n").as_bytes());
            }
            c
        })
        .collect();
    let started = Instant::now();
    loop {
        let s = stats.ask(r#"{"cmd":"stats"}"#)["stats"].clone();
        let held = s["held_bytes"].as_u64().unwrap();
        let full = held + s["budget"]["max_response"].as_u64().unwrap()
            > s["limits"]["max_held_bytes"].as_u64().unwrap();
        if s["inferences"] == 256 || (full && s["queue_depth"] == 0) {
            eprintln!(
                "worst case: {} answers held ({:.1} MiB)",
                s["inferences"],
                held as f64 / (1 << 20) as f64
            );
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // the last admitted request may still be running
    std::thread::sleep(Duration::from_millis(500));
    let hwm = server.vm("VmHWM:");
    eprintln!(
        "worst case: peak RSS {:.1} MiB, budget {:.1} MiB",
        hwm as f64 / (1 << 20) as f64,
        budget as f64 / (1 << 20) as f64
    );
    assert!(hwm <= budget, "peak RSS {hwm} over the budget {budget}");
    // all clients read now (what each takes frees room for the requests still waiting)
    let readers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            std::thread::spawn(move || {
                for j in 0..4 {
                    let a = c.recv().unwrap();
                    assert_eq!(a["id"], format!("{i}-{j}"), "{a}");
                    assert_eq!(a["tokens"].as_array().unwrap().len(), 2000);
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(stats.ask(r#"{"cmd":"stats"}"#)["stats"]["inferences"], 256);
}

#[test]
fn json_bombs_are_parsed_within_budget() {
    // Lines of `[0],[0],...` become trees ~100 times their size while parsed: 64 clients
    // sending them at once must not multiply that by 64.
    let dir = TempDir::new("bombs");
    let server = Process::start(dir.path(), &["--max-chars", "2000"]);
    let mut stats = Client::connect(&server.path);
    let budget = stats.ask(r#"{"cmd":"stats"}"#)["stats"]["budget"]["total"]
        .as_u64()
        .unwrap();
    let max_line = electra_edge::protocol::max_line_bytes(2000);
    let max_tree = server::max_tree_bytes(max_line);
    // as many values as the server still parses (on its one parser thread)
    let bomb = |prefix: &str, suffix: &str| {
        let mut line = prefix.to_string();
        while server::json_tree_bound(format!("{line}[0],[0]{suffix}").as_bytes()) <= max_tree {
            line.push_str("[0],");
        }
        line.push_str("[0]");
        line.push_str(suffix);
        line.push('\n');
        line
    };
    let unknown_field = bomb(r#"{"id":1,"text":"a","x":["#, "]}");
    let huge_id = bomb(r#"{"id":["#, r#"],"text":"a"}"#);
    for line in [&unknown_field, &huge_id] {
        let tree = server::json_tree_bound(line.as_bytes());
        assert!(
            tree > server::FREE_PARSE_BYTES && tree <= max_tree,
            "{tree}"
        );
    }
    // one value more: refused unparsed
    let denser = unknown_field.replacen("[0],", "[0],[0],", 1);
    assert!(server::json_tree_bound(denser.as_bytes()) > max_tree);
    assert_eq!(code(&stats.ask(denser.trim_end())), Some("too_large"));
    let clients: Vec<_> = (0..63)
        .map(|i| {
            let path = server.path.clone();
            let line = if i % 2 == 0 { &unknown_field } else { &huge_id }.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&path);
                for _ in 0..10 {
                    let a = c.ask(line.trim_end());
                    let want = if i % 2 == 0 {
                        "bad_request"
                    } else {
                        "too_large"
                    };
                    assert_eq!(code(&a), Some(want), "{a}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let hwm = server.vm("VmHWM:");
    eprintln!(
        "json bombs: peak RSS {:.1} MiB, budget {:.1} MiB",
        hwm as f64 / (1 << 20) as f64,
        budget as f64 / (1 << 20) as f64
    );
    assert!(hwm <= budget, "peak RSS {hwm} over the budget {budget}");
    assert_eq!(stats.ask(r#"{"cmd":"ping"}"#)["pong"], true);
}
