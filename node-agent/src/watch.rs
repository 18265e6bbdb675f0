//! The Node watch: one kube-rs `watcher` on all Nodes, listed from the API server's
//! watch cache, bookmarks on, restarted with a capped backoff. Its events feed
//! [`NodeCache`], the reflector the reconciler reads: only the few fields the agent
//! uses are kept (a few hundred bytes a Node, not the whole object), and a re-list
//! swaps in the new set at its end, so Nodes deleted while the watch was down simply
//! disappear: the reconciler works from the contents, never from Delete events.

use std::collections::BTreeMap;

use futures::Stream;
use k8s_openapi::api::core::v1::Node;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Config};

use crate::config::Flags;
use crate::node::NodeView;

const USER_AGENT: &str = concat!("cni-rs-node/", env!("CARGO_PKG_VERSION"));

/// A client from `--kubeconfig`, else the usual places (`$HOME/.kube/config`, the
/// in-cluster service account), with `--apiserver` overriding the address. With only
/// `--apiserver` and no credentials anywhere, an anonymous client of that URL.
pub async fn client(flags: &Flags) -> Result<Client, String> {
    let server = match &flags.apiserver {
        Some(url) => Some(
            url.parse::<http::Uri>()
                .map_err(|e| format!("--apiserver {url:?}: {e}"))?,
        ),
        None => None,
    };
    let mut config = match &flags.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => match (Config::infer().await, &server) {
            (Ok(c), _) => c,
            (Err(_), Some(url)) => Config::new(url.clone()),
            (Err(e), None) => {
                return Err(format!(
                    "no API server configuration: {e} (give --kubeconfig, or run in a pod \
                     with a service account)"
                ));
            }
        },
    };
    if let Some(url) = server {
        config.cluster_url = url;
    }
    // Lets the API server's audit log and priority-and-fairness tell us apart.
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    ));
    Client::try_from(config).map_err(|e| format!("API client: {e}"))
}

/// The watch as a stream of events and errors; it never ends. Errors are followed by a
/// backoff (0.8 s doubling to 30 s, reset after two quiet minutes).
pub fn nodes(client: Client) -> impl Stream<Item = Result<Event<Node>, watcher::Error>> + Send {
    let api: Api<Node> = Api::all(client);
    // any_semantic: the list is served from the watch cache (resourceVersion=0), not a
    // quorum read of etcd; page_size None because kube 5 drops resourceVersion=0 when a
    // limit is set. Bookmarks (on by default) keep the resume point fresh, so a watch
    // that times out resumes instead of re-listing.
    let mut cfg = watcher::Config::default().any_semantic();
    cfg.page_size = None;
    watcher::watcher(api, cfg).default_backoff()
}

/// Nodes by name, as far as the agent cares.
#[derive(Debug, Default)]
pub struct NodeCache {
    live: BTreeMap<String, NodeView>,
    relisting: Option<BTreeMap<String, NodeView>>,
    synced: bool,
}

impl NodeCache {
    /// Takes in one watch event; returns whether what the agent sees changed.
    /// Status-only updates (heartbeats, conditions) change nothing and cost nothing.
    pub fn apply(&mut self, ev: Event<Node>) -> bool {
        match ev {
            Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            Event::InitApply(n) => {
                let v = NodeView::from_node(&n);
                self.relisting
                    .get_or_insert_with(BTreeMap::new)
                    .insert(v.name.clone(), v);
                false
            }
            Event::InitDone => {
                let fresh = self.relisting.take().unwrap_or_default();
                let changed = !self.synced || fresh != self.live;
                self.live = fresh;
                self.synced = true;
                changed
            }
            Event::Apply(n) => {
                let v = NodeView::from_node(&n);
                if self.live.get(&v.name) == Some(&v) {
                    return false;
                }
                self.live.insert(v.name.clone(), v);
                true
            }
            Event::Delete(n) => {
                let name = n.metadata.name.unwrap_or_default();
                self.live.remove(&name).is_some()
            }
        }
    }

