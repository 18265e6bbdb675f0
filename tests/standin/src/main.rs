//! `kube-standin`: the stand-in API server as a process, for tests that run it in
//! another network namespace. Prints `listening on IP:PORT` once it accepts
//! connections, then serves until killed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use kube_standin::{
    Config, Control, Generate, Standin, control::parse_nodes, generate, parse_cidr,
};

const USAGE: &str = "\
usage: kube-standin [--listen IP:PORT] [--control-socket PATH] [--nodes FILE.json]
                    [--generate N [--name-prefix P] [--pod-cidr-base CIDR[,CIDR]]
                     [--node-ip-base CIDR[,CIDR]] [--node-mask-v4 L] [--node-mask-v6 L]]
                    [--bookmark-interval SECONDS] [--history EVENTS]
                    [--initial-resource-version N]

  --listen IP:PORT          where the API is served (default 127.0.0.1:0, a free port)
  --control-socket PATH     also serve the /_standin/ control API on this Unix socket
  --nodes FILE.json         initial Nodes: a NodeList, an array of Nodes or one Node
  --generate N              N Nodes node-1..node-N: the i-th node subnet of each pod
                            range and the i-th address of each node range
  --name-prefix P           name prefix of generated Nodes (default node-)
  --pod-cidr-base CIDRS     pod ranges in podCIDRs order (default 10.244.0.0/16)
  --node-ip-base CIDRS      InternalIP ranges (default 10.0.0.0/16)
  --node-mask-v4 L          IPv4 node subnet length (default 24)
  --node-mask-v6 L          IPv6 node subnet length (default 64)
  --bookmark-interval S     BOOKMARK period for watches that allow them (default 1)
  --history N               events kept for watch replay (default 10000)
  --initial-resource-version N   first resourceVersion (default: wall clock in us)
";

struct Args {
    config: Config,
    nodes_file: Option<PathBuf>,
    generate: Generate,
}

fn parse_args() -> Result<Args, String> {
    let mut config = Config::default();
    let mut nodes_file = None;
    let mut generate = Generate::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            print!("{USAGE}");
            std::process::exit(0);
        }
        if flag == "--version" {
            println!("kube-standin {}", env!("CARGO_PKG_VERSION"));
            std::process::exit(0);
        }
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (flag, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let cidrs = |v: String| -> Result<Vec<_>, String> {
            v.split(',').map(|c| parse_cidr(c.trim())).collect()
        };
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                config.listen = v
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("--listen {v:?}: {e}"))?;
            }
            "--control-socket" => config.control_socket = Some(PathBuf::from(value()?)),
            "--nodes" => nodes_file = Some(PathBuf::from(value()?)),
            "--generate" => generate.count = number(&flag, &value()?)?,
            "--name-prefix" => generate.prefix = value()?,
            "--pod-cidr-base" => generate.pod_ranges = cidrs(value()?)?,
            "--node-ip-base" => generate.node_ip_ranges = cidrs(value()?)?,
            "--node-mask-v4" => generate.node_mask_v4 = number(&flag, &value()?)?,
            "--node-mask-v6" => generate.node_mask_v6 = number(&flag, &value()?)?,
            "--bookmark-interval" => {
                let v = value()?;
                let s: f64 = v
                    .parse()
                    .map_err(|_| format!("--bookmark-interval {v:?}: not a number of seconds"))?;
                config.bookmark_interval = Duration::try_from_secs_f64(s)
                    .map_err(|e| format!("--bookmark-interval {v:?}: {e}"))?;
            }
            "--history" => config.history = number(&flag, &value()?)?,
            "--initial-resource-version" => {
                config.initial_resource_version = Some(number(&flag, &value()?)?)
            }
            other => return Err(format!("unknown flag {other:?}\n{USAGE}")),
        }
    }
    Ok(Args {
        config,
        nodes_file,
        generate,
    })
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{flag} {v:?}: not a number"))
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let mut nodes = Vec::new();
    if let Some(path) = &args.nodes_file {
        let body = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        nodes = parse_nodes(&body).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    nodes.extend(generate(&args.generate).map_err(|e| format!("--generate: {e}"))?);
    let listen = args.config.listen;
    let standin =
        Standin::start_with(args.config).map_err(|e| format!("listening on {listen}: {e}"))?;
    if !nodes.is_empty() {
        standin.upsert_all(&nodes).map_err(|e| e.to_string())?;
    }
    println!("listening on {}", standin.addr());
    // A pipe reader may rely on the line arriving now; stdout is line-buffered only
    // on a terminal.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-standin: {e}");
            ExitCode::from(2)
        }
    }
}
