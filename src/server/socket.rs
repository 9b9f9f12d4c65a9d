//! The socket file of `serve --socket PATH`: bind (replacing a stale one), mode, group, removal.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

/// A bound socket path, removed when dropped (only if it is still the socket we bound).
#[derive(Debug)]
pub struct SocketFile {
    pub path: PathBuf,
    ino: u64,
}

impl SocketFile {
    /// Binds `path`: a stale socket file (nobody accepts on it) is replaced, a live one is
    /// refused, anything that is not a socket is left alone and refused. Then sets the file's
    /// mode and, when given, its group.
    pub fn bind(path: &Path, mode: u32, group: Option<u32>) -> Result<(UnixListener, SocketFile)> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                bail!(
                    "{} exists and is not a socket; not replacing it",
                    path.display()
                );
            }
            match UnixStream::connect(path) {
                Ok(_) => bail!(
                    "another server is already listening on {} (stop it first, or choose another --socket)",
                    path.display()
                ),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    log::warn!("removing stale socket file {}", path.display());
                    std::fs::remove_file(path)
                        .with_context(|| format!("cannot remove stale {}", path.display()))?;
                }
                Err(e) => {
                    return Err(anyhow!(e)
                        .context(format!("cannot check existing socket {}", path.display())))
                }
            }
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
        let file = SocketFile {
            path: path.to_owned(),
            ino: std::fs::metadata(path).map_or(0, |m| m.ino()),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot chmod {:o} {}", mode, path.display()))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(path, None, Some(gid))
                .with_context(|| format!("cannot chgrp {gid} {}", path.display()))?;
        }
        Ok((listener, file))
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && m.ino() == self.ino);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

/// A group given by name (looked up in `/etc/group`) or number.
pub fn parse_group(group: &str) -> Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").context("cannot read /etc/group")?;
    groups
        .lines()
        .find_map(|l| {
            let mut fields = l.split(':');
            (fields.next() == Some(group))
                .then(|| fields.nth(1).and_then(|g| g.parse().ok()))
                .flatten()
        })
        .ok_or_else(|| anyhow!("no group named {group:?} in /etc/group"))
}

/// A socket mode in octal, e.g. `660` or `0660`.
pub fn parse_mode(mode: &str) -> Result<u32> {
    let m = u32::from_str_radix(mode.trim_start_matches("0o"), 8)
        .map_err(|_| anyhow!("socket mode {mode:?} is not an octal number like 0660"))?;
    if m > 0o777 {
        bail!("socket mode {mode:?} is not within 0..=0777");
    }
    Ok(m)
}
