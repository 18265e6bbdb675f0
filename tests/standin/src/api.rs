//! The Kubernetes API paths: discovery, and list / get / watch of Nodes.

use std::io::{self, Write};
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use crate::http::{Chunked, Request, write_response};
use crate::selector::Selector;
use crate::server::Shared;
use crate::status::{self, Verb};
use crate::store::{Event, EventType, Obj, Snapshot, Wake, WatchFrom};

const JSON: &str = "application/json";
/// A watch without `timeoutSeconds` ends after this long (the API server picks 30-60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// Where a request goes, and the RBAC attributes it has.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    Version,
    CoreVersions,
    Groups,
    CoreResources,
    Health,
    /// `/api/v1/nodes[/NAME[/SUB]]`, or the old `/api/v1/watch/nodes[/NAME]`.
    Nodes {
        name: Option<String>,
        sub: Option<String>,
        watch_path: bool,
    },
    NotFound,
}

impl Route {
    pub fn of(path: &str) -> Route {
        let path = path.trim_end_matches('/');
        match path {
            "/version" => return Route::Version,
            "/api" => return Route::CoreVersions,
            "/apis" => return Route::Groups,
            "/api/v1" => return Route::CoreResources,
            "/healthz" | "/livez" | "/readyz" => return Route::Health,
            _ => {}
        }
        let (rest, watch_path) = if let Some(r) = path.strip_prefix("/api/v1/watch/nodes") {
            (r, true)
        } else if let Some(r) = path.strip_prefix("/api/v1/nodes") {
            (r, false)
        } else {
            return Route::NotFound;
        };
        let mut parts = rest.split('/').filter(|p| !p.is_empty());
        if !rest.is_empty() && !rest.starts_with('/') {
            return Route::NotFound; // "/api/v1/nodesX"
        }
        let name = parts.next().map(str::to_string);
        let sub = parts.next().map(str::to_string);
        if parts.next().is_some() || (watch_path && sub.is_some()) {
            return Route::NotFound;
        }
        Route::Nodes {
            name,
            sub,
            watch_path,
        }
    }

    /// The RBAC verb and resource (`nodes`, `nodes/status`) of a resource request.
    pub fn verb(&self, req: &Request) -> Option<(Verb, String)> {
        let Route::Nodes {
            name,
            sub,
            watch_path,
        } = self
        else {
            return None;
        };
        let watch = *watch_path || req.flag("watch") == Some(true);
        let verb = match (req.method.as_str(), name.is_some()) {
            ("GET" | "HEAD", _) if watch => Verb::Watch,
            ("GET" | "HEAD", true) => Verb::Get,
            ("GET" | "HEAD", false) => Verb::List,
            ("POST", _) => Verb::Create,
            ("PUT", _) => Verb::Update,
            ("PATCH", _) => Verb::Patch,
            ("DELETE", true) => Verb::Delete,
            ("DELETE", false) => Verb::Deletecollection,
            _ => return None,
        };
        let resource = match sub {
            Some(s) => format!("nodes/{s}"),
            None => "nodes".to_string(),
        };
        Some((verb, resource))
    }
}

