//! `electra-edge serve` reloading its model on SIGHUP (what `systemctl reload` sends), without
//! systemd: the binary on a socket in a temp folder, its model folder a symlink the test
//! switches, `NOTIFY_SOCKET` a datagram socket the test reads. Run with
//! `cargo test --release --test reload`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{electra_edge, fixtures, TempDir};
use electra_edge::engine::{Engine, EngineOptions};
use electra_edge::procfs::{status_bytes, Pid};
use serde_json::Value;

fn tiny() -> PathBuf {
    fixtures().join("electra-tiny-zh/discriminator")
}

fn small() -> PathBuf {
    fixtures().join("electra-small-zh/discriminator")
}

/// The demo discriminator: trained, with a manifest (so its load runs the self-check), and
/// answers unlike the fixtures'.
fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/discriminator")
}

/// `CLOCK_MONOTONIC` in microseconds, what `MONOTONIC_USEC=` is measured on.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Points the symlink `link` at `target`, atomically (a new link renamed over the old one), as
/// an operator switching models would.
fn switch(link: &Path, target: &Path) {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// A copy of the folder `from` in `to` (files only).
fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

const TEXTS: [&str; 4] = [
    "我爱北京天安门",
    "今天天汽很好",
    "边缘设备上的推理",
    "这家餐厅的菜味道不错",
];

/// What `model` answers to each of [`TEXTS`] (the answer object without its `id`), in process:
/// the same JSON the server writes.
fn answers_of(model: &Path) -> Vec<Value> {
    let engine = Engine::load(model, EngineOptions::default()).unwrap();
    TEXTS
        .iter()
        .map(|text| {
            let line = format!("{{\"id\":0,\"text\":\"{text}\"}}\n");
            let mut out = Vec::new();
            electra_edge::run::serve_lines(&engine, line.as_bytes(), &mut out).unwrap();
            without_id(serde_json::from_slice(&out).unwrap())
        })
        .collect()
}

fn without_id(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("id");
    v
}

/// Every `sd_notify` datagram the server sends, in order, read on a thread.
struct Notifications {
    seen: Arc<Mutex<Vec<String>>>,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Notifications {
    fn bind(dir: &Path) -> Notifications {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                        seen.lock().unwrap().push(msg);
                    }
                }
            })
        };
        Notifications {
            seen,
            path,
            stop,
            reader: Some(reader),
        }
    }

    /// The datagrams since the start-up's READY=1 (included), watchdog pings left out.
    fn lifecycle(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        let ready = seen.iter().position(|m| has_line(m, "READY=1"));
        seen[ready.unwrap_or(seen.len())..]
            .iter()
            .filter(|m| *m != "WATCHDOG=1")
            .cloned()
            .collect()
    }

    /// Waits until `n` lifecycle datagrams have come that satisfy `is`, and returns them all.
    fn wait_for(&self, n: usize, what: &str, is: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let all = self.lifecycle();
            if all.iter().filter(|m| is(m)).count() >= n {
                return all;
            }
            assert!(Instant::now() < deadline, "no {what} in time: {all:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// The binary serving the symlink `model` on `dir/s.sock`, telling `notify` what it does.
struct Server {
    child: Child,
    path: PathBuf,
    stderr: Option<JoinHandle<String>>,
}

impl Server {
    fn start(dir: &Path, model: &Path, notify: &Notifications, extra: &[&str]) -> Server {
        let path = dir.join("s.sock");
        let mut child = electra_edge()
            .arg("serve")
            .arg("--model")
            .arg(model)
            .arg("--socket")
            .arg(&path)
            .args(extra)
            .env("NOTIFY_SOCKET", &notify.path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        notify.wait_for(1, "READY=1", |m| has_line(m, "READY=1"));
        Server {
            child,
            path,
            stderr: Some(stderr),
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with our own child's pid and a valid signal number; no memory is
        // passed.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    fn stats(&self) -> Value {
        let mut c = Client::connect(&self.path);
        c.send(b"{\"cmd\":\"stats\"}\n");
        c.recv().expect("stats")["stats"].clone()
    }

    fn vm(&self, field: &str) -> u64 {
        status_bytes(Pid::Other(self.child.id()), &[field])[0]
    }

    /// SIGTERM, then the exit status and stderr.
    fn stop(self) -> (bool, String) {
        self.signal(libc::SIGTERM);
        self.wait()
    }

    /// The exit status and stderr.
    fn wait(mut self) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        (
            status.success(),
            self.stderr.take().unwrap().join().unwrap(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// The numbers of the `stopped:` line printed at exit: requests, answered, unanswered.
fn stopped_counts(stderr: &str) -> (u64, u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.contains("stopped:"))
        .unwrap_or_else(|| panic!("no stopped line in {stderr}"));
    let number_before = |word: &str| -> u64 {
        let i = line.find(word).unwrap();
        let n = line[..i].trim_end().rsplit(' ').next().unwrap();
        n.parse().unwrap()
    };
    (
        number_before(" requests"),
        number_before(" answered"),
        number_before(" unanswered"),
    )
}

fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains("ERROR")).collect()
}

struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap()),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
            Err(e) => panic!("read failed: {e}"),
        }
    }

    fn ask(&mut self, text: &str) -> Value {
        self.send(format!("{{\"id\":\"q\",\"text\":\"{text}\"}}\n").as_bytes());
        self.recv().expect("an answer")
    }
}

