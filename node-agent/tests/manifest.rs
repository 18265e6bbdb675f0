//! deploy/*.yaml against the agent: every document read into k8s-openapi's types, and
//! what matters checked against the real binary. The ClusterRole grants exactly what
//! the agent asks for (the agent runs against the stand-in API server, in a node
//! namespace of the simulated cluster, with the manifest's environment, and every
//! request it makes is recorded with its RBAC verb); the paths the agent and the init
//! container use are mounted from the host at the same place; the probes reach the
//! agent's health endpoints; every environment variable is one of its flags; the image
//! is what scripts/image.sh tags.
//!
//! The agent's run needs root, iproute2, nftables, iptables and the kube-standin binary
//! (as tests/cluster.rs); the rest reads files only.

mod sim;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::CommandFactory;
use cni_rs_node::config::Cli;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, HTTPGetAction, Namespace, PodSpec, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube_standin::{Control, RecordedRequest};
use serde_json::Value;
use sim::{Cluster, NodeSpec, wait_for};

/// The image scripts/image.sh builds: the agent as entrypoint, the plugins here.
const IMAGE_REPO: &str = "localhost/cni-rs-node";
const IMAGE_PLUGINS: &str = "/opt/cni-rs/bin";

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

/// One document of a manifest, typed.
#[derive(Debug, Clone)]
enum Object {
    Namespace(Box<Namespace>),
    ServiceAccount(Box<ServiceAccount>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    ConfigMap(Box<ConfigMap>),
    DaemonSet(Box<DaemonSet>),
}

/// The document as `T`; a field `T` does not have (a typo, a field of another API
/// version) fails too: the typed object must serialize back to the same document.
fn typed<T>(doc: Value, what: &str) -> Box<T>
where
    T: k8s_openapi::serde::de::DeserializeOwned + k8s_openapi::serde::Serialize,
{
    let t: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(
        back, doc,
        "{what}: fields the API does not know, or a value it reads otherwise"
    );
    Box::new(t)
}

/// Every document of `file`; panics on one that is not a known, well-formed object.
fn load(file: &str) -> Vec<Object> {
    let text = std::fs::read_to_string(deploy(file)).unwrap();
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    docs.into_iter()
        .filter(|d| !d.is_null())
        .map(|d| {
            let kind = format!(
                "{}/{}",
                d["apiVersion"].as_str().unwrap_or(""),
                d["kind"].as_str().unwrap_or("")
            );
            let what = format!("{file}: {kind} {}", d["metadata"]["name"]);
            match kind.as_str() {
                "v1/Namespace" => Object::Namespace(typed(d, &what)),
                "v1/ServiceAccount" => Object::ServiceAccount(typed(d, &what)),
                "rbac.authorization.k8s.io/v1/ClusterRole" => Object::ClusterRole(typed(d, &what)),
                "rbac.authorization.k8s.io/v1/ClusterRoleBinding" => {
                    Object::ClusterRoleBinding(typed(d, &what))
                }
                "v1/ConfigMap" => Object::ConfigMap(typed(d, &what)),
                "apps/v1/DaemonSet" => Object::DaemonSet(typed(d, &what)),
                _ => panic!("{what}: a kind this test does not know; teach it"),
            }
        })
        .collect()
}

/// The objects of deploy/cni-rs.yaml, one of each kind.
struct Install {
    namespace: Namespace,
    account: ServiceAccount,
    role: ClusterRole,
    binding: ClusterRoleBinding,
    config: ConfigMap,
    daemonset: DaemonSet,
}

fn install() -> Install {
    let objs = load("cni-rs.yaml");
    let one = |pick: &dyn Fn(&Object) -> bool, kind: &str| {
        let found: Vec<&Object> = objs.iter().filter(|o| pick(o)).collect();
        assert_eq!(found.len(), 1, "cni-rs.yaml: one {kind}");
        found[0].clone()
    };
    macro_rules! get {
        ($v:ident) => {
            match one(&|o| matches!(o, Object::$v(_)), stringify!($v)) {
                Object::$v(x) => *x,
                _ => unreachable!(),
            }
        };
    }
    assert_eq!(objs.len(), 6, "cni-rs.yaml: {objs:#?}");
    Install {
        namespace: get!(Namespace),
        account: get!(ServiceAccount),
        role: get!(ClusterRole),
        binding: get!(ClusterRoleBinding),
        config: get!(ConfigMap),
        daemonset: get!(DaemonSet),
    }
}

fn cleanup() -> DaemonSet {
    match load("cleanup.yaml").as_slice() {
        [Object::DaemonSet(ds)] => (**ds).clone(),
        other => panic!("cleanup.yaml: one DaemonSet, found {other:#?}"),
    }
}

fn pod(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod template")
}

fn container<'a>(p: &'a PodSpec, name: &str) -> &'a Container {
    p.init_containers
        .iter()
        .flatten()
        .chain(&p.containers)
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn all_containers(p: &PodSpec) -> impl Iterator<Item = &Container> {
    p.init_containers.iter().flatten().chain(&p.containers)
}

