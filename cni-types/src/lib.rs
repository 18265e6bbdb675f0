//! The CNI spec as types: plugin configuration, results for every spec
//! version and the conversions between them, error codes, `CNI_ARGS`, the
//! env-var protocol with its dispatcher, and the exec of delegated plugins.
//! No kernel code lives here.

pub mod args;
pub mod config;
pub mod error;
pub mod invoke;
pub mod json;
pub mod result;
pub mod skel;
pub mod version;

pub use args::CniArgs;
pub use config::{Attachment, NetConf, NetConfList};
pub use error::{Error, code};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use skel::{Command, Plugin, Request};

/// JSON indented with four spaces, as the reference plugins print it.
pub fn pretty_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    match value.serialize(&mut ser) {
        Ok(()) => String::from_utf8(buf).unwrap_or_default(),
        // Our own types always serialize; keep the protocol alive regardless.
        Err(e) => format!("{{\"code\":999,\"msg\":{:?}}}", e.to_string()),
    }
}
