//! The stand-in over real TCP: discovery, list and paging, get, watch (replay,
//! bookmarks, expiry, selectors, timeouts), failure injection and the request log.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::{T, Watch, connect, exchange, get, get_json, request, summary};
use kube_standin::{Config, Control, Failure, NodeBuilder, Standin, Verb};

fn standin() -> Standin {
    Standin::start_with(Config {
        initial_resource_version: Some(100),
        bookmark_interval: Duration::from_millis(100),
        ..Config::default()
    })
    .unwrap()
}

fn node(name: &str, i: u8) -> k8s_openapi::api::core::v1::Node {
    NodeBuilder::new(name)
        .pod_cidr(format!("10.244.{i}.0/24"))
        .internal_ip(format!("10.0.0.{i}"))
        .build()
}

fn with_nodes(n: u8) -> Standin {
    let s = standin();
    let nodes: Vec<_> = (1..=n).map(|i| node(&format!("n{i}"), i)).collect();
    s.upsert_all(&nodes).unwrap();
    s
}

fn names(list: &serde_json::Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn discovery_documents() {
    let s = standin();
    let a = s.addr();
    assert_eq!(get_json(a, "/version")["major"], "1");
    assert_eq!(get_json(a, "/api")["versions"][0], "v1");
    assert_eq!(get_json(a, "/apis")["kind"], "APIGroupList");
    let res = get_json(a, "/api/v1");
    assert_eq!(res["kind"], "APIResourceList");
    assert_eq!(res["resources"][0]["name"], "nodes");
    assert_eq!(res["resources"][0]["namespaced"], false);
    let r = get(a, "/api/v1/pods");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["kind"], "Status");
}

#[test]
fn list_get_and_not_found_status() {
    let s = with_nodes(3);
    let list = get_json(s.addr(), "/api/v1/nodes");
    assert_eq!(list["kind"], "NodeList");
    assert_eq!(list["metadata"]["resourceVersion"], "103");
    assert_eq!(names(&list), ["n1", "n2", "n3"]);
    // Each object carries its own resourceVersion.
    assert_eq!(list["items"][0]["metadata"]["resourceVersion"], "101");
    let n2 = get_json(s.addr(), "/api/v1/nodes/n2");
    assert_eq!(n2["spec"]["podCIDRs"][0], "10.244.2.0/24");
    let missing = get(s.addr(), "/api/v1/nodes/zz");
    assert_eq!(missing.status, 404);
    let v = missing.json();
    assert_eq!(v["reason"], "NotFound");
    assert_eq!(v["message"], "nodes \"zz\" not found");
    assert_eq!(v["code"], 404);
}

#[test]
fn paging_is_one_consistent_snapshot() {
    let s = with_nodes(5);
    let first = get_json(s.addr(), "/api/v1/nodes?&limit=2");
    assert_eq!(names(&first), ["n1", "n2"]);
    assert_eq!(first["metadata"]["remainingItemCount"], 3);
    let rv = first["metadata"]["resourceVersion"].clone();
    // Writes between pages do not show up in the rest of the list.
    s.delete("n3").unwrap();
    s.upsert(&node("n0", 9)).unwrap();
    s.upsert(&node("n4", 44)).unwrap();
    let mut token = first["metadata"]["continue"].as_str().unwrap().to_string();
    let mut all = names(&first);
    loop {
        let page = get_json(s.addr(), &format!("/api/v1/nodes?limit=2&continue={token}"));
        assert_eq!(page["metadata"]["resourceVersion"], rv);
        all.extend(names(&page));
        if let Some(items) = page["items"].as_array() {
            for i in items {
                if i["metadata"]["name"] == "n4" {
                    assert_eq!(
                        i["spec"]["podCIDR"], "10.244.4.0/24",
                        "n4 as of the snapshot"
                    );
                }
            }
        }
        match page["metadata"]["continue"].as_str() {
            Some(t) => token = t.to_string(),
            None => break,
        }
    }
    assert_eq!(all, ["n1", "n2", "n3", "n4", "n5"]);
    // A fresh list sees the writes.
    assert_eq!(
        names(&get_json(s.addr(), "/api/v1/nodes")),
        ["n0", "n1", "n2", "n4", "n5"]
    );
    // Expiry (compaction) invalidates continue tokens with 410.
    s.expire().unwrap();
    let gone = get(s.addr(), &format!("/api/v1/nodes?limit=2&continue={token}"));
    assert_eq!(gone.status, 410);
    assert_eq!(gone.json()["reason"], "Expired");
    let bad = get(s.addr(), "/api/v1/nodes?limit=2&continue=notatoken");
    assert_eq!(bad.status, 400);
}

