//! One plugin invocation as a runtime makes it: `CNI_*` variables, config on stdin,
//! result or error JSON on stdout.

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::netns::Netns;
use crate::paths::bin_dir;

/// A plugin that hangs must fail its test, not the whole CI run.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Builder for one plugin call. Only the variables a test sets are passed (plus
/// `CNI_PATH`, which defaults to [`bin_dir`]); `CNI_*` variables of the test process
/// itself are never inherited. Cloneable, so one set-up can be run as ADD, CHECK, DEL.
#[derive(Debug, Clone)]
pub struct CniCall {
    plugin: PathBuf,
    env: Vec<(String, Option<OsString>)>,
    in_netns: Option<String>,
    stdin: Vec<u8>,
    timeout: Duration,
}

impl CniCall {
    /// `plugin` is a bare name (`"bridge"`: looked up in [`bin_dir`]) or a path
    /// (`"/usr/lib/cni/bridge"`: used as is).
    pub fn new(plugin: impl AsRef<Path>) -> CniCall {
        let plugin = plugin.as_ref();
        let plugin = if plugin.components().count() == 1 && !plugin.is_absolute() {
            bin_dir().join(plugin)
        } else {
            plugin.to_path_buf()
        };
        CniCall {
            plugin,
            env: vec![("CNI_PATH".into(), Some(bin_dir().into_os_string()))],
            in_netns: None,
            stdin: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets (or replaces) one environment variable of the call.
    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> CniCall {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), Some(value.into())));
        self
    }

    /// Makes sure `key` is not set for the call (e.g. to test a missing `CNI_PATH`).
    pub fn env_remove(mut self, key: &str) -> CniCall {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), None));
        self
    }

    /// `CNI_COMMAND`: ADD, DEL, CHECK, VERSION, GC, STATUS.
    pub fn command(self, verb: &str) -> CniCall {
        self.env("CNI_COMMAND", verb)
    }

    /// `CNI_CONTAINERID`.
    pub fn container_id(self, id: &str) -> CniCall {
        self.env("CNI_CONTAINERID", id)
    }

    /// `CNI_NETNS`: a path, or a [`Netns`] (its `/run/netns/<name>` path).
    pub fn netns(self, netns: impl AsRef<Path>) -> CniCall {
        let path = netns.as_ref().as_os_str().to_owned();
        self.env("CNI_NETNS", path)
    }

    /// `CNI_IFNAME`.
    pub fn ifname(self, name: &str) -> CniCall {
        self.env("CNI_IFNAME", name)
    }

    /// `CNI_ARGS` (`K=V;K=V`).
    pub fn args(self, args: &str) -> CniCall {
        self.env("CNI_ARGS", args)
    }

    /// `CNI_PATH` (colon-separated directories); defaults to [`bin_dir`].
    pub fn path(self, path: impl Into<OsString>) -> CniCall {
        self.env("CNI_PATH", path)
    }

    /// Runs the plugin inside `ns` (`ip netns exec`), normally the [`crate::Host`].
    pub fn in_netns(mut self, ns: &Netns) -> CniCall {
        self.in_netns = Some(ns.name().to_owned());
        self
    }

    /// Raw bytes on stdin (for malformed-input tests).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> CniCall {
        self.stdin = bytes.into();
        self
    }

    /// The network configuration as JSON on stdin.
    pub fn config(mut self, conf: &Value) -> CniCall {
        self.stdin = conf.to_string().into_bytes();
        self
    }

    /// How long the plugin may run before it is killed and the test fails (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> CniCall {
        self.timeout = timeout;
        self
    }

    /// A shell-like description for failure messages.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .env
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", v.to_string_lossy())))
            .collect();
        if let Some(ns) = &self.in_netns {
            parts.push(format!("ip netns exec {ns}"));
        }
        parts.push(self.plugin.display().to_string());
        parts.join(" ")
    }

    fn build(&self) -> Command {
        let mut cmd = match &self.in_netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.plugin);
                c
            }
            None => Command::new(&self.plugin),
        };
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CNI_") {
                cmd.env_remove(key);
            }
        }
        for (key, value) in &self.env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs the plugin to completion. Panics only if it cannot be started or times out;
    /// a failing plugin is an [`Outcome`] to assert on.
    pub fn run(&self) -> Outcome {
        let what = self.describe();
        if !self.plugin.is_file() {
            panic!(
                "plugin {} not found (bin dir {}; build with `cargo build --release` \
                 or set CNI_BIN_DIR)",
                self.plugin.display(),
                bin_dir().display()
            );
        }
        let mut child = self
            .build()
            .spawn()
            .unwrap_or_else(|e| panic!("spawn `{what}`: {e}"));
        let pid = child.id();
        // Feed stdin from its own thread: a plugin may write before it has read all input.
        if let Some(mut pipe) = child.stdin.take() {
            let input = self.stdin.clone();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            });
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let output: Output = match rx.recv_timeout(self.timeout) {
            Ok(result) => result.unwrap_or_else(|e| panic!("wait for `{what}`: {e}")),
            Err(_) => {
                // Not reaped yet (the waiter still holds it), so the pid is still ours.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
                let _ = rx.recv();
                panic!("`{what}` timed out after {:?}", self.timeout);
            }
        };
        Outcome::new(what, output)
    }
}

/// What a plugin call returned.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The call, for messages.
    pub call: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed as JSON, when it is JSON.
    pub json: Option<Value>,
}

static NULL: Value = Value::Null;

impl Outcome {
    fn new(call: String, out: Output) -> Outcome {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json = serde_json::from_str(&stdout).ok();
        Outcome {
            call,
            status: out.status,
            stdout,
            stderr,
            json,
        }
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The `code` of an error object on stdout, if there is one.
    pub fn error_code(&self) -> Option<u64> {
        self.json.as_ref()?.get("code")?.as_u64()
    }

    /// Asserts exit status 0 and returns the result JSON (`Null` when stdout is empty, as
    /// for DEL). Panics with the full call, stdout and stderr otherwise, or when stdout is
    /// neither empty nor JSON.
    pub fn assert_ok(&self) -> &Value {
        if !self.success() {
            panic!("expected success:\n{self}");
        }
        match &self.json {
            Some(v) => v,
            None if self.stdout.trim().is_empty() => &NULL,
            None => panic!("stdout is not JSON:\n{self}"),
        }
    }

    /// Asserts a CNI error: non-zero exit and `{"code": code, "msg": "..."}` on stdout.
    /// Returns the error object.
    pub fn assert_error(&self, code: u64) -> &Value {
        if self.success() {
            panic!("expected error code {code}, got success:\n{self}");
        }
        let Some(err) = &self.json else {
            panic!("expected error code {code}, stdout is not JSON:\n{self}");
        };
        if self.error_code() != Some(code) {
            panic!("expected error code {code}:\n{self}");
        }
        if !err.get("msg").is_some_and(Value::is_string) {
            panic!("error object has no string msg:\n{self}");
        }
        err
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "call:   {}", self.call)?;
        writeln!(f, "status: {}", self.status)?;
        writeln!(f, "stdout: {}", self.stdout.trim_end())?;
        write!(f, "stderr: {}", self.stderr.trim_end())
    }
}
