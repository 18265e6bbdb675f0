//! Reading kernel state of a namespace back through `ip -j` (JSON), and reachability.

use serde_json::Value;

use crate::netns::Netns;

impl Netns {
    /// `ip -j -n <name> args...` parsed as JSON (`[]` when `ip` prints nothing).
    pub fn ip_json<I, S>(&self, args: I) -> Value
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> = vec!["-j".into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        let text = self.ip(&all);
        if text.trim().is_empty() {
            return Value::Array(Vec::new());
        }
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("parse `ip -j` output in {}: {e}\n{text}", self.name()))
    }

    /// All links (`ip -j link show`), one JSON object each.
    pub fn links(&self) -> Vec<Value> {
        as_vec(self.ip_json(["link", "show"]))
    }

    /// The names of all links.
    pub fn link_names(&self) -> Vec<String> {
        self.links()
            .iter()
            .filter_map(|l| l.get("ifname")?.as_str().map(str::to_owned))
            .collect()
    }

    /// One link by name, or `None` if it does not exist here.
    pub fn link(&self, ifname: &str) -> Option<Value> {
        self.links()
            .into_iter()
            .find(|l| l.get("ifname").and_then(Value::as_str) == Some(ifname))
    }

    /// Global-scope addresses of `ifname` as `"10.1.2.3/24"` / `"fd00::3/64"`, in kernel
    /// order; empty when the link does not exist.
    pub fn addrs(&self, ifname: &str) -> Vec<String> {
        let Some(_) = self.link(ifname) else {
            return Vec::new();
        };
        as_vec(self.ip_json(["addr", "show", "dev", ifname, "scope", "global"]))
            .iter()
            .flat_map(|l| as_vec(l.get("addr_info").cloned().unwrap_or(Value::Null)))
            .filter_map(|a| {
                let local = a.get("local")?.as_str()?;
                let len = a.get("prefixlen")?.as_u64()?;
                Some(format!("{local}/{len}"))
            })
            .collect()
    }

    /// IPv4 routes of the main table (`ip -j -4 route show`).
    pub fn routes4(&self) -> Vec<Value> {
        as_vec(self.ip_json(["-4", "route", "show"]))
    }

    /// IPv6 routes of the main table (`ip -j -6 route show`).
    pub fn routes6(&self) -> Vec<Value> {
        as_vec(self.ip_json(["-6", "route", "show"]))
    }

    /// Whether `addr` (v4 or v6) answers a ping from this namespace; up to 3 tries of
    /// one echo each with a 1 s wait, so a first ARP/ND round does not make a test flaky.
    pub fn ping(&self, addr: &str) -> bool {
        for _ in 0..3 {
            let out = self.exec(["ping", "-n", "-c1", "-W1", addr]);
            if out.status.success() {
                return true;
            }
            if String::from_utf8_lossy(&out.stderr).contains("No such file") {
                panic!("ping is not installed (apt-get install iputils-ping)");
            }
        }
        false
    }
}

fn as_vec(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        other => vec![other],
    }
}