/// Which model answered: 0 the old, 1 the new.
fn which(answer: Value, text: usize, old: &[Value], new: &[Value]) -> u8 {
    let a = without_id(answer);
    if a == old[text] {
        0
    } else if a == new[text] {
        1
    } else {
        panic!("an answer from neither model: {a}")
    }
}

/// One pipelining client: a sender thread writes requests without waiting (up to the server's
/// in-flight cap, then the socket's buffers hold it back) until `stop`; this thread reads every
/// answer. Returns, per request in order, (which model answered, whether the request was
/// written after `reloaded` was set).
fn pipelining_client(
    path: PathBuf,
    client: usize,
    stop: Arc<AtomicBool>,
    reloaded: Arc<AtomicBool>,
    old: Arc<Vec<Value>>,
    new: Arc<Vec<Value>>,
) -> Vec<(u8, bool)> {
    let mut c = Client::connect(&path);
    let mut writer = c.writer.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut after = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let i = after.len();
            // read before the line is written: a line written after the flag was set cannot
            // have been read before the reload completed
            after.push(reloaded.load(Ordering::SeqCst));
            let text = TEXTS[(client + i) % TEXTS.len()];
            let line = format!("{{\"id\":\"{client}-{i}\",\"text\":\"{text}\"}}\n");
            writer.write_all(line.as_bytes()).unwrap();
        }
        writer.shutdown(std::net::Shutdown::Write).unwrap();
        after
    });
    let mut models = Vec::new();
    while let Some(a) = c.recv() {
        let i = models.len();
        assert_eq!(a["id"], format!("{client}-{i}"), "out of order: {a}");
        assert!(a.get("error").is_none(), "an error: {a}");
        models.push(which(a, (client + i) % TEXTS.len(), &old, &new));
    }
    let after = sender.join().unwrap();
    assert_eq!(
        models.len(),
        after.len(),
        "client {client}: answers != requests"
    );
    models.into_iter().zip(after).collect()
}

