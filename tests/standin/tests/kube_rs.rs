//! The node agent's own client, kube-rs 5's `watcher` + `reflector`, against the
//! stand-in: initial paged list, events, bookmarks, re-watch after a stream end,
//! re-list after an in-stream 410, and the retry loop an HTTP-level 410 causes.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube_standin::{Config, Control, Failure, NodeBuilder, Standin, Verb};
use tokio::sync::mpsc;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(15);

fn node(name: &str, i: u32) -> Node {
    NodeBuilder::new(name)
        .pod_cidr(format!("10.244.{i}.0/24"))
        .internal_ip(format!("10.0.0.{i}"))
        .build()
}

fn client(api: &Standin) -> kube::Client {
    let config = kube::Config::new(api.url().parse().expect("stand-in URL"));
    kube::Client::try_from(config).expect("kube client")
}

/// Runs watcher + reflector in a task; each watcher event (or error) becomes a line.
fn spawn_reflector(
    api: &Standin,
    cfg: watcher::Config,
) -> (reflector::Store<Node>, mpsc::UnboundedReceiver<String>) {
    let nodes: Api<Node> = Api::all(client(api));
    let (store, writer) = reflector::store();
    let (tx, rx) = mpsc::unbounded_channel();
    let stream = reflector(writer, watcher(nodes, cfg)).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let line = match ev {
                Ok(watcher::Event::Init) => "Init".to_string(),
                Ok(watcher::Event::InitApply(n)) => format!("InitApply {}", name(&n)),
                Ok(watcher::Event::InitDone) => "InitDone".to_string(),
                Ok(watcher::Event::Apply(n)) => format!("Apply {}", name(&n)),
                Ok(watcher::Event::Delete(n)) => format!("Delete {}", name(&n)),
                Err(e) => format!("Error {e}"),
            };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (store, rx)
}

fn name(n: &Node) -> String {
    n.metadata.name.clone().unwrap_or_default()
}

/// Collects lines until one equals `last` (or starts with it).
async fn until(rx: &mut mpsc::UnboundedReceiver<String>, last: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = timeout(T, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {last:?} within {T:?}; saw {seen:?}"))
            .expect("watcher task ended");
        let done = line.starts_with(last);
        seen.push(line);
        if done {
            return seen;
        }
    }
}