/// The container's literal environment (downward API values left out).
fn literal_env(c: &Container) -> BTreeMap<String, String> {
    c.env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect()
}

/// What the agent container's environment is with the shipped ConfigMap: the
/// ConfigMap first, the container's own `env` over it (as the kubelet does).
fn agent_env(i: &Install) -> BTreeMap<String, String> {
    let c = container(pod(&i.daemonset), "cni-rs-node");
    let mut env: BTreeMap<String, String> = i.config.data.clone().unwrap_or_default();
    env.extend(literal_env(c));
    env
}

/// Every environment variable the agent reads: its flags' (all subcommands).
fn agent_env_names() -> BTreeSet<String> {
    fn walk(cmd: &clap::Command, out: &mut BTreeSet<String>) {
        for a in cmd.get_arguments() {
            if let Some(e) = a.get_env() {
                out.insert(e.to_string_lossy().into_owned());
            }
        }
        for s in cmd.get_subcommands() {
            walk(s, out);
        }
    }
    let mut out = BTreeSet::new();
    walk(&Cli::command(), &mut out);
    out
}

/// The agent's defaults, as it parses them with no flags.
fn defaults() -> cni_rs_node::config::Flags {
    <Cli as clap::Parser>::try_parse_from(["cni-rs-node"])
        .expect("defaults parse")
        .flags
}

/// A path the container sees, with where it comes from: (volume, readOnly, host path).
fn mount_of<'a>(
    p: &'a PodSpec,
    c: &Container,
    path: &Path,
) -> Option<(&'a str, bool, Option<String>)> {
    let m = c
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| path.starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())?;
    let v = p.volumes.iter().flatten().find(|v| v.name == m.name)?;
    let host = v.host_path.as_ref().map(|h| {
        let rest = path.strip_prefix(&m.mount_path).unwrap_or(Path::new(""));
        let host: PathBuf = Path::new(&h.path).join(rest).components().collect();
        host.display().to_string()
    });
    Some((v.name.as_str(), m.read_only == Some(true), host))
}

/// `path` is the host's own `path`, writable.
fn host_rw(p: &PodSpec, c: &Container, path: &str) {
    let (vol, ro, host) = mount_of(p, c, Path::new(path))
        .unwrap_or_else(|| panic!("{}: {path} is not mounted", c.name));
    assert!(!ro, "{}: {path} (volume {vol}) must be writable", c.name);
    assert_eq!(
        host.as_deref(),
        Some(path),
        "{}: {path} must be the host's own",
        c.name
    );
}

/// The value of `--flag VALUE` (or `--alias VALUE`) in the container's args.
fn arg(c: &Container, names: &[&str]) -> Option<String> {
    let args = c.args.clone().unwrap_or_default();
    args.windows(2)
        .find(|w| names.contains(&w[0].as_str()))
        .map(|w| w[1].clone())
}

#[test]
fn every_document_is_a_known_object_and_the_kustomization_lists_it() {
    let i = install();
    let ns = i.namespace.metadata.name.clone().unwrap();
    for (what, o) in [
        ("ServiceAccount", &i.account.metadata),
        ("ConfigMap", &i.config.metadata),
        ("DaemonSet", &i.daemonset.metadata),
    ] {
        assert_eq!(o.namespace.as_deref(), Some(ns.as_str()), "{what}");
    }
    let labels = i.namespace.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("privileged"),
        "hostNetwork and hostPath pods need the privileged Pod Security level"
    );
    cleanup();
    let k: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(deploy("kustomization.yaml")).unwrap())
            .unwrap();
    assert_eq!(k["kind"], "Kustomization");
    assert_eq!(k["resources"], serde_json::json!(["cni-rs.yaml"]));
}