/// 16 clients pipelining continuously while the model folder (a symlink) is switched to another
/// model and SIGHUP is sent: every request is answered exactly once, in order, without an
/// error, by one model or the other; per connection the old model's answers come first; every
/// request written after the reload completed (READY=1) is answered by the new model. systemd
/// is told RELOADING=1 with MONOTONIC_USEC, then READY=1 with the new STATUS.
#[test]
fn sighup_swaps_the_model_under_16_pipelining_clients() {
    let dir = TempDir::new("reload-swap");
    let link = dir.path().join("model");
    switch(&link, &tiny());
    let (old, new) = (Arc::new(answers_of(&tiny())), Arc::new(answers_of(&demo())));
    for (o, n) in old.iter().zip(new.iter()) {
        assert_ne!(o, n, "the two models must answer differently");
    }
    let notify = Notifications::bind(dir.path());
    let server = Server::start(dir.path(), &link, &notify, &["--workers", "2"]);
    let before = server.stats();
    assert_eq!(before["model_generation"], 0);

    let stop = Arc::new(AtomicBool::new(false));
    let reloaded = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..16)
        .map(|client| {
            let (path, stop, reloaded) = (server.path.clone(), stop.clone(), reloaded.clone());
            let (old, new) = (old.clone(), new.clone());
            std::thread::spawn(move || pipelining_client(path, client, stop, reloaded, old, new))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    switch(&link, &demo());
    let signalled = monotonic_usec();
    server.signal(libc::SIGHUP);
    let seen = notify.wait_for(2, "READY=1 after the reload", |m| has_line(m, "READY=1"));
    reloaded.store(true, Ordering::SeqCst);
    let ready_seen = monotonic_usec();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::SeqCst);
    let results: Vec<Vec<(u8, bool)>> = clients.into_iter().map(|c| c.join().unwrap()).collect();

    let (mut from_old, mut from_new, mut after) = (0, 0, 0);
    for (client, answers) in results.iter().enumerate() {
        let first_new = answers.iter().position(|&(m, _)| m == 1);
        if let Some(first_new) = first_new {
            assert!(
                answers[first_new..].iter().all(|&(m, _)| m == 1),
                "client {client}: the old model answered after the new one"
            );
        }
        for &(model, written_after) in answers {
            if written_after {
                assert_eq!(model, 1, "client {client}: old model after the reload");
                after += 1;
            }
            if model == 0 {
                from_old += 1;
            } else {
                from_new += 1;
            }
        }
    }
    eprintln!("answers: {from_old} by the old model, {from_new} by the new ({after} after READY)");
    assert!(
        from_old > 0 && after > 0,
        "the reload fell outside the load"
    );

    // RELOADING=1 with MONOTONIC_USEC (taken between the signal and READY=1), then READY=1.
    assert_eq!(seen.len(), 3, "{seen:?}");
    let reloading = &seen[1];
    assert!(has_line(reloading, "RELOADING=1"), "{seen:?}");
    let usec: u64 = field(reloading, "MONOTONIC_USEC")
        .expect("MONOTONIC_USEC")
        .parse()
        .unwrap();
    assert!(
        (signalled..=ready_seen).contains(&usec),
        "{usec} not in {signalled}..={ready_seen}"
    );
    assert!(field(reloading, "STATUS").is_some(), "{reloading}");
    let ready = &seen[2];
    let status = field(ready, "STATUS").expect("STATUS with READY=1");
    assert!(status.starts_with("serving "), "{status}");
    assert!(status.contains("models/demo/discriminator"), "{status}");

    let st = server.stats();
    assert_eq!(st["model_generation"], 1);
    assert_eq!(st["reloads"], 1);
    let canonical = demo().canonicalize().unwrap();
    assert_eq!(st["model_folder"], canonical.display().to_string());
    assert_eq!(st["model"], link.display().to_string());
    let (ok, stderr) = server.stop();
    assert!(ok, "{stderr}");
    assert_eq!(error_lines(&stderr), Vec::<&str>::new());
    let (requests, answered, unanswered) = stopped_counts(&stderr);
    assert_eq!((answered, unanswered), (requests, 0), "{stderr}");
}

