//! `cni-rs-node install`: puts the image's plugins into the node's CNI bin directory (the
//! DaemonSet's init container), and the file side of `cni-rs-node uninstall`.
//!
//! A runtime may exec a plugin at any moment, so a plugin is never written in place: it
//! is copied under a name nothing executes (`.bridge.cni-rs-tmp`), synced, made
//! executable and renamed over the old one; a process running the old file keeps its
//! inode. What it replaces is kept exactly as `scripts/install.sh` keeps it (hard-linked
//! to `<name>.pre-cni-rs`, listed in `<bin-dir>/.cni-rs-install.manifest`), so either
//! tool's uninstall puts it back. `loopback` and every other file are left alone.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::{InstallArgs, UninstallArgs};
use crate::{info, warn};

/// The plugins the image carries; nothing else in the bin directory is ever touched.
pub const PLUGINS: [&str; 3] = ["bridge", "host-local", "portmap"];
/// Shared with `scripts/install.sh`: same name, same format.
pub const MANIFEST_NAME: &str = ".cni-rs-install.manifest";
pub const BACKUP_SUFFIX: &str = ".pre-cni-rs";
/// Temporaries start with a dot and end in this: a runtime looks a plugin up by its
/// exact `type`, so it never executes one.
pub const TMP_SUFFIX: &str = ".cni-rs-tmp";

const MANIFEST_HEADER: &str = "# written by cni-rs-node install; read by cni-rs-node uninstall and scripts/install.sh --uninstall\n";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not a regular file (are the plugins in the image where --from says?)", .0.display())]
    NotAFile(PathBuf),
    #[error("{}: a path with a tab or a newline cannot be kept in the manifest", .0.display())]
    Unrecordable(PathBuf),
    #[error(
        "changed since they were installed, so kept: {}; the manifest stays for another \
         uninstall with --force",
        .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    Kept(Vec<PathBuf>),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstallError {
    let path = path.to_owned();
    move |source| InstallError::Io { what, path, source }
}

/// One line of the manifest (tab-separated, as `scripts/install.sh` writes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A file written by an installer, with its SHA-256 as written.
    File { sha: String, path: PathBuf },
    /// `path` was there before; it is kept as `backup`.
    Backup { path: PathBuf, backup: PathBuf },
    /// A directory an installer created.
    Dir(PathBuf),
}

/// What an earlier install recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// Lines of another kind (the header comment) are skipped, as `install.sh` skips them.
    pub fn parse(text: &str) -> Manifest {
        let entries = text
            .lines()
            .filter_map(|line| {
                let mut f = line.split('\t');
                match (f.next()?, f.next()?, f.next()) {
                    ("file", sha, Some(path)) => Some(Entry::File {
                        sha: sha.to_owned(),
                        path: path.into(),
                    }),
                    ("backup", path, Some(backup)) => Some(Entry::Backup {
                        path: path.into(),
                        backup: backup.into(),
                    }),
                    ("dir", path, None) => Some(Entry::Dir(path.into())),
                    _ => None,
                }
            })
            .collect();
        Manifest { entries }
    }

    /// Backups, then directories, then files, each in the order recorded: the same
    /// manifest renders to the same bytes, so a re-run has nothing to rewrite.
    pub fn render(&self) -> String {
        let mut out = String::from(MANIFEST_HEADER);
        for e in &self.entries {
            if let Entry::Backup { path, backup } = e {
                out.push_str(&format!(
                    "backup\t{}\t{}\n",
                    path.display(),
                    backup.display()
                ));
            }
        }
        for e in &self.entries {
            if let Entry::Dir(path) = e {
                out.push_str(&format!("dir\t{}\n", path.display()));
            }
        }
        for e in &self.entries {
            if let Entry::File { sha, path } = e {
                out.push_str(&format!("file\t{sha}\t{}\n", path.display()));
            }
        }
        out
    }

    pub fn recorded_sha(&self, path: &Path) -> Option<&str> {
        self.entries.iter().find_map(|e| match e {
            Entry::File { sha, path: p } if p == path => Some(sha.as_str()),
            _ => None,
        })
    }

    pub fn backup_of(&self, path: &Path) -> Option<&Path> {
        self.entries.iter().find_map(|e| match e {
            Entry::Backup { path: p, backup } if p == path => Some(backup.as_path()),
            _ => None,
        })
    }

    fn set_file(&mut self, path: &Path, new_sha: &str) {
        for e in &mut self.entries {
            if let Entry::File { sha, path: p } = e
                && p == path
            {
                *sha = new_sha.to_owned();
                return;
            }
        }
        self.entries.push(Entry::File {
            sha: new_sha.to_owned(),
            path: path.to_owned(),
        });
    }
}