    /// Whether a full list has completed at least once.
    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn get(&self, name: &str) -> Option<&NodeView> {
        self.live.get(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeView> {
        self.live.values()
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

/// A watch failure in words a person can act on, plus a stable key for throttling.
pub fn describe(e: &watcher::Error) -> (String, String) {
    use kube::Error as K;
    let api = |err: &kube::Error| -> Option<(u16, String)> {
        match err {
            K::Api(s) => Some((s.code, s.message.clone())),
            _ => None,
        }
    };
    let (kind, inner) = match e {
        watcher::Error::InitialListFailed(err) => ("list", Some(err)),
        watcher::Error::WatchStartFailed(err) => ("watch start", Some(err)),
        watcher::Error::WatchFailed(err) => ("watch", Some(err)),
        watcher::Error::WatchError(s) => {
            if s.code == 410 {
                return (
                    "410".into(),
                    format!("watch expired ({}): re-listing the Nodes", s.message),
                );
            }
            return (
                format!("watch-error-{}", s.code),
                format!("watch error {}: {}", s.code, s.message),
            );
        }
        watcher::Error::NoResourceVersion => ("no-rv", None),
    };
    let Some(err) = inner else {
        return (
            kind.into(),
            "the API server sent no resourceVersion: re-listing".into(),
        );
    };
    match api(err) {
        Some((403, msg)) => (
            format!("{kind}-403"),
            format!(
                "{kind} of nodes forbidden ({msg}): the agent's service account needs a \
                 ClusterRole with list and watch on nodes (as in deploy/cni-rs.yaml)"
            ),
        ),
        Some((401, msg)) => (
            format!("{kind}-401"),
            format!("{kind} of nodes unauthorized ({msg}): check the credentials"),
        ),
        Some((code, msg)) => (
            format!("{kind}-{code}"),
            format!("{kind} of nodes: HTTP {code}: {msg}"),
        ),
        None => (
            format!("{kind}-other"),
            format!("{kind} of nodes failed: {err}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::testing::node;

    #[test]
    fn a_relist_drops_nodes_deleted_meanwhile_without_delete_events() {
        let mut c = NodeCache::default();
        assert!(!c.apply(Event::Init));
        c.apply(Event::InitApply(node(
            "a",
            &["10.244.1.0/24"],
            &["10.0.0.1"],
        )));
        c.apply(Event::InitApply(node(
            "b",
            &["10.244.2.0/24"],
            &["10.0.0.2"],
        )));
        assert!(!c.synced());
        assert!(c.apply(Event::InitDone));
        assert!(c.synced());
        assert_eq!(c.len(), 2);
        // Re-list after a 410: b is gone, no Delete event; the old set stays until the end.
        c.apply(Event::Init);
        c.apply(Event::InitApply(node(
            "a",
            &["10.244.1.0/24"],
            &["10.0.0.1"],
        )));
        assert_eq!(c.len(), 2, "fail static while re-listing");
        assert!(c.apply(Event::InitDone));
        assert_eq!(
            c.nodes().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        // The same list again changes nothing.
        c.apply(Event::Init);
        c.apply(Event::InitApply(node(
            "a",
            &["10.244.1.0/24"],
            &["10.0.0.1"],
        )));
        assert!(!c.apply(Event::InitDone));
    }

    #[test]
    fn updates_that_do_not_touch_cidrs_or_addresses_are_ignored() {
        let mut c = NodeCache::default();
        c.apply(Event::Init);
        c.apply(Event::InitDone);
        let mut n = node("a", &["10.244.1.0/24"], &["10.0.0.1"]);
        assert!(c.apply(Event::Apply(n.clone())));
        n.metadata.resource_version = Some("99".into());
        n.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
        assert!(!c.apply(Event::Apply(n.clone())));
        assert!(c.apply(Event::Apply(node("a", &["10.244.1.0/24"], &["10.0.0.9"]))));
        assert!(c.apply(Event::Delete(n.clone())));
        assert!(!c.apply(Event::Delete(n)));
    }
}
