//! Test-only: throwaway network namespaces, and running our code or a tool inside one,
//! so root tests never touch the host's firewall.

use std::fs::File;
use std::io::{Read, Write};
use std::process::{Command, Stdio};

pub(crate) struct TestNs {
    pub name: String,
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 4];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl TestNs {
    /// A fresh namespace, or `None` (test skipped) when not root or `ip` is missing.
    pub fn new(tag: &str) -> Option<TestNs> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: needs root");
            return None;
        }
        let name = format!("cninat-{tag}-{}", random_suffix());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("skipping: cannot create netns {name}");
            return None;
        }
        let ns = TestNs { name };
        // nat rules need lo up for nothing here, but some tools expect it.
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        Some(ns)
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `f` on a thread switched into this namespace; processes it spawns inherit it.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = File::open(self.path()).expect("open netns");
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("thread in netns panicked")
        })
    }

    /// `ip netns exec NAME args...`, returning stdout; panics on failure.
    pub fn exec(&self, args: &[&str]) -> String {
        self.exec_with(args, &[], None)
            .unwrap_or_else(|e| panic!("{args:?} in {}: {e}", self.name))
    }

    /// Like [`exec`](Self::exec) with environment and stdin; `Err(stderr+stdout)` on
    /// failure.
    pub fn exec_with(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> Result<String, String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        if let Some(mut pipe) = child.stdin.take() {
            let _ = pipe.write_all(stdin.unwrap_or("").as_bytes());
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                stdout
            ))
        }
    }

    /// The nat table as `iptables-save` prints it, without the timestamp comments.
    pub fn nat_dump(&self, v6: bool) -> String {
        let tool = if v6 {
            "ip6tables-save"
        } else {
            "iptables-save"
        };
        self.exec(&[tool, "-t", "nat"])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// Rule lines (`-A ...`) of the nat table.
    pub fn nat_rules(&self, v6: bool) -> Vec<String> {
        self.nat_dump(v6)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .map(str::to_string)
            .collect()
    }

    /// User chains of the nat table.
    pub fn nat_chains(&self, v6: bool) -> Vec<String> {
        self.nat_dump(v6)
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| !["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"].contains(c))
            .map(str::to_string)
            .collect()
    }

    /// `nft list ruleset` with handles stripped.
    pub fn nft_ruleset(&self) -> String {
        self.exec(&["nft", "list", "ruleset"])
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