/// What `install` did with one plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// Written; `kept_previous`: the file it replaced is now `<name>.pre-cni-rs`.
    Installed { kept_previous: bool },
    /// Already ours and identical.
    Unchanged,
    /// Identical, but put there by someone else: not recorded, so never removed by
    /// an uninstall (as `install.sh` does).
    LeftAsIs,
}

/// `<dir>/.<name>.cni-rs-tmp`
pub fn temp_path(dest: &Path) -> PathBuf {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    dest.with_file_name(format!(".{name}{TMP_SUFFIX}"))
}

pub fn backup_path(dest: &Path) -> PathBuf {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    dest.with_file_name(format!("{name}{BACKUP_SUFFIX}"))
}

/// A temporary file removed on drop unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// Clears a temporary a killed earlier run may have left (the name is ours).
    fn claim(path: PathBuf) -> Result<TempFile, InstallError> {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove stale temporary", &path)(e)),
        }
        Ok(TempFile { path, armed: true })
    }

    /// Renames it over `dest`; from now on it is `dest`'s to keep.
    fn rename_to(mut self, dest: &Path) -> Result<(), InstallError> {
        fs::rename(&self.path, dest).map_err(io_err("rename into place", dest))?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn sha256_of(path: &Path) -> Result<String, io::Error> {
    let mut hasher = Sha256::new();
    io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The checksum of what `path` is now; `None` when there is nothing (or a dangling link).
fn current_sha(path: &Path) -> Result<Option<String>, InstallError> {
    match sha256_of(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

fn exists_at_all(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Makes a directory's entries (a rename, a new file) survive a crash.
fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// Paths go into the manifest as `install.sh` writes them: absolute, no trailing `/`.
fn absolute(path: &Path) -> Result<PathBuf, InstallError> {
    let abs = std::path::absolute(path).map_err(io_err("resolve", path))?;
    let clean: PathBuf = abs.components().collect();
    let s = clean.to_string_lossy();
    if s.contains('\t') || s.contains('\n') {
        return Err(InstallError::Unrecordable(clean));
    }
    Ok(clean)
}

/// Copies `src` to `dest` under a temporary name, synced and 0755, then renames it
/// into place. A failure leaves `dest` as it was and no temporary behind.
fn replace(src: &Path, dest: &Path) -> Result<(), InstallError> {
    let mut input = File::open(src).map_err(io_err("open", src))?;
    write_new(dest, 0o755, |out, tmp| {
        io::copy(&mut input, out).map_err(io_err("copy to", tmp))?;
        Ok(())
    })
}

/// Writes `dest` whole or not at all: `fill` writes a new file under a temporary
/// name (owner-only while it is incomplete: nobody executes or reads half a file),
/// which then gets `mode`, is synced and renamed into place, and the directory is
/// synced. A failure leaves `dest` as it was and no temporary behind.
fn write_new(
    dest: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File, &Path) -> Result<(), InstallError>,
) -> Result<(), InstallError> {
    let tmp = TempFile::claim(temp_path(dest))?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(&tmp.path)
        .map_err(io_err("create", &tmp.path))?;
    fill(&mut out, &tmp.path)?;
    out.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", &tmp.path))?;
    out.sync_all().map_err(io_err("sync", &tmp.path))?;
    drop(out);
    tmp.rename_to(dest)?;
    sync_dir(dest.parent().unwrap_or(Path::new("/")))
}

/// Keeps what is at `dest` as `<dest>.pre-cni-rs` while `dest` stays in place (a hard
/// link of the file itself, a symlink as the symlink), so there is no moment without
/// a plugin. An older backup not in the manifest is replaced, as `install.sh`'s `mv`.
fn keep_previous(dest: &Path) -> Result<PathBuf, InstallError> {
    let backup = backup_path(dest);
    let tmp = TempFile::claim(temp_path(&backup))?;
    fs::hard_link(dest, &tmp.path).map_err(io_err("keep a copy of", dest))?;
    tmp.rename_to(&backup)?;
    sync_dir(dest.parent().unwrap_or(Path::new("/")))?;
    Ok(backup)
}

/// Creates the missing levels of `dir`, outermost first, recording each.
fn make_dirs(dir: &Path, manifest: &mut Manifest) -> Result<(), InstallError> {
    let mut missing = Vec::new();
    let mut p = dir;
    while !exists_at_all(p) {
        missing.push(p.to_owned());
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    for d in missing.into_iter().rev() {
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&d)
            .map_err(io_err("create directory", &d))?;
        manifest.entries.push(Entry::Dir(d));
    }
    Ok(())
}

fn place(
    src: &Path,
    sha: &str,
    dest: &Path,
    manifest: &mut Manifest,
) -> Result<Placed, InstallError> {
    let current = current_sha(dest)?;
    let recorded = manifest.recorded_sha(dest).map(str::to_owned);
    if current.as_deref() == Some(sha) {
        if recorded.is_none() {
            return Ok(Placed::LeftAsIs);
        }
        manifest.set_file(dest, sha);
        return Ok(Placed::Unchanged);
    }
    // Ours (as recorded, unchanged since) is simply replaced; anything else is kept,
    // unless an earlier backup already holds what was there before us.
    let ours = current.is_some() && current == recorded;
    let mut kept_previous = false;
    if exists_at_all(dest) && !ours && manifest.backup_of(dest).is_none() {
        let backup = keep_previous(dest)?;
        manifest.entries.push(Entry::Backup {
            path: dest.to_owned(),
            backup,
        });
        kept_previous = true;
    }
    replace(src, dest)?;
    manifest.set_file(dest, sha);
    Ok(Placed::Installed { kept_previous })
}

fn read_manifest(path: &Path) -> Result<Option<String>, InstallError> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// Writes the manifest atomically, only when its content changes.
fn write_manifest(path: &Path, old: Option<&str>, m: &Manifest) -> Result<(), InstallError> {
    let text = m.render();
    if old == Some(text.as_str()) || (old.is_none() && m.entries.is_empty()) {
        return Ok(());
    }
    write_new(path, 0o644, |out, tmp| {
        io::Write::write_all(out, text.as_bytes()).map_err(io_err("write", tmp))
    })
}

/// Installs the plugins from `from` into `bin_dir`. Every source is checked before
/// anything is touched; the manifest records what was done even when a later plugin
/// fails, so an uninstall can still undo it.
pub fn install(from: &Path, bin_dir: &Path) -> Result<Vec<(&'static str, Placed)>, InstallError> {
    let bin_dir = absolute(bin_dir)?;
    let mut sources = Vec::new();
    for name in PLUGINS {
        let src = from.join(name);
        if !fs::metadata(&src).is_ok_and(|m| m.is_file()) {
            return Err(InstallError::NotAFile(src));
        }
        let sha = sha256_of(&src).map_err(io_err("read", &src))?;
        sources.push((name, src, sha));
    }
    let manifest_path = bin_dir.join(MANIFEST_NAME);
    let old = read_manifest(&manifest_path)?;
    let mut manifest = Manifest::parse(old.as_deref().unwrap_or(""));
    make_dirs(&bin_dir, &mut manifest)?;
    let mut done = Vec::new();
    let mut failure = None;
    for (name, src, sha) in &sources {
        match place(src, sha, &bin_dir.join(name), &mut manifest) {
            Ok(p) => done.push((*name, p)),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let written = write_manifest(&manifest_path, old.as_deref(), &manifest);
    if let Some(e) = failure {
        return Err(e);
    }
    written?;
    Ok(done)
}

/// What `uninstall` did with one recorded path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undone {
    /// Ours, removed (nothing was there before).
    Removed(PathBuf),
    /// The file that was there before is back (renamed over ours in one step).
    Restored(PathBuf),
    AlreadyGone(PathBuf),
    /// Something is at the path again that is not ours: the earlier file stays in its backup.
    BackupLeft {
        path: PathBuf,
        backup: PathBuf,
    },
    DirRemoved(PathBuf),
}

/// Undoes what the manifest in `bin_dir` records, as `scripts/install.sh --uninstall`
/// does: files still as installed (any with `force`) go, the files they replaced come
/// back, the manifest goes, then the directories an install created if empty. A
/// changed file is kept and the manifest stays ([`InstallError::Kept`]).
pub fn uninstall(bin_dir: &Path, force: bool) -> Result<Vec<Undone>, InstallError> {
    let bin_dir = absolute(bin_dir)?;
    let manifest_path = bin_dir.join(MANIFEST_NAME);
    let Some(text) = read_manifest(&manifest_path)? else {
        return Ok(Vec::new());
    };
    let manifest = Manifest::parse(&text);
    let mut done = Vec::new();
    let mut kept = Vec::new();
    let mut restored = Vec::new();
    for e in &manifest.entries {
        let Entry::File { sha, path } = e else {
            continue;
        };
        match current_sha(path)? {
            None if !exists_at_all(path) => done.push(Undone::AlreadyGone(path.clone())),
            Some(cur) if cur == *sha || force => {
                let backup = manifest.backup_of(path).filter(|b| exists_at_all(b));
                match backup {
                    Some(b) => {
                        fs::rename(b, path).map_err(io_err("restore", path))?;
                        restored.push(path.clone());
                        done.push(Undone::Restored(path.clone()));
                    }
                    None => {
                        fs::remove_file(path).map_err(io_err("remove", path))?;
                        done.push(Undone::Removed(path.clone()));
                    }
                }
            }
            None if force => {
                fs::remove_file(path).map_err(io_err("remove", path))?;
                done.push(Undone::Removed(path.clone()));
            }
            _ => kept.push(path.clone()),
        }
    }
    for e in &manifest.entries {
        let Entry::Backup { path, backup } = e else {
            continue;
        };
        if restored.contains(path) || !exists_at_all(backup) {
            continue;
        }
        if exists_at_all(path) {
            done.push(Undone::BackupLeft {
                path: path.clone(),
                backup: backup.clone(),
            });
        } else {
            fs::rename(backup, path).map_err(io_err("restore", path))?;
            done.push(Undone::Restored(path.clone()));
        }
    }
    sync_dir(&bin_dir)?;
    if !kept.is_empty() {
        return Err(InstallError::Kept(kept));
    }
    fs::remove_file(&manifest_path).map_err(io_err("remove", &manifest_path))?;
    sync_dir(&bin_dir)?;
    for e in manifest.entries.iter().rev() {
        if let Entry::Dir(d) = e
            && fs::remove_dir(d).is_ok()
        {
            done.push(Undone::DirRemoved(d.clone()));
        }
    }
    Ok(done)
}

/// `cni-rs-node install`.
pub fn run_install(args: &InstallArgs) -> Result<(), String> {
    let placed = install(&args.from, &args.bin_dir).map_err(|e| format!("install: {e}"))?;
    for (name, p) in placed {
        let dest = args.bin_dir.join(name);
        match p {
            Placed::Installed {
                kept_previous: true,
            } => info!(
                "install: {} (the previous one is kept as {})",
                dest.display(),
                backup_path(&dest).display()
            ),
            Placed::Installed {
                kept_previous: false,
            } => info!("install: {}", dest.display()),
            Placed::Unchanged => info!("install: {} unchanged", dest.display()),
            Placed::LeftAsIs => info!(
                "install: {} is already this version (not installed by us: left as is)",
                dest.display()
            ),
        }
    }
    Ok(())
}

/// The plugin side of `cni-rs-node uninstall`.
pub fn run_uninstall(args: &UninstallArgs) -> Result<(), String> {
    let done = uninstall(&args.bin_dir, args.force).map_err(|e| format!("uninstall: {e}"))?;
    if done.is_empty() {
        info!(
            "uninstall: no {} (nothing installed there)",
            args.bin_dir.join(MANIFEST_NAME).display()
        );
    }
    for d in done {
        match d {
            Undone::Removed(p) => info!("uninstall: removed {}", p.display()),
            Undone::Restored(p) => info!(
                "uninstall: restored {} (the file that was there before)",
                p.display()
            ),
            Undone::AlreadyGone(p) => info!("uninstall: already gone: {}", p.display()),
            Undone::BackupLeft { path, backup } => warn!(
                "uninstall: {} exists again: left the earlier one in {}",
                path.display(),
                backup.display()
            ),
            Undone::DirRemoved(p) => info!("uninstall: removed directory {}", p.display()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_tests::TempDir;

    /// A source dir with the three plugins, each `<name> <version>`.
    fn sources(version: &str) -> TempDir {
        let d = TempDir::new("install-src");
        for p in PLUGINS {
            fs::write(d.join(p), format!("{p} {version}\n")).unwrap();
        }
        d
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn reads_what_install_sh_writes_and_renders_canonically() {
        let text = "# written by /x/scripts/install.sh; read by --uninstall\n\
                    dir\t/opt/cni\n\
                    backup\t/opt/cni/bin/bridge\t/opt/cni/bin/bridge.pre-cni-rs\n\
                    file\tabc\t/opt/cni/bin/bridge\n\
                    file\tdef\t/etc/cni/net.d/10-bridge.conflist\n\
                    nonsense line\n";
        let m = Manifest::parse(text);
        assert_eq!(m.entries.len(), 4);
        assert_eq!(
            m.recorded_sha(Path::new("/opt/cni/bin/bridge")),
            Some("abc")
        );
        assert_eq!(
            m.backup_of(Path::new("/opt/cni/bin/bridge")),
            Some(Path::new("/opt/cni/bin/bridge.pre-cni-rs"))
        );
        let out = m.render();
        assert!(out.starts_with("# written by cni-rs-node install"), "{out}");
        let lines: Vec<&str> = out.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "backup\t/opt/cni/bin/bridge\t/opt/cni/bin/bridge.pre-cni-rs",
                "dir\t/opt/cni",
                "file\tabc\t/opt/cni/bin/bridge",
                "file\tdef\t/etc/cni/net.d/10-bridge.conflist",
            ]
        );
        assert_eq!(
            Manifest::parse(&out),
            Manifest::parse(&Manifest::parse(&out).render())
        );
    }

    #[test]
    fn temporaries_and_backups_are_named_so_nothing_executes_them() {
        let dest = Path::new("/opt/cni/bin/host-local");
        assert_eq!(
            temp_path(dest),
            Path::new("/opt/cni/bin/.host-local.cni-rs-tmp")
        );
        assert_eq!(
            backup_path(dest),
            Path::new("/opt/cni/bin/host-local.pre-cni-rs")
        );
    }

    #[test]
    fn installs_keeps_what_it_replaces_and_undoes_it() {
        let src = sources("new");
        let host = TempDir::new("install-host");
        let bin = host.join("opt/cni/bin");
        fs::create_dir_all(&bin).unwrap();
        fs::write(bin.join("bridge"), "reference bridge\n").unwrap();
        fs::write(bin.join("loopback"), "reference loopback\n").unwrap();
        let placed = install(src.path(), &bin).unwrap();
        assert_eq!(
            placed,
            [
                (
                    "bridge",
                    Placed::Installed {
                        kept_previous: true
                    }
                ),
                (
                    "host-local",
                    Placed::Installed {
                        kept_previous: false
                    }
                ),
                (
                    "portmap",
                    Placed::Installed {
                        kept_previous: false
                    }
                ),
            ]
        );
        assert_eq!(
            names(&bin),
            [
                MANIFEST_NAME,
                "bridge",
                "bridge.pre-cni-rs",
                "host-local",
                "loopback",
                "portmap"
            ]
        );
        assert_eq!(
            fs::read_to_string(bin.join("bridge")).unwrap(),
            "bridge new\n"
        );
        let mode = fs::metadata(bin.join("portmap"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);

        // Again: nothing to do.
        let before = fs::read(bin.join(MANIFEST_NAME)).unwrap();
        let placed = install(src.path(), &bin).unwrap();
        assert!(
            placed.iter().all(|(_, p)| *p == Placed::Unchanged),
            "{placed:?}"
        );
        assert_eq!(fs::read(bin.join(MANIFEST_NAME)).unwrap(), before);

        // An upgrade replaces ours without a second backup.
        let newer = sources("newer");
        install(newer.path(), &bin).unwrap();
        assert_eq!(
            fs::read_to_string(bin.join("bridge.pre-cni-rs")).unwrap(),
            "reference bridge\n"
        );
        assert_eq!(
            fs::read_to_string(bin.join("bridge")).unwrap(),
            "bridge newer\n"
        );

        let undone = uninstall(&bin, false).unwrap();
        assert!(undone.contains(&Undone::Restored(absolute(&bin.join("bridge")).unwrap())));
        assert_eq!(names(&bin), ["bridge", "loopback"]);
        assert_eq!(
            fs::read_to_string(bin.join("bridge")).unwrap(),
            "reference bridge\n"
        );
        // Nothing recorded any more: a second uninstall does nothing.
        assert_eq!(uninstall(&bin, false).unwrap(), []);
    }

    #[test]
    fn an_identical_file_not_ours_is_left_and_never_removed() {
        let src = sources("v1");
        let bin = TempDir::new("install-bin");
        fs::copy(src.join("portmap"), bin.join("portmap")).unwrap();
        let placed = install(src.path(), bin.path()).unwrap();
        assert_eq!(placed[2], ("portmap", Placed::LeftAsIs));
        uninstall(bin.path(), false).unwrap();
        assert_eq!(names(bin.path()), ["portmap"]);
    }

    #[test]
    fn a_changed_file_is_kept_unless_forced() {
        let src = sources("v1");
        let bin = TempDir::new("install-bin");
        install(src.path(), bin.path()).unwrap();
        fs::write(bin.join("host-local"), "edited\n").unwrap();
        let err = uninstall(bin.path(), false).unwrap_err();
        assert!(
            matches!(&err, InstallError::Kept(k) if k.len() == 1),
            "{err}"
        );
        assert_eq!(names(bin.path()), [MANIFEST_NAME, "host-local"]);
        uninstall(bin.path(), true).unwrap();
        assert!(names(bin.path()).is_empty());
    }

    #[test]
    fn created_directories_are_recorded_and_removed() {
        let src = sources("v1");
        let host = TempDir::new("install-host");
        let bin = host.join("opt/cni/bin");
        install(src.path(), &bin).unwrap();
        let m = Manifest::parse(&fs::read_to_string(bin.join(MANIFEST_NAME)).unwrap());
        let dirs: Vec<&Entry> = m
            .entries
            .iter()
            .filter(|e| matches!(e, Entry::Dir(_)))
            .collect();
        assert_eq!(dirs.len(), 3, "{m:?}");
        uninstall(&bin, false).unwrap();
        assert!(names(host.path()).is_empty());
    }

    #[test]
    fn a_failure_leaves_no_temporary_and_records_what_was_done() {
        let src = sources("v1");
        let bin = TempDir::new("install-bin");
        // A directory where host-local goes: it fails after bridge is in place.
        fs::create_dir(bin.join("host-local")).unwrap();
        fs::write(bin.join("host-local/keep"), "x").unwrap();
        let err = install(src.path(), bin.path()).unwrap_err();
        assert!(matches!(err, InstallError::Io { .. }), "{err}");
        let left = names(bin.path());
        assert!(left.iter().all(|n| !n.ends_with(TMP_SUFFIX)), "{left:?}");
        let m = Manifest::parse(&fs::read_to_string(bin.join(MANIFEST_NAME)).unwrap());
        assert!(
            m.recorded_sha(&absolute(&bin.join("bridge")).unwrap())
                .is_some()
        );
        assert!(
            m.recorded_sha(&absolute(&bin.join("portmap")).unwrap())
                .is_none()
        );
    }

    #[test]
    fn a_missing_source_touches_nothing() {
        let src = sources("v1");
        fs::remove_file(src.join("portmap")).unwrap();
        let bin = TempDir::new("install-bin");
        let err = install(src.path(), bin.path()).unwrap_err();
        assert!(matches!(err, InstallError::NotAFile(_)), "{err}");
        assert!(names(bin.path()).is_empty());
    }

    #[test]
    fn a_stale_temporary_of_a_killed_run_is_replaced() {
        let src = sources("v1");
        let bin = TempDir::new("install-bin");
        fs::write(bin.join(".bridge.cni-rs-tmp"), "half").unwrap();
        install(src.path(), bin.path()).unwrap();
        assert_eq!(
            names(bin.path()),
            [MANIFEST_NAME, "bridge", "host-local", "portmap"]
        );
    }

    #[test]
    fn a_symlinked_plugin_is_kept_as_the_link() {
        let src = sources("v1");
        let bin = TempDir::new("install-bin");
        let target = TempDir::new("install-ref");
        fs::write(target.join("bridge"), "reference\n").unwrap();
        std::os::unix::fs::symlink(target.join("bridge"), bin.join("bridge")).unwrap();
        install(src.path(), bin.path()).unwrap();
        let kept = fs::read_link(bin.join("bridge.pre-cni-rs")).unwrap();
        assert_eq!(kept, target.join("bridge"));
        assert_eq!(
            fs::read_to_string(target.join("bridge")).unwrap(),
            "reference\n"
        );
        uninstall(bin.path(), false).unwrap();
        assert_eq!(
            fs::read_link(bin.join("bridge")).unwrap(),
            target.join("bridge")
        );
    }
}
