//! What the server tests share: the tiny model's engine, an in-process server on a socket in a
//! temp folder (`Running`) and the binary as a process (`Process`); the line client and the
//! `stopped:` line the process prints at exit come from `tests/common`.

use std::io::{BufReader, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::{electra_edge, fixtures, TempDir};
pub use crate::common::{stopped_counts, Client};
use electra_edge::engine::{Engine, EngineOptions};
use electra_edge::procfs::{status_bytes, Pid};
use electra_edge::server::{self, ServeReport, ServerConfig, Shutdown};
use serde_json::Value;

pub fn tiny() -> PathBuf {
    fixtures().join("electra-tiny-zh/discriminator")
}

/// One engine for all in-process tests of this binary.
pub fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| Arc::new(Engine::load(&tiny(), EngineOptions::default()).unwrap()))
        .clone()
}

/// An in-process server on a socket in its own temp folder.
pub struct Running {
    pub path: PathBuf,
    pub shutdown: Shutdown,
    handle: Option<JoinHandle<anyhow::Result<ServeReport>>>,
    _dir: TempDir,
}

impl Running {
    pub fn start(tag: &str, tune: impl FnOnce(&mut ServerConfig)) -> Running {
        let dir = TempDir::new(tag);
        let path = dir.path().join("s.sock");
        let engine = engine();
        let mut config = ServerConfig::for_engine(&engine);
        config.poll_interval = Duration::from_millis(20);
        tune(&mut config);
        let listener = UnixListener::bind(&path).unwrap();
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        let handle = std::thread::spawn(move || {
            server::serve(engine, listener, config, s, server::Reload::new())
        });
        Running {
            path,
            shutdown,
            handle: Some(handle),
            _dir: dir,
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.path)
    }

    pub fn stats(&self) -> Value {
        let s = self.client().ask(r#"{"cmd":"stats"}"#);
        s["stats"].clone()
    }

    pub fn stop(mut self) -> ServeReport {
        self.shutdown.trigger();
        self.handle.take().unwrap().join().unwrap().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub fn code(v: &Value) -> Option<&str> {
    v["error"]["code"].as_str()
}

pub struct Process {
    pub child: Child,
    pub path: PathBuf,
    stderr: Option<JoinHandle<String>>,
}

impl Process {
    pub fn start(dir: &Path, extra: &[&str]) -> Process {
        Process::start_model(dir, &tiny(), extra)
    }

    pub fn start_model(dir: &Path, model: &Path, extra: &[&str]) -> Process {
        let path = dir.join("s.sock");
        let mut child = electra_edge()
            .arg("serve")
            .arg("--model")
            .arg(model)
            .arg("--socket")
            .arg(&path)
            .args(extra)
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
        let p = Process {
            child,
            path,
            stderr: Some(stderr),
        };
        p.wait_ready();
        p
    }

    pub fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            if let Ok(s) = UnixStream::connect(&self.path) {
                let mut c = Client {
                    reader: BufReader::new(s.try_clone().unwrap()),
                    writer: s,
                };
                c.send(b"{\"cmd\":\"ping\"}\n");
                if c.recv().is_some_and(|v| v["pong"] == true) {
                    return;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(30), "never ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    pub fn vm(&self, field: &str) -> u64 {
        let field = field.trim_end_matches(':');
        status_bytes(Pid::Other(self.child.id()), &[field])[0]
    }

    /// Waits for the exit (bounded) and returns (success, stderr).
    pub fn wait(mut self, limit: Duration) -> (bool, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                panic!("no exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (
            status.success(),
            self.stderr.take().unwrap().join().unwrap(),
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}
