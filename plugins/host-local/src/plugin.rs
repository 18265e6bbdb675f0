//! The CNI verbs on top of config, ledger and allocator, and the one mapping of this
//! plugin's errors to CNI error codes.

use std::collections::HashSet;
use std::net::IpAddr;

use cni_types::{CniResult, Dns, Error, IpConfig, Plugin, Request, Route, code};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Deserializer};

use crate::allocator::{self, AddError};
use crate::config::{self, ConfigError, Context, IpamConfig, RouteSpec};
use crate::dns;
use crate::ledger::{Ledger, LedgerError, Owner, Session};

/// The only CNI_ARGS key host-local reads (besides `IgnoreUnknown`).
const KNOWN_ARGS: &[&str] = &["IP"];

#[derive(Debug, thiserror::Error)]
pub enum HostLocalError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Add(#[from] AddError),
    #[error("host-local: Failed to find address added by container {0}")]
    NotFound(String),
    /// STATUS: a range set has no free address, so an ADD would fail.
    #[error("no IP addresses available in range set: {0}")]
    Exhausted(String),
    #[error("{0}")]
    ResolvConf(String),
    #[error("invalid cni.dev/valid-attachments: {0}")]
    Attachments(String),
}

impl From<HostLocalError> for Error {
    fn from(e: HostLocalError) -> Error {
        let code = match &e {
            HostLocalError::Config(ConfigError::Decode(_)) => code::DECODE,
            HostLocalError::Config(ConfigError::Invalid(_)) => code::INVALID_CONFIG,
            HostLocalError::Ledger(LedgerError::NetworkName(_)) => code::INVALID_CONFIG,
            HostLocalError::Ledger(LedgerError::ContainerId(_) | LedgerError::Ifname(_)) => {
                code::INVALID_ENV
            }
            HostLocalError::Attachments(_) => code::DECODE,
            HostLocalError::Exhausted(_) => code::NOT_AVAILABLE,
            // Everything else is a plain error in the reference, which the CNI library
            // reports as 999 with the same text; runtimes match on that text.
            HostLocalError::Config(ConfigError::Args(_))
            | HostLocalError::Ledger(LedgerError::Io(_))
            | HostLocalError::Add(_)
            | HostLocalError::NotFound(_)
            | HostLocalError::ResolvConf(_) => code::INTERNAL,
        };
        Error::new(code, e.to_string(), "")
    }
}

pub struct HostLocal;

/// Validates CNI_ARGS and the config, as every verb of the reference does first.
fn load(req: &Request) -> Result<IpamConfig, Error> {
    req.args.check_known(KNOWN_ARGS)?;
    let ctx = Context {
        cni_version: &req.conf.cni_version,
        env_ip: req.args.get("IP"),
    };
    Ok(config::load(&req.stdin, ctx).map_err(HostLocalError::from)?)
}

/// Runs `f` on the ledger under its lock. The session is finished (index stamped, lock
/// released) whatever `f` returns, before its error is mapped.
fn locked<T, E>(
    ledger: &Ledger,
    conf: &IpamConfig,
    f: impl FnOnce(&mut Session<'_>) -> Result<T, E>,
) -> Result<T, Error>
where
    HostLocalError: From<E>,
{
    let mut session = ledger
        .lock(conf.ranges.len())
        .map_err(<HostLocalError as From<LedgerError>>::from)?;
    let out = f(&mut session);
    session.finish();
    Ok(out.map_err(HostLocalError::from)?)
}

/// The network's ledger, created on first use.
fn ledger(conf: &IpamConfig, req: &Request) -> Result<Ledger, Error> {
    Ok(Ledger::create(&conf.data_dir, &req.conf.name).map_err(HostLocalError::from)?)
}

fn route(r: &RouteSpec) -> Route {
    Route {
        dst: r.dst,
        gw: r.gw,
        mtu: r.mtu,
        advmss: r.advmss,
        priority: r.priority,
        table: r.table,
        scope: r.scope,
    }
}

impl HostLocal {
    fn add_inner(&self, req: &Request) -> Result<CniResult, Error> {
        let conf = load(req)?;
        let dns = match &conf.resolv_conf {
            Some(path) => {
                let r = dns::read(path).map_err(HostLocalError::ResolvConf)?;
                Dns {
                    nameservers: r.nameservers,
                    domain: r.domain,
                    search: r.search,
                    options: r.options,
                }
            }
            None => Dns::default(),
        };
        let got = locked(&ledger(&conf, req)?, &conf, |session| {
            allocator::add(
                session,
                &conf.ranges,
                &conf.requested,
                &req.container_id,
                &req.ifname,
            )
        })?;
        let mut ips = Vec::with_capacity(got.len());
        for a in got {
            let address = IpNetwork::new(a.ip, a.prefix)
                .map_err(|e| Error::internal(format!("{}/{}: {e}", a.ip, a.prefix)))?;
            ips.push(IpConfig {
                address,
                gateway: Some(a.gateway),
                interface: None,
            });
        }
        Ok(CniResult {
            cni_version: req.conf.cni_version.clone(),
            interfaces: Vec::new(),
            ips,
            routes: conf.routes.iter().map(route).collect(),
            dns,
        })
    }
}

/// The GC list under either of its names (libcni 1.2 sends both; the spec's wins).
/// Absent means the runtime gave no list at all (`cnitool gc`): nothing is released
/// then, since "no information" must not read as "nothing is valid". `null` or `[]` is
/// a real, empty list.
#[derive(Debug, Deserialize)]
struct WireGc {
    #[serde(
        rename = "cni.dev/valid-attachments",
        default,
        deserialize_with = "present"
    )]
    valid: Option<Option<Vec<cni_types::Attachment>>>,
    #[serde(rename = "cni.dev/attachments", default, deserialize_with = "present")]
    legacy: Option<Option<Vec<cni_types::Attachment>>>,
}

