//! Just enough HTTP/1.1 for Kubernetes clients: persistent connections, requests with a
//! `Content-Length` body (and `Expect: 100-continue`, as curl sends for large bodies),
//! responses with a `Content-Length` body or a chunked stream (watches).

use std::io::{self, BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A request line plus the headers we act on. Query values are percent-decoded.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The query string as sent (without `?`), for the request log.
    pub raw_query: String,
    pub query: Vec<(String, String)>,
    pub user_agent: Option<String>,
    pub accept: Option<String>,
    pub body: Vec<u8>,
    /// HTTP/1.1 without `Connection: close`.
    pub keep_alive: bool,
}

impl Request {
    /// The last value of a query parameter (the API server takes the last one too).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter as the API server parses it: `true`/`1` (any case) is true.
    pub fn flag(&self, name: &str) -> Option<bool> {
        self.param(name)
            .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
    }
}

const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Enough for a bulk upload of 5 000+ Nodes through the control API.
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// Why a request could not be read. `Bad` gets a 400 answer before the connection closes.
#[derive(Debug)]
pub enum ReadError {
    /// The connection broke or closed mid-request: nothing to answer.
    Io,
    Bad(String),
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        ReadError::Io
    }
}

/// Reads one request. `Ok(None)` is a clean end of the connection between requests.
/// `interim` receives `100 Continue` when the client asks for it.
pub fn read_request<R: BufRead, W: Write>(
    r: &mut R,
    interim: &mut W,
) -> Result<Option<Request>, ReadError> {
    let mut line = String::new();
    // Tolerate empty lines before a request line (RFC 9112 section 2.2).
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim_end().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad(format!(
            "malformed request line {:?}",
            line.trim_end()
        )));
    };
    let (method, target, version) = (method.to_string(), target.to_string(), version.to_string());

    let mut header_bytes = line.len();
    let mut content_length = 0usize;
    let mut user_agent = None;
    let mut accept = None;
    let mut connection_close = version == "HTTP/1.0";
    let mut expect_continue = false;
    loop {
        line.clear();
        let n = r.read_line(&mut line)?;
        if n == 0 {
            return Err(ReadError::Io);
        }
        header_bytes += n;
        if header_bytes > MAX_HEADER_BYTES {
            return Err(ReadError::Bad("request headers too large".into()));
        }
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        let Some((name, value)) = h.split_once(':') else {
            return Err(ReadError::Bad(format!("malformed header {h:?}")));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                content_length = value
                    .parse()
                    .map_err(|_| ReadError::Bad(format!("bad Content-Length {value:?}")))?;
            }
            "transfer-encoding" if !value.eq_ignore_ascii_case("identity") => {
                return Err(ReadError::Bad(
                    "chunked request bodies are not supported: send Content-Length".into(),
                ));
            }
            "user-agent" => user_agent = Some(value.to_string()),
            "accept" => accept = Some(value.to_string()),
            "connection" => {
                if value.eq_ignore_ascii_case("close") {
                    connection_close = true;
                } else if value.eq_ignore_ascii_case("keep-alive") {
                    connection_close = false;
                }
            }
            "expect" => expect_continue = value.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
    }
    if content_length > MAX_BODY_BYTES {
        return Err(ReadError::Bad(format!(
            "request body of {content_length} bytes is too large"
        )));
    }
    if expect_continue && content_length > 0 {
        interim.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        interim.flush()?;
    }
    let mut body = vec![0; content_length];
    r.read_exact(&mut body)?;

    let (path, raw_query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.clone(), String::new()),
    };
    let query = parse_query(&raw_query);
    Ok(Some(Request {
        method,
        path: percent_decode(&path),
        raw_query,
        query,
        user_agent,
        accept,
        body,
        keep_alive: !connection_close,
    }))
}

/// `a=1&&b=x%3Dy` → `[("a","1"), ("b","x=y")]`; kube-rs starts its queries with `&`.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(kv), String::new()),
        })
        .collect()
}

/// Form-style decoding: `%XX` and `+` for a space. A bad escape is kept as written.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

fn head(status: u16, content_type: &str, keep_alive: bool) -> String {
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nCache-Control: no-cache, private\r\n",
        reason_phrase(status)
    );
    if !keep_alive {
        h.push_str("Connection: close\r\n");
    }
    h
}

/// A whole response; the body comes in pieces so a list is never copied into one buffer.
pub fn write_response<W: Write>(
    w: &mut W,
    status: u16,
    content_type: &str,
    body: &[&[u8]],
    keep_alive: bool,
) -> io::Result<()> {
    let len: usize = body.iter().map(|p| p.len()).sum();
    let mut h = head(status, content_type, keep_alive);
    h.push_str(&format!("Content-Length: {len}\r\n\r\n"));
    w.write_all(h.as_bytes())?;
    for p in body {
        w.write_all(p)?;
    }
    w.flush()
}

/// A chunked response body: [`Chunked::chunk`] per piece, then [`Chunked::finish`].
pub struct Chunked<'a, W: Write> {
    w: &'a mut W,
}

impl<'a, W: Write> Chunked<'a, W> {
    pub fn start(w: &'a mut W, status: u16, content_type: &str) -> io::Result<Self> {
        let mut h = head(status, content_type, true);
        h.push_str("Transfer-Encoding: chunked\r\n\r\n");
        w.write_all(h.as_bytes())?;
        w.flush()?;
        Ok(Chunked { w })
    }

    /// One chunk made of `parts`, not yet flushed.
    pub fn chunk(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len == 0 {
            return Ok(());
        }
        write!(self.w, "{len:x}\r\n")?;
        for p in parts {
            self.w.write_all(p)?;
        }
        self.w.write_all(b"\r\n")
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }

    pub fn finish(self) -> io::Result<()> {
        self.w.write_all(b"0\r\n\r\n")?;
        self.w.flush()
    }
}

/// Counts what goes out into a total shared by the whole server (the "bytes read from
/// the API server" figure).
pub struct Counting<W> {
    inner: W,
    total: Arc<AtomicU64>,
    counting: bool,
}

impl<W> Counting<W> {
    pub fn new(inner: W, total: Arc<AtomicU64>) -> Self {
        Counting {
            inner,
            total,
            counting: true,
        }
    }

    /// Whether what is written from now on counts (control answers do not).
    pub fn set_counting(&mut self, on: bool) {
        self.counting = on;
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if self.counting {
            self.total.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    fn parse(raw: &str) -> Request {
        let mut sink = Vec::new();
        read_request(&mut BufReader::new(raw.as_bytes()), &mut sink)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn query_is_decoded_and_leading_ampersand_ignored() {
        let r = parse(
            "GET /api/v1/nodes?&watch=true&fieldSelector=metadata.name%3Dn1&labelSelector=a+in+(x,y) HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert_eq!(r.path, "/api/v1/nodes");
        assert_eq!(r.flag("watch"), Some(true));
        assert_eq!(r.param("fieldSelector"), Some("metadata.name=n1"));
        assert_eq!(r.param("labelSelector"), Some("a in (x,y)"));
        assert!(r.keep_alive);
    }

    #[test]
    fn body_and_expect_continue() {
        let mut interim = Vec::new();
        let raw = "POST /x HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n{}";
        let r = read_request(&mut BufReader::new(raw.as_bytes()), &mut interim)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, b"{}");
        assert!(!r.keep_alive);
        assert!(
            String::from_utf8(interim)
                .unwrap()
                .starts_with("HTTP/1.1 100")
        );
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%41%42"), "AB");
        assert_eq!(percent_decode("a+b%3Dc%26%00"), "a b=c&\u{0}");
    }
}