#[test]
fn field_and_label_selectors_on_lists() {
    let s = with_nodes(3);
    s.upsert(&NodeBuilder::new("n9").label("zone", "a").build())
        .unwrap();
    let one = get_json(s.addr(), "/api/v1/nodes?fieldSelector=metadata.name%3Dn2");
    assert_eq!(names(&one), ["n2"]);
    let not = get_json(s.addr(), "/api/v1/nodes?fieldSelector=metadata.name!%3Dn2");
    assert_eq!(names(&not), ["n1", "n3", "n9"]);
    let zone = get_json(s.addr(), "/api/v1/nodes?labelSelector=zone%3Da");
    assert_eq!(names(&zone), ["n9"]);
    let paged = get_json(s.addr(), "/api/v1/nodes?labelSelector=!zone&limit=2");
    assert_eq!(names(&paged), ["n1", "n2"]);
    assert!(paged["metadata"]["continue"].is_string());
    let bad = get(s.addr(), "/api/v1/nodes?fieldSelector=spec.podCIDR%3Dx");
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.json()["message"],
        "field label not supported: spec.podCIDR"
    );
}

#[test]
fn watch_replays_history_then_streams_changes() {
    let s = with_nodes(3);
    let mut w = Watch::open(s.addr(), "/api/v1/nodes?&watch=true&resourceVersion=101");
    assert_eq!(w.status, 200);
    assert!(
        w.headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v == "chunked")
    );
    let ev = |t: &str, n: &str, rv: u64| (t.to_string(), n.to_string(), rv.to_string());
    assert_eq!(summary(&w.next(T).unwrap()), ev("ADDED", "n2", 102));
    assert_eq!(summary(&w.next(T).unwrap()), ev("ADDED", "n3", 103));
    assert!(s.wait_for_watches(1, T).unwrap());
    s.upsert(&node("n1", 77)).unwrap();
    let m = w.next(T).unwrap();
    assert_eq!(summary(&m), ev("MODIFIED", "n1", 104));
    assert_eq!(m["object"]["spec"]["podCIDR"], "10.244.77.0/24");
    s.delete("n2").unwrap();
    // A DELETED event carries the deletion's resourceVersion.
    assert_eq!(summary(&w.next(T).unwrap()), ev("DELETED", "n2", 105));
    // Writing the same content again is no event and no new resourceVersion.
    assert_eq!(s.upsert(&node("n1", 77)).unwrap(), 105);
}

