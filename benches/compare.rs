//! Latency, time-to-ready and memory of this project's paths on one model, one process per
//! configuration (so that each peak RSS is its own); `benches/compare.sh` runs this and
//! onnxruntime (`benches/compare.py`) and prints one table.
//!
//! ```text
//! cargo bench --bench compare -- [--model DIR] [--seqs 8,32,128,512] [--runs 30]
//!     [--slow-runs 3] [--configs ours-int8,ours-int8-heap,ours-int8-t2,ours-fp32,tract-int8]
//! ```
//!
//! Configurations (the int8 graph is `DIR/model.onnx`, the fp32 one `DIR/model.fp32.onnx`):
//! - `ours-int8`: our fused int8 matmuls, packed weights memory-mapped from a sidecar written
//!   by [`electra_edge::model::pack`] into a temporary folder first;
//! - `ours-int8-heap`: the same with the packed weights on the heap (no sidecar);
//! - `ours-int8-t2`: `ours-int8` with `threads = 2` (thread scaling);
//! - `ours-fp32`: the fp32 graph through our loader, which is tract's f32 path (nothing to fuse);
//! - `tract-int8`: the int8 graph with tract's own int8 kernels (`--tract-int8`; slow on x86,
//!   timed `--slow-runs` times);
//! - `ours-cli`: whole requests through the binary (`electra-edge run --threads 1`, the
//!   sidecar mapped from `$ELECTRA_EDGE_CACHE`): tokenizer, JSON and pipes included, one
//!   request at a time as an interactive client sends them (`common/cli_requests.rs`).
//!
//! Each child prints one JSON line: `ready_ms` (load + first run of 8 tokens, wall), memory
//! from `/proc/self/status` after that (`steady`: RssAnon, RssFile, VmRSS in kB, plus the
//! sidecar's resident kB from `/proc/self/smaps`), the load peak (VmHWM then) and the peak
//! after all timed runs; per length, the median and minimum wall time, the minimum and mean
//! process CPU time of the runs (the host may be shared: CPU time is the robust one-thread
//! number) and the minor page faults per run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use electra_edge::model::{Model, ModelOptions, WeightsSource};

#[path = "common/cli_requests.rs"]
mod cli_requests;

const CONFIGS: &str = "ours-int8,ours-cli,ours-int8-heap,ours-int8-t2,ours-fp32,tract-int8";