fn names(store: &reflector::Store<Node>) -> Vec<String> {
    let mut v: Vec<_> = store.state().iter().map(|n| name(n)).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_lists_in_pages_follows_events_and_relists_after_in_stream_410() {
    let api = Standin::start().unwrap();
    api.upsert_all(
        &(1..=5)
            .map(|i| node(&format!("n{i}"), i))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let (store, mut rx) = spawn_reflector(&api, watcher::Config::default().page_size(2));
    let init = until(&mut rx, "InitDone").await;
    assert_eq!(init.first().map(String::as_str), Some("Init"));
    assert_eq!(
        init.iter().filter(|l| l.starts_with("InitApply")).count(),
        5
    );
    assert_eq!(names(&store), ["n1", "n2", "n3", "n4", "n5"]);
    let lists: Vec<_> = api
        .requests()
        .unwrap()
        .into_iter()
        .filter(|r| r.verb == Some(Verb::List))
        .collect();
    assert_eq!(lists.len(), 3, "5 nodes in pages of 2");
    assert!(lists[1].query.contains("continue="));

    assert!(api.wait_for_watches(1, T).unwrap());
    api.upsert(&node("n6", 6)).unwrap();
    assert_eq!(until(&mut rx, "Apply").await.last().unwrap(), "Apply n6");
    api.delete("n1").unwrap();
    assert_eq!(until(&mut rx, "Delete").await.last().unwrap(), "Delete n1");

    // Expiry: the in-stream 410 makes the watcher re-list. A node deleted meanwhile
    // simply vanishes from the store (no Delete event), as the agent's design expects.
    api.clear_requests().unwrap();
    api.delete("n2").unwrap();
    let _ = until(&mut rx, "Delete n2").await;
    api.expire().unwrap();
    api.delete("n3").unwrap();
    let relist = until(&mut rx, "InitDone").await;
    assert!(
        relist[0].starts_with("Error") && relist[0].contains("too old resource version"),
        "{relist:?}"
    );
    assert!(relist.contains(&"Init".to_string()));
    assert!(!relist.iter().any(|l| l == "Delete n3"));
    assert_eq!(names(&store), ["n4", "n5", "n6"]);
    let verbs: Vec<_> = api.requests().unwrap().iter().map(|r| r.verb).collect();
    assert!(verbs.contains(&Some(Verb::List)), "re-listed: {verbs:?}");
    assert!(api.wait_for_watches(1, T).unwrap(), "and watches again");
    api.upsert(&node("n7", 7)).unwrap();
    assert_eq!(until(&mut rx, "Apply").await.last().unwrap(), "Apply n7");

    // The agent's ClusterRole (nodes: get, list, watch) covers all it did.
    for r in api.requests().unwrap() {
        assert!(
            matches!(r.verb, None | Some(Verb::Get | Verb::List | Verb::Watch)),
            "{r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_rewatches_from_the_bookmark_after_a_stream_timeout() {
    let api = Standin::start_with(Config {
        bookmark_interval: Duration::from_millis(200),
        ..Config::default()
    })
    .unwrap();
    api.upsert(&node("n1", 1)).unwrap();
    let (_store, mut rx) = spawn_reflector(&api, watcher::Config::default().timeout(1));
    until(&mut rx, "InitDone").await;
    // An unrelated write moves the resourceVersion on; bookmarks carry it to the
    // watcher, so its next watch starts there, not at the list's version.
    let first_watch = api
        .wait_for_request(T, &|r| r.verb == Some(Verb::Watch))
        .unwrap()
        .expect("a watch");
    assert!(first_watch.query.contains("allowWatchBookmarks=true"));
    assert!(first_watch.query.contains("timeoutSeconds=1"));
    api.upsert(&node("n2", 2)).unwrap();
    until(&mut rx, "Apply n2").await;
    let rv = api.resource_version().unwrap();
    let again = api
        .wait_for_request(T, &|r| {
            r.verb == Some(Verb::Watch) && r.query.contains(&format!("resourceVersion={rv}"))
        })
        .unwrap();
    assert!(
        again.is_some(),
        "re-watch from {rv}: {:?}",
        api.requests().unwrap()
    );
    let lists = api
        .requests()
        .unwrap()
        .iter()
        .filter(|r| r.verb == Some(Verb::List))
        .count();
    assert_eq!(lists, 1, "a stream end is no re-list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_level_410_makes_the_watcher_retry_not_relist() {
    let api = Standin::start().unwrap();
    api.upsert(&node("n1", 1)).unwrap();
    let (store, mut rx) = spawn_reflector(&api, watcher::Config::default());
    until(&mut rx, "InitDone").await;
    assert!(api.wait_for_watches(1, T).unwrap());
    api.clear_requests().unwrap();
    api.inject(Failure::WatchGone).unwrap();
    let errs = until(&mut rx, "Error").await;
    assert!(
        errs.last().unwrap().contains("failed to start watching"),
        "{errs:?}"
    );
    // Retried (with backoff) as watches from the same version, never a list.
    let rv = api.resource_version().unwrap();
    let retried = api
        .wait_for_request(T, &|r| r.status == 410)
        .unwrap()
        .expect("a refused watch");
    assert!(retried.query.contains(&format!("resourceVersion={rv}")));
    api.clear_failures().unwrap();
    assert!(
        api.wait_for_watches(1, Duration::from_secs(30)).unwrap(),
        "recovers"
    );
    assert!(
        !api.requests()
            .unwrap()
            .iter()
            .any(|r| r.verb == Some(Verb::List))
    );
    api.upsert(&node("n2", 2)).unwrap();
    until(&mut rx, "Apply n2").await;
    assert_eq!(names(&store), ["n1", "n2"]);
}
