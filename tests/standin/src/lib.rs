//! A stand-in Kubernetes API server for tests of the node agent: it serves Nodes the
//! way kube-apiserver does (discovery, `NodeList` with resourceVersion and
//! `limit`/`continue` paging, get, chunked watch with bookmarks, history replay and the
//! in-stream `ERROR` 410 that makes clients re-list) over plain HTTP/1.1, so the agent
//! runs unmodified through kube-rs with a kubeconfig of `server: http://IP:PORT`.
//! kube-rs 5's `watcher`/`reflector` and kubectl (1.20 and 1.32) are tested against it.
//!
//! A test embeds it (it runs on its own threads, no runtime needed) or runs the
//! `kube-standin` binary, e.g. inside a network namespace, and drives it through the
//! same [`Control`] trait:
//!
//! ```no_run
//! use kube_standin::{Control, Failure, NodeBuilder, Standin};
//! let api = Standin::start().unwrap(); // 127.0.0.1, a free port
//! api.upsert(&NodeBuilder::new("n1").pod_cidr("10.244.1.0/24").internal_ip("10.0.0.1").build())
//!     .unwrap();
//! std::fs::write("/tmp/kubeconfig", api.kubeconfig()).unwrap();
//! // ... start the agent with KUBECONFIG=/tmp/kubeconfig, wait for its watch:
//! assert!(api.wait_for_watches(1, std::time::Duration::from_secs(10)).unwrap());
//! api.expire().unwrap(); // in-stream 410: the agent re-lists
//! api.inject(Failure::Down).unwrap(); // connections refused until cleared
//! api.clear_failures().unwrap();
//! // every request the agent made, with its RBAC verb
//! for r in api.requests().unwrap() {
//!     assert!(matches!(r.verb, None | Some(kube_standin::Verb::Get | kube_standin::Verb::List | kube_standin::Verb::Watch)));
//! }
//! ```
//!
//! With the binary (`kube-standin --listen 10.0.0.254:6443 --control-socket /tmp/s.sock`,
//! which prints `listening on IP:PORT` once ready), [`StandinProcess::spawn`] starts it
//! and [`RemoteStandin`] talks to its control API (over the Unix socket, which works
//! from any network namespace and through injected failures, or the `/_standin/` HTTP
//! paths; see [`control`]).
//!
//! Scale: objects are serialized once when written and lists are written from those
//! bytes, so 5 000 Nodes list in milliseconds. [`Control::state`] counts the bytes
//! served to API clients (control answers excluded).

mod api;
pub mod control;
mod http;
mod node;
mod remote;
mod selector;
mod server;
mod status;
mod store;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use k8s_openapi;
use k8s_openapi::api::core::v1::Node;

pub use node::{Generate, NodeBuilder, generate, parse_cidr};
pub use remote::{RemoteStandin, StandinProcess, binary};
pub use server::Config;
pub use status::{Failure, RecordedRequest, StandinState, Verb};
pub use store::StoreError;

/// Why a control operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] StoreError),
    #[error("control request failed: {0}")]
    Io(#[from] io::Error),
    #[error("control API answered {code}: {message}")]
    Api { code: u16, message: String },
    #[error("unexpected control API answer: {0}")]
    Decode(String),
}

/// What a test does to the stand-in, embedded ([`Standin`]) or a separate process
/// ([`RemoteStandin`], [`StandinProcess`]).
pub trait Control {
    /// Creates or replaces Nodes (ADDED / MODIFIED events); returns the resourceVersion
    /// after the last one. A Node equal to the stored one changes nothing.
    fn upsert_all(&self, nodes: &[Node]) -> Result<u64, Error>;
    /// Deletes a Node (DELETED event); `None` when there was none of that name.
    fn delete(&self, name: &str) -> Result<Option<u64>, Error>;
    /// Sends the in-stream `ERROR` 410 `Expired` event to every open watch and drops the
    /// history and paging snapshots, so a client must re-list.
    fn expire(&self) -> Result<(), Error>;
    /// Injects a failure until [`Control::clear_failures`]; replaces any other.
    fn inject(&self, failure: Failure) -> Result<(), Error>;
    /// Injects a failure that clears itself after `duration` (a `Down` over HTTP
    /// control can only end this way).
    fn inject_for(&self, failure: Failure, duration: Duration) -> Result<(), Error>;
    /// Ends any injected failure (and re-opens the listener after `Down`).
    fn clear_failures(&self) -> Result<(), Error>;
    /// The API requests served so far, oldest first (control requests excluded).
    fn requests(&self) -> Result<Vec<RecordedRequest>, Error>;
    fn clear_requests(&self) -> Result<(), Error>;
    fn state(&self) -> Result<StandinState, Error>;

