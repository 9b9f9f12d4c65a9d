//! Test support shared by the unit tests (`crate::testutil`), the integration tests
//! (`tests/common` includes this file) and the benchmarks: where the fixtures are, temporary
//! folders, a seeded random generator. std and serde_json only, so that every kind of target
//! can include it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The reference fixtures: `$ELECTRA_EDGE_FIXTURES`, else `../shared/fixtures` next to the
/// repository. Missing fixtures fail the test with a message saying what to put where.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("ELECTRA_EDGE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/fixtures"));
    assert!(
        dir.join("README.md").is_file(),
        "reference fixtures not found at {}: these tests need the shared fixtures folder \
         (electra-tiny-zh/, electra-small-zh/, minilm-l6/, README.md) at ../shared/fixtures next \
         to the repository, or ELECTRA_EDGE_FIXTURES=DIR (CI always has it)",
        dir.display()
    );
    dir
}

/// A fixture file or folder, which must exist: `fixture("electra-tiny-zh/discriminator")`.
pub fn fixture(rel: &str) -> PathBuf {
    let path = fixtures().join(rel);
    assert!(
        path.exists(),
        "fixture {} is missing (expected at {})",
        rel,
        path.display()
    );
    path
}

/// The committed demo models made by `models/export.py`.
pub fn demo_models() -> PathBuf {
    repo_root().join("models/demo")
}

/// The lines of a JSON-lines file.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A temporary folder, removed when dropped (also when the test panics).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ee-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// `dir.join(..)`, `&dir` as a `&Path`.
impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies the files of a folder (not recursively) into `to`.
pub fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A small seeded generator (xorshift64): the same inputs on every run and machine.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn byte(&mut self) -> u8 {
        (self.next_u64() >> 24) as u8
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    /// Uniform in `[lo, hi)`.
    pub fn f32(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
}
