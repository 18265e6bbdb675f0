//! Driving a `kube-standin` process: its control API client, and a guard that starts
//! the binary and kills it on drop.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use serde_json::Value;

use crate::{Control, Error, Failure, RecordedRequest, StandinState, kubeconfig};

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// The control API of a stand-in in another process, over its `--control-socket`
/// (works from any network namespace, and through `Down` and `HangUp`) or over TCP
/// (the `/_standin/` paths of the API listener, which injected failures do affect,
/// except `WatchGone`, `InternalError` and `Forbidden`).
#[derive(Debug, Clone)]
pub struct RemoteStandin {
    target: Target,
}

impl RemoteStandin {
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        RemoteStandin {
            target: Target::Unix(path.into()),
        }
    }

    pub fn tcp(addr: SocketAddr) -> Self {
        RemoteStandin {
            target: Target::Tcp(addr),
        }
    }

    fn call(&self, method: &str, path: &str, body: &[u8]) -> Result<Value, Error> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: kube-standin\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut raw = Vec::new();
        match &self.target {
            Target::Tcp(addr) => {
                let mut s = TcpStream::connect_timeout(addr, TIMEOUT)?;
                s.set_read_timeout(Some(TIMEOUT))?;
                exchange(&mut s, head.as_bytes(), body, &mut raw)?;
            }
            Target::Unix(path) => {
                let mut s = UnixStream::connect(path)?;
                s.set_read_timeout(Some(TIMEOUT))?;
                exchange(&mut s, head.as_bytes(), body, &mut raw)?;
            }
        }
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| Error::Decode("no end of headers".into()))?;
        let status_line = String::from_utf8_lossy(&raw[..split]);
        let code: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| Error::Decode(format!("bad status line {status_line:?}")))?;
        let v: Value = serde_json::from_slice(&raw[split + 4..])
            .map_err(|e| Error::Decode(format!("body is not JSON: {e}")))?;
        if code != 200 {
            let message = v["message"].as_str().unwrap_or_default().to_string();
            return Err(Error::Api { code, message });
        }
        Ok(v)
    }

    fn rv_of(v: &Value) -> Result<u64, Error> {
        v["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Decode(format!("no resourceVersion in {v}")))
    }

    fn fail(&self, failure: &Failure, seconds: Option<f64>) -> Result<(), Error> {
        let mut v = serde_json::to_value(failure).map_err(|e| Error::Decode(e.to_string()))?;
        if let Some(s) = seconds {
            v["seconds"] = s.into();
        }
        self.call("POST", "/_standin/fail", v.to_string().as_bytes())?;
        Ok(())
    }

    /// Sets the bookmark interval of the server.
    pub fn set_bookmark_interval(&self, interval: Duration) -> Result<(), Error> {
        let path = format!("/_standin/bookmark-interval?ms={}", interval.as_millis());
        self.call("POST", &path, b"")?;
        Ok(())
    }
}

fn exchange<S: Read + Write>(
    s: &mut S,
    head: &[u8],
    body: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    s.write_all(head)?;
    s.write_all(body)?;
    s.flush()?;
    s.read_to_end(out)?;
    Ok(())
}

impl Control for RemoteStandin {
    fn upsert_all(&self, nodes: &[Node]) -> Result<u64, Error> {
        let body = serde_json::to_vec(nodes).map_err(|e| Error::Decode(e.to_string()))?;
        Self::rv_of(&self.call("POST", "/_standin/nodes", &body)?)
    }

