//! `/healthz`, `/readyz` and `/metrics` on a local port: a minimal HTTP/1.1 responder
//! (GET only, one request per connection), so the agent needs no HTTP server crate.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Metrics;

/// What `/readyz` and `/healthz` report; the main loop keeps it current.
#[derive(Debug)]
pub struct Status {
    inner: Mutex<Inner>,
    pub metrics: Metrics,
}

#[derive(Debug)]
struct Inner {
    conflist: Result<(), String>,
    reconciled: bool,
    watch_synced: bool,
    watch_problem: Option<String>,
    last_loop: Instant,
    stall_after: Duration,
}

impl Status {
    /// `stall_after`: how long the main loop may go without a turn before `/healthz`
    /// fails (it turns at least once per resync interval).
    pub fn new(stall_after: Duration) -> Arc<Status> {
        Arc::new(Status {
            inner: Mutex::new(Inner {
                conflist: Err("waiting for the Node's spec.podCIDRs".into()),
                reconciled: false,
                watch_synced: false,
                watch_problem: None,
                last_loop: Instant::now(),
                stall_after,
            }),
            metrics: Metrics::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_conflist(&self, state: Result<(), String>) {
        self.lock().conflist = state;
    }
    pub fn set_reconciled(&self) {
        self.lock().reconciled = true;
    }
    pub fn set_watch_synced(&self) {
        let mut i = self.lock();
        i.watch_synced = true;
        i.watch_problem = None;
    }
    pub fn clear_watch_problem(&self) {
        self.lock().watch_problem = None;
    }
    /// The watch failed; what was synced stays in use (fail static), so readiness holds.
    pub fn set_watch_problem(&self, why: String) {
        self.lock().watch_problem = Some(why);
    }
    pub fn tick(&self) {
        self.lock().last_loop = Instant::now();
    }

    /// `Ok(detail)` when ready, `Err(reasons)` otherwise.
    pub fn readiness(&self) -> Result<String, String> {
        let i = self.lock();
        let mut missing = Vec::new();
        if let Err(why) = &i.conflist {
            missing.push(format!("conflist: {why}"));
        }
        if !i.watch_synced {
            missing.push("watch: first list of Nodes not done".to_owned());
        }
        if !i.reconciled {
            missing.push("routes: first reconcile not done".to_owned());
        }
        let problem = i.watch_problem.as_ref().map(|p| format!("watch: {p}"));
        if missing.is_empty() {
            Ok(problem.map_or("ok".to_owned(), |p| {
                format!("ok (keeping the last state; {p})")
            }))
        } else {
            missing.extend(problem);
            Err(missing.join("\n"))
        }
    }

    pub fn liveness(&self) -> Result<(), String> {
        let i = self.lock();
        let idle = i.last_loop.elapsed();
        if idle > i.stall_after {
            return Err(format!("main loop stalled for {}s", idle.as_secs()));
        }
        Ok(())
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, status: Arc<Status>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let status = status.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &status)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, status: &Status) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (code, ctype, body) = route(method, path, status);
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

fn route(method: &str, path: &str, status: &Status) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return (405, TEXT, "GET only\n".into());
    }
    match path {
        "/healthz" | "/livez" => match status.liveness() {
            Ok(()) => (200, TEXT, "ok\n".into()),
            Err(why) => (503, TEXT, format!("{why}\n")),
        },
        "/readyz" => match status.readiness() {
            Ok(detail) => (200, TEXT, format!("{detail}\n")),
            Err(why) => (503, TEXT, format!("not ready:\n{why}\n")),
        },
        "/metrics" => {
            let ready = status.readiness().is_ok();
            (
                200,
                "text/plain; version=0.0.4",
                status.metrics.render(ready),
            )
        }
        _ => (404, TEXT, "try /healthz, /readyz or /metrics\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_conflist_watch_and_reconcile() {
        let s = Status::new(Duration::from_secs(180));
        let why = s.readiness().unwrap_err();
        assert!(
            why.contains("podCIDRs") && why.contains("first list"),
            "{why}"
        );
        s.set_conflist(Ok(()));
        s.set_watch_synced();
        assert!(s.readiness().is_err());
        s.set_reconciled();
        assert_eq!(s.readiness().unwrap(), "ok");
        s.set_watch_problem("API server unreachable".into());
        assert!(s.readiness().unwrap().contains("keeping the last state"));
        assert_eq!(route("GET", "/readyz", &s).0, 200);
        assert_eq!(route("GET", "/healthz", &s).0, 200);
        assert_eq!(route("POST", "/healthz", &s).0, 405);
        assert_eq!(route("GET", "/nope", &s).0, 404);
    }

    #[test]
    fn a_stalled_loop_fails_liveness() {
        let s = Status::new(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(route("GET", "/healthz", &s).0, 503);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn serves_http() {
        let s = Status::new(Duration::from_secs(60));
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, s.clone()));
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("cni_rs_node_ready 0"), "{out}");
    }
}