#[test]
fn watch_without_resource_version_starts_with_the_current_state() {
    let s = with_nodes(2);
    for path in [
        "/api/v1/nodes?watch=1",
        "/api/v1/nodes?watch=1&resourceVersion=0",
    ] {
        let mut w = Watch::open(s.addr(), path);
        assert_eq!(summary(&w.next(T).unwrap()).1, "n1");
        assert_eq!(summary(&w.next(T).unwrap()).1, "n2");
    }
    // Streaming lists: initial events, then a bookmark marking their end.
    let mut w = Watch::open(
        s.addr(),
        "/api/v1/nodes?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan",
    );
    w.next(T).unwrap();
    w.next(T).unwrap();
    let b = w.next(T).unwrap();
    assert_eq!(b["type"], "BOOKMARK");
    assert_eq!(
        b["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(b["object"]["metadata"]["resourceVersion"], "102");
}

#[test]
fn bookmarks_only_when_asked_and_with_the_current_version() {
    let s = with_nodes(1);
    let mut w = Watch::open(
        s.addr(),
        "/api/v1/nodes?watch=true&resourceVersion=101&allowWatchBookmarks=true",
    );
    let b = w.next(T).unwrap();
    assert_eq!(b["type"], "BOOKMARK");
    assert_eq!(b["object"]["kind"], "Node");
    assert_eq!(b["object"]["metadata"]["resourceVersion"], "101");
    s.upsert(&node("n2", 2)).unwrap();
    assert_eq!(summary(&w.next_change(T).unwrap()).1, "n2");
    let b = w.next(T).unwrap();
    assert_eq!(b["object"]["metadata"]["resourceVersion"], "102");

    let mut plain = Watch::open(
        s.addr(),
        "/api/v1/nodes?watch=true&resourceVersion=102&timeoutSeconds=1",
    );
    // Nothing for a second (no bookmarks asked for), then a clean end.
    assert_eq!(plain.next(Duration::from_secs(5)), None);
}

#[test]
fn too_old_resource_version_gets_in_stream_410() {
    let s = Standin::start_with(Config {
        initial_resource_version: Some(100),
        history: 2,
        ..Config::default()
    })
    .unwrap();
    let nodes: Vec<_> = (1..=4).map(|i| node(&format!("n{i}"), i)).collect();
    s.upsert_all(&nodes).unwrap(); // history keeps 103 and 104
    let mut w = Watch::open(s.addr(), "/api/v1/nodes?watch=true&resourceVersion=101");
    assert_eq!(w.status, 200);
    let e = w.next(T).unwrap();
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["kind"], "Status");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
    assert_eq!(
        e["object"]["message"],
        "too old resource version: 101 (103)"
    );
    assert_eq!(w.next(T), None, "the stream ends after the ERROR");
    let mut ok = Watch::open(s.addr(), "/api/v1/nodes?watch=true&resourceVersion=102");
    assert_eq!(summary(&ok.next(T).unwrap()).2, "103");
}

#[test]
fn expire_sends_410_to_open_watches_and_drops_history() {
    let s = with_nodes(2);
    let mut a = Watch::open(s.addr(), "/api/v1/nodes?watch=true&resourceVersion=102");
    let mut b = Watch::open(
        s.addr(),
        "/api/v1/nodes?watch=true&resourceVersion=102&allowWatchBookmarks=true",
    );
    assert!(s.wait_for_watches(2, T).unwrap());
    s.expire().unwrap();
    for w in [&mut a, &mut b] {
        let e = w.next_change(T).unwrap();
        assert_eq!(e["type"], "ERROR");
        assert_eq!(e["object"]["code"], 410);
        assert_eq!(w.next(T), None);
    }
    assert!(common_wait(|| s.open_watches().unwrap() == 0));
    // The history is gone: only a watch from the current version is accepted.
    let mut old = Watch::open(s.addr(), "/api/v1/nodes?watch=true&resourceVersion=101");
    assert_eq!(old.next(T).unwrap()["type"], "ERROR");
    let mut now = Watch::open(s.addr(), "/api/v1/nodes?watch=true&resourceVersion=102");
    s.upsert(&node("n3", 3)).unwrap();
    assert_eq!(summary(&now.next(T).unwrap()).1, "n3");
}

fn common_wait(mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + T;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn watch_with_selectors_sees_objects_enter_and_leave() {
    let s = with_nodes(2);
    let mut by_name = Watch::open(
        s.addr(),
        "/api/v1/nodes?watch=true&resourceVersion=102&fieldSelector=metadata.name%3Dn2",
    );
    let mut by_label = Watch::open(
        s.addr(),
        "/api/v1/nodes?watch=true&resourceVersion=102&labelSelector=zone%3Da",
    );
    let mut one = Watch::open(s.addr(), "/api/v1/watch/nodes/n1?resourceVersion=102");
    assert!(s.wait_for_watches(3, T).unwrap());
    s.upsert(&node("n1", 11)).unwrap(); // 103
    let n2a = NodeBuilder::new("n2")
        .pod_cidr("10.244.2.0/24")
        .label("zone", "a")
        .build();
    s.upsert(&n2a).unwrap(); // 104: n2 enters zone=a
    s.upsert(&node("n2", 2)).unwrap(); // 105: and leaves it
    let got = summary(&by_name.next(T).unwrap());
    assert_eq!((got.0.as_str(), got.2.as_str()), ("MODIFIED", "104"));
    assert_eq!(summary(&by_label.next(T).unwrap()).0, "ADDED");
    let left = by_label.next(T).unwrap();
    assert_eq!(
        summary(&left),
        ("DELETED".into(), "n2".into(), "105".into())
    );
    assert_eq!(
        summary(&one.next(T).unwrap()),
        ("MODIFIED".into(), "n1".into(), "103".into())
    );
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let s = with_nodes(1);
    let mut c = connect(s.addr());
    for _ in 0..3 {
        let r = exchange(&mut c, "GET", "/api/v1/nodes", b"").unwrap();
        assert_eq!(r.status, 200);
    }
    // A watch that ends (timeout) leaves the connection usable.
    let r = exchange(
        &mut c,
        "GET",
        "/api/v1/nodes?watch=true&resourceVersion=101&timeoutSeconds=1",
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(
        exchange(&mut c, "GET", "/version", b"").unwrap().status,
        200
    );
}

#[test]
fn injected_http_failures_and_their_wording() {
    let s = with_nodes(1);
    let a = s.addr();
    let mut open = Watch::open(a, "/api/v1/nodes?watch=true&resourceVersion=101");
    assert!(s.wait_for_watches(1, T).unwrap());

    s.inject(Failure::WatchGone).unwrap();
    assert_eq!(open.next(T), None, "injecting ends open watches cleanly");
    let r = get(a, "/api/v1/nodes?watch=true&resourceVersion=101");
    assert_eq!(r.status, 410);
    assert_eq!(r.json()["reason"], "Expired");
    assert_eq!(get(a, "/api/v1/nodes").status, 200, "lists still work");

    s.inject(Failure::InternalError).unwrap();
    let r = get(a, "/api/v1/nodes");
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["reason"], "InternalError");

    s.inject(Failure::forbidden(&[Verb::Watch])).unwrap();
    assert_eq!(get(a, "/api/v1/nodes").status, 200);
    let r = get(a, "/api/v1/nodes?watch=true");
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["message"],
        "nodes is forbidden: User \"system:anonymous\" cannot watch resource \"nodes\" in API group \"\" at the cluster scope"
    );
    s.inject(Failure::forbidden_all()).unwrap();
    let r = get(a, "/api/v1/nodes/n1");
    assert_eq!(r.status, 403);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("nodes \"n1\" is forbidden")
    );
    assert_eq!(get(a, "/version").status, 200, "discovery stays allowed");

    s.clear_failures().unwrap();
    assert_eq!(get(a, "/api/v1/nodes").status, 200);
}

