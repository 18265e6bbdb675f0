//! Command line and environment: every flag `--foo-bar` can also come from `CNI_RS_FOO_BAR`,
//! except the node name (`NODE_NAME`, from the downward API) and `KUBECONFIG`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnetwork::IpNetwork;

/// The routing protocol number our routes carry (`ip route show proto 61`), so the agent
/// can tell its routes from everyone else's. Not in iproute2's rt_protos, not one of the
/// kernel's own (0-4: `boot` is what `ip route add`, flannel and kindnet use, `static`
/// what systemd-networkd and NetworkManager use), not zebra/bird/mrouted (11, 12, 17:
/// kube-router tags its routes with 17), keepalived 18, babel 42, Calico's 80, openr 99,
/// nor FRR's 186-199.
pub const DEFAULT_ROUTE_PROTOCOL: u8 = 61;

/// The kernel's own protocol numbers: routes with these belong to everyone, so the agent
/// must never claim one as its own (it deletes routes of its protocol it does not want).
pub const RESERVED_PROTOCOLS: std::ops::RangeInclusive<u8> = 0..=4;

pub const DEFAULT_CONFLIST_NAME: &str = "10-cni-rs.conflist";

#[derive(Debug, Parser)]
#[command(
    name = "cni-rs-node",
    version,
    about = "Node agent of the cni-rs suite: writes this node's conflist from its Node's \
             podCIDRs, routes every other node's pod subnet to that node, and masquerades \
             only what leaves the cluster"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub flags: Flags,
}

#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum Command {
    /// Run the agent (the default).
    Run,
    /// Remove exactly what the agent made: its routes (by protocol number), its
    /// masquerade table and FORWARD rules. Never the conflist.
    Cleanup,
    /// Install the plugins into the node's CNI bin directory (the DaemonSet's init
    /// container): renamed into place, skipped when identical, replaced files kept as
    /// `<name>.pre-cni-rs` as scripts/install.sh keeps them.
    Install(InstallArgs),
    /// Take the node back to where it was before: `cleanup`, the agent's conflist
    /// removed, then the plugins removed and the files they replaced restored (as
    /// `scripts/install.sh --uninstall`). Run it once the agent is gone.
    Uninstall(UninstallArgs),
    /// Wait for SIGTERM and exit: the main container of the cleanup DaemonSet, whose
    /// work is done by its init container.
    Pause,
}

#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct InstallArgs {
    /// Where the plugins to install are (the image's).
    #[arg(long, env = "CNI_RS_INSTALL_FROM", default_value = "/opt/cni-rs/bin")]
    pub from: PathBuf,

    /// The runtime's CNI bin directory; mount the host's at the same path, so the
    /// manifest names the host's files.
    #[arg(
        long,
        visible_alias = "to",
        env = "CNI_RS_BIN_DIR",
        default_value = "/opt/cni/bin"
    )]
    pub bin_dir: PathBuf,
}

#[derive(Debug, Args, Clone, PartialEq, Eq)]
pub struct UninstallArgs {
    /// The CNI bin directory the plugins were installed into.
    #[arg(long, env = "CNI_RS_BIN_DIR", default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,

    /// Also remove installed files changed since they were installed.
    #[arg(long, env = "CNI_RS_FORCE")]
    pub force: bool,
}

#[derive(Debug, Args, Clone)]
pub struct Flags {
    /// This node's name, as in `kubectl get nodes` (downward API `spec.nodeName`).
    #[arg(long, env = "NODE_NAME", global = true)]
    pub node_name: Option<String>,

    /// Kubeconfig to use; without it `$HOME/.kube/config`, then the in-cluster service account.
    #[arg(long, env = "KUBECONFIG", global = true)]
    pub kubeconfig: Option<PathBuf>,

    /// API server URL overriding the kubeconfig's or in-cluster address (works before
    /// kube-proxy runs), e.g. https://192.168.1.10:6443.
    #[arg(long, env = "CNI_RS_APISERVER", global = true)]
    pub apiserver: Option<String>,

    /// Directory the container runtime loads conflists from.
    #[arg(
        long,
        env = "CNI_RS_CNI_CONF_DIR",
        default_value = "/etc/cni/net.d",
        global = true
    )]
    pub cni_conf_dir: PathBuf,

    /// File name of the conflist the agent writes in --cni-conf-dir.
    #[arg(long, env = "CNI_RS_CONFLIST_NAME", default_value = DEFAULT_CONFLIST_NAME, global = true)]
    pub conflist_name: String,

    /// Conflist to fill in (its host-local ranges and routes, the bridge's mtu and
    /// ipMasq); default: the shape of conf/10-bridge.conflist.
    #[arg(long, env = "CNI_RS_CONFLIST_TEMPLATE", global = true)]
    pub conflist_template: Option<PathBuf>,

    /// The cluster's pod CIDRs (comma-separated); traffic to them is never masqueraded.
    /// Default: the union of all nodes' podCIDRs.
    #[arg(
        long,
        env = "CNI_RS_CLUSTER_CIDR",
        value_delimiter = ',',
        global = true
    )]
    pub cluster_cidr: Vec<IpNetwork>,

    /// More destinations (comma-separated) pods reach with their own address (not masqueraded).
    #[arg(
        long,
        env = "CNI_RS_NO_MASQUERADE_CIDR",
        value_delimiter = ',',
        global = true
    )]
    pub no_masquerade_cidr: Vec<IpNetwork>,

    /// MTU of the pods' interfaces; default: the MTU of the interface holding the node's address.
    #[arg(long, env = "CNI_RS_MTU", value_parser = clap::value_parser!(u32).range(576..=65535), global = true)]
    pub mtu: Option<u32>,

    /// Routing protocol number of the agent's routes (5-255).
    #[arg(long, env = "CNI_RS_ROUTE_PROTOCOL", default_value_t = DEFAULT_ROUTE_PROTOCOL,
          value_parser = parse_protocol, global = true)]
    pub route_protocol: u8,

    /// Take over routes of another protocol to a node's pod CIDR (e.g. added by hand)
    /// instead of only reporting them.
    #[arg(long, env = "CNI_RS_ADOPT_ROUTES", global = true)]
    pub adopt_routes: bool,

    /// Full resync backstop: re-dump the kernel's routes and re-apply the masquerade
    /// rules and the conflist (never a re-list of the API server). E.g. 60s, 5m.
    #[arg(long, env = "CNI_RS_RESYNC_INTERVAL", default_value = "60s",
          value_parser = parse_duration, global = true)]
    pub resync_interval: Duration,

    /// Where /healthz, /readyz and /metrics are served.
    #[arg(
        long,
        env = "CNI_RS_HEALTH_ADDR",
        default_value = "127.0.0.1:9650",
        global = true
    )]
    pub health_addr: SocketAddr,
}