/// Answers one API request; `Ok(false)` when the connection must close afterwards.
/// `rec` records the request with its status, just before the answer goes out (a watch
/// is recorded when its stream starts).
pub fn serve<W: Write>(
    sh: &Shared,
    req: &Request,
    route: &Route,
    w: &mut W,
    rec: &dyn Fn(u16),
) -> io::Result<bool> {
    let keep = req.keep_alive;
    let reply = |w: &mut W, code: u16, body: &[u8]| -> io::Result<bool> {
        rec(code);
        write_response(w, code, JSON, &[body], keep)?;
        Ok(keep)
    };
    match route {
        Route::Version => reply(w, 200, &version()),
        Route::CoreVersions => reply(w, 200, &core_versions(sh)),
        Route::Groups => reply(
            w,
            200,
            br#"{"kind":"APIGroupList","apiVersion":"v1","groups":[]}"#,
        ),
        Route::CoreResources => reply(w, 200, &core_resources()),
        Route::Health => {
            rec(200);
            write_response(w, 200, "text/plain; charset=utf-8", &[b"ok"], keep)?;
            Ok(keep)
        }
        Route::NotFound => reply(w, 404, &status::path_not_found()),
        Route::Nodes { name, sub, .. } => {
            let Some((verb, _)) = route.verb(req) else {
                return reply(w, 405, &status::method_not_allowed());
            };
            if sub.is_some() || !matches!(verb, Verb::Get | Verb::List | Verb::Watch) {
                return reply(w, 405, &status::method_not_allowed());
            }
            let mut field = req.param("fieldSelector").map(str::to_string);
            if let (Some(n), Verb::Watch) = (name, verb) {
                // A watch of one object is a watch of the list with a name selector.
                let by_name = format!("metadata.name={n}");
                field = Some(match field {
                    Some(f) if !f.is_empty() => format!("{f},{by_name}"),
                    _ => by_name,
                });
            }
            let sel = match Selector::parse(field.as_deref(), req.param("labelSelector")) {
                Ok(s) => s,
                Err(e) => return reply(w, 400, &status::bad_request(&e)),
            };
            match verb {
                Verb::Get => match sh.store.get(name.as_deref().unwrap_or_default()) {
                    Some(obj) => reply(w, 200, &obj.json),
                    None => reply(
                        w,
                        404,
                        &status::not_found(name.as_deref().unwrap_or_default()),
                    ),
                },
                Verb::List => list(sh, req, &sel, w, rec),
                _ => watch(sh, req, &sel, w, rec),
            }
        }
    }
}

fn version() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": "v1.33.0-standin",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    }))
    .unwrap_or_default()
}

fn core_versions(sh: &Shared) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": sh.addr.to_string()}
        ],
    }))
    .unwrap_or_default()
}

fn core_resources() -> Vec<u8> {
    // Only what the stand-in serves, so a client that checks verbs sees the truth.
    serde_json::to_vec(&json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [{
            "name": "nodes",
            "singularName": "node",
            "namespaced": false,
            "kind": "Node",
            "verbs": ["get", "list", "watch"],
            "shortNames": ["no"],
            "storageVersionHash": "XwShjMxG9Fs=",
        }],
    }))
    .unwrap_or_default()
}

/// The continue token of the real API server: base64url of
/// `{"v":"meta.k8s.io/v1","rv":N,"start":"NAME\u0000"}` (start just after NAME).
fn encode_continue(rv: u64, last: &str) -> String {
    let v = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{last}\u{0}")});
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap_or_default())
}

fn decode_continue(token: &str) -> Option<(u64, String)> {
    let raw = URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    if v["v"] != "meta.k8s.io/v1" {
        return None;
    }
    let rv = v["rv"].as_u64()?;
    let start = v["start"].as_str()?;
    Some((rv, start.strip_suffix('\u{0}').unwrap_or(start).to_string()))
}