#[test]
fn hang_up_and_down() {
    let s = with_nodes(1);
    let a = s.addr();
    let mut open = Watch::open(a, "/api/v1/nodes?watch=true&resourceVersion=101");
    assert!(s.wait_for_watches(1, T).unwrap());

    s.inject(Failure::HangUp).unwrap();
    assert!(open.broken(T), "an open watch is cut, not ended");
    let mut c = connect(a);
    assert!(
        exchange(&mut c, "GET", "/api/v1/nodes", b"").is_err(),
        "no answer"
    );

    s.inject(Failure::Down).unwrap();
    let e = TcpStream::connect(a).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    s.clear_failures().unwrap();
    assert_eq!(
        get(a, "/api/v1/nodes").status,
        200,
        "the same address again"
    );

    s.inject_for(Failure::Down, Duration::from_millis(300))
        .unwrap();
    assert!(TcpStream::connect(a).is_err());
    assert!(
        common_wait(|| TcpStream::connect(a).is_ok()),
        "back by itself"
    );
    assert_eq!(s.state().unwrap().failure, None);
}

#[test]
fn requests_are_recorded_with_their_rbac_verbs() {
    let s = with_nodes(1);
    let a = s.addr();
    get(a, "/api");
    get(a, "/api/v1/nodes?&limit=500");
    get(a, "/api/v1/nodes/n1");
    get(a, "/api/v1/nodes/nope");
    get(
        a,
        "/api/v1/nodes?watch=true&resourceVersion=101&timeoutSeconds=1",
    );
    request(a, "PATCH", "/api/v1/nodes/n1/status", b"{}");
    let log = s.requests().unwrap();
    let brief: Vec<_> = log
        .iter()
        .map(|r| (r.verb, r.resource.as_deref(), r.status))
        .collect();
    assert_eq!(
        brief,
        [
            (None, None, 200),
            (Some(Verb::List), Some("nodes"), 200),
            (Some(Verb::Get), Some("nodes"), 200),
            (Some(Verb::Get), Some("nodes"), 404),
            (Some(Verb::Watch), Some("nodes"), 200),
            (Some(Verb::Patch), Some("nodes/status"), 405),
        ]
    );
    assert_eq!(log[1].query, "&limit=500");
    assert_eq!(log[1].user_agent.as_deref(), Some("standin-test/1"));
    assert_eq!(log[2].name.as_deref(), Some("n1"));
    s.clear_requests().unwrap();
    assert!(s.requests().unwrap().is_empty());
}

#[test]
fn bytes_served_count_api_answers() {
    let s = with_nodes(3);
    let before = s.bytes_served().unwrap();
    let r = get(s.addr(), "/api/v1/nodes");
    let after = s.bytes_served().unwrap();
    assert!(after - before >= r.body.len() as u64);
    assert!(
        after - before < r.body.len() as u64 + 512,
        "body plus headers"
    );
}

#[test]
fn five_thousand_nodes_list_in_pages_of_500() {
    let s = standin();
    let nodes = kube_standin::generate(&kube_standin::Generate {
        count: 5000,
        pod_ranges: vec![kube_standin::parse_cidr("10.128.0.0/9").unwrap()],
        ..Default::default()
    })
    .unwrap();
    s.upsert_all(&nodes).unwrap();
    let mut c = connect(s.addr());
    let mut token = String::new();
    let mut count = 0;
    let mut pages = 0;
    loop {
        let path = format!("/api/v1/nodes?&limit=500&continue={token}");
        let page = exchange(&mut c, "GET", &path, b"").unwrap().json();
        count += page["items"].as_array().unwrap().len();
        pages += 1;
        match page["metadata"]["continue"].as_str() {
            Some(t) => token = t.to_string(),
            None => break,
        }
    }
    assert_eq!((count, pages), (5000, 10));
}
