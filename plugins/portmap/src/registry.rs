//! Which containers of a network have port mappings on this node, for GC.
//!
//! GC must remove the rules of the network's containers that are not in
//! `cni.dev/valid-attachments`, and only those: other networks share the same
//! firewall tables. The nftables rules carry just the container ID, so the firewall
//! alone cannot say which network a rule belongs to. ADD therefore records
//! `<dir>/<network>/<container ID>` after its rules are in place, DEL removes it, and
//! GC reads the network's directory.
//!
//! The records live on tmpfs, like the rules they describe: both vanish on reboot.
//! The directory is keyed by the network namespace the plugin runs in, so nodes
//! simulated in namespaces (and containers running their own CNI) never see each
//! other's records.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const ROOT: &str = "/run/cni-rs/portmap";

/// The records of one network in the current network namespace.
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    pub fn for_network(network: &str) -> io::Result<Registry> {
        let ns = fs::metadata("/proc/thread-self/ns/net")?;
        Ok(Registry::at(
            Path::new(ROOT).join(format!("netns-{}-{}", ns.dev(), ns.ino())),
            network,
        ))
    }

    fn at(base: PathBuf, network: &str) -> Registry {
        // Network names are validated to [a-zA-Z0-9_.-] (never "." or ".." since they
        // start with an alphanumeric), so they are safe path components.
        Registry {
            dir: base.join(network),
        }
    }

    pub fn record(&self, container_id: &str) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        fs::write(self.dir.join(container_id), b"")
    }

    /// Forgets a container; an absent record is fine. Empty directories go too, so
    /// namespaces that come and go (tests) leave nothing behind.
    pub fn forget(&self, container_id: &str) -> io::Result<()> {
        match fs::remove_file(self.dir.join(container_id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        // Fails harmlessly while other records remain or another call just recorded one.
        if fs::remove_dir(&self.dir).is_ok()
            && let Some(parent) = self.dir.parent()
        {
            let _ = fs::remove_dir(parent);
        }
        Ok(())
    }

    /// Every recorded container ID of the network.
    pub fn containers(&self) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other?,
        };
        let mut out = Vec::new();
        for entry in entries {
            let name = entry?.file_name();
            if let Some(id) = name.to_str() {
                out.push(id.to_string());
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_list_forget() {
        let base = std::env::temp_dir().join(format!("portmap-registry-{}", std::process::id()));
        let a = Registry::at(base.clone(), "net-a");
        let b = Registry::at(base.clone(), "net-b");
        assert!(a.containers().unwrap().is_empty());
        a.record("c2").unwrap();
        a.record("c1").unwrap();
        a.record("c1").unwrap();
        b.record("c3").unwrap();
        assert_eq!(a.containers().unwrap(), ["c1", "c2"]);
        assert_eq!(b.containers().unwrap(), ["c3"]);
        a.forget("c1").unwrap();
        a.forget("c1").unwrap();
        a.forget("c2").unwrap();
        assert!(a.containers().unwrap().is_empty());
        assert!(!base.join("net-a").exists());
        assert!(base.exists(), "net-b still has a record");
        b.forget("c3").unwrap();
        assert!(!base.exists());
    }
}