fn list<W: Write>(
    sh: &Shared,
    req: &Request,
    sel: &Selector,
    w: &mut W,
    rec: &dyn Fn(u16),
) -> io::Result<bool> {
    let keep = req.keep_alive;
    let fail = |w: &mut W, code: u16, body: Vec<u8>| -> io::Result<bool> {
        rec(code);
        write_response(w, code, JSON, &[&body], keep)?;
        Ok(keep)
    };
    let limit = match req.param("limit").filter(|l| !l.is_empty()) {
        None => usize::MAX,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if n > 0 => n as usize,
            Ok(_) => usize::MAX,
            Err(_) => return fail(w, 400, status::bad_request(&format!("invalid limit {l:?}"))),
        },
    };
    let (snap, after): (Snapshot, Option<String>) = match req
        .param("continue")
        .filter(|c| !c.is_empty())
    {
        Some(token) => {
            let Some((rv, start)) = decode_continue(token) else {
                return fail(
                    w,
                    400,
                    status::bad_request(
                        "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
                    ),
                );
            };
            match sh.store.snapshot_at(rv) {
                Some(s) => (s, Some(start)),
                None => {
                    let now = sh.store.rv();
                    return fail(
                        w,
                        410,
                        status::continue_expired(&encode_continue(now, &start)),
                    );
                }
            }
        }
        None => {
            let snap = sh.store.snapshot();
            if req.param("resourceVersionMatch") == Some("Exact")
                && let Some(rv) = req.param("resourceVersion").and_then(|r| r.parse().ok())
                && rv != snap.rv
            {
                match sh.store.snapshot_at(rv) {
                    Some(s) => (s, None),
                    None => return fail(w, 410, status::too_old(rv, snap.rv)),
                }
            } else {
                (snap, None)
            }
        }
    };

    let start = match &after {
        Some(a) => Bound::Excluded(a.as_str()),
        None => Bound::Unbounded,
    };
    let mut page: Vec<&Obj> = Vec::new();
    let mut more = false;
    let only = sel.only_name();
    let mut candidates: Box<dyn Iterator<Item = &std::sync::Arc<Obj>>> = match only {
        Some(n) => Box::new(snap.objects.get(n).into_iter()),
        None => Box::new(
            snap.objects
                .range::<str, _>((start, Bound::Unbounded))
                .map(|(_, o)| o),
        ),
    };
    for obj in &mut candidates {
        if after.as_deref().is_some_and(|a| obj.name.as_str() <= a) || !sel.matches(obj) {
            continue;
        }
        if page.len() == limit {
            more = true;
            break;
        }
        page.push(obj);
    }
    let mut meta = json!({"resourceVersion": snap.rv.to_string()});
    if more && let Some(last) = page.last() {
        meta["continue"] = encode_continue(snap.rv, &last.name).into();
        if sel.is_empty() {
            let remaining = snap
                .objects
                .range::<str, _>((Bound::Excluded(last.name.as_str()), Bound::Unbounded))
                .count();
            meta["remainingItemCount"] = remaining.into();
        }
        sh.store.keep_snapshot(&snap);
    }
    let head = format!(
        r#"{{"kind":"NodeList","apiVersion":"v1","metadata":{},"items":["#,
        serde_json::to_string(&meta).unwrap_or_default()
    );
    let mut parts: Vec<&[u8]> = Vec::with_capacity(page.len() * 2 + 2);
    parts.push(head.as_bytes());
    for (i, obj) in page.iter().enumerate() {
        if i > 0 {
            parts.push(b",");
        }
        parts.push(&obj.json);
    }
    parts.push(b"]}");
    rec(200);
    write_response(w, 200, JSON, &parts, keep)?;
    Ok(keep)
}

/// Counts open watches for as long as it lives.
struct WatchGuard<'a>(&'a Shared);

impl<'a> WatchGuard<'a> {
    fn new(sh: &'a Shared) -> Self {
        sh.watches.fetch_add(1, Ordering::SeqCst);
        sh.watches_changed();
        WatchGuard(sh)
    }
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        self.0.watches.fetch_sub(1, Ordering::SeqCst);
        self.0.watches_changed();
    }
}

fn event_line(kind: EventType, obj: &Obj) -> [&[u8]; 3] {
    let head: &'static [u8] = match kind {
        EventType::Added => br#"{"type":"ADDED","object":"#,
        EventType::Modified => br#"{"type":"MODIFIED","object":"#,
        EventType::Deleted => br#"{"type":"DELETED","object":"#,
    };
    [head, &obj.json, b"}\n"]
}

fn bookmark_line(rv: u64, initial_events_end: bool) -> Vec<u8> {
    let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_events_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let v = json!({"type": "BOOKMARK", "object": {"kind": "Node", "apiVersion": "v1", "metadata": meta}});
    let mut line = serde_json::to_vec(&v).unwrap_or_default();
    line.push(b'\n');
    line
}

/// What a watch with a selector sends for an event: a change that moves an object into
/// the selection is ADDED, out of it DELETED, as the API server's watch cache does.
fn visible(sel: &Selector, ev: &Event) -> Option<EventType> {
    if sel.is_empty() {
        return Some(ev.kind);
    }
    let now = sel.matches(&ev.obj);
    match ev.kind {
        EventType::Modified => {
            let before = ev.prev.as_deref().is_some_and(|p| sel.matches(p));
            match (before, now) {
                (true, true) => Some(EventType::Modified),
                (false, true) => Some(EventType::Added),
                (true, false) => Some(EventType::Deleted),
                (false, false) => None,
            }
        }
        kind => now.then_some(kind),
    }
}

