//! Sockets and threads: the accept loop (which closes and re-opens the listener for
//! [`Failure::Down`]), one thread per connection, and the failure checks every API
//! request passes before it reaches [`crate::api`].

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::api::{self, Route};
use crate::control;
use crate::http::{Counting, ReadError, Request, read_request, write_response};
use crate::status::{self, Failure, RecordedRequest, Verb};
use crate::store::Store;

/// How long [`Shared::inject`] and [`Shared::clear`] wait for the listener to follow.
const LISTENER_WAIT: Duration = Duration::from_secs(5);

struct Injected {
    failure: Failure,
    until: Option<Instant>,
}

/// Everything the threads share.
pub struct Shared {
    pub store: Store,
    pub addr: SocketAddr,
    pub watches: AtomicUsize,
    pub bytes: Arc<AtomicU64>,
    bookmark_ms: AtomicU64,
    failure: Mutex<Option<Injected>>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Signalled on a new recorded request, a watch opened or closed, and listener
    /// state changes: what tests wait for.
    events: Condvar,
    events_lock: Mutex<()>,
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    listening: Mutex<bool>,
    listening_changed: Condvar,
    shutdown: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn bookmark_interval(&self) -> Duration {
        Duration::from_millis(self.bookmark_ms.load(Ordering::Relaxed).max(1))
    }

