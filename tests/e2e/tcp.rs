//! TCP from inside network namespaces without extra tools: a thread enters the namespace
//! (`setns` changes only the calling thread's namespace), so its sockets live there.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Runs `f` on a fresh thread that has entered the network namespace at `netns`.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let file = File::open(netns).map_err(|e| format!("open {}: {e}", netns.display()))?;
    let shown = netns.display().to_string();
    thread::spawn(move || {
        // SAFETY: setns on a descriptor we own; it affects only this new thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "setns {shown}: {}",
                std::io::Error::last_os_error()
            ));
        }
        f()
    })
    .join()
    .map_err(|_| "thread in netns panicked".to_owned())?
}

/// A server inside a namespace that answers every connection with
/// `"<greeting> <peer address>\n"` and remembers the peers, until dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    peers: Arc<Mutex<Vec<IpAddr>>>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on `[::]:port` (IPv4 too: a new namespace has `bindv6only=0`).
    pub fn start(netns: &Path, port: u16, greeting: &str) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let file = File::open(netns).unwrap_or_else(|e| panic!("open {}: {e}", netns.display()));
        let (stop2, peers2, greeting) = (stop.clone(), peers.clone(), greeting.to_owned());
        let handle = thread::spawn(move || {
            // SAFETY: as in `in_netns`.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = ready_tx.send(Err(format!("setns: {}", std::io::Error::last_os_error())));
                return;
            }
            let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
            let listener = match TcpListener::bind(addr).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            }) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("bind {addr}: {e}")));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let ip = peer.ip().to_canonical();
                        peers2.lock().unwrap_or_else(|p| p.into_inner()).push(ip);
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
                        let _ = writeln!(conn, "{greeting} {ip}");
                        let _ = conn.shutdown(Shutdown::Both);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("server in {}: {e}", netns.display()),
            Err(_) => panic!("server in {} did not start", netns.display()),
        }
        Server {
            stop,
            peers,
            handle: Some(handle),
        }
    }

    /// The client addresses seen so far, in order (IPv4-mapped shown as IPv4).
    pub fn peers(&self) -> Vec<IpAddr> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One request from inside `netns` to `to`: connects and reads the answer to EOF.
/// Retries for up to 6 s (a gateway's IPv6 address may still be tentative, a first ARP
/// or ND round may be lost); every attempt is bounded by 2 s timeouts.
pub fn request(netns: &Path, to: SocketAddr) -> Result<String, String> {
    let path: PathBuf = netns.to_path_buf();
    in_netns(&path, move || {
        let deadline = Instant::now() + Duration::from_secs(6);
        let mut last = String::new();
        while Instant::now() < deadline {
            match once(to) {
                Ok(text) if !text.is_empty() => return Ok(text),
                Ok(_) => last = "empty answer".to_owned(),
                Err(e) => last = e,
            }
            thread::sleep(Duration::from_millis(200));
        }
        Err(format!("request to {to}: {last}"))
    })
}

fn once(to: SocketAddr) -> Result<String, String> {
    let timeout = Duration::from_secs(2);
    let mut conn = TcpStream::connect_timeout(&to, timeout).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    conn.read_to_string(&mut text).map_err(|e| e.to_string())?;
    Ok(text.trim().to_owned())
}
