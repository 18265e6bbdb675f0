//! The env-var protocol: read `CNI_*` and stdin, validate them as the
//! reference library does, gate by spec version, dispatch to the plugin and
//! print its result or error.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use serde::de::DeserializeOwned;

use crate::args::CniArgs;
use crate::config::NetConf;
use crate::error::{Error, code};
use crate::result::CniResult;
use crate::version;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    /// The variables the reference requires for this verb, in its order.
    fn required(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Gc | Command::Status => &["CNI_PATH"],
            Command::Version => &[],
        }
    }

    /// The lowest config version that may use this verb.
    fn min_version(self) -> Option<&'static str> {
        match self {
            Command::Check => Some("0.4.0"),
            Command::Gc | Command::Status => Some("1.1.0"),
            _ => None,
        }
    }
}

/// One validated invocation.
#[derive(Debug, Clone)]
pub struct Request {
    pub command: Command,
    /// Empty for GC and STATUS.
    pub container_id: String,
    /// `None` when `CNI_NETNS` is unset or empty (allowed for DEL).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
    /// The raw config bytes, passed on unchanged to delegated plugins.
    pub stdin: Vec<u8>,
    pub conf: NetConf,
}

impl Request {
    /// Reads the plugin's own view of the config from the raw bytes.
    pub fn parse_conf<T: DeserializeOwned>(&self) -> Result<T, Error> {
        crate::json::from_slice(&self.stdin)
            .map_err(|e| Error::decode(format!("failed to load netconf: {e}")))
    }

    /// The previous plugin's result, in the internal (1.1) form.
    pub fn prev_result(&self) -> Result<Option<CniResult>, Error> {
        self.conf
            .prev_result
            .as_ref()
            .map(|v| CniResult::from_value(v, &self.conf.cni_version))
            .transpose()
    }

    /// The container netns path, or the error ADD and CHECK give without one.
    pub fn netns_required(&self) -> Result<&PathBuf, Error> {
        self.netns
            .as_ref()
            .ok_or_else(|| Error::invalid_env("required env variables [CNI_NETNS] missing"))
    }
}

/// What a plugin implements; `run` does everything else.
pub trait Plugin {
    fn add(&self, req: &Request) -> Result<CniResult, Error>;
    fn del(&self, req: &Request) -> Result<(), Error>;
    fn check(&self, req: &Request) -> Result<(), Error>;
    fn gc(&self, req: &Request) -> Result<(), Error>;
    fn status(&self, req: &Request) -> Result<(), Error>;
}

/// The environment a plugin runs with; a trait object so tests can feed it.
pub trait Env {
    fn var(&self, name: &str) -> String;
}

struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> String {
        std::env::var(name).unwrap_or_default()
    }
}

/// What the dispatcher decided; `run` turns it into output and an exit code.
#[derive(Debug)]
pub enum Outcome {
    /// Text for stdout, exit 0.
    Print(String),
    /// Text for stderr, exit 0 (no CNI_COMMAND: the about text).
    About(String),
    /// Nothing to print, exit 0.
    Done,
    Failed(Error),
}

/// Runs the whole protocol for a plugin binary and exits.
pub fn run(name: &str, plugin: &impl Plugin) -> ! {
    install_panic_hook();
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let outcome = match read {
        Err(e) if ProcessEnv.var("CNI_COMMAND") != "VERSION" => Outcome::Failed(Error::new(
            code::IO,
            format!("error reading from stdin: {e}"),
            "",
        )),
        _ => dispatch(name, plugin, &ProcessEnv, stdin),
    };
    let status = match outcome {
        Outcome::Print(text) => write_out(&text, 0),
        Outcome::About(text) => {
            let _ = std::io::stderr().write_all(text.as_bytes());
            0
        }
        Outcome::Done => 0,
        Outcome::Failed(e) => write_out(&e.to_json(), 1),
    };
    std::process::exit(status)
}

fn write_out(text: &str, status: i32) -> i32 {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => status,
        Err(_) => 1,
    }
}

/// A panic is still a CNI error on stdout, never a bare trace.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "unknown panic".to_string()
        };
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let e = Error::new(code::INTERNAL, format!("internal error: {msg}"), place);
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(e.to_json().as_bytes());
        let _ = out.flush();
    }));
}