    fn upsert(&self, node: &Node) -> Result<u64, Error> {
        self.upsert_all(std::slice::from_ref(node))
    }

    fn resource_version(&self) -> Result<u64, Error> {
        Ok(self.state()?.resource_version)
    }

    fn open_watches(&self) -> Result<usize, Error> {
        Ok(self.state()?.open_watches)
    }

    fn bytes_served(&self) -> Result<u64, Error> {
        Ok(self.state()?.bytes_served)
    }

    /// Waits until at least `n` watches are open; `false` on timeout.
    fn wait_for_watches(&self, n: usize, timeout: Duration) -> Result<bool, Error> {
        poll(timeout, || Ok(self.open_watches()? >= n))
    }

    /// Waits for a recorded request that `pred` accepts and returns it.
    fn wait_for_request(
        &self,
        timeout: Duration,
        pred: &dyn Fn(&RecordedRequest) -> bool,
    ) -> Result<Option<RecordedRequest>, Error> {
        let mut found = None;
        poll(timeout, || {
            found = self.requests()?.into_iter().find(|r| pred(r));
            Ok(found.is_some())
        })?;
        Ok(found)
    }
}

fn poll(timeout: Duration, mut done: impl FnMut() -> Result<bool, Error>) -> Result<bool, Error> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if done()? {
            return Ok(true);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A kubeconfig for `server` (`http://IP:PORT`), no credentials.
pub fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {server}\n\
         contexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n\
         current-context: standin\nusers:\n- name: standin\n  user: {{}}\n"
    )
}

/// The server embedded in the test process, on its own threads. Dropping it stops it
/// and closes every connection.
pub struct Standin {
    server: server::Server,
}

impl Standin {
    /// Listens on 127.0.0.1 on a free port.
    pub fn start() -> io::Result<Standin> {
        Standin::start_with(Config::default())
    }

    pub fn start_with(config: Config) -> io::Result<Standin> {
        Ok(Standin {
            server: server::Server::start(config)?,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.shared.addr
    }

    /// `http://IP:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn kubeconfig(&self) -> String {
        kubeconfig(&self.url())
    }

    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// The stored Node, with its resourceVersion.
    pub fn node(&self, name: &str) -> Option<Node> {
        self.server.shared.store.get(name).map(|o| o.node.clone())
    }

    pub fn nodes(&self) -> Vec<Node> {
        let snap = self.server.shared.store.snapshot();
        snap.objects.values().map(|o| o.node.clone()).collect()
    }

    /// Changes the bookmark interval, for open watches from their next bookmark on.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.server.shared.set_bookmark_interval(interval);
    }

    /// Closes every open API connection once (no failure stays injected).
    pub fn close_connections(&self) {
        self.server.shared.close_connections();
    }
}

impl Control for Standin {
    fn upsert_all(&self, nodes: &[Node]) -> Result<u64, Error> {
        Ok(self.server.shared.store.upsert_all(nodes.iter().cloned())?)
    }

    fn delete(&self, name: &str) -> Result<Option<u64>, Error> {
        Ok(self.server.shared.store.delete(name))
    }

    fn expire(&self) -> Result<(), Error> {
        self.server.shared.store.expire();
        Ok(())
    }

    fn inject(&self, failure: Failure) -> Result<(), Error> {
        self.server.shared.inject(failure, None);
        Ok(())
    }

    fn inject_for(&self, failure: Failure, duration: Duration) -> Result<(), Error> {
        self.server.shared.inject(failure, Some(duration));
        Ok(())
    }

    fn clear_failures(&self) -> Result<(), Error> {
        self.server.shared.clear();
        Ok(())
    }

    fn requests(&self) -> Result<Vec<RecordedRequest>, Error> {
        Ok(self.server.shared.requests())
    }

    fn clear_requests(&self) -> Result<(), Error> {
        self.server.shared.clear_requests();
        Ok(())
    }

    fn state(&self) -> Result<StandinState, Error> {
        Ok(control::state(&self.server.shared))
    }

    fn wait_for_watches(&self, n: usize, timeout: Duration) -> Result<bool, Error> {
        let sh = &self.server.shared;
        Ok(sh.wait_until(timeout, || {
            sh.watches.load(std::sync::atomic::Ordering::SeqCst) >= n
        }))
    }
}
