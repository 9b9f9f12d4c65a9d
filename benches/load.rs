//! Load benchmark for `electra-edge serve`: N clients over a Unix socket, each sending M
//! requests with up to P in flight; prints throughput, latency percentiles and the server's
//! peak RSS (VmHWM) next to its memory budget.
//!
//! std only, so it runs as a `harness = false` bench or compiled by hand:
//!
//! ```text
//! cargo build --release
//! cargo bench --bench load -- --model ../shared/fixtures/electra-tiny-zh/discriminator \
//!     --clients 64 --requests 100
//! # or, without the Cargo.toml entry:
//! rustc -O --edition 2021 benches/load.rs -o target/release/load-bench
//! target/release/load-bench --model DIR [--clients 64] [--requests 100] [--pipeline 1]
//!     [--workers 1] [--text 我爱北京天安门] [--bin target/release/electra-edge] [-- EXTRA SERVE ARGS]
//! ```
//!
//! Latency is measured by the client, from writing a request line to reading its answer.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Args {
    bin: PathBuf,
    model: String,
    clients: usize,
    requests: usize,
    pipeline: usize,
    workers: usize,
    text: String,
    extra: Vec<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        bin: PathBuf::from(option_env!("CARGO_MANIFEST_DIR").unwrap_or("."))
            .join("target/release/electra-edge"),
        model: String::new(),
        clients: 64,
        requests: 100,
        pipeline: 1,
        workers: 1,
        text: "我爱北京天安门".into(),
        extra: vec![],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--bin" => a.bin = value().into(),
            "--model" => a.model = value(),
            "--clients" => a.clients = value().parse().expect("--clients N"),
            "--requests" => a.requests = value().parse().expect("--requests N"),
            "--pipeline" => a.pipeline = value().parse().expect("--pipeline N"),
            "--workers" => a.workers = value().parse().expect("--workers N"),
            "--text" => a.text = value(),
            "--bench" => {} // added by `cargo bench`
            "--" => a.extra = it.by_ref().collect(),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(!a.model.is_empty(), "--model DIR is required");
    assert!(a.pipeline >= 1 && a.clients >= 1);
    a
}

fn vm(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// The number after `"key":` in a JSON line (good enough for the flat numbers we read).
fn number_after(line: &str, key: &str) -> Option<f64> {
    let i = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &line[i..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-' || c == '+'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn ask(path: &std::path::Path, line: &str) -> Option<String> {
    let mut s = UnixStream::connect(path).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
    s.write_all(format!("{line}\n").as_bytes()).ok()?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).ok()?;
    Some(answer)
}

fn main() {
    let a = parse_args();
    let dir = std::env::temp_dir().join(format!("ee-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let queue = (a.clients * a.pipeline).max(64).to_string();
    let in_flight = a.pipeline.max(1).to_string();
    let mut server = Command::new(&a.bin)
        .args(["serve", "--model", &a.model, "--socket"])
        .arg(&path)
        .args(["--workers", &a.workers.to_string()])
        .args(["--max-connections", &(a.clients + 4).to_string()])
        .args(["--max-queue", &queue, "--max-in-flight", &in_flight])
        .args(&a.extra)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", a.bin.display()));
    let pid = server.id();
    let t0 = Instant::now();
    while ask(&path, r#"{"cmd":"ping"}"#).is_none_or(|l| !l.contains("pong")) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "server never ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = ask(&path, r#"{"cmd":"stats"}"#).unwrap();
    let budget = number_after(&stats, "total").unwrap_or(0.0);
    let idle_rss = vm(pid, "VmRSS:");

    let started = Instant::now();
    let clients: Vec<_> = (0..a.clients)
        .map(|c| {
            let (path, text, n, depth) = (path.clone(), a.text.clone(), a.requests, a.pipeline);
            std::thread::spawn(move || {
                let stream = UnixStream::connect(&path).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(600)))
                    .unwrap();
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let mut sent_at = std::collections::VecDeque::new();
                let mut latencies = Vec::with_capacity(n);
                let (mut sent, mut errors) = (0usize, 0usize);
                let mut line = String::new();
                while latencies.len() < n {
                    while sent < n && sent_at.len() < depth {
                        let req = format!("{{\"id\":\"{c}-{sent}\",\"text\":\"{text}\"}}\n");
                        writer.write_all(req.as_bytes()).unwrap();
                        sent_at.push_back(Instant::now());
                        sent += 1;
                    }
                    line.clear();
                    if reader.read_line(&mut line).unwrap() == 0 {
                        panic!("client {c}: server closed the connection");
                    }
                    let at = sent_at.pop_front().unwrap();
                    latencies.push(at.elapsed());
                    let id = format!("\"id\":\"{c}-{}\"", latencies.len() - 1);
                    if !line.starts_with(&format!("{{{id}")) || line.contains("\"error\"") {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut peak_sampled = 0;
    while !clients.iter().all(|c| c.is_finished()) {
        peak_sampled = peak_sampled.max(vm(pid, "VmRSS:"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for c in clients {
        let (l, e) = c.join().unwrap();
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    all.sort();
    let pct = |p: f64| all[((p / 100.0) * (all.len() - 1) as f64).round() as usize];
    let hwm = vm(pid, "VmHWM:");
    let mib = |b: f64| b / (1024.0 * 1024.0);
    println!(
        "model {}\nclients {} x requests {} (pipeline {}), workers {}, text {:?} ({} chars)",
        a.model,
        a.clients,
        a.requests,
        a.pipeline,
        a.workers,
        a.text,
        a.text.chars().count()
    );
    println!(
        "answers {} in {:.2} s: {:.1} req/s, errors {}",
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        errors
    );
    println!(
        "latency ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        pct(50.0).as_secs_f64() * 1e3,
        pct(90.0).as_secs_f64() * 1e3,
        pct(99.0).as_secs_f64() * 1e3,
        all.last().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "server RSS MiB: idle {:.1}, peak sampled {:.1}, VmHWM {:.1}; budget {:.1}",
        mib(idle_rss as f64),
        mib(peak_sampled as f64),
        mib(hwm as f64),
        mib(budget)
    );
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = server.wait().unwrap();
    println!("server exit: {status}");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(errors == 0, "{errors} answers were errors or out of order");
}