    fn delete(&self, name: &str) -> Result<Option<u64>, Error> {
        match self.call("DELETE", &format!("/_standin/nodes/{name}"), b"") {
            Ok(v) => Ok(Some(Self::rv_of(&v)?)),
            Err(Error::Api { code: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn expire(&self) -> Result<(), Error> {
        self.call("POST", "/_standin/expire", b"")?;
        Ok(())
    }

    fn inject(&self, failure: Failure) -> Result<(), Error> {
        self.fail(&failure, None)
    }

    fn inject_for(&self, failure: Failure, duration: Duration) -> Result<(), Error> {
        self.fail(&failure, Some(duration.as_secs_f64()))
    }

    fn clear_failures(&self) -> Result<(), Error> {
        self.call("POST", "/_standin/clear", b"")?;
        Ok(())
    }

    fn requests(&self) -> Result<Vec<RecordedRequest>, Error> {
        let v = self.call("GET", "/_standin/requests", b"")?;
        serde_json::from_value(v).map_err(|e| Error::Decode(e.to_string()))
    }

    fn clear_requests(&self) -> Result<(), Error> {
        self.call("DELETE", "/_standin/requests", b"")?;
        Ok(())
    }

    fn state(&self) -> Result<StandinState, Error> {
        let v = self.call("GET", "/_standin/state", b"")?;
        serde_json::from_value(v).map_err(|e| Error::Decode(e.to_string()))
    }
}

/// The `kube-standin` binary: `$KUBE_STANDIN_BIN`, else `kube-standin` in the target
/// directory of the running test (release first, then debug). Build it first
/// (`cargo build -p kube-standin`; scripts/test.sh builds the whole workspace).
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KUBE_STANDIN_BIN") {
        return Some(PathBuf::from(p));
    }
    // A test binary lives in target/<profile>/deps/.
    let exe = std::env::current_exe().ok()?;
    let target = exe.parent()?.parent()?.parent()?;
    ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("kube-standin"))
        .find(|p| p.is_file())
}

/// A running `kube-standin` process, killed when dropped.
pub struct StandinProcess {
    child: Child,
    addr: SocketAddr,
    control: RemoteStandin,
}

impl StandinProcess {
    /// Starts `cmd` (the binary with its flags, possibly behind `ip netns exec NS`) and
    /// waits for its `listening on IP:PORT` line. Control goes over `control_socket`
    /// when the command was given `--control-socket`, else over TCP to that address.
    pub fn spawn(mut cmd: Command, control_socket: Option<&Path>) -> io::Result<Self> {
        let mut child = cmd.stdout(Stdio::piped()).spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        let addr = loop {
            line.clear();
            if lines.read_line(&mut line)? == 0 {
                let status = child.wait()?;
                return Err(io::Error::other(format!(
                    "kube-standin exited ({status}) before listening"
                )));
            }
            if let Some(a) = line.trim().strip_prefix("listening on ") {
                break a
                    .parse::<SocketAddr>()
                    .map_err(|e| io::Error::other(format!("bad address {a:?}: {e}")))?;
            }
        };
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || io::copy(&mut lines, &mut io::sink()));
        let control = match control_socket {
            Some(p) => RemoteStandin::unix(p),
            None => RemoteStandin::tcp(addr),
        };
        Ok(StandinProcess {
            child,
            addr,
            control,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn kubeconfig(&self) -> String {
        kubeconfig(&self.url())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn control(&self) -> &RemoteStandin {
        &self.control
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for StandinProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Control for StandinProcess {
    fn upsert_all(&self, nodes: &[Node]) -> Result<u64, Error> {
        self.control.upsert_all(nodes)
    }
    fn delete(&self, name: &str) -> Result<Option<u64>, Error> {
        self.control.delete(name)
    }
    fn expire(&self) -> Result<(), Error> {
        self.control.expire()
    }
    fn inject(&self, failure: Failure) -> Result<(), Error> {
        self.control.inject(failure)
    }
    fn inject_for(&self, failure: Failure, duration: Duration) -> Result<(), Error> {
        self.control.inject_for(failure, duration)
    }
    fn clear_failures(&self) -> Result<(), Error> {
        self.control.clear_failures()
    }
    fn requests(&self) -> Result<Vec<RecordedRequest>, Error> {
        self.control.requests()
    }
    fn clear_requests(&self) -> Result<(), Error> {
        self.control.clear_requests()
    }
    fn state(&self) -> Result<StandinState, Error> {
        self.control.state()
    }
}