/// A folder that cannot be loaded (a truncated model.onnx), then one whose self-check fails
/// (the manifest's golden outputs changed): each leaves the old model answering, logs exactly
/// one error line, and says why in STATUS= with READY=1. A good folder then loads.
#[test]
fn a_broken_folder_keeps_the_old_model_serving() {
    let dir = TempDir::new("reload-broken");
    let link = dir.path().join("model");
    switch(&link, &tiny());
    let old = answers_of(&tiny());
    let new = answers_of(&demo());

    let truncated = dir.path().join("truncated");
    copy_folder(&demo(), &truncated);
    let onnx = std::fs::read(truncated.join("model.onnx")).unwrap();
    std::fs::write(truncated.join("model.onnx"), &onnx[..onnx.len() / 2]).unwrap();

    let wrong = dir.path().join("wrong-goldens");
    copy_folder(&demo(), &wrong);
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(wrong.join("manifest.json")).unwrap()).unwrap();
    // both references moved by 1: the allowed error (twice int8's distance to fp32) stays
    // small, ours is 1 off
    for golden in manifest["golden"].as_array_mut().unwrap() {
        for key in ["ort_fp32", "ort_int8"] {
            for v in golden[key].as_array_mut().unwrap() {
                *v = Value::from(v.as_f64().unwrap() + 1.0);
            }
        }
    }
    std::fs::write(wrong.join("manifest.json"), manifest.to_string()).unwrap();

    let notify = Notifications::bind(dir.path());
    let server = Server::start(dir.path(), &link, &notify, &[]);
    let mut c = Client::connect(&server.path);
    let mut readies = 1;
    for (broken, why) in [(&truncated, "model.onnx"), (&wrong, "self-check")] {
        switch(&link, broken);
        server.signal(libc::SIGHUP);
        // answered while the reload runs, and after it failed: the old model
        for (i, text) in TEXTS.iter().enumerate() {
            assert_eq!(which(c.ask(text), i, &old, &new), 0);
        }
        readies += 1;
        let seen = notify.wait_for(readies, "READY=1 after the reload", |m| {
            has_line(m, "READY=1")
        });
        let (reloading, ready) = (&seen[seen.len() - 2], &seen[seen.len() - 1]);
        assert!(has_line(reloading, "RELOADING=1"), "{seen:?}");
        let status = field(ready, "STATUS").expect("STATUS with READY=1");
        assert!(
            status.contains("failed") && status.contains(why),
            "{status}"
        );
        assert!(status.contains("still serving"), "{status}");
        for (i, text) in TEXTS.iter().enumerate() {
            assert_eq!(which(c.ask(text), i, &old, &new), 0);
        }
        let st = server.stats();
        assert_eq!(st["model_generation"], 0);
        assert!(
            st["last_reload_error"].as_str().unwrap().contains(why),
            "{st}"
        );
    }
    assert_eq!(server.stats()["reloads_failed"], 2);
    // The good folder now: the new model answers.
    switch(&link, &demo());
    server.signal(libc::SIGHUP);
    notify.wait_for(readies + 1, "READY=1 after the reload", |m| {
        has_line(m, "READY=1")
    });
    for (i, text) in TEXTS.iter().enumerate() {
        assert_eq!(which(c.ask(text), i, &old, &new), 1);
    }
    drop(c);
    let (ok, stderr) = server.stop();
    assert!(ok, "{stderr}");
    let errors = error_lines(&stderr);
    assert_eq!(
        errors.len(),
        2,
        "one error line per failed reload: {errors:?}"
    );
    assert!(errors[0].contains("model.onnx"), "{}", errors[0]);
    assert!(errors[1].contains("self-check"), "{}", errors[1]);
}

