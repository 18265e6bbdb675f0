//! A plain HTTP/1.1 client for the tests: whole responses, and watch streams read
//! chunk by chunk, line by line, as kube-rs reads them.

#![allow(dead_code)] // each test binary uses part of it

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

fn read_head(r: &mut impl BufRead) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok((status, headers))
}

fn read_chunk(r: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let size = usize::from_str_radix(line.trim(), 16)
        .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
    let mut data = vec![0; size + 2];
    r.read_exact(&mut data)?;
    data.truncate(size);
    Ok((size > 0).then_some(data))
}

/// One request on an open connection; the response body read whole (chunked too).
pub fn exchange(
    r: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
    body: &[u8],
) -> io::Result<Response> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nUser-Agent: standin-test/1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let s = r.get_mut();
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let (status, headers) = read_head(r)?;
    let resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let mut body = Vec::new();
    if resp
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        while let Some(c) = read_chunk(r)? {
            body.extend(c);
        }
    } else {
        let len: usize = resp
            .header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    }
    Ok(Response { body, ..resp })
}

pub fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).expect("connect to the stand-in");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    BufReader::new(s)
}

pub fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Response {
    exchange(&mut connect(addr), method, path, body).expect("request")
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, b"")
}

pub fn get_json(addr: SocketAddr, path: &str) -> Value {
    let r = get(addr, path);
    assert_eq!(
        r.status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

/// A watch stream, read one event (line) at a time.
pub struct Watch {
    r: BufReader<TcpStream>,
    pending: Vec<u8>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    ended: bool,
}

impl Watch {
    pub fn open(addr: SocketAddr, path: &str) -> Watch {
        let mut r = connect(addr);
        let head = format!("GET {path} HTTP/1.1\r\nHost: t\r\nUser-Agent: standin-test/1\r\n\r\n");
        r.get_mut().write_all(head.as_bytes()).unwrap();
        let (status, headers) = read_head(&mut r).expect("watch response head");
        Watch {
            r,
            pending: Vec::new(),
            status,
            headers,
            ended: false,
        }
    }

    /// The next event, `None` at the clean end of the stream; panics on a timeout.
    pub fn next(&mut self, timeout: Duration) -> Option<Value> {
        self.r.get_ref().set_read_timeout(Some(timeout)).unwrap();
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).expect("event is JSON"));
            }
            if self.ended {
                assert!(self.pending.is_empty(), "partial line at the end");
                return None;
            }
            match read_chunk(&mut self.r) {
                Ok(Some(c)) => self.pending.extend(c),
                Ok(None) => self.ended = true,
                Err(e) => panic!("watch stream: {e}"),
            }
        }
    }

    /// The next event that is not a BOOKMARK.
    pub fn next_change(&mut self, timeout: Duration) -> Option<Value> {
        loop {
            let ev = self.next(timeout)?;
            if ev["type"] != "BOOKMARK" {
                return Some(ev);
            }
        }
    }

    /// Whether the server broke the connection (no clean end) within `timeout`.
    pub fn broken(&mut self, timeout: Duration) -> bool {
        self.r.get_ref().set_read_timeout(Some(timeout)).unwrap();
        loop {
            match read_chunk(&mut self.r) {
                Ok(Some(_)) => continue,
                Ok(None) => return false,
                Err(e) => {
                    return e.kind() != io::ErrorKind::WouldBlock
                        && e.kind() != io::ErrorKind::TimedOut;
                }
            }
        }
    }
}

pub const T: Duration = Duration::from_secs(10);

/// `(type, name, resourceVersion)` of an event.
pub fn summary(ev: &Value) -> (String, String, String) {
    (
        ev["type"].as_str().unwrap_or_default().to_string(),
        ev["object"]["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        ev["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}