fn parse_protocol(s: &str) -> Result<u8, String> {
    let n: u8 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number from 5 to 255"))?;
    if RESERVED_PROTOCOLS.contains(&n) {
        return Err(format!(
            "{n} is one of the kernel's own protocols (0-4: unspec, redirect, kernel, boot, \
             static) that other software uses; choose 5-255 (default {DEFAULT_ROUTE_PROTOCOL})"
        ));
    }
    Ok(n)
}

/// `250ms`, `60s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 60s, 5m or 500ms"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

impl Flags {
    pub fn conflist_path(&self) -> PathBuf {
        self.cni_conf_dir.join(&self.conflist_name)
    }

    /// Checks what clap cannot: a conflist name CNI loads and that stays inside the directory.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.conflist_name;
        if name.contains('/') || name.starts_with('.') {
            return Err(format!(
                "--conflist-name {name:?}: a plain file name not starting with '.'"
            ));
        }
        if ![".conflist", ".conf", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext))
        {
            return Err(format!(
                "--conflist-name {name:?}: CNI only loads files ending in .conflist, .conf or .json"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cni-rs-node").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_contract() {
        let cli = parse(&["--node-name", "n1"]).unwrap();
        assert_eq!(cli.command, None);
        let f = cli.flags;
        assert_eq!(f.node_name.as_deref(), Some("n1"));
        assert_eq!(f.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(
            f.conflist_path(),
            PathBuf::from("/etc/cni/net.d/10-cni-rs.conflist")
        );
        assert_eq!(f.route_protocol, DEFAULT_ROUTE_PROTOCOL);
        assert_eq!(f.resync_interval, Duration::from_secs(60));
        assert_eq!(f.health_addr, "127.0.0.1:9650".parse().unwrap());
        assert!(!f.adopt_routes);
        assert!(f.cluster_cidr.is_empty());
    }

    #[test]
    fn flags_work_before_and_after_the_subcommand() {
        let cli = parse(&["cleanup", "--route-protocol", "77"]).unwrap();
        assert_eq!(cli.command, Some(Command::Cleanup));
        assert_eq!(cli.flags.route_protocol, 77);
        let cli = parse(&["--route-protocol", "78", "run"]).unwrap();
        assert_eq!(cli.command, Some(Command::Run));
        assert_eq!(cli.flags.route_protocol, 78);
    }

    #[test]
    fn install_and_uninstall_default_to_the_image_and_the_hosts_paths() {
        let cli = parse(&["install"]).unwrap();
        assert_eq!(
            cli.command,
            Some(Command::Install(InstallArgs {
                from: "/opt/cni-rs/bin".into(),
                bin_dir: "/opt/cni/bin".into(),
            }))
        );
        let cli = parse(&["install", "--from", "/a", "--to", "/b"]).unwrap();
        let Some(Command::Install(a)) = cli.command else {
            panic!("install expected");
        };
        assert_eq!((a.from, a.bin_dir), ("/a".into(), "/b".into()));
        let cli = parse(&["uninstall", "--force", "--route-protocol", "77"]).unwrap();
        assert_eq!(
            cli.command,
            Some(Command::Uninstall(UninstallArgs {
                bin_dir: "/opt/cni/bin".into(),
                force: true,
            }))
        );
        assert_eq!(cli.flags.route_protocol, 77);
        assert_eq!(parse(&["pause"]).unwrap().command, Some(Command::Pause));
    }

    #[test]
    fn cidr_lists_are_comma_separated() {
        let cli = parse(&[
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/56",
            "--no-masquerade-cidr=192.168.0.0/16",
        ])
        .unwrap();
        assert_eq!(cli.flags.cluster_cidr.len(), 2);
        assert_eq!(
            cli.flags.no_masquerade_cidr[0].to_string(),
            "192.168.0.0/16"
        );
        assert!(parse(&["--cluster-cidr", "10.244.0.0/33"]).is_err());
    }

    #[test]
    fn the_kernels_own_protocols_are_refused() {
        for p in ["0", "3", "4", "256", "x"] {
            assert!(parse(&["--route-protocol", p]).is_err(), "{p}");
        }
        let err = parse(&["--route-protocol", "3"]).unwrap_err().to_string();
        assert!(err.contains("boot"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn conflist_names_must_be_loadable_and_local() {
        let mut f = parse(&[]).unwrap().flags;
        assert!(f.validate().is_ok());
        for bad in ["../x.conflist", ".hidden.conflist", "10-x.txt"] {
            f.conflist_name = bad.into();
            assert!(f.validate().is_err(), "{bad}");
        }
    }
}
