//! Where the binaries under test, the reference plugins and cnitool are.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The plugin binaries this workspace builds.
pub const PLUGINS: [&str; 3] = ["bridge", "host-local", "portmap"];

/// Where Debian's `containernetworking-plugins` installs the reference plugins.
const REFERENCE_DIR: &str = "/usr/lib/cni";

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

fn has_all_plugins(dir: &Path) -> bool {
    PLUGINS.iter().all(|p| dir.join(p).is_file())
}

/// The directory holding the plugin binaries under test: `$CNI_BIN_DIR` if set, else
/// `target/release` when all plugins are built there, else `target/debug`.
///
/// `cargo test` does not build binaries of other packages for this crate, so build them
/// first (`cargo build --release`), as `scripts/test.sh` does.
pub fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("CNI_BIN_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        let release = target_dir().join("release");
        if has_all_plugins(&release) {
            release
        } else {
            target_dir().join("debug")
        }
    })
    .clone()
}

/// Path of one of our plugin binaries, e.g. `plugin("bridge")`.
pub fn plugin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// The reference plugins' directory (`$CNI_REFERENCE_DIR`, else `/usr/lib/cni`), if they
/// are installed there.
pub fn reference_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("CNI_REFERENCE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(REFERENCE_DIR));
    has_all_plugins(&dir).then_some(dir)
}

/// Path of a reference plugin, e.g. `reference_plugin("host-local")`, if installed.
pub fn reference_plugin(name: &str) -> Option<PathBuf> {
    reference_dir()
        .map(|d| d.join(name))
        .filter(|p| p.is_file())
}

/// `cnitool`: `$CNITOOL` if set (an empty value means "none"), else the first one on `PATH`.
/// Tests that need it should skip with a message when this is `None`.
pub fn cnitool() -> Option<PathBuf> {
    if let Some(tool) = std::env::var_os("CNITOOL") {
        let tool = PathBuf::from(tool);
        return tool.is_file().then_some(tool);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("cnitool"))
        .find(|p| p.is_file())
}
