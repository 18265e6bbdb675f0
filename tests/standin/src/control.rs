//! The control API under `/_standin/`, for tests that run the binary (in another
//! network namespace) instead of embedding the library. Same operations as
//! [`crate::Control`]; [`crate::RemoteStandin`] is its client.
//!
//! | request | body / query | answer |
//! |---|---|---|
//! | `GET /_standin/state` | | [`crate::StandinState`] |
//! | `POST /_standin/nodes` (or `PUT`) | a Node, a NodeList or a JSON array of Nodes | `{"resourceVersion":"N"}` |
//! | `DELETE /_standin/nodes/NAME` | | `{"resourceVersion":"N"}`, 404 if absent |
//! | `POST /_standin/expire` | | `{"resourceVersion":"N"}` |
//! | `POST /_standin/fail` | a [`crate::Failure`] as JSON plus optional `"seconds"`, or `?mode=down&seconds=3&verbs=list,watch` | `{}` |
//! | `POST /_standin/clear` | | `{}` |
//! | `GET /_standin/requests` | | `[RecordedRequest...]` |
//! | `DELETE /_standin/requests` | | `{}` |
//! | `POST /_standin/bookmark-interval?ms=N` | | `{}` |

use std::io::{self, Write};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

use crate::http::{Request, write_response};
use crate::server::Shared;
use crate::status::{self, Failure, StandinState};

const JSON: &str = "application/json";

pub fn serve<W: Write>(sh: &Shared, req: &Request, w: &mut W) -> io::Result<bool> {
    let keep = req.keep_alive;
    let (code, body) = match answer(sh, req) {
        Ok(v) => (200, serde_json::to_vec(&v).unwrap_or_default()),
        Err((code, message)) => (code, status::status(code, reason(code), &message, None)),
    };
    write_response(w, code, JSON, &[&body], keep)?;
    Ok(keep)
}

fn reason(code: u16) -> &'static str {
    match code {
        404 => "NotFound",
        405 => "MethodNotAllowed",
        _ => "BadRequest",
    }
}

type Answer = Result<Value, (u16, String)>;

fn answer(sh: &Shared, req: &Request) -> Answer {
    let path = req.path.trim_end_matches('/');
    let rest = path.strip_prefix("/_standin").unwrap_or(path);
    match (req.method.as_str(), rest) {
        ("GET", "/state") => Ok(serde_json::to_value(state(sh)).unwrap_or_default()),
        ("POST" | "PUT", "/nodes") => upsert(sh, &req.body),
        ("DELETE", p) if p.starts_with("/nodes/") => {
            let name = &p["/nodes/".len()..];
            match sh.store.delete(name) {
                Some(rv) => Ok(json!({"resourceVersion": rv.to_string()})),
                None => Err((404, format!("nodes \"{name}\" not found"))),
            }
        }
        ("POST", "/expire") => {
            sh.store.expire();
            Ok(json!({"resourceVersion": sh.store.rv().to_string()}))
        }
        ("POST", "/fail") => {
            let (failure, seconds) = failure_of(req)?;
            sh.inject(failure, seconds.map(Duration::from_secs_f64));
            Ok(json!({}))
        }
        ("POST", "/clear") => {
            sh.clear();
            Ok(json!({}))
        }
        ("GET", "/requests") => Ok(serde_json::to_value(sh.requests()).unwrap_or_default()),
        ("DELETE", "/requests") => {
            sh.clear_requests();
            Ok(json!({}))
        }
        ("POST", "/bookmark-interval") => {
            let ms: u64 = req
                .param("ms")
                .and_then(|m| m.parse().ok())
                .ok_or((400, "give ?ms=MILLISECONDS".to_string()))?;
            sh.set_bookmark_interval(Duration::from_millis(ms));
            Ok(json!({}))
        }
        _ => Err((
            404,
            format!("no control endpoint {} {}", req.method, req.path),
        )),
    }
}

pub fn state(sh: &Shared) -> StandinState {
    let snap = sh.store.snapshot();
    StandinState {
        resource_version: snap.rv,
        nodes: snap.objects.len(),
        open_watches: sh.watches.load(std::sync::atomic::Ordering::SeqCst),
        bytes_served: sh.bytes.load(std::sync::atomic::Ordering::Relaxed),
        failure: sh.failure(),
    }
}

/// A Node, a NodeList (`items`) or an array of Nodes.
pub fn parse_nodes(body: &[u8]) -> Result<Vec<Node>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let items = match v {
        Value::Array(items) => items,
        Value::Object(ref o) if o.contains_key("items") => match v.get("items") {
            Some(Value::Array(items)) => items.clone(),
            _ => return Err("`items` is not an array".into()),
        },
        other => vec![other],
    };
    items
        .into_iter()
        .map(|i| serde_json::from_value::<Node>(i).map_err(|e| format!("not a Node: {e}")))
        .collect()
}

fn upsert(sh: &Shared, body: &[u8]) -> Answer {
    let nodes = parse_nodes(body).map_err(|e| (400, e))?;
    let rv = sh
        .store
        .upsert_all(nodes)
        .map_err(|e| (400, e.to_string()))?;
    Ok(json!({"resourceVersion": rv.to_string()}))
}

fn failure_of(req: &Request) -> Result<(Failure, Option<f64>), (u16, String)> {
    let bad = |e: String| (400, e);
    if !req.body.iter().all(u8::is_ascii_whitespace) {
        let mut v: Value =
            serde_json::from_slice(&req.body).map_err(|e| bad(format!("body is not JSON: {e}")))?;
        let seconds = v.as_object_mut().and_then(|o| o.remove("seconds"));
        let seconds = match seconds {
            None | Some(Value::Null) => None,
            Some(s) => Some(
                s.as_f64()
                    .ok_or_else(|| bad("`seconds` is not a number".into()))?,
            ),
        };
        let f: Failure =
            serde_json::from_value(v).map_err(|e| bad(format!("not a failure: {e}")))?;
        return Ok((f, seconds));
    }
    let mode = req
        .param("mode")
        .ok_or_else(|| bad("give a JSON body or ?mode=".into()))?;
    let mut v = json!({"mode": mode});
    if let Some(verbs) = req.param("verbs").filter(|s| !s.is_empty()) {
        v["verbs"] = verbs.split(',').map(|s| s.trim().to_string()).collect();
    }
    let f: Failure = serde_json::from_value(v).map_err(|e| bad(format!("not a failure: {e}")))?;
    let seconds = match req.param("seconds") {
        Some(s) => Some(s.parse().map_err(|_| bad(format!("bad seconds {s:?}")))?),
        None => None,
    };
    Ok((f, seconds))
}
