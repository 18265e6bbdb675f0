//! Which containers of a network have port mappings on this node, for GC.
//!
//! GC must remove the rules of the network's containers that are not in
//! `cni.dev/valid-attachments`, and only those: other networks share the same
//! firewall tables. The nftables rules carry just the container ID, so the firewall
//! alone cannot say which network a rule belongs to. ADD therefore records
//! `<dir>/<network>/<container ID>` after its rules are in place, DEL removes it, and
//! GC reads the network's directory.
//!
//! A record lists the container's host ports (`<proto> <port> [<host IP>]` per line),
//! so a DEL that comes without `portMappings` can still flush their UDP conntrack
//! entries.
//!
//! The records live on tmpfs, like the rules they describe: both vanish on reboot.
//! The directory is keyed by the network namespace the plugin runs in, so nodes
//! simulated in namespaces (and containers running their own CNI) never see each
//! other's records.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cni_net::nat::{PortMapping, Proto};

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

    /// Records (or replaces the record of) a container and its mappings.
    pub fn record(&self, container_id: &str, mappings: &[PortMapping]) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let mut text = String::new();
        for m in mappings {
            text.push_str(m.protocol.as_str());
            text.push(' ');
            text.push_str(&m.host_port.to_string());
            if let Some(ip) = m.host_ip {
                text.push(' ');
                text.push_str(&ip.to_string());
            }
            text.push('\n');
        }
        // Written aside and renamed, so a concurrent reader never sees half a record.
        let tmp = self.dir.join(format!(".{container_id}.tmp"));
        fs::write(&tmp, text)?;
        fs::rename(&tmp, self.dir.join(container_id))
    }

    /// The host ports recorded for a container (container ports are not kept: they
    /// are not needed to clean up). Empty when there is no record.
    pub fn mappings(&self, container_id: &str) -> Vec<PortMapping> {
        let Ok(text) = fs::read_to_string(self.dir.join(container_id)) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let protocol = Proto::parse(words.next()?)?;
                let host_port = words.next()?.parse().ok()?;
                let host_ip = match words.next() {
                    Some(ip) => Some(ip.parse::<IpAddr>().ok()?),
                    None => None,
                };
                Some(PortMapping {
                    host_port,
                    container_port: host_port,
                    protocol,
                    host_ip,
                })
            })
            .collect()
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
            if let Some(id) = name.to_str().filter(|n| !n.starts_with('.')) {
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
        let udp = PortMapping {
            host_port: 5353,
            container_port: 53,
            protocol: Proto::Udp,
            host_ip: Some("10.0.0.1".parse().unwrap()),
        };
        let tcp = PortMapping {
            host_port: 80,
            container_port: 8080,
            protocol: Proto::Tcp,
            host_ip: None,
        };
        a.record("c2", &[]).unwrap();
        a.record("c1", &[tcp]).unwrap();
        a.record("c1", &[udp, tcp]).unwrap();
        b.record("c3", &[]).unwrap();
        assert_eq!(a.containers().unwrap(), ["c1", "c2"]);
        let back = a.mappings("c1");
        assert_eq!(back.len(), 2);
        assert_eq!((back[0].protocol, back[0].host_port), (Proto::Udp, 5353));
        assert_eq!(back[0].host_ip, udp.host_ip);
        assert_eq!(
            (back[1].protocol, back[1].host_port, back[1].host_ip),
            (Proto::Tcp, 80, None)
        );
        assert!(a.mappings("c2").is_empty());
        assert!(a.mappings("nope").is_empty());
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
