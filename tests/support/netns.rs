//! Network namespaces made by a test and removed when their guard drops, and the
//! private "host" namespace the plugins run in, so nothing lands on the real host.

use std::ffi::OsStr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cni::CniCall;
use crate::names::{base36, random_u64};

/// Every namespace the harness makes is named `cnit-<pid>-<tag>-<random>`, so that
/// `scripts/test.sh` can tell leftovers of dead test processes from live ones.
pub const NETNS_PREFIX: &str = "cnit-";

const NETNS_DIR: &str = "/run/netns";

/// The first `ip netns add` on a machine sets up the /run/netns mount; serialising
/// creation within a test binary keeps concurrent first calls from racing on it.
static CREATE_LOCK: Mutex<()> = Mutex::new(());

/// Whether a named namespace exists (is mounted under /run/netns).
pub fn netns_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

fn describe<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn output_of(cmd: &mut Command, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn `{what}`: {e}"))
}

fn expect_success(out: Output, what: &str) -> String {
    if !out.status.success() {
        panic!(
            "`{what}` failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace, deleted on drop (also when the test panics).
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates `cnit-<pid>-<tag>-<random>` with `ip netns add`. Its loopback is left down,
    /// as a runtime leaves it; call [`Netns::lo_up`] where a test needs it.
    pub fn new(tag: &str) -> Netns {
        let name = format!(
            "{NETNS_PREFIX}{}-{tag}-{}",
            std::process::id(),
            base36(random_u64(), 5)
        );
        {
            let _guard = CREATE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            let what = format!("ip netns add {name}");
            expect_success(
                output_of(Command::new("ip").args(["netns", "add", &name]), &what),
                &what,
            );
        }
        let path = Path::new(NETNS_DIR).join(&name);
        Netns { name, path }
    }

    /// The name `ip netns` knows it by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`: what `CNI_NETNS` is set to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `args` inside the namespace (`ip netns exec <name> args...`) and returns its
    /// output whatever the exit status.
    pub fn exec<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let what = format!("ip netns exec {} {}", self.name, describe(&args));
        output_of(&mut self.exec_command(&args), &what)
    }

    /// Like [`Netns::exec`], but panics with the command's output unless it succeeds;
    /// returns its stdout.
    pub fn run<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let what = format!("ip netns exec {} {}", self.name, describe(&args));
        expect_success(output_of(&mut self.exec_command(&args), &what), &what)
    }

    /// `ip -n <name> args...`, panicking unless it succeeds; returns its stdout.
    pub fn ip<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let what = format!("ip -n {} {}", self.name, describe(&args));
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(&args);
        expect_success(output_of(&mut cmd, &what), &what)
    }

    /// Brings the loopback interface up.
    pub fn lo_up(&self) {
        self.ip(["link", "set", "lo", "up"]);
    }

    /// Sets a sysctl of this namespace, e.g. `sysctl("net.ipv6.conf.all.accept_dad", "0")`.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let script = format!("echo '{value}' > '{path}'");
        self.run(["sh", "-c", &script]);
    }

    /// Starts `args` inside the namespace in the background (a server, a listener); it is
    /// killed when the returned guard drops. Drop it before the namespace.
    pub fn spawn<I, S>(&self, args: I) -> Background
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let what = format!("ip netns exec {} {}", self.name, describe(&args));
        let child = self
            .exec_command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn `{what}`: {e}"));
        Background {
            child: Some(child),
            what,
        }
    }

    /// A `Command` that runs `args` in this namespace, for tests that need more control.
    pub fn exec_command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }
}

impl AsRef<Path> for Netns {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Never panic here: a drop during unwinding would abort and hide the real failure.
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("warning: ip netns del {}: {e}", self.name),
        }
    }
}

/// A private "node": a namespace with loopback up in which the plugins run (through
/// `ip netns exec`), so bridges, host-side veths, routes, sysctls and firewall rules land
/// here and never on the real host. Pods are separate [`Netns`]es.
#[derive(Debug)]
pub struct Host {
    ns: Netns,
}

impl Host {
    pub fn new() -> Host {
        let ns = Netns::new("host");
        ns.lo_up();
        Host { ns }
    }

    /// A [`CniCall`] of `plugin` (a name in [`crate::bin_dir`] or a path) run in this host.
    pub fn cni(&self, plugin: impl AsRef<Path>) -> CniCall {
        CniCall::new(plugin).in_netns(&self.ns)
    }

    pub fn ns(&self) -> &Netns {
        &self.ns
    }
}

impl Default for Host {
    fn default() -> Self {
        Host::new()
    }
}

impl Deref for Host {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

/// A background process started by [`Netns::spawn`], killed on drop.
#[derive(Debug)]
pub struct Background {
    child: Option<Child>,
    what: String,
}

impl Background {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Waits up to `timeout` for it to exit on its own, killing it after that, and
    /// returns what it printed.
    pub fn finish(mut self, timeout: Duration) -> Output {
        let Some(mut child) = self.child.take() else {
            panic!("`{}` already reaped", self.what);
        };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("wait for `{}`: {e}", self.what),
            }
        }
        let _ = child.kill();
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("collect output of `{}`: {e}", self.what))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