#[test]
fn every_image_is_the_one_image_sh_builds() {
    let want = format!("{IMAGE_REPO}:{}", env!("CARGO_PKG_VERSION"));
    let ds = install().daemonset;
    let clean = cleanup();
    for p in [pod(&ds), pod(&clean)] {
        for c in all_containers(p) {
            assert_eq!(c.image.as_deref(), Some(want.as_str()), "{}", c.name);
            // Imported with `ctr images import`, not pulled: never Always.
            assert_eq!(
                c.image_pull_policy.as_deref(),
                Some("IfNotPresent"),
                "{}",
                c.name
            );
            // The agent is the entrypoint; a subcommand says what the container does.
            let sub = c.args.as_ref().and_then(|a| a.first()).map(String::as_str);
            assert!(
                matches!(sub, Some("run" | "install" | "uninstall" | "pause")),
                "{}: {sub:?}",
                c.name
            );
            assert!(c.command.is_none(), "{}: the image's entrypoint", c.name);
        }
    }
}

#[test]
fn the_daemonset_runs_everywhere_as_a_cni_must() {
    let i = install();
    let spec = i.daemonset.spec.as_ref().unwrap();
    let p = pod(&i.daemonset);
    assert_eq!(p.host_network, Some(true));
    assert_eq!(
        p.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(
        p.node_selector.clone().unwrap_or_default(),
        BTreeMap::from([("kubernetes.io/os".to_owned(), "linux".to_owned())])
    );
    assert!(
        p.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerates every taint (NotReady nodes, the control plane)"
    );
    assert_eq!(p.service_account_name, i.account.metadata.name);
    let update = spec.update_strategy.as_ref().unwrap();
    assert_eq!(update.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        update.rolling_update.as_ref().unwrap().max_unavailable,
        Some(IntOrString::Int(1))
    );
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (k, v) in spec.selector.match_labels.clone().unwrap_or_default() {
        assert_eq!(labels.get(&k), Some(&v), "the selector matches the pods");
    }

    // The plugins are installed before the agent starts.
    let inits: Vec<&str> = p
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(inits, ["install-plugins"]);
    assert_eq!(
        container(p, "install-plugins").args.as_ref().unwrap()[0],
        "install"
    );

    let agent = container(p, "cni-rs-node");
    let node_name = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .unwrap();
    let field = node_name
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
    let sc = agent.security_context.as_ref().unwrap();
    assert_ne!(
        sc.privileged,
        Some(true),
        "no privileged agent (see the manifest's comment)"
    );
    let caps = sc.capabilities.as_ref().unwrap();
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(["NET_ADMIN", "NET_RAW"]));
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    for c in all_containers(p) {
        let req = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        assert!(
            req.is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")),
            "{}: resource requests",
            c.name
        );
    }
}

#[test]
fn the_role_is_bound_to_the_agents_account() {
    let i = install();
    assert_eq!(i.binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        Some(&i.binding.role_ref.name),
        i.role.metadata.name.as_ref()
    );
    let subjects = i.binding.subjects.clone().unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), i.account.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, i.account.metadata.namespace);
}

#[test]
fn every_environment_variable_is_an_agent_flag() {
    let known = agent_env_names();
    let i = install();
    let clean = cleanup();
    let mut seen: Vec<(String, String)> = Vec::new();
    for (file, p) in [
        ("cni-rs.yaml", pod(&i.daemonset)),
        ("cleanup.yaml", pod(&clean)),
    ] {
        for c in all_containers(p) {
            for e in c.env.iter().flatten() {
                seen.push((format!("{file}: {}", c.name), e.name.clone()));
            }
        }
    }
    for k in i.config.data.clone().unwrap_or_default().into_keys() {
        seen.push(("the ConfigMap".into(), k));
    }
    // The ConfigMap's commented examples too: they are what users uncomment.
    let text = std::fs::read_to_string(deploy("cni-rs.yaml")).unwrap();
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("# CNI_RS_")
            && let Some((name, _)) = rest.split_once(':')
        {
            seen.push(("a ConfigMap example".into(), format!("CNI_RS_{name}")));
        }
    }
    assert!(seen.len() > 8, "{seen:?}");
    for (where_, name) in &seen {
        assert!(
            known.contains(name),
            "{where_}: {name} is not an agent flag ({known:?})"
        );
    }
    // The ConfigMap reaches the agent.
    let agent = container(pod(&i.daemonset), "cni-rs-node");
    let from: Vec<_> = agent
        .env_from
        .iter()
        .flatten()
        .filter_map(|e| e.config_map_ref.as_ref())
        .map(|r| r.name.clone())
        .collect();
    assert_eq!(from, [i.config.metadata.name.clone().unwrap()]);
    // The cleanup uses what the agent used.
    let agent_env = agent_env(&i);
    let d = defaults();
    for (k, v) in literal_env(container(pod(&clean), "uninstall")) {
        let agent_value = agent_env
            .get(&k)
            .cloned()
            .unwrap_or_else(|| match k.as_str() {
                "CNI_RS_ROUTE_PROTOCOL" => d.route_protocol.to_string(),
                "CNI_RS_CONFLIST_NAME" => d.conflist_name.clone(),
                _ => panic!("cleanup.yaml: {k}: compare it with the agent's"),
            });
        assert_eq!(v, agent_value, "cleanup.yaml: {k}");
    }
}