/// The about text the reference prints when no CNI_COMMAND is set.
pub fn about(name: &str) -> String {
    format!(
        "CNI {name} plugin v{}\nCNI protocol versions supported: {}\n",
        env!("CARGO_PKG_VERSION"),
        version::SUPPORTED.join(", ")
    )
}

/// The VERSION reply.
pub fn version_reply() -> String {
    let v = serde_json::json!({
        "cniVersion": version::CURRENT,
        "supportedVersions": version::SUPPORTED,
    });
    format!("{v}\n")
}

/// The protocol without process I/O, so it can be unit-tested.
pub fn dispatch(name: &str, plugin: &impl Plugin, env: &dyn Env, stdin: Vec<u8>) -> Outcome {
    let command_text = env.var("CNI_COMMAND");
    if command_text.is_empty() {
        return Outcome::About(about(name));
    }
    let Some(command) = Command::parse(&command_text) else {
        return Outcome::Failed(Error::invalid_env(format!(
            "unknown CNI_COMMAND: {command_text}"
        )));
    };
    let missing: Vec<&str> = command
        .required()
        .iter()
        .copied()
        .filter(|v| env.var(v).is_empty())
        .collect();
    if !missing.is_empty() {
        return Outcome::Failed(Error::invalid_env(format!(
            "required env variables [{}] missing",
            missing.join(",")
        )));
    }
    if command == Command::Version {
        return Outcome::Print(version_reply());
    }
    let req = match build_request(command, env, stdin) {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(e),
    };
    let result = match command {
        Command::Add => plugin.add(&req).and_then(|r| {
            let v = r.to_value(&req.conf.cni_version)?;
            Ok(Outcome::Print(crate::pretty_json(&v)))
        }),
        Command::Del => plugin.del(&req).map(|_| Outcome::Done),
        Command::Check => plugin.check(&req).map(|_| Outcome::Done),
        Command::Gc => plugin.gc(&req).map(|_| Outcome::Done),
        Command::Status => plugin.status(&req).map(|_| Outcome::Done),
        Command::Version => unreachable!("handled above"),
    };
    result.unwrap_or_else(Outcome::Failed)
}

fn build_request(command: Command, env: &dyn Env, stdin: Vec<u8>) -> Result<Request, Error> {
    let conf = validate_config(&stdin)?;
    let container_id = env.var("CNI_CONTAINERID");
    let ifname = env.var("CNI_IFNAME");
    if matches!(command, Command::Add | Command::Del | Command::Check) {
        validate_container_id(&container_id)?;
        validate_ifname(&ifname)?;
    }
    gate_version(command, &conf.cni_version)?;
    let netns = Some(env.var("CNI_NETNS"))
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    if let Some(ns) = &netns {
        let override_ok = matches!(
            env.var("CNI_NETNS_OVERRIDE").to_ascii_lowercase().as_str(),
            "1" | "true"
        );
        if !override_ok && command != Command::Gc && is_own_netns(ns) {
            return Err(Error::new(
                code::INVALID_NETNS,
                "plugin's netns and netns from CNI_NETNS should not be the same",
                "",
            ));
        }
    }
    Ok(Request {
        command,
        container_id,
        netns,
        ifname,
        args: CniArgs::new(env.var("CNI_ARGS")),
        path: std::env::split_paths(&env.var("CNI_PATH")).collect(),
        stdin,
        conf,
    })
}

/// Reads the shared keys; the name rules are the reference's.
fn validate_config(stdin: &[u8]) -> Result<NetConf, Error> {
    let conf: NetConf = crate::json::from_slice(stdin)
        .map_err(|e| Error::decode(format!("error unmarshall network config: {e}")))?;
    if conf.name.is_empty() {
        return Err(Error::invalid_config("missing network name"));
    }
    if !valid_name(&conf.name) {
        return Err(Error::new(
            code::INVALID_CONFIG,
            "invalid characters found in network name",
            conf.name.clone(),
        ));
    }
    Ok(conf)
}