/// A key given as `null` is `Some(None)`, unlike an absent one (`None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

fn valid_attachments(stdin: &[u8]) -> Result<Option<HashSet<(String, String)>>, HostLocalError> {
    let gc: WireGc = cni_types::json::from_slice(stdin)
        .map_err(|e| HostLocalError::Attachments(e.to_string()))?;
    let Some(list) = gc.valid.or(gc.legacy) else {
        return Ok(None);
    };
    Ok(Some(
        list.into_iter()
            .flatten()
            .map(|a| (a.container_id.trim().to_string(), a.ifname))
            .collect(),
    ))
}

impl Plugin for HostLocal {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        self.add_inner(req)
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        let conf = load(req)?;
        locked(&ledger(&conf, req)?, &conf, |session| {
            session.release(&req.container_id, &req.ifname)
        })?;
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        let conf = load(req)?;
        let held = locked(&ledger(&conf, req)?, &conf, |session| {
            session.holdings(&req.container_id, &req.ifname)
        })?;
        if held.is_empty() {
            return Err(HostLocalError::NotFound(req.container_id.clone()).into());
        }
        Ok(())
    }

    fn gc(&self, req: &Request) -> Result<(), Error> {
        let conf = load(req)?;
        let Some(valid) = valid_attachments(&req.stdin)? else {
            return Ok(());
        };
        let Some(ledger) =
            Ledger::existing(&conf.data_dir, &req.conf.name).map_err(HostLocalError::from)?
        else {
            return Ok(());
        };
        let legacy_ok: HashSet<&str> = valid.iter().map(|(cid, _)| cid.as_str()).collect();
        locked(&ledger, &conf, |session| {
            session.release_unless(|owner| match owner {
                Owner::Attachment { cid, ifname } => valid.contains(&(cid.clone(), ifname.clone())),
                // An old file names only the container: keep it while any of its
                // attachments is still valid.
                Owner::Legacy(cid) => legacy_ok.contains(cid.as_str()),
                Owner::Unknown => false,
            })
        })?;
        Ok(())
    }

    fn status(&self, req: &Request) -> Result<(), Error> {
        let conf = load(req)?;
        let Some(ledger) =
            Ledger::existing(&conf.data_dir, &req.conf.name).map_err(HostLocalError::from)?
        else {
            return Ok(());
        };
        let taken: HashSet<IpAddr> = ledger.taken().map_err(HostLocalError::from)?;
        if let Some(i) = allocator::first_exhausted(&conf.ranges, &taken) {
            return Err(HostLocalError::Exhausted(conf.ranges[i].to_string()).into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes() {
        let cases: Vec<(HostLocalError, u32)> = vec![
            (ConfigError::Decode("x".into()).into(), 6),
            (
                ConfigError::Invalid("no IP ranges specified".into()).into(),
                7,
            ),
            (ConfigError::Args("ARGS: x".into()).into(), 999),
            (
                LedgerError::Io("open /x: permission denied".into()).into(),
                999,
            ),
            (HostLocalError::NotFound("c1".into()), 999),
            (HostLocalError::Exhausted("10.1.2.1-10.1.2.254".into()), 50),
            (
                AddError::Unfulfilled(vec!["10.1.2.3".parse().unwrap()]).into(),
                999,
            ),
        ];
        for (e, want) in cases {
            let text = e.to_string();
            let cni: Error = e.into();
            assert_eq!(cni.code, want, "{text}");
            assert_eq!(cni.msg, text);
        }
        let e: Error = HostLocalError::NotFound("c1".into()).into();
        assert_eq!(
            e.msg,
            "host-local: Failed to find address added by container c1"
        );
        let e: Error = HostLocalError::Exhausted("10.1.2.1-10.1.2.254".into()).into();
        assert_eq!(
            e.msg,
            "no IP addresses available in range set: 10.1.2.1-10.1.2.254"
        );
    }

    #[test]
    fn attachments_absent_null_and_list() {
        assert_eq!(valid_attachments(br#"{"name":"n"}"#).unwrap(), None);
        assert_eq!(
            valid_attachments(br#"{"cni.dev/valid-attachments":null}"#).unwrap(),
            Some(HashSet::new())
        );
        let got =
            valid_attachments(br#"{"cni.dev/attachments":[{"containerID":"a","ifname":"eth0"}]}"#)
                .unwrap()
                .unwrap();
        assert!(got.contains(&("a".to_string(), "eth0".to_string())));
        assert!(valid_attachments(br#"{"cni.dev/valid-attachments":[{"x":1}]}"#).is_err());
        // libcni 1.2 sends the list under both names; the spec's name wins.
        let both = br#"{"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],
                        "cni.dev/attachments":[{"containerID":"b","ifname":"eth0"}]}"#;
        let got = valid_attachments(both).unwrap().unwrap();
        assert_eq!(got, HashSet::from([("a".to_string(), "eth0".to_string())]));
        let list = serde_json::json!([{"containerID": "a", "ifname": "eth0"}]);
        cni_types::json::check_key_spellings::<WireGc>(&serde_json::json!({
            "cni.dev/valid-attachments": list, "cni.dev/attachments": list
        }))
        .unwrap();
        let folded = br#"{"CNI.dev/Valid-Attachments":[{"ContainerID":"c","IfName":"eth1"}]}"#;
        let got = valid_attachments(folded).unwrap().unwrap();
        assert_eq!(got, HashSet::from([("c".to_string(), "eth1".to_string())]));
    }
}
