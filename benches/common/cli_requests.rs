//! Whole requests through the CLI (`electra-edge run`), timed the way a client sees them, for
//! `benches/compare.rs`'s `ours-cli` configuration (included with `#[path]`).
//!
//! The bench's other configurations time `Model::run` alone. A request through the binary also
//! tokenizes, parses and writes JSON and waits on a pipe between requests; this measures all of
//! it: one line written, its answer read, then the next (no request is in flight while the
//! program waits for input, as with an interactive client). Per request: the wall time from
//! writing the line to reading the answer, the CPU time of all the program's threads (the sum
//! of `/proc/PID/task/*/schedstat`, nanoseconds, kernel time included) and its minor page faults
//! (`/proc/PID/stat`). Each text is `seq - 2` common Chinese characters, one token each
//! (checked on the first request of each length, whose answer carries the input ids).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

/// Common characters, each its own token in BERT's Chinese vocabulary.
const CHARS: &str = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工\
也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当\
使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么\
利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次\
品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回";

/// A text of `seq - 2` characters (the program adds `[CLS]` and `[SEP]`); `salt` picks where in
/// the character list it starts, so that consecutive requests differ.
fn text(seq: usize, salt: usize) -> String {
    let chars: Vec<char> = CHARS.chars().collect();
    (0..seq.saturating_sub(2))
        .map(|i| chars[(salt * 7 + i) % chars.len()])
        .collect()
}

/// CPU nanoseconds of all threads of `pid` so far.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Minor page faults of `pid` so far (field 10 of /proc/PID/stat).
fn minor_faults(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // the command name (field 2) is in parentheses and may hold spaces
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    rest.split_whitespace()
        .nth(7)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Fields of /proc/PID/status in kB.
fn status(pid: u32, keys: &[&str]) -> Vec<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    keys.iter()
        .map(|k| {
            s.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(':')))
                .and_then(|r| r.trim().trim_end_matches(" kB").parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

/// Resident kB of `pid`'s mappings of packed-weights sidecars (`*.int8pack`).
fn sidecar_rss(pid: u32) -> u64 {
    smaps_rss_kb(&format!("/proc/{pid}/smaps"), |p| p.ends_with(".int8pack"))
}

/// Resident KB of the mappings in the smaps file `smaps` whose path `mapped` accepts.
pub fn smaps_rss_kb(smaps: &str, mapped: impl Fn(&str) -> bool) -> u64 {
    let smaps = std::fs::read_to_string(smaps).unwrap_or_default();
    let (mut inside, mut total) = (false, 0);
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            inside = line.split_whitespace().nth(5).is_some_and(&mapped);
        } else if inside && first == "Rss:" {
            total += line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

struct Cli {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    line: String,
}

impl Cli {
    fn start(bin: &Path, model: &Path, threads: usize, cache: &Path) -> Cli {
        let mut child = Command::new(bin)
            .args(["run", "--threads", &threads.to_string(), "--model"])
            .arg(model)
            .env("ELECTRA_EDGE_CACHE", cache)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let input = child.stdin.take().expect("stdin");
        let output = BufReader::new(child.stdout.take().expect("stdout"));
        Cli {
            child,
            input,
            output,
            line: String::new(),
        }
    }

    /// Sends one request line and returns its answer.
    fn request(&mut self, json: &str) -> &str {
        writeln!(self.input, "{json}").expect("write a request");
        self.input.flush().expect("flush");
        self.line.clear();
        let n = self
            .output
            .read_line(&mut self.line)
            .expect("read an answer");
        assert!(n > 0, "the program ended without an answer");
        &self.line
    }

    fn finish(self) {
        drop(self.input);
        let mut child = self.child;
        let _ = child.wait();
    }
}

fn json_text(text: &str) -> String {
    // the texts are CJK characters only: nothing to escape
    format!("{{\"text\":\"{text}\"}}")
}

/// The `ours-cli` JSON line (the fields of the bench's other configurations, plus the page
/// faults per request and the token count each length really had).
pub fn measure(
    bin: &Path,
    model: &Path,
    cache: &Path,
    seqs: &[usize],
    runs: usize,
    threads: usize,
) -> String {
    // A first start writes the packed-weights sidecar into the cache; the measured one maps it.
    Cli::start(bin, model, threads, cache).finish();
    let t = Instant::now();
    let mut cli = Cli::start(bin, model, threads, cache);
    let pid = cli.child.id();
    cli.request(&json_text(&text(8, 0)));
    let ready_ms = t.elapsed().as_secs_f64() * 1e3;
    let steady = status(pid, &["RssAnon", "RssFile", "VmRSS", "VmHWM"]);
    let side = sidecar_rss(pid);
    let mut per_seq = vec![];
    for &seq in seqs {
        // warm-up at this length, with the input ids in the answer to count the tokens
        let answer = cli.request(&format!(
            "{{\"text\":\"{}\",\"raw\":true}}",
            text(seq, runs + 1)
        ));
        let tokens = answer
            .split_once("\"input_ids\":[")
            .and_then(|(_, r)| r.split_once(']'))
            .map_or(0, |(ids, _)| ids.split(',').count());
        let (mut walls, mut cpu_min, mut cpu_sum) = (vec![], f64::MAX, 0.0);
        let faults0 = minor_faults(pid);
        for i in 0..runs {
            let line = json_text(&text(seq, i));
            let (t, c) = (Instant::now(), cpu_ns(pid));
            std::hint::black_box(cli.request(&line));
            let cpu = (cpu_ns(pid) - c) as f64 / 1e6;
            walls.push(t.elapsed().as_secs_f64() * 1e3);
            cpu_min = cpu_min.min(cpu);
            cpu_sum += cpu;
        }
        let faults = (minor_faults(pid) - faults0) as f64 / runs as f64;
        walls.sort_by(f64::total_cmp);
        per_seq.push(format!(
            "\"{seq}\":{{\"median_ms\":{:.3},\"min_ms\":{:.3},\"cpu_min_ms\":{:.3},\"cpu_mean_ms\":{:.3},\
             \"faults\":{faults:.1},\"tokens\":{tokens},\"runs\":{runs}}}",
            walls[walls.len() / 2],
            walls[0],
            cpu_min,
            cpu_sum / runs as f64,
        ));
    }
    let peak = status(pid, &["VmHWM"])[0];
    cli.finish();
    format!(
        "{{\"config\":\"ours-cli\",\"threads\":{threads},\"ready_ms\":{ready_ms:.1},\"rss_anon_kb\":{},\
         \"rss_file_kb\":{},\"rss_kb\":{},\"rss_sidecar_kb\":{side},\"peak_load_kb\":{},\"peak_kb\":{peak},\
         \"seqs\":{{{}}}}}",
        steady[0],
        steady[1],
        steady[2],
        steady[3],
        per_seq.join(",")
    )
}
