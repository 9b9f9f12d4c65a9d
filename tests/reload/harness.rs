//! What the reload tests share: the model folders, a symlink switch, the server process with a
//! fake `NOTIFY_SOCKET`, the models' reference answers (the line client is `tests/common`'s).

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use crate::common::{copy_folder, stopped_counts, Client};
use crate::common::{electra_edge, fixtures};
use electra_edge::engine::{Engine, EngineOptions};
use electra_edge::procfs::{status_bytes, Pid};
use serde_json::Value;

pub fn tiny() -> PathBuf {
    fixtures().join("electra-tiny-zh/discriminator")
}

pub fn small() -> PathBuf {
    fixtures().join("electra-small-zh/discriminator")
}

/// The demo discriminator: trained, with a manifest (so its load runs the self-check), and
/// answers unlike the fixtures'.
pub fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/discriminator")
}

/// `CLOCK_MONOTONIC` in microseconds, what `MONOTONIC_USEC=` is measured on.
pub fn monotonic_usec() -> u64 {
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
pub fn switch(link: &Path, target: &Path) {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

pub const TEXTS: [&str; 4] = [
    "我爱北京天安门",
    "今天天汽很好",
    "边缘设备上的推理",
    "这家餐厅的菜味道不错",
];

/// What `model` answers to each of [`TEXTS`] (the answer object without its `id`), in process:
/// the same JSON the server writes.
pub fn answers_of(model: &Path) -> Vec<Value> {
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

pub fn without_id(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("id");
    v
}

/// Every `sd_notify` datagram the server sends, in order, read on a thread.
pub struct Notifications {
    seen: Arc<Mutex<Vec<String>>>,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Notifications {
    pub fn bind(dir: &Path) -> Notifications {
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
    pub fn lifecycle(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        let ready = seen.iter().position(|m| has_line(m, "READY=1"));
        seen[ready.unwrap_or(seen.len())..]
            .iter()
            .filter(|m| *m != "WATCHDOG=1")
            .cloned()
            .collect()
    }

    /// Waits until `n` lifecycle datagrams have come that satisfy `is`, and returns them all.
    pub fn wait_for(&self, n: usize, what: &str, is: impl Fn(&str) -> bool) -> Vec<String> {
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

pub fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

pub fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// The binary serving the symlink `model` on `dir/s.sock`, telling `notify` what it does.
pub struct Server {
    child: Child,
    pub path: PathBuf,
    stderr: Option<JoinHandle<String>>,
}

impl Server {
    pub fn start(dir: &Path, model: &Path, notify: &Notifications, extra: &[&str]) -> Server {
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

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with our own child's pid and a valid signal number; no memory is
        // passed.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    pub fn stats(&self) -> Value {
        let mut c = Client::connect(&self.path);
        c.send(b"{\"cmd\":\"stats\"}\n");
        c.recv().expect("stats")["stats"].clone()
    }

    pub fn vm(&self, field: &str) -> u64 {
        status_bytes(Pid::Other(self.child.id()), &[field])[0]
    }

    /// SIGTERM, then the exit status and stderr.
    pub fn stop(self) -> (bool, String) {
        self.signal(libc::SIGTERM);
        self.wait()
    }

    /// The exit status and stderr.
    pub fn wait(mut self) -> (bool, String) {
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

pub fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains("ERROR")).collect()
}

/// Which model answered: 0 the old, 1 the new.
pub fn which(answer: Value, text: usize, old: &[Value], new: &[Value]) -> u8 {
    let a = without_id(answer);
    if a == old[text] {
        0
    } else if a == new[text] {
        1
    } else {
        panic!("an answer from neither model: {a}")
    }
}