fn watch<W: Write>(
    sh: &Shared,
    req: &Request,
    sel: &Selector,
    w: &mut W,
    rec: &dyn Fn(u16),
) -> io::Result<bool> {
    let keep = req.keep_alive;
    let bad = |w: &mut W, message: String| -> io::Result<bool> {
        rec(400);
        write_response(w, 400, JSON, &[&status::bad_request(&message)], keep)?;
        Ok(keep)
    };
    let rv = req.param("resourceVersion").filter(|r| !r.is_empty());
    let send_initial = req.flag("sendInitialEvents");
    let bookmarks = req.flag("allowWatchBookmarks") == Some(true);
    let timeout = match req.param("timeoutSeconds") {
        Some(t) => match t.parse::<u64>() {
            Ok(s) if s > 0 => Duration::from_secs(s),
            Ok(_) => DEFAULT_WATCH_TIMEOUT,
            Err(_) => return bad(w, format!("invalid timeoutSeconds {t:?}")),
        },
        None => DEFAULT_WATCH_TIMEOUT,
    };
    let from = match (rv, send_initial) {
        (_, Some(true)) => WatchFrom::Now { initial: true },
        (None | Some("0"), initial) => WatchFrom::Now {
            initial: initial != Some(false),
        },
        (Some(r), _) => match r.parse::<u64>() {
            Ok(n) => WatchFrom::After(n),
            Err(_) => return bad(w, format!("invalid resource version {r:?}")),
        },
    };
    let deadline = Instant::now() + timeout;
    let started = sh.store.start_watch(from);
    rec(200);
    let mut out = Chunked::start(w, 200, JSON)?;
    let (mut cursor, initial) = match started {
        Ok(s) => s,
        Err(too_old) => {
            let r = rv.and_then(|r| r.parse().ok()).unwrap_or(0);
            out.chunk(&[&status::error_event(&status::too_old(r, too_old.oldest))])?;
            out.finish()?;
            return Ok(keep);
        }
    };
    let _guard = WatchGuard::new(sh);
    if let Some(snap) = initial {
        for obj in snap.objects.values().filter(|o| sel.matches(o)) {
            out.chunk(&event_line(EventType::Added, obj))?;
        }
        if send_initial == Some(true) && bookmarks {
            out.chunk(&[&bookmark_line(snap.rv, true)])?;
        }
        out.flush()?;
    }
    let mut next_bookmark = Instant::now() + sh.bookmark_interval();
    loop {
        let until = if bookmarks {
            next_bookmark.min(deadline)
        } else {
            deadline
        };
        match sh.store.wait(&mut cursor, until) {
            Wake::Events(events) => {
                for ev in &events {
                    if let Some(kind) = visible(sel, ev) {
                        out.chunk(&event_line(kind, &ev.obj))?;
                    }
                }
                out.flush()?;
            }
            Wake::Idle => {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                if bookmarks && now >= next_bookmark {
                    out.chunk(&[&bookmark_line(cursor.rv, false)])?;
                    out.flush()?;
                    next_bookmark = now + sh.bookmark_interval();
                }
            }
            Wake::Expired { oldest } => {
                let body = status::too_old(cursor.rv, oldest);
                out.chunk(&[&status::error_event(&body)])?;
                break;
            }
            Wake::Ended => break,
        }
    }
    out.finish()?;
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            Route::of("/api/v1/nodes"),
            Route::Nodes {
                name: None,
                sub: None,
                watch_path: false
            }
        );
        assert_eq!(
            Route::of("/api/v1/nodes/n1/status"),
            Route::Nodes {
                name: Some("n1".into()),
                sub: Some("status".into()),
                watch_path: false
            }
        );
        assert_eq!(
            Route::of("/api/v1/watch/nodes/n1"),
            Route::Nodes {
                name: Some("n1".into()),
                sub: None,
                watch_path: true
            }
        );
        assert_eq!(Route::of("/api/v1/nodesx"), Route::NotFound);
        assert_eq!(Route::of("/api/v1/pods"), Route::NotFound);
        assert_eq!(Route::of("/api/"), Route::CoreVersions);
    }

    #[test]
    fn continue_token_round_trip() {
        let t = encode_continue(42, "node-7");
        assert_eq!(decode_continue(&t), Some((42, "node-7".to_string())));
        assert_eq!(decode_continue("garbage"), None);
    }
}