#[test]
fn what_the_agent_and_the_installer_use_is_mounted_from_the_host() {
    let i = install();
    let p = pod(&i.daemonset);
    for m in all_containers(p).flat_map(|c| c.volume_mounts.iter().flatten()) {
        assert!(
            p.volumes.iter().flatten().any(|v| v.name == m.name),
            "mount of an undefined volume {}",
            m.name
        );
    }
    for v in p.volumes.iter().flatten() {
        assert!(
            all_containers(p).any(|c| c.volume_mounts.iter().flatten().any(|m| m.name == v.name)),
            "volume {} is not used",
            v.name
        );
    }

    // The installer: from the image, into the host's bin directory at its own path (the
    // manifest it writes names the files, for install.sh --uninstall on the node).
    let inst = container(p, "install-plugins");
    let from = arg(inst, &["--from"]).unwrap_or(IMAGE_PLUGINS.into());
    assert_eq!(from, IMAGE_PLUGINS);
    assert!(
        mount_of(p, inst, Path::new(&from)).is_none(),
        "{from} is the image's"
    );
    let to = arg(inst, &["--to", "--bin-dir"]).unwrap_or("/opt/cni/bin".into());
    assert_eq!(to, "/opt/cni/bin");
    host_rw(p, inst, &to);

    // The agent: the conflist directory, the xtables lock, /lib/modules read-only, a
    // conflist template (when set) from a mounted ConfigMap.
    let agent = container(p, "cni-rs-node");
    let env = agent_env(&i);
    let conf_dir = env
        .get("CNI_RS_CNI_CONF_DIR")
        .cloned()
        .unwrap_or(defaults().cni_conf_dir.display().to_string());
    host_rw(p, agent, &conf_dir);
    host_rw(p, agent, "/run/xtables.lock");
    let lock = p
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "xtables-lock")
        .unwrap();
    assert_eq!(
        lock.host_path.as_ref().unwrap().type_.as_deref(),
        Some("FileOrCreate")
    );
    let (_, ro, host) = mount_of(p, agent, Path::new("/lib/modules")).unwrap();
    assert!(ro);
    assert_eq!(host.as_deref(), Some("/lib/modules"));
    let (_, ro, host) = mount_of(p, agent, Path::new("/var/lib/cni")).unwrap();
    assert!(ro);
    assert_eq!(host.as_deref(), Some("/var/lib/cni"));
    if let Some(t) = env.get("CNI_RS_CONFLIST_TEMPLATE") {
        assert!(
            mount_of(p, agent, Path::new(t)).is_some(),
            "{t} is not mounted"
        );
    }
    // Where the commented example points.
    let text = std::fs::read_to_string(deploy("cni-rs.yaml")).unwrap();
    let example = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("# CNI_RS_CONFLIST_TEMPLATE: "))
        .expect("the template example")
        .trim_matches('"');
    let (vol, _, host) = mount_of(p, agent, Path::new(example)).expect("the template's mount");
    assert_eq!(host, None, "a ConfigMap, not the host");
    let cm = p.volumes.iter().flatten().find(|v| v.name == vol).unwrap();
    assert_eq!(cm.config_map.as_ref().and_then(|c| c.optional), Some(true));

    // The cleanup: the same bin and conf directories, the lock.
    let clean = cleanup();
    let cp = pod(&clean);
    let un = container(cp, "uninstall");
    let bin = arg(un, &["--bin-dir"]).unwrap_or("/opt/cni/bin".into());
    assert_eq!(bin, to);
    host_rw(cp, un, &bin);
    host_rw(cp, un, &conf_dir);
    host_rw(cp, un, "/run/xtables.lock");
}

/// The agent's health address, as the DaemonSet configures it.
fn health_addr(i: &Install) -> SocketAddr {
    agent_env(i)
        .get("CNI_RS_HEALTH_ADDR")
        .map(|a| a.parse().expect("CNI_RS_HEALTH_ADDR"))
        .unwrap_or(defaults().health_addr)
}

fn probe(c: &Container, live: bool) -> HTTPGetAction {
    let p = if live {
        &c.liveness_probe
    } else {
        &c.readiness_probe
    };
    p.as_ref()
        .and_then(|p| p.http_get.clone())
        .expect("an httpGet probe")
}

