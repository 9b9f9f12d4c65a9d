//! The units and their scripts: `cross/install.sh` into a temp prefix (and DESTDIR staging),
//! `cross/verify-units.sh` (`systemd-analyze verify`), and the shipped `MemoryMax=` against the
//! small model's memory budget.

use std::path::Path;
use std::process::Command;

use crate::common::{fixtures, repo_root, TempDir};
use crate::harness::need;

fn install(args: &[&str], destdir: Option<&Path>) -> std::process::Output {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("cross/install.sh")).args(args);
    cmd.env_remove("DESTDIR");
    if let Some(d) = destdir {
        cmd.env("DESTDIR", d);
    }
    cmd.output().unwrap()
}

#[test]
fn install_sh_into_a_temp_prefix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("sd-install");
    let bin = dir.join("electra-edge-dummy");
    std::fs::write(&bin, "#!/bin/sh\necho dummy\n").unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o700)).unwrap();
    let model = dir.join("model-src");
    std::fs::create_dir_all(model.join("golden")).unwrap();
    std::fs::write(model.join("config.json"), "{}").unwrap();
    std::fs::write(model.join("golden/out.json"), "[]").unwrap();
    std::fs::set_permissions(
        model.join("config.json"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let prefix = dir.join("prefix");
    let out = install(
        &[
            "--binary",
            bin.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            prefix.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let installed_bin = prefix.join("usr/local/bin/electra-edge");
    assert_eq!(
        std::fs::read(&installed_bin).unwrap(),
        std::fs::read(&bin).unwrap()
    );
    assert_eq!(mode(&installed_bin), 0o755);
    let model_dir = prefix.join("usr/local/share/electra-edge/model");
    assert_eq!(
        std::fs::read_to_string(model_dir.join("golden/out.json")).unwrap(),
        "[]"
    );
    assert_eq!(
        mode(&model_dir.join("config.json")),
        0o644,
        "model readable by the dynamic user"
    );
    assert_eq!(mode(&model_dir.join("golden")), 0o755);

    let units = prefix.join("etc/systemd/system");
    let service = std::fs::read_to_string(units.join("electra-edge.service")).unwrap();
    let socket = std::fs::read_to_string(units.join("electra-edge.socket")).unwrap();
    let p = prefix.to_str().unwrap();
    let exec_start = service
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart");
    assert!(
        exec_start.starts_with(&format!(
            "ExecStart={p}/usr/local/bin/electra-edge serve --model {p}/usr/local/share/electra-edge/model"
        )),
        "{exec_start}"
    );
    assert!(service.contains(&format!(
        "\nReadOnlyPaths={p}/usr/local/share/electra-edge/model\n"
    )));
    assert!(
        !service.contains("=/usr/local/"),
        "every /usr/local path rewritten"
    );
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=",
        "Restart=on-failure",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX",
        "MemoryMax=",
        "Environment=RUST_LOG=info",
    ] {
        assert!(
            service.lines().any(|l| l.starts_with(line)),
            "service has {line}"
        );
    }
    assert!(socket.contains("\nListenStream=/run/electra-edge/electra-edge.sock\n"));
    assert!(socket.contains("\nSocketMode=0660\n"));
    assert_eq!(
        socket,
        std::fs::read_to_string(repo_root().join("cross/electra-edge.socket")).unwrap()
    );

    // Installing again (an upgrade) works and is idempotent.
    let again = install(&["--binary", bin.to_str().unwrap(), p], None);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(units.join("electra-edge.service")).unwrap(),
        service
    );

    // DESTDIR staging: files under DESTDIR, unit paths as at run time (/usr/local/...).
    let stage = dir.join("stage");
    let out = install(&["--binary", bin.to_str().unwrap(), "/"], Some(&stage));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stage.join("usr/local/bin/electra-edge").is_file());
    let staged =
        std::fs::read_to_string(stage.join("etc/systemd/system/electra-edge.service")).unwrap();
    assert_eq!(
        staged,
        std::fs::read_to_string(repo_root().join("cross/electra-edge.service")).unwrap()
    );

    // Errors are clear and leave nothing half-done.
    let out = install(
        &[
            "--binary",
            dir.join("nope").to_str().unwrap(),
            dir.join("p2").to_str().unwrap(),
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no binary at"));
    assert!(!dir.join("p2").exists());
    let out = install(
        &[
            "--binary",
            bin.to_str().unwrap(),
            dir.join("with space").to_str().unwrap(),
        ],
        None,
    );
    assert!(!out.status.success());
}

#[test]
fn verify_units_sh_passes() {
    need("systemd-analyze");
    let out = Command::new("bash")
        .arg(repo_root().join("cross/verify-units.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// MemoryMax= in the shipped service is at least the memory budget the server states for the
/// ExecStart limits, with the small model. Release builds only (a debug build's measured base
/// is larger and its warm-up takes minutes), and skipped under emulation (qemu-user's own
/// memory would count in the measured base).
#[test]
#[cfg_attr(debug_assertions, ignore = "release builds only: run with --release")]
fn service_memory_max_covers_the_budget() {
    assert!(
        std::env::var_os("ELECTRA_EDGE_TEST_RUNNER").is_none(),
        "not meaningful under emulation (qemu-user's own memory counts in the measured base): \
         skip it with --skip service_memory_max (.ci/aarch64.sh's callers do)"
    );
    let model = fixtures().join("electra-small-zh/discriminator");
    let out = Command::new("bash")
        .arg(repo_root().join("cross/verify-units.sh"))
        .arg("--budget")
        .arg(env!("CARGO_BIN_EXE_electra-edge"))
        .arg(&model)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("memory budget"), "{stdout}");
}
