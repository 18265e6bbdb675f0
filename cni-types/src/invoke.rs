//! Delegated plugins: `bridge` runs its IPAM plugin as a child process with
//! the same environment and stdin, only `CNI_COMMAND` changed.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

use crate::error::Error;
use crate::result::CniResult;
use crate::skel::{Command, Request};

/// Finds `plugin_type` in the request's `CNI_PATH`.
pub fn find(plugin_type: &str, req: &Request) -> Result<PathBuf, Error> {
    // A type is a file name, never a path: "../x" must not escape CNI_PATH.
    if crate::skel::valid_name(plugin_type) {
        for dir in &req.path {
            let candidate = dir.join(plugin_type);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let dirs: Vec<String> = req.path.iter().map(|p| p.display().to_string()).collect();
    Err(Error::internal(format!(
        "failed to find plugin {plugin_type:?} in path [{}]",
        dirs.join(" ")
    )))
}

/// Runs the delegate and returns its stdout, or the error it reported.
pub fn exec(plugin_type: &str, command: Command, req: &Request) -> Result<Vec<u8>, Error> {
    let path = find(plugin_type, req)?;
    let mut child = Process::new(&path)
        .env("CNI_COMMAND", command.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::internal(format!("failed to run {}: {e}", path.display())))?;
    // Written from a thread so a chatty child can never deadlock us on a full pipe.
    let stdin = child.stdin.take();
    let data = req.stdin.clone();
    let writer = std::thread::spawn(move || {
        if let Some(mut s) = stdin {
            let _ = s.write_all(&data);
        }
    });
    let out = child
        .wait_with_output()
        .map_err(|e| Error::internal(format!("failed to wait for {}: {e}", path.display())))?;
    let _ = writer.join();
    if out.status.success() {
        return Ok(out.stdout);
    }
    Err(delegate_error(&out.stdout, &out.stderr, out.status))
}

/// The delegate's own error object when it printed one, else a description.
fn delegate_error(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> Error {
    if let Ok(e) = crate::json::from_slice::<Error>(stdout) {
        return e;
    }
    let stderr = String::from_utf8_lossy(stderr);
    if !stdout.is_empty() {
        Error::internal(format!(
            "netplugin failed but error parsing its diagnostic message {:?}",
            String::from_utf8_lossy(stdout)
        ))
    } else if stderr.is_empty() {
        Error::internal(format!("netplugin failed with no error message: {status}"))
    } else {
        Error::internal(format!("netplugin failed: {stderr:?}"))
    }
}

pub fn delegate_add(plugin_type: &str, req: &Request) -> Result<CniResult, Error> {
    let out = exec(plugin_type, Command::Add, req)?;
    let v: serde_json::Value = serde_json::from_slice(&out)
        .map_err(|e| Error::decode(format!("failed to parse result of {plugin_type}: {e}")))?;
    CniResult::from_value(&v, &req.conf.cni_version)
}

pub fn delegate_del(plugin_type: &str, req: &Request) -> Result<(), Error> {
    exec(plugin_type, Command::Del, req).map(drop)
}

pub fn delegate_check(plugin_type: &str, req: &Request) -> Result<(), Error> {
    exec(plugin_type, Command::Check, req).map(drop)
}

pub fn delegate_gc(plugin_type: &str, req: &Request) -> Result<(), Error> {
    exec(plugin_type, Command::Gc, req).map(drop)
}

pub fn delegate_status(plugin_type: &str, req: &Request) -> Result<(), Error> {
    exec(plugin_type, Command::Status, req).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::CniArgs;
    use crate::config::NetConf;
    use std::os::unix::fs::PermissionsExt;

    fn req_with_path(dir: &std::path::Path, stdin: &str) -> Request {
        Request {
            command: Command::Add,
            container_id: "c".into(),
            netns: None,
            ifname: "eth0".into(),
            args: CniArgs::default(),
            path: vec![PathBuf::from("/nonexistent"), dir.to_path_buf()],
            stdin: stdin.as_bytes().to_vec(),
            conf: NetConf {
                cni_version: "0.4.0".into(),
                ..Default::default()
            },
        }
    }

    fn script(dir: &std::path::Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "cni-types-invoke-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn add_parses_result_and_passes_env_and_stdin() {
        let d = tempdir();
        script(
            &d,
            "fake-ipam",
            r#"read conf; echo "{\"cniVersion\":\"0.4.0\",\"ips\":[{\"version\":\"4\",\"address\":\"10.0.0.5/24\"}],\"dns\":{\"domain\":\"$CNI_COMMAND\"}}""#,
        );
        let r = delegate_add("fake-ipam", &req_with_path(&d, "{}\n")).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.0.0.5/24");
        assert_eq!(r.dns.domain.as_deref(), Some("ADD"));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn errors_propagate_unchanged() {
        let d = tempdir().join("err");
        std::fs::create_dir_all(&d).unwrap();
        script(
            &d,
            "failing",
            r#"echo '{"code":11,"msg":"busy","details":"d"}'; exit 1"#,
        );
        script(&d, "silent", "echo oops >&2; exit 3");
        let req = req_with_path(&d, "{}");
        assert_eq!(
            delegate_del("failing", &req).unwrap_err(),
            Error::new(11, "busy", "d")
        );
        assert_eq!(
            delegate_del("silent", &req).unwrap_err().msg,
            "netplugin failed: \"oops\\n\""
        );
        let e = delegate_del("missing", &req).unwrap_err();
        assert!(
            e.msg.starts_with("failed to find plugin \"missing\""),
            "{}",
            e.msg
        );
        assert!(delegate_del("../failing", &req).is_err());
        std::fs::remove_dir_all(d).unwrap();
    }
}