#[test]
fn the_probes_point_at_the_agents_health_endpoints() {
    let i = install();
    let addr = health_addr(&i);
    let agent = container(pod(&i.daemonset), "cni-rs-node");
    for (live, path) in [(true, "/healthz"), (false, "/readyz")] {
        let g = probe(agent, live);
        assert_eq!(g.path.as_deref(), Some(path));
        assert_eq!(g.port, IntOrString::Int(i32::from(addr.port())));
        // hostNetwork: without `host` the kubelet probes the node's address.
        assert_eq!(g.host.as_deref(), Some(addr.ip().to_string().as_str()));
        assert!(g.scheme.is_none() || g.scheme.as_deref() == Some("HTTP"));
    }
}

/// Every (group, resource, verb) a rule grants.
fn granted(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in rules {
        assert!(r.non_resource_urls.is_none(), "{r:?}");
        assert!(r.resource_names.is_none(), "{r:?}");
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    assert!(g != "*" && res != "*" && v != "*", "no wildcards: {r:?}");
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

/// The API group of a resource request path (`/api/v1/...` is the core group "").
fn group_of(r: &RecordedRequest) -> String {
    match r.path.strip_prefix("/apis/") {
        Some(rest) => rest.split('/').next().unwrap_or("").to_owned(),
        None => String::new(),
    }
}

/// Paths every authenticated user may GET (the system:discovery and
/// system:public-info-viewer ClusterRoles every cluster has).
fn discovery(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    [
        "/api", "/apis", "/version", "/healthz", "/livez", "/readyz", "/openapi",
    ]
    .iter()
    .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

#[test]
fn the_cluster_role_grants_exactly_what_the_agent_asks_for() {
    let i = install();
    let agent = container(pod(&i.daemonset), "cni-rs-node");
    let mut c = Cluster::new(&[NodeSpec::v4(1), NodeSpec::v4(2)]);
    // The manifest's environment and args (NODE_NAME, the kubeconfig and the conflist
    // directory are the simulation's, as the downward API and mounts give them).
    let env: Vec<(String, String)> = agent_env(&i).into_iter().collect();
    let args = agent.args.clone().unwrap_or_default();
    for n in &mut c.nodes {
        n.env = env.clone();
        n.args = args.clone();
    }
    c.start_all();
    assert!(c.converged(), "routes after start");

    // The probes, as the kubelet sends them, from the node's network.
    let addr = health_addr(&i);
    for live in [true, false] {
        let g = probe(agent, live);
        let host = g.host.clone().unwrap();
        let IntOrString::Int(port) = g.port else {
            panic!("a numeric port");
        };
        let target = SocketAddr::new(host.parse().unwrap(), port as u16);
        assert_eq!(target, addr);
        let path = g.path.clone().unwrap();
        let ns = c.nodes[0].ns.path().to_owned();
        let code = sim::http_get(&ns, target, &host, &path).map(|(code, _)| code);
        assert_eq!(code, Ok(200), "{:?} of node n1", g.path);
    }

    // What else the agent does in its life: a Node changes, the watch expires (a
    // re-list), a Node goes.
    let lists = |c: &Cluster| {
        let reqs = c.control().requests().unwrap();
        reqs.iter()
            .filter(|r| r.verb == Some(kube_standin::Verb::List))
            .count()
    };
    c.control().upsert(&NodeSpec::v4(3).node()).unwrap();
    let before = lists(&c);
    c.control().expire().unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || lists(&c) >= before + 2),
        "both agents re-list after the watch expired"
    );
    c.control().delete("n3").unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || c.converged()),
        "routes after the changes"
    );

    let requests = c.control().requests().unwrap();
    let mut used = BTreeSet::new();
    for r in &requests {
        match (r.verb, &r.resource) {
            (Some(v), Some(res)) => {
                used.insert((group_of(r), res.clone(), v.as_str().to_owned()));
            }
            _ => assert!(
                discovery(&r.path),
                "a non-resource request RBAC must allow: {r:?}"
            ),
        }
    }
    let role = granted(i.role.rules.as_deref().unwrap_or_default());
    let missing: Vec<_> = used.difference(&role).collect();
    let unused: Vec<_> = role.difference(&used).collect();
    assert!(
        missing.is_empty(),
        "the agent needs more than the ClusterRole grants: {missing:?}"
    );
    assert!(
        unused.is_empty(),
        "the ClusterRole grants what the agent never asks for: {unused:?}"
    );
    assert!(
        used.contains(&(String::new(), "nodes".into(), "watch".into())),
        "{used:?}"
    );
}