    pub fn set_bookmark_interval(&self, d: Duration) {
        self.bookmark_ms.store(
            d.as_millis().clamp(1, u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    fn notify(&self) {
        let _g = lock(&self.events_lock);
        self.events.notify_all();
    }

    pub fn watches_changed(&self) {
        self.notify();
    }

    /// Waits until `done()` holds (re-checked on every request, watch change or
    /// listener change, and at least every 50 ms) or the timeout passes.
    pub fn wait_until(&self, timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.events_lock);
        loop {
            if done() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let step = (deadline - now).min(Duration::from_millis(50));
            g = self
                .events
                .wait_timeout(g, step)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The failure in force, dropping one whose time is up.
    pub fn failure(&self) -> Option<Failure> {
        let mut f = lock(&self.failure);
        if f.as_ref()
            .and_then(|i| i.until)
            .is_some_and(|u| Instant::now() >= u)
        {
            *f = None;
        }
        f.as_ref().map(|i| i.failure.clone())
    }

    fn wants_down(&self) -> bool {
        matches!(self.failure(), Some(Failure::Down))
    }

    pub fn inject(&self, failure: Failure, duration: Option<Duration>) {
        let until = duration.map(|d| Instant::now() + d);
        *lock(&self.failure) = Some(Injected {
            failure: failure.clone(),
            until,
        });
        match failure {
            Failure::HangUp => self.close_connections(),
            Failure::Down => {
                self.close_connections();
                self.wake_acceptor();
                self.wait_listening(false);
            }
            _ => {}
        }
        self.store.end_watches();
    }

    pub fn clear(&self) {
        let was_down = self.wants_down();
        *lock(&self.failure) = None;
        self.listening_changed.notify_all();
        if was_down {
            self.wait_listening(true);
        }
    }

    fn wait_listening(&self, up: bool) {
        let deadline = Instant::now() + LISTENER_WAIT;
        let mut l = lock(&self.listening);
        while *l != up && Instant::now() < deadline {
            l = self
                .listening_changed
                .wait_timeout(l, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn set_listening(&self, up: bool) {
        *lock(&self.listening) = up;
        self.listening_changed.notify_all();
        self.notify();
    }

    /// Unblocks `accept()` by connecting to ourselves.
    fn wake_acceptor(&self) {
        let ip = match self.addr.ip() {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let _ = TcpStream::connect_timeout(&SocketAddr::new(ip, self.addr.port()), LISTENER_WAIT);
    }

    /// Closes every open API connection (watches included) under the client's feet.
    pub fn close_connections(&self) {
        for s in lock(&self.conns).values() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.requests).clear();
    }

    fn record(&self, req: &Request, route: &Route, status: u16) {
        let rbac = route.verb(req);
        let name = match route {
            Route::Nodes { name, .. } => name.clone(),
            _ => None,
        };
        lock(&self.requests).push(RecordedRequest {
            method: req.method.clone(),
            path: req.path.clone(),
            query: req.raw_query.clone(),
            user_agent: req.user_agent.clone(),
            verb: rbac.as_ref().map(|(v, _)| *v),
            resource: rbac.map(|(_, r)| r),
            name,
            status,
        });
        self.notify();
    }
}

/// Settings of a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free port (see [`crate::Standin::addr`]).
    pub listen: SocketAddr,
    /// A Unix socket for the control API only: reachable from any network namespace
    /// and unaffected by injected failures (the HTTP `/_standin/` paths are not).
    pub control_socket: Option<PathBuf>,
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Events kept for watches to replay; a watch from before them gets 410.
    pub history: usize,
    /// The first resourceVersion. Default: the wall clock in microseconds, so a
    /// restarted stand-in's versions are newer than any of its predecessor's and a
    /// client that saw the old one gets 410 and re-lists, as after an etcd restore.
    pub initial_resource_version: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            control_socket: None,
            bookmark_interval: Duration::from_secs(1),
            history: 10_000,
            initial_resource_version: None,
        }
    }
}

/// The running server's threads.
pub struct Server {
    pub shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    control: Option<(PathBuf, JoinHandle<()>)>,
}

impl Server {
    pub fn start(config: Config) -> io::Result<Server> {
        let listener = TcpListener::bind(config.listen)?;
        let addr = listener.local_addr()?;
        let initial = config.initial_resource_version.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(1)
        });
        let shared = Arc::new(Shared {
            store: Store::new(initial, config.history),
            addr,
            watches: AtomicUsize::new(0),
            bytes: Arc::new(AtomicU64::new(0)),
            bookmark_ms: AtomicU64::new(0),
            failure: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
            events: Condvar::new(),
            events_lock: Mutex::new(()),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            listening: Mutex::new(true),
            listening_changed: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        shared.set_bookmark_interval(config.bookmark_interval);
        let control = match &config.control_socket {
            Some(path) => {
                let _ = std::fs::remove_file(path); // a stale socket of an earlier run
                let l = UnixListener::bind(path)?;
                let sh = shared.clone();
                let t = thread::Builder::new()
                    .name("standin-control".into())
                    .spawn(move || control_loop(&sh, l))?;
                Some((path.clone(), t))
            }
            None => None,
        };
        let sh = shared.clone();
        let acceptor = thread::Builder::new()
            .name("standin-accept".into())
            .spawn(move || accept_loop(&sh, listener))?;
        Ok(Server {
            shared,
            acceptor: Some(acceptor),
            control,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let sh = &self.shared;
        sh.shutdown.store(true, Ordering::SeqCst);
        sh.close_connections();
        sh.store.end_watches();
        sh.listening_changed.notify_all();
        sh.wake_acceptor();
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        if let Some((path, t)) = self.control.take() {
            let _ = UnixStream::connect(&path);
            let _ = t.join();
            let _ = std::fs::remove_file(path);
        }
    }
}

fn accept_loop(sh: &Arc<Shared>, listener: TcpListener) {
    let mut listener = Some(listener);
    while !sh.shutdown.load(Ordering::SeqCst) {
        if sh.wants_down() {
            if listener.take().is_some() {
                sh.set_listening(false);
            }
            let l = lock(&sh.listening);
            let _ = sh
                .listening_changed
                .wait_timeout(l, Duration::from_millis(20));
            continue;
        }
        let Some(l) = &listener else {
            match TcpListener::bind(sh.addr) {
                Ok(l) => {
                    listener = Some(l);
                    sh.set_listening(true);
                }
                Err(e) => {
                    eprintln!("kube-standin: re-opening {} failed: {e}; retrying", sh.addr);
                    thread::sleep(Duration::from_millis(100));
                }
            }
            continue;
        };
        match l.accept() {
            Ok((stream, _)) => {
                if sh.shutdown.load(Ordering::SeqCst) || sh.wants_down() {
                    continue; // the wake-up connection, or one that raced the close
                }
                let sh = sh.clone();
                let spawned = thread::Builder::new()
                    .name("standin-conn".into())
                    .spawn(move || serve_tcp(&sh, stream));
                if let Err(e) = spawned {
                    eprintln!("kube-standin: no thread for a connection: {e}");
                }
            }
            Err(e) => {
                eprintln!("kube-standin: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn control_loop(sh: &Arc<Shared>, listener: UnixListener) {
    for stream in listener.incoming() {
        if sh.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let sh = sh.clone();
        let _ = thread::Builder::new()
            .name("standin-ctl-conn".into())
            .spawn(move || {
                let Ok(r) = stream.try_clone() else { return };
                serve_conn(&sh, BufReader::new(r), stream, true);
            });
    }
}

fn serve_tcp(sh: &Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let id = sh.next_conn.fetch_add(1, Ordering::Relaxed);
    let (Ok(reader), Ok(registered)) = (stream.try_clone(), stream.try_clone()) else {
        return;
    };
    lock(&sh.conns).insert(id, registered);
    // A hang-up injected between accept and registration must still hit this one.
    if matches!(sh.failure(), Some(Failure::HangUp | Failure::Down)) {
        let _ = stream.shutdown(Shutdown::Both);
    }
    let writer = Counting::new(stream, sh.bytes.clone());
    serve_conn(
        sh,
        BufReader::with_capacity(16 * 1024, reader),
        writer,
        false,
    );
    lock(&sh.conns).remove(&id);
}

/// Where bytes go: counted (API answers) or not (control answers).
trait Sink: Write {
    fn set_counting(&mut self, on: bool);
}

impl<W: Write> Sink for Counting<W> {
    fn set_counting(&mut self, on: bool) {
        Counting::set_counting(self, on);
    }
}

impl Sink for UnixStream {
    fn set_counting(&mut self, _: bool) {}
}

fn serve_conn<R: Read, W: Sink>(sh: &Shared, mut r: BufReader<R>, w: W, control_only: bool) {
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    loop {
        let req = match read_request(&mut r, &mut w) {
            Ok(Some(req)) => req,
            Ok(None) | Err(ReadError::Io) => return,
            Err(ReadError::Bad(msg)) => {
                let _ = write_response(
                    &mut w,
                    400,
                    "application/json",
                    &[&status::bad_request(&msg)],
                    false,
                );
                return;
            }
        };
        let is_control = req.path == "/_standin" || req.path.starts_with("/_standin/");
        let keep = if is_control {
            w.get_mut().set_counting(false);
            control::serve(sh, &req, &mut w)
        } else if control_only {
            let body = status::path_not_found();
            write_response(&mut w, 404, "application/json", &[&body], req.keep_alive)
                .map(|_| req.keep_alive)
        } else {
            w.get_mut().set_counting(true);
            serve_api(sh, &req, &mut w)
        };
        match keep {
            Ok(true) if !sh.shutdown.load(Ordering::SeqCst) => {}
            _ => return,
        }
    }
}

/// Applies the injected failure, records the request, then lets [`api`] answer it.
fn serve_api<W: Write>(sh: &Shared, req: &Request, w: &mut W) -> io::Result<bool> {
    let route = Route::of(&req.path);
    let rbac = route.verb(req);
    let json = "application/json";
    let keep = req.keep_alive;
    let refuse = |w: &mut W, code: u16, body: Vec<u8>| -> io::Result<bool> {
        sh.record(req, &route, code);
        write_response(w, code, json, &[&body], keep)?;
        Ok(keep)
    };
    match sh.failure() {
        Some(Failure::HangUp | Failure::Down) => {
            sh.record(req, &route, 0);
            return Ok(false);
        }
        Some(Failure::InternalError) => return refuse(w, 500, status::internal_error()),
        Some(Failure::Forbidden { verbs }) => {
            if let Some((verb, resource)) = &rbac
                && (verbs.is_empty() || verbs.contains(verb))
            {
                let name = match &route {
                    Route::Nodes { name, .. } => name.as_deref(),
                    _ => None,
                };
                return refuse(w, 403, status::forbidden(*verb, resource, name));
            }
        }
        Some(Failure::WatchGone) if matches!(rbac, Some((Verb::Watch, _))) => {
            let rv = req
                .param("resourceVersion")
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            return refuse(w, 410, status::too_old(rv, sh.store.rv()));
        }
        _ => {}
    }
    api::serve(sh, req, &route, w, &|code| sh.record(req, &route, code))
}
