//! The socket file: stale and live sockets, mode, group and removal (`SocketFile`), and the
//! same as a process: the README's socat example, a second server refused, SIGTERM and SIGINT
//! exits, a crash's stale file replaced.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::time::Duration;

use crate::common::{electra_edge, TempDir};
use crate::harness::{tiny, Process};
use electra_edge::server::{self, SocketFile};
use serde_json::Value;

#[test]
fn socket_file_stale_live_mode_and_removal() {
    let dir = TempDir::new("sockfile");
    let path = dir.path().join("s.sock");
    // Stale: bound by a process that is gone (the file stays, nobody accepts).
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let (listener, file) = SocketFile::bind(&path, 0o660, None).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    // Live: refused, and the live socket is left alone.
    let err = SocketFile::bind(&path, 0o660, None).unwrap_err();
    assert!(format!("{err:#}").contains("already listening"), "{err:#}");
    assert!(UnixStream::connect(&path).is_ok());
    drop(listener);
    drop(file);
    assert!(!path.exists(), "removed on drop");
    // Another mode and our own group.
    let gid = std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(dir.path()).unwrap());
    let (_l, file) = SocketFile::bind(&path, 0o600, Some(gid)).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    drop(file);
    // Not a socket: never removed.
    std::fs::write(&path, "precious").unwrap();
    assert!(SocketFile::bind(&path, 0o660, None).is_err());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    assert_eq!(server::parse_mode("0660").unwrap(), 0o660);
    assert!(server::parse_mode("999").is_err());
    assert_eq!(server::parse_group("0").unwrap(), 0);
    assert_eq!(server::parse_group("root").unwrap(), 0);
    assert!(server::parse_group("no-such-group-here").is_err());
}

#[test]
fn process_socat_mode_stale_live_and_sigterm() {
    let dir = TempDir::new("proc");
    let server = Process::start(dir.path(), &[]);
    let mode = std::fs::metadata(&server.path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
    // The README's socat example, when socat is installed.
    if Command::new("socat").arg("-V").output().is_ok() {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf '{{\"id\":1,\"text\":\"我爱北京天安门\"}}\\n' | socat - UNIX-CONNECT:{}",
                server.path.display()
            ))
            .output()
            .unwrap();
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(answer["id"], 1);
        assert_eq!(answer["tokens"].as_array().unwrap().len(), 7);
    }
    // A second server on the same live socket is refused, and leaves it alone.
    let out = electra_edge()
        .args(["serve", "--model"])
        .arg(tiny())
        .arg("--socket")
        .arg(&server.path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already listening"), "{err}");
    server.wait_ready();
    // SIGTERM: exit 0, socket file gone.
    server.signal("TERM");
    let path = server.path.clone();
    let (ok, stderr) = server.wait(Duration::from_secs(10));
    assert!(ok, "{stderr}");
    assert!(!path.exists());
    // A crash leaves a stale file; the next start replaces it.
    let mut crashed = Process::start(dir.path(), &["--socket-mode", "0600"]);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    crashed.child.kill().unwrap();
    crashed.child.wait().unwrap();
    assert!(path.exists(), "SIGKILL leaves the socket file behind");
    let again = Process::start(dir.path(), &[]);
    again.signal("INT");
    let (ok, stderr) = again.wait(Duration::from_secs(10));
    assert!(ok, "{stderr}");
    assert!(!path.exists());
}
