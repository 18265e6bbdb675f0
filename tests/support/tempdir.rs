//! Scratch directories (host-local data dirs, conflist dirs, cnitool caches) removed on drop.

use std::path::{Path, PathBuf};

use crate::names::{base36, random_u64};

/// A directory under the system temp dir, removed with everything in it on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/cnit-<pid>-<tag>-<random>` (mode 0700).
    pub fn new(tag: &str) -> TempDir {
        use std::os::unix::fs::DirBuilderExt;
        let name = format!(
            "cnit-{}-{tag}-{}",
            std::process::id(),
            base36(random_u64(), 6)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(rel)`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: remove temp dir {}: {e}", self.path.display());
        }
    }
}

/// A fresh [`TempDir`].
pub fn tempdir() -> TempDir {
    TempDir::new("tmp")
}