fn gate_version(command: Command, conf_version: &str) -> Result<(), Error> {
    if let Some(min) = command.min_version()
        && !version::at_least(version::or_default(conf_version), min)?
    {
        return Err(Error::new(
            code::INCOMPATIBLE_VERSION,
            format!("config version does not allow {}", command.as_str()),
            "",
        ));
    }
    version::check_supported(conf_version)
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, the reference's rule for container IDs
/// and network names. It also keeps both safe as path components.
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn validate_container_id(id: &str) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::new(
            code::UNKNOWN_CONTAINER,
            "missing containerID",
            "",
        ));
    }
    if !valid_name(id) {
        return Err(Error::new(
            code::INVALID_ENV,
            "invalid characters in containerID",
            id,
        ));
    }
    Ok(())
}

fn validate_ifname(name: &str) -> Result<(), Error> {
    let msg = if name.is_empty() {
        "interface name is empty"
    } else if name.len() > 15 {
        return Err(Error::new(
            code::INVALID_ENV,
            "interface name is too long",
            "interface name should be less than 16 characters",
        ));
    } else if name == "." || name == ".." {
        "interface name is . or .."
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        "interface name contains / or : or whitespace characters"
    } else {
        return Ok(());
    };
    Err(Error::invalid_env(msg))
}

