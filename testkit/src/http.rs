//! A minimal blocking HTTP/1.1 client for tests that drive a real server over loopback: one
//! connection per request (`Connection: close`), a timeout on every step, responses read whole
//! (chunked or with a length) and one cut short reported as an error, never as an answer.

use serde_json::Value;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// The Retry-After header, in seconds.
    pub retry_after: Option<u64>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Status and body, for assertion messages.
    pub fn summary(&self) -> String {
        format!("{} {}", self.status, String::from_utf8_lossy(&self.body))
    }
}

fn io_err(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, msg.into())
}

/// One request with `headers` (and a JSON `body` for POST), `timeout` for connecting, writing
/// and reading. Any error (refused, reset, timed out, cut short) means "no answer": the caller
/// cannot know whether the server acted on it.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(2)))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or_default();
    if method == "POST" || method == "PUT" {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut msg = head.into_bytes();
    msg.extend_from_slice(body);
    s.write_all(&msg)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// A JSON request; `None` when no answer came (see [`request`]).
pub fn json(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Option<Response> {
    let bytes = body.map(|b| serde_json::to_vec(b).expect("serialisable"));
    request(addr, method, path, &[], bytes.as_deref(), Duration::from_secs(30)).ok()
}

/// Parse a complete response; one cut short (the server died while sending) is an error.
fn parse_response(raw: &[u8]) -> io::Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io_err(format!("response cut short in its head ({} bytes)", raw.len())))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| io_err("response head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io_err("bad status line"))?;
    let (mut length, mut chunked, mut retry_after) = (None, false, None);
    for l in lines {
        let Some((name, value)) = l.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("retry-after") {
            retry_after = value.parse::<u64>().ok();
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        if rest.len() != n {
            return Err(io_err(format!("body of {} bytes, {n} announced", rest.len())));
        }
        rest.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, retry_after, body })
}

fn dechunk(mut rest: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(|| io_err("chunk cut"))?;
        let size = std::str::from_utf8(&rest[..nl])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .ok_or_else(|| io_err("bad chunk size"))?;
        rest = &rest[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            return Err(io_err("chunk cut"));
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}
