//! What tests inject and read back (failures, recorded requests, RBAC verbs) and the
//! `Status` objects the API server answers errors with, worded as it words them.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The RBAC verb a request needs, as the API server's authorizer derives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    Deletecollection,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::Deletecollection => "deletecollection",
        }
    }
}

impl std::str::FromStr for Verb {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(Value::String(s.to_ascii_lowercase()))
            .map_err(|_| format!("unknown verb {s:?}"))
    }
}

/// A failure to inject. Injecting one also ends every open watch (cleanly, as a server
/// timeout does, or by a hang-up for [`Failure::HangUp`] and [`Failure::Down`]) so
/// that clients' next request meets it. Control requests are never affected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum Failure {
    /// Watch requests get HTTP `410 Gone` (a Status, reason `Expired`) instead of a
    /// stream. Not what a real API server does for expiry (that is the in-stream ERROR
    /// event of [`crate::Control::expire`]): kube-rs retries the watch with the same
    /// resourceVersion, it does not re-list. Lists and gets still work.
    WatchGone,
    /// Every API request gets HTTP 500 (`InternalError`).
    InternalError,
    /// Requests on nodes with one of these verbs (none listed: every verb) get 403
    /// with the API server's RBAC wording, e.g. `nodes is forbidden: User
    /// "system:anonymous" cannot watch resource "nodes" in API group "" at the cluster
    /// scope`. Discovery stays allowed, as it is for any user.
    Forbidden {
        #[serde(default)]
        verbs: Vec<Verb>,
    },
    /// Each request is read and the connection closed without an answer; open
    /// connections are closed at once.
    HangUp,
    /// The listening socket is closed (connections refused) and open ones closed.
    Down,
}

impl Failure {
    /// 403 for every verb.
    pub fn forbidden_all() -> Failure {
        Failure::Forbidden { verbs: Vec::new() }
    }

    /// 403 for the given verbs only.
    pub fn forbidden(verbs: &[Verb]) -> Failure {
        Failure::Forbidden {
            verbs: verbs.to_vec(),
        }
    }
}

/// One request the stand-in served (control requests are not recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The query string as sent, without `?` (kube-rs starts it with `&`).
    pub query: String,
    pub user_agent: Option<String>,
    /// The RBAC verb; `None` for discovery and other non-resource paths.
    pub verb: Option<Verb>,
    /// `nodes` or `nodes/status`; `None` for non-resource paths.
    pub resource: Option<String>,
    pub name: Option<String>,
    /// The HTTP status answered (200 for a watch stream, 0 for a hang-up).
    pub status: u16,
}

/// What [`crate::Control::state`] reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StandinState {
    pub resource_version: u64,
    pub nodes: usize,
    pub open_watches: usize,
    pub bytes_served: u64,
    pub failure: Option<Failure>,
}

/// A `Status` object (`kind: Status`) as JSON bytes.
pub fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Vec<u8> {
    let mut v = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    });
    if let Some(d) = details {
        v["details"] = d;
    }
    v["code"] = code.into();
    serde_json::to_vec(&v).unwrap_or_default()
}

pub fn not_found(name: &str) -> Vec<u8> {
    status(
        404,
        "NotFound",
        &format!("nodes \"{name}\" not found"),
        Some(json!({"name": name, "kind": "nodes"})),
    )
}

pub fn path_not_found() -> Vec<u8> {
    status(
        404,
        "NotFound",
        "the server could not find the requested resource",
        Some(json!({})),
    )
}

pub fn forbidden(verb: Verb, resource: &str, name: Option<&str>) -> Vec<u8> {
    let (res, sub) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (resource, None),
    };
    let target = match name {
        Some(n) => format!("{res} \"{n}\""),
        None => res.to_string(),
    };
    let tail = match sub {
        Some(s) => format!("cannot {} resource \"{res}/{s}\"", verb.as_str()),
        None => format!("cannot {} resource \"{res}\"", verb.as_str()),
    };
    let mut details = json!({"kind": res});
    if let Some(n) = name {
        details["name"] = n.into();
    }
    status(
        403,
        "Forbidden",
        &format!(
            "{target} is forbidden: User \"system:anonymous\" {tail} in API group \"\" at the cluster scope"
        ),
        Some(details),
    )
}

pub fn internal_error() -> Vec<u8> {
    status(
        500,
        "InternalError",
        "Internal error occurred: injected by kube-standin",
        Some(json!({"causes": [{"message": "injected by kube-standin"}]})),
    )
}

pub fn too_old(rv: u64, oldest: u64) -> Vec<u8> {
    status(
        410,
        "Expired",
        &format!("too old resource version: {rv} ({oldest})"),
        None,
    )
}

pub fn bad_request(message: &str) -> Vec<u8> {
    status(400, "BadRequest", message, None)
}

pub fn method_not_allowed() -> Vec<u8> {
    status(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        Some(json!({})),
    )
}

pub fn continue_expired(token: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&status(
        410,
        "Expired",
        "The provided continue parameter is too old to display a consistent list result. \
         You can start a new list without the continue parameter.",
        None,
    ))
    .unwrap_or_default();
    v["metadata"] = json!({"continue": token});
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The in-stream watch event that makes clients re-list.
pub fn error_event(status_body: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(status_body.len() + 32);
    line.extend_from_slice(br#"{"type":"ERROR","object":"#);
    line.extend_from_slice(status_body);
    line.extend_from_slice(b"}\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_words_it_like_rbac() {
        let v: Value = serde_json::from_slice(&forbidden(Verb::Get, "nodes", Some("n1"))).unwrap();
        assert_eq!(
            v["message"],
            "nodes \"n1\" is forbidden: User \"system:anonymous\" cannot get resource \"nodes\" in API group \"\" at the cluster scope"
        );
        assert_eq!(v["code"], 403);
        let v: Value = serde_json::from_slice(&forbidden(Verb::Watch, "nodes", None)).unwrap();
        assert_eq!(
            v["message"],
            "nodes is forbidden: User \"system:anonymous\" cannot watch resource \"nodes\" in API group \"\" at the cluster scope"
        );
        let v: Value =
            serde_json::from_slice(&forbidden(Verb::Patch, "nodes/status", Some("n1"))).unwrap();
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("cannot patch resource \"nodes/status\"")
        );
    }

    #[test]
    fn failure_json_round_trip() {
        let f: Failure = serde_json::from_str(r#"{"mode":"forbidden","verbs":["watch"]}"#).unwrap();
        assert_eq!(f, Failure::forbidden(&[Verb::Watch]));
        let f: Failure = serde_json::from_str(r#"{"mode":"watch-gone"}"#).unwrap();
        assert_eq!(f, Failure::WatchGone);
        assert_eq!("LIST".parse::<Verb>().unwrap(), Verb::List);
    }
}