/// True when `path` is the network namespace this process is in.
fn is_own_netns(path: &std::path::Path) -> bool {
    let (Ok(theirs), Ok(ours)) = (
        std::fs::metadata(path),
        std::fs::metadata("/proc/self/ns/net"),
    ) else {
        return false;
    };
    theirs.dev() == ours.dev() && theirs.ino() == ours.ino()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, String>);
    impl Env for MapEnv {
        fn var(&self, name: &str) -> String {
            self.0.get(name).cloned().unwrap_or_default()
        }
    }

    fn env(pairs: &[(&'static str, &str)]) -> MapEnv {
        MapEnv(pairs.iter().map(|(k, v)| (*k, v.to_string())).collect())
    }

    fn add_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/nonexistent-test"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
    }

    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<Command>>,
    }
    impl Plugin for Recorder {
        fn add(&self, req: &Request) -> Result<CniResult, Error> {
            self.calls.borrow_mut().push(req.command);
            Ok(CniResult {
                ips: vec![crate::result::IpConfig {
                    address: "10.1.2.3/24".parse().unwrap(),
                    gateway: None,
                    interface: None,
                }],
                ..Default::default()
            })
        }
        fn del(&self, req: &Request) -> Result<(), Error> {
            self.calls.borrow_mut().push(req.command);
            Ok(())
        }
        fn check(&self, req: &Request) -> Result<(), Error> {
            self.calls.borrow_mut().push(req.command);
            Ok(())
        }
        fn gc(&self, req: &Request) -> Result<(), Error> {
            self.calls.borrow_mut().push(req.command);
            Ok(())
        }
        fn status(&self, _: &Request) -> Result<(), Error> {
            Err(Error::new(code::NOT_AVAILABLE, "pool exhausted", ""))
        }
    }

    fn run_with(pairs: &[(&'static str, &str)], stdin: &str) -> (Outcome, Vec<Command>) {
        let p = Recorder::default();
        let out = dispatch("test", &p, &env(pairs), stdin.as_bytes().to_vec());
        (out, p.calls.into_inner())
    }

    fn failed(o: Outcome) -> Error {
        match o {
            Outcome::Failed(e) => e,
            other => panic!("expected failure, got {other:?}"),
        }
    }

    #[test]
    fn no_command_prints_about() {
        let (out, _) = run_with(&[], "");
        match out {
            Outcome::About(t) => {
                assert!(t.contains("CNI protocol versions supported: 0.1.0, 0.2.0"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn version_ignores_stdin() {
        let (out, _) = run_with(&[("CNI_COMMAND", "VERSION")], "garbage");
        match out {
            Outcome::Print(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["cniVersion"], "1.1.0");
                assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 7);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn add_prints_result_at_request_version() {
        let (out, calls) = run_with(
            &add_env(),
            r#"{"cniVersion":"0.4.0","name":"n","type":"x"}"#,
        );
        assert_eq!(calls, vec![Command::Add]);
        match out {
            Outcome::Print(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["cniVersion"], "0.4.0");
                assert_eq!(v["ips"][0]["version"], "4");
                assert!(t.contains("\n    \""), "indented like the reference");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_env_is_code_4_in_reference_order() {
        let e = failed(run_with(&[("CNI_COMMAND", "ADD")], "{}").0);
        assert_eq!(e.code, 4);
        assert_eq!(
            e.msg,
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"
        );
        let e = failed(run_with(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "x")], "{}").0);
        assert_eq!(
            e.msg,
            "required env variables [CNI_IFNAME,CNI_PATH] missing"
        );
        let e = failed(run_with(&[("CNI_COMMAND", "BOGUS")], "{}").0);
        assert_eq!(e.msg, "unknown CNI_COMMAND: BOGUS");
    }

    #[test]
    fn config_errors() {
        let cases = [
            ("not json", 6, "error unmarshall network config"),
            (r#"{"cniVersion":"1.0.0"}"#, 7, "missing network name"),
            (
                r#"{"name":"../x"}"#,
                7,
                "invalid characters found in network name",
            ),
            (r#"{"name":5}"#, 6, "error unmarshall network config"),
            (
                r#"{"name":"n","cniVersion":"2.0.0"}"#,
                1,
                "incompatible CNI versions",
            ),
        ];
        for (stdin, code, msg) in cases {
            let (out, calls) = run_with(&add_env(), stdin);
            let e = failed(out);
            assert_eq!(
                (e.code, e.msg.starts_with(msg)),
                (code, true),
                "{stdin}: {e:?}"
            );
            assert!(calls.is_empty());
        }
    }

    #[test]
    fn container_id_and_ifname_rules() {
        let conf = r#"{"name":"n","cniVersion":"1.0.0"}"#;
        let cases: [(&str, &str, u32); 6] = [
            ("CNI_CONTAINERID", "../etc", 4),
            ("CNI_CONTAINERID", "-x", 4),
            ("CNI_IFNAME", "a/b", 4),
            ("CNI_IFNAME", "..", 4),
            ("CNI_IFNAME", "sixteen-chars-xx", 4),
            ("CNI_IFNAME", "a b", 4),
        ];
        for (key, val, code) in cases {
            let mut pairs = add_env();
            pairs.retain(|(k, _)| *k != key);
            pairs.push((key, val));
            let e = failed(run_with(&pairs, conf).0);
            assert_eq!(e.code, code, "{key}={val}");
        }
    }

    #[test]
    fn version_gates() {
        let mut check = add_env();
        check[0] = ("CNI_COMMAND", "CHECK");
        let e = failed(run_with(&check, r#"{"name":"n","cniVersion":"0.3.1"}"#).0);
        assert_eq!(
            (e.code, e.msg.as_str()),
            (1, "config version does not allow CHECK")
        );
        let (out, calls) = run_with(&check, r#"{"name":"n","cniVersion":"0.4.0"}"#);
        assert!(matches!(out, Outcome::Done));
        assert_eq!(calls, vec![Command::Check]);

        let gc = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")];
        let e = failed(run_with(&gc, r#"{"name":"n","cniVersion":"1.0.0"}"#).0);
        assert_eq!(e.msg, "config version does not allow GC");
        let (out, _) = run_with(&gc, r#"{"name":"n","cniVersion":"1.1.0"}"#);
        assert!(matches!(out, Outcome::Done));

        let status = [("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/x")];
        let e = failed(run_with(&status, r#"{"name":"n","cniVersion":"1.1.0"}"#).0);
        assert_eq!(e.code, 50, "the plugin's own error passes through");
    }

    #[test]
    fn own_netns_is_rejected_unless_overridden() {
        let mut pairs = add_env();
        pairs.retain(|(k, _)| *k != "CNI_NETNS");
        pairs.push(("CNI_NETNS", "/proc/self/ns/net"));
        let conf = r#"{"name":"n","cniVersion":"1.0.0"}"#;
        assert_eq!(failed(run_with(&pairs, conf).0).code, 8);
        pairs.push(("CNI_NETNS_OVERRIDE", "true"));
        assert!(matches!(run_with(&pairs, conf).0, Outcome::Print(_)));
    }

    #[test]
    fn del_without_netns_is_fine() {
        let pairs = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ];
        let (out, calls) = run_with(&pairs, r#"{"name":"n","cniVersion":"1.0.0"}"#);
        assert!(matches!(out, Outcome::Done));
        assert_eq!(calls, vec![Command::Del]);
    }
}