/// SIGHUPs that come while a reload runs are coalesced into one more reload after it (two
/// never overlap: RELOADING=1 and READY=1 alternate); SIGTERM during a reload still shuts down
/// cleanly: STOPPING=1, no READY=1 after it, exit 0, every request read answered.
#[test]
fn sighups_during_a_small_model_reload_coalesce_and_sigterm_during_one_exits_cleanly() {
    let dir = TempDir::new("reload-coalesce");
    let link = dir.path().join("model");
    switch(&link, &small());
    let notify = Notifications::bind(dir.path());
    let server = Server::start(dir.path(), &link, &notify, &[]);
    server.signal(libc::SIGHUP);
    notify.wait_for(1, "RELOADING=1", |m| has_line(m, "RELOADING=1"));
    for _ in 0..3 {
        server.signal(libc::SIGHUP);
    }
    let seen = notify.wait_for(3, "READY=1 after two reloads", |m| has_line(m, "READY=1"));
    // nothing more comes
    std::thread::sleep(Duration::from_millis(1500));
    let seen_later = notify.lifecycle();
    assert_eq!(seen_later, seen, "a third reload");
    let kinds: Vec<&str> = seen
        .iter()
        .map(|m| {
            if has_line(m, "RELOADING=1") {
                "RELOADING"
            } else if has_line(m, "READY=1") {
                "READY"
            } else {
                "other"
            }
        })
        .filter(|k| *k != "other")
        .collect();
    assert_eq!(kinds, ["READY", "RELOADING", "READY", "RELOADING", "READY"]);
    assert_eq!(server.stats()["reloads"], 2);

    // SIGTERM while a reload loads, with a client asking throughout.
    let path = server.path.clone();
    let asking = Arc::new(AtomicBool::new(true));
    let client = {
        let asking = asking.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(&path);
            let mut answers = HashMap::new();
            let mut n = 0;
            while asking.load(Ordering::SeqCst) {
                let line = format!("{{\"id\":{n},\"text\":\"你好\"}}\n");
                if c.writer.write_all(line.as_bytes()).is_err() {
                    break;
                }
                match c.recv() {
                    Some(a) => {
                        assert!(a.get("error").is_none(), "{a}");
                        answers.insert(n, a);
                    }
                    None => break,
                }
                n += 1;
            }
            answers.len()
        })
    };
    server.signal(libc::SIGHUP);
    notify.wait_for(3, "RELOADING=1", |m| has_line(m, "RELOADING=1"));
    server.signal(libc::SIGTERM);
    // the client keeps asking into the shutdown's drain, then goes quiet
    std::thread::sleep(Duration::from_millis(300));
    asking.store(false, Ordering::SeqCst);
    let (ok, stderr) = server.wait();
    let answered_to_client = client.join().unwrap();
    assert!(ok, "{stderr}");
    let seen = notify.lifecycle();
    let stopping = seen
        .iter()
        .position(|m| has_line(m, "STOPPING=1"))
        .unwrap_or_else(|| panic!("no STOPPING=1: {seen:?}"));
    assert!(
        seen[stopping..].iter().all(|m| !has_line(m, "READY=1")),
        "READY=1 after STOPPING=1: {seen:?}"
    );
    let (requests, answered, unanswered) = stopped_counts(&stderr);
    assert_eq!((answered, unanswered), (requests, 0), "{stderr}");
    assert!(answered_to_client > 0);
    assert_eq!(error_lines(&stderr), Vec::<&str>::new());
}

/// The peak RSS of reloads of the small model under load stays within the budget the server
/// states (which counts a second model for the reload), and that budget, with one worker, is
/// within the `MemoryMax=192M` docs/serve.md asks of the unit.
#[test]
fn reloading_the_small_model_stays_within_the_budget() {
    let dir = TempDir::new("reload-memory");
    let link = dir.path().join("model");
    switch(&link, &small());
    let notify = Notifications::bind(dir.path());
    let server = Server::start(dir.path(), &link, &notify, &["--workers", "1"]);
    let budget = server.stats()["budget"].clone();
    let total = budget["total"].as_u64().unwrap();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let hwm_before = server.vm("VmHWM");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let (path, stop) = (server.path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(&path);
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let a = c.ask(TEXTS[(client + n) % TEXTS.len()]);
                    assert!(a.get("error").is_none(), "{a}");
                    n += 1;
                }
                n
            })
        })
        .collect();
    for reload in 0..3 {
        server.signal(libc::SIGHUP);
        notify.wait_for(reload + 2, "READY=1", |m| has_line(m, "READY=1"));
    }
    stop.store(true, Ordering::SeqCst);
    let answered: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let hwm = server.vm("VmHWM");
    let after = server.stats();
    eprintln!(
        "reload memory: peak RSS {:.1} MiB before the reloads, {:.1} MiB after 3 ({answered} \
         requests meanwhile); budget {:.1} MiB at start (base {:.1}, reload {:.1}), {:.1} MiB \
         after",
        mib(hwm_before),
        mib(hwm),
        mib(total),
        mib(budget["base"].as_u64().unwrap()),
        mib(budget["reload"].as_u64().unwrap()),
        mib(after["budget"]["total"].as_u64().unwrap()),
    );
    assert_eq!(after["reloads"], 3);
    assert!(hwm <= total, "peak RSS {hwm} over the budget {total}");
    assert!(
        total <= 192 << 20,
        "one worker's budget {total} over MemoryMax=192M"
    );
    let (ok, stderr) = server.stop();
    assert!(ok, "{stderr}");
}