struct Args {
    model: PathBuf,
    seqs: Vec<usize>,
    runs: usize,
    slow_runs: usize,
    configs: Vec<String>,
    one: Option<String>,
    sidecar: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut a = Args {
        model: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/electra-small-zh/discriminator"
        )),
        seqs: vec![8, 32, 128, 512],
        runs: 30,
        slow_runs: 3,
        configs: CONFIGS.split(',').map(String::from).collect(),
        one: None,
        sidecar: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--model" => a.model = value().into(),
            "--seqs" => {
                a.seqs = value()
                    .split(',')
                    .map(|s| s.trim().parse().expect("--seqs"))
                    .collect()
            }
            "--runs" => a.runs = value().parse().expect("--runs"),
            "--slow-runs" => a.slow_runs = value().parse().expect("--slow-runs"),
            "--configs" => a.configs = value().split(',').map(String::from).collect(),
            "--one" => a.one = Some(value()),
            "--sidecar" => a.sidecar = Some(value().into()),
            "--bench" => {} // passed by `cargo bench`
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// Fields of /proc/self/status in kB.
fn status(keys: &[&str]) -> Vec<u64> {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    keys.iter()
        .map(|k| {
            s.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(':')))
                .and_then(|r| r.trim().trim_end_matches(" kB").parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

/// Resident kB of the mappings of `path` (/proc/self/smaps).
fn mapped_rss(path: Option<&Path>) -> u64 {
    let Some(path) = path.and_then(|p| p.canonicalize().ok()) else {
        return 0;
    };
    cli_requests::smaps_rss_kb("/proc/self/smaps", |p| Path::new(p) == path)
}

/// CPU time of the whole process, seconds.
fn process_cpu_s() -> f64 {
    electra_edge::cputime::process_s().unwrap_or(0.0)
}

/// Minor page faults of this process so far (field 10 of /proc/self/stat).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    rest.split_whitespace()
        .nth(7)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn ids(seq: usize) -> Vec<i64> {
    (0..seq)
        .map(|j| match j {
            0 => 101,
            _ if j == seq - 1 => 102,
            _ => (100 + 37 * j as i64) % 5000 + 200,
        })
        .collect()
}

fn one(a: &Args, name: &str) -> String {
    if name == "ours-cli" {
        let sidecar = a.sidecar.as_ref().expect("--sidecar");
        let cache = sidecar.with_file_name("cli-cache");
        std::fs::create_dir_all(&cache).expect("cache folder");
        let bin = Path::new(env!("CARGO_BIN_EXE_electra-edge"));
        return cli_requests::measure(bin, &a.model, &cache, &a.seqs, a.runs, 1);
    }
    let (file, tract_int8, threads, weights) = match name {
        "ours-int8" => (
            "model.onnx",
            false,
            1,
            WeightsSource::Sidecar(a.sidecar.clone().expect("--sidecar")),
        ),
        "ours-int8-t2" => (
            "model.onnx",
            false,
            2,
            WeightsSource::Sidecar(a.sidecar.clone().expect("--sidecar")),
        ),
        "ours-int8-heap" => ("model.onnx", false, 1, WeightsSource::Heap),
        "ours-fp32" => ("model.fp32.onnx", false, 1, WeightsSource::Heap),
        "tract-int8" => ("model.onnx", true, 1, WeightsSource::Heap),
        other => panic!("unknown configuration {other}"),
    };
    let path = a.model.join(file);
    let options = ModelOptions {
        output: None,
        tract_int8,
        threads,
    };
    let t = Instant::now();
    let model = Model::load_with(&path, &options, &weights).expect("load");
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    model.run(&ids(8)).expect("run");
    let ready_ms = t.elapsed().as_secs_f64() * 1e3;
    let keys = ["RssAnon", "RssFile", "VmRSS", "VmHWM"];
    let steady = status(&keys);
    let side = match &model.weights.sidecar {
        Some(p) => mapped_rss(Some(p)),
        None => 0,
    };
    let consts = model.constants();
    let consts_kb = consts.iter().map(|(_, b)| b).sum::<usize>() / 1024;
    if std::env::var_os("COMPARE_VERBOSE").is_some() {
        for (n, b) in consts.iter().take(8) {
            eprintln!("{name}: const {n} {:.1} kB", *b as f64 / 1024.0);
        }
        eprintln!("{name}: stages {:?}", model.load_timings);
    }
    let runs = if tract_int8 { a.slow_runs } else { a.runs };
    let mut per_seq = vec![];
    for &seq in &a.seqs {
        let input = ids(seq);
        model.run(&input).expect("run"); // warm-up at this length
        let (mut walls, mut cpu_min, mut cpu_sum) = (vec![], f64::MAX, 0.0);
        let faults0 = minor_faults();
        for _ in 0..runs {
            let (t, c) = (Instant::now(), process_cpu_s());
            std::hint::black_box(model.run(&input).expect("run"));
            let cpu = (process_cpu_s() - c) * 1e3;
            cpu_min = cpu_min.min(cpu);
            cpu_sum += cpu;
            walls.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let faults = (minor_faults() - faults0) as f64 / runs as f64;
        walls.sort_by(f64::total_cmp);
        per_seq.push(format!(
            "\"{seq}\":{{\"median_ms\":{:.3},\"min_ms\":{:.3},\"cpu_min_ms\":{:.3},\"cpu_mean_ms\":{:.3},\
             \"faults\":{faults:.1},\"runs\":{runs}}}",
            walls[walls.len() / 2],
            walls[0],
            cpu_min,
            cpu_sum / runs as f64,
        ));
    }
    let peak = status(&["VmHWM"])[0];
    let stages: Vec<String> = model
        .load_timings
        .iter()
        .map(|(s, ms)| format!("\"{s}\":{ms:.1}"))
        .collect();
    format!(
        "{{\"config\":\"{name}\",\"threads\":{threads},\"load_ms\":{load_ms:.1},\"ready_ms\":{ready_ms:.1},\
         \"stages\":{{{}}},\"fused\":{},\"mapped\":{},\"rss_anon_kb\":{},\"rss_file_kb\":{},\"rss_kb\":{},\
         \"rss_sidecar_kb\":{side},\"consts_kb\":{consts_kb},\"peak_load_kb\":{},\"peak_kb\":{peak},\"seqs\":{{{}}}}}",
        stages.join(","),
        model.weights.fused,
        model.weights.mapped,
        steady[0],
        steady[1],
        steady[2],
        steady[3],
        per_seq.join(",")
    )
}

fn main() {
    let a = parse_args();
    if let Some(name) = &a.one {
        println!("{}", one(&a, name));
        return;
    }
    // the sidecar of the int8 graph, in a temporary folder (the fixture may be read-only)
    let dir = std::env::temp_dir().join(format!("ee-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sidecar = dir.join("model.onnx.int8pack");
    let t = Instant::now();
    let report = electra_edge::model::pack(&a.model.join("model.onnx"), &sidecar).expect("pack");
    eprintln!(
        "packed {} matrices ({:.1} MB) in {:.0} ms",
        report.entries,
        report.bytes as f64 / 1e6,
        t.elapsed().as_secs_f64() * 1e3
    );
    let me = std::env::current_exe().expect("current_exe");
    let seqs: Vec<String> = a.seqs.iter().map(|s| s.to_string()).collect();
    for config in &a.configs {
        eprintln!("running {config} ...");
        let out = Command::new(&me)
            .args(["--one", config, "--model"])
            .arg(&a.model)
            .args([
                "--seqs",
                &seqs.join(","),
                "--runs",
                &a.runs.to_string(),
                "--slow-runs",
                &a.slow_runs.to_string(),
                "--sidecar",
            ])
            .arg(&sidecar)
            .output()
            .expect("spawn");
        if !out.status.success() {
            eprintln!("{config} failed: {}", String::from_utf8_lossy(&out.stderr));
            continue;
        }
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
