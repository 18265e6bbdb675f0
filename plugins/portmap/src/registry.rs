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
//! entries, and the handles of its rules (`rule <4|6> <table> <chain> <handle>`, then
//! `tracked` when the list is complete), so a DEL or re-ADD finds them without
//! searching the shared chains, and the localnet guard it claimed (`guard <interface>
//! <pod IPv4>`), so that DEL finds its claim with one look-up.
//!
//! The records live on tmpfs, like the rules they describe: both vanish on reboot.
//! The directory is keyed by the network namespace the plugin runs in, so nodes
//! simulated in namespaces (and containers running their own CNI) never see each
//! other's records.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cni_net::nat::{IpFamily, LocalnetGuard, PortMapping, Proto, RuleRef};

const ROOT: &str = "/run/cni-rs/portmap";
const TMP_SUFFIX: &str = ".tmp";

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

    /// Records (or replaces the record of) a container: its mappings and, when known
    /// completely, the handles of its rules.
    pub fn record(
        &self,
        container_id: &str,
        mappings: &[PortMapping],
        rules: Option<&[RuleRef]>,
        guard: Option<&LocalnetGuard>,
    ) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let record = Record {
            mappings: mappings.to_vec(),
            rules: rules.map(<[RuleRef]>::to_vec),
            guard: guard.cloned(),
        };
        // Written aside and renamed, so a concurrent reader never sees half a record.
        let tmp = self.temporary(container_id);
        let written = fs::write(&tmp, record.render())
            .and_then(|()| fs::rename(&tmp, self.dir.join(container_id)));
        if written.is_err() {
            // A full disk must not leave the half-written file behind.
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    /// Where [`Registry::record`] writes a record before renaming it into place. A
    /// process killed in between leaves it: DEL and GC remove it with the record.
    fn temporary(&self, container_id: &str) -> PathBuf {
        self.dir.join(format!(".{container_id}{TMP_SUFFIX}"))
    }

    /// The record of a container, `None` when there is none.
    pub fn read(&self, container_id: &str) -> Option<Record> {
        fs::read_to_string(self.dir.join(container_id))
            .ok()
            .map(|text| Record::parse(&text))
    }

    /// Forgets a container; an absent record is fine. Empty directories go too, so
    /// namespaces that come and go (tests) leave nothing behind.
    pub fn forget(&self, container_id: &str) -> io::Result<()> {
        for path in [self.dir.join(container_id), self.temporary(container_id)] {
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        // Fails harmlessly while other records remain or another call just recorded one.
        if fs::remove_dir(&self.dir).is_ok()
            && let Some(parent) = self.dir.parent()
        {
            let _ = fs::remove_dir(parent);
        }
        Ok(())
    }

    /// Every recorded container ID of the network, including those whose ADD was
    /// killed while writing its record (their rules may be in place).
    pub fn containers(&self) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other?,
        };
        let mut out = Vec::new();
        for entry in entries {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            let id = match name.strip_prefix('.') {
                Some(hidden) => hidden.strip_suffix(TMP_SUFFIX),
                None => Some(name),
            };
            if let Some(id) = id.filter(|id| !id.is_empty()) {
                out.push(id.to_string());
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// What ADD left for DEL and GC about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Host ports (container ports are not kept: cleaning up does not need them).
    pub mappings: Vec<PortMapping>,
    /// Handles of the rules to delete; `None` when they are not all known.
    pub rules: Option<Vec<RuleRef>>,
    /// The localnet guard ADD claimed, if any.
    pub guard: Option<LocalnetGuard>,
}

impl Record {
    fn render(&self) -> String {
        let mut text = String::new();
        for m in &self.mappings {
            text.push_str(m.protocol.as_str());
            text.push(' ');
            text.push_str(&m.host_port.to_string());
            if let Some(ip) = m.host_ip {
                text.push(' ');
                text.push_str(&ip.to_string());
            }
            text.push('\n');
        }
        if let Some(rules) = &self.rules {
            for r in rules {
                let family = match r.family {
                    IpFamily::V4 => 4,
                    IpFamily::V6 => 6,
                };
                text.push_str(&format!(
                    "rule {family} {} {} {}\n",
                    r.table, r.chain, r.handle
                ));
            }
            text.push_str("tracked\n");
        }
        if let Some(g) = &self.guard {
            text.push_str(&format!("guard {} {}\n", g.ifname, g.pod));
        }
        text
    }

    /// Lines that do not parse are skipped; a damaged rule list is not trusted.
    fn parse(text: &str) -> Record {
        let mut record = Record::default();
        let mut rules = Vec::new();
        let mut rules_ok = true;
        let mut tracked = false;
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["tracked"] => tracked = true,
                ["guard", ifname, pod] => {
                    // A damaged line only costs DEL a listing.
                    record.guard = pod.parse::<Ipv4Addr>().ok().map(|pod| LocalnetGuard {
                        ifname: (*ifname).to_string(),
                        pod,
                    });
                }
                ["rule", family, table, chain, handle] => {
                    let family = match *family {
                        "4" => Some(IpFamily::V4),
                        "6" => Some(IpFamily::V6),
                        _ => None,
                    };
                    match (family, handle.parse::<u64>()) {
                        (Some(family), Ok(handle)) => rules.push(RuleRef {
                            family,
                            table: (*table).to_string(),
                            chain: (*chain).to_string(),
                            handle,
                        }),
                        _ => rules_ok = false,
                    }
                }
                [proto, port, rest @ ..] if rest.len() <= 1 => {
                    let host_ip = match rest.first() {
                        Some(ip) => match ip.parse::<IpAddr>() {
                            Ok(ip) => Some(ip),
                            Err(_) => continue,
                        },
                        None => None,
                    };
                    if let (Some(protocol), Ok(host_port)) = (Proto::parse(proto), port.parse()) {
                        record.mappings.push(PortMapping {
                            host_port,
                            container_port: host_port,
                            protocol,
                            host_ip,
                        });
                    }
                }
                _ => rules_ok = false,
            }
        }
        if tracked && rules_ok {
            record.rules = Some(rules);
        }
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_rule_lists_are_not_trusted() {
        let r = Record::parse("tcp 80\nrule 4 nat X notanumber\ntracked\n");
        assert_eq!(r.mappings.len(), 1);
        assert_eq!(r.rules, None);
        let r = Record::parse("rule 4 nat X 5\n");
        assert_eq!(r.rules, None, "no tracked line: incomplete");
        let r = Record::parse("rule 6 ip6 hostports 5\ntracked\n");
        assert_eq!(r.rules.map(|v| v.len()), Some(1));
    }

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
        let rule = RuleRef {
            family: IpFamily::V6,
            table: "nat".into(),
            chain: "CNI-HOSTPORT-DNAT".into(),
            handle: 77,
        };
        let guard = LocalnetGuard {
            ifname: "cni0".into(),
            pod: Ipv4Addr::new(10, 22, 0, 5),
        };
        a.record("c2", &[], None, None).unwrap();
        a.record("c1", &[tcp], None, None).unwrap();
        a.record(
            "c1",
            &[udp, tcp],
            Some(std::slice::from_ref(&rule)),
            Some(&guard),
        )
        .unwrap();
        b.record("c3", &[], Some(&[]), None).unwrap();
        assert_eq!(a.containers().unwrap(), ["c1", "c2"]);
        let back = a.read("c1").unwrap();
        assert_eq!(back.mappings.len(), 2);
        assert_eq!(
            (back.mappings[0].protocol, back.mappings[0].host_port),
            (Proto::Udp, 5353)
        );
        assert_eq!(back.mappings[0].host_ip, udp.host_ip);
        assert_eq!(
            (
                back.mappings[1].protocol,
                back.mappings[1].host_port,
                back.mappings[1].host_ip
            ),
            (Proto::Tcp, 80, None)
        );
        assert_eq!(back.rules, Some(vec![rule]));
        assert_eq!(back.guard, Some(guard));
        assert_eq!(a.read("c2").unwrap(), Record::default());
        assert_eq!(b.read("c3").unwrap().rules, Some(vec![]));
        assert!(a.read("nope").is_none());
        // An ADD killed between writing and renaming its record.
        std::fs::write(a.dir.join(".c9.tmp"), "tcp 8").unwrap();
        assert_eq!(a.containers().unwrap(), ["c1", "c2", "c9"]);
        assert!(a.read("c9").is_none(), "half a record is not read");
        a.forget("c9").unwrap();
        assert!(!a.dir.join(".c9.tmp").exists());
        a.forget("c1").unwrap();
        a.forget("c1").unwrap();
        a.forget("c2").unwrap();
        assert!(a.containers().unwrap().is_empty());
        assert!(!base.join("net-a").exists());
        assert!(base.exists(), "net-b still has a record");
        b.forget("c3").unwrap();
        assert!(!base.exists());
    }

    #[test]
    fn a_failed_write_leaves_no_temporary() {
        let base = std::env::temp_dir().join(format!("portmap-registry-w-{}", std::process::id()));
        let r = Registry::at(base.clone(), "net");
        // The record's name is taken by a directory: the rename fails.
        std::fs::create_dir_all(r.dir.join("c1").join("x")).unwrap();
        assert!(r.record("c1", &[], None, None).is_err());
        assert!(!r.dir.join(".c1.tmp").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }

    mod props {
        use super::*;
        use cni_tests::arb;
        use proptest::prelude::*;

        fn record() -> impl Strategy<Value = Record> {
            let mapping = (
                1u16..,
                prop_oneof![Just(Proto::Tcp), Just(Proto::Udp), Just(Proto::Sctp)],
                proptest::option::of(any::<[u8; 16]>().prop_map(IpAddr::from)),
            )
                .prop_map(|(port, protocol, host_ip)| PortMapping {
                    host_port: port,
                    container_port: port,
                    protocol,
                    host_ip,
                });
            let rule = (
                any::<bool>(),
                "[a-z0-9_]{1,8}",
                "[A-Za-z0-9_-]{1,28}",
                any::<u64>(),
            )
                .prop_map(|(v6, table, chain, handle)| RuleRef {
                    family: if v6 { IpFamily::V6 } else { IpFamily::V4 },
                    table,
                    chain,
                    handle,
                });
            let guard =
                ("[a-z0-9_.-]{1,15}", any::<[u8; 4]>()).prop_map(|(ifname, pod)| LocalnetGuard {
                    ifname,
                    pod: Ipv4Addr::from(pod),
                });
            (
                proptest::collection::vec(mapping, 0..4),
                proptest::option::of(proptest::collection::vec(rule, 0..4)),
                proptest::option::of(guard),
            )
                .prop_map(|(mappings, rules, guard)| Record {
                    mappings,
                    rules,
                    guard,
                })
        }

        proptest! {
            #![proptest_config(arb::cases())]

            /// A record on disk may be anything (damaged, from another version).
            #[test]
            fn any_record_text_parses(text in prop_oneof![
                any::<String>(),
                proptest::collection::vec(
                    prop_oneof![
                        Just("tracked".to_string()),
                        "rule [46x] [a-z]{1,4} [A-Z-]{1,8} [0-9a-z]{1,4}",
                        "(tcp|udp|sctp|icmp) [0-9]{1,6}( [0-9a-f.:]{1,20})?",
                        arb::text(),
                    ],
                    0..6,
                )
                .prop_map(|lines| lines.join("\n")),
            ]) {
                let r = Record::parse(&text);
                prop_assert!(r.mappings.iter().all(|m| m.host_port == m.container_port));
            }

            #[test]
            fn records_read_back(r in record()) {
                prop_assert_eq!(Record::parse(&r.render()), r);
            }
        }
    }
}
