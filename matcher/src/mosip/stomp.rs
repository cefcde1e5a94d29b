//! A small STOMP 1.2 client: what the MOSIP adapter needs from ActiveMQ, nothing more
//! (CONNECT, SUBSCRIBE with `client-individual` acknowledgement and a prefetch, SEND with a
//! receipt, ACK, DISCONNECT). Our own rather than a crate: the STOMP crates on crates.io are
//! unmaintained or lack client acknowledgement and receipts, and an AMQP 1.0 client
//! (`fe2o3-amqp`) would add a large dependency tree for four frames (docs/mosip-abis.md).
//!
//! ActiveMQ maps a SEND without `content-length` to a JMS TextMessage (what MOSIP reads),
//! with one to a BytesMessage; both arrive here as the frame's body.

use std::collections::HashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// The largest frame accepted from the broker.
pub const MAX_FRAME: usize = 16 << 20;

/// One STOMP frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    pub command: String,
    /// Headers in order; a repeated header's first value counts (STOMP 1.2).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn new(command: &str) -> Frame {
        Frame { command: command.to_owned(), ..Frame::default() }
    }

    pub fn header(mut self, k: &str, v: &str) -> Frame {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }

    pub fn body(mut self, b: impl Into<Vec<u8>>) -> Frame {
        self.body = b.into();
        self
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    /// The frame's bytes. Headers are escaped except in CONNECT (STOMP 1.2). A body is sent
    /// without `content-length` unless `with_length` (a NUL in the body needs it).
    pub fn encode(&self, with_length: bool) -> Vec<u8> {
        let raw = self.command == "CONNECT";
        let mut out = Vec::with_capacity(64 + self.body.len());
        out.extend_from_slice(self.command.as_bytes());
        out.push(b'\n');
        for (k, v) in &self.headers {
            if raw {
                out.extend_from_slice(k.as_bytes());
                out.push(b':');
                out.extend_from_slice(v.as_bytes());
            } else {
                escape(k, &mut out);
                out.push(b':');
                escape(v, &mut out);
            }
            out.push(b'\n');
        }
        if with_length || self.body.contains(&0) {
            out.extend_from_slice(format!("content-length:{}\n", self.body.len()).as_bytes());
        }
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out.push(0);
        out
    }
}

fn escape(s: &str, out: &mut Vec<u8>) {
    for b in s.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b':' => out.extend_from_slice(b"\\c"),
            _ => out.push(b),
        }
    }
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('c') => out.push(':'),
            other => return Err(format!("bad header escape \\{other:?}")),
        }
    }
    Ok(out)
}

/// Take one frame off the front of `buf`, if a whole one is there. Heart-beat EOLs before a
/// frame are skipped. `Err`: the stream is not STOMP (or a frame is over [`MAX_FRAME`]).
pub fn decode(buf: &mut Vec<u8>) -> Result<Option<Frame>, String> {
    let skip = buf.iter().take_while(|&&b| b == b'\n' || b == b'\r').count();
    buf.drain(..skip);
    if buf.is_empty() {
        return Ok(None);
    }
    let Some(head_end) = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|p| (p, p + 2))
        .or_else(|| buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| (p, p + 4)))
    else {
        if buf.len() > MAX_FRAME {
            return Err("a frame header over the size limit".into());
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end.0]).map_err(|_| "a header is not UTF-8")?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let command = lines.next().unwrap_or("").to_owned();
    if command.is_empty() || !command.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "not a STOMP command: {:?}",
            command.chars().take(20).collect::<String>()
        ));
    }
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l.split_once(':').ok_or_else(|| format!("bad header line {l:?}"))?;
        let (k, v) = if command == "CONNECTED" {
            (k.to_owned(), v.to_owned())
        } else {
            (unescape(k)?, unescape(v)?)
        };
        headers.push((k, v));
    }
    let start = head_end.1;
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.trim().parse::<usize>().map_err(|_| "bad content-length".to_owned()))
        .transpose()?;
    let end = match length {
        Some(n) => {
            if n > MAX_FRAME {
                return Err("a frame body over the size limit".into());
            }
            if buf.len() < start + n + 1 {
                return Ok(None);
            }
            if buf[start + n] != 0 {
                return Err("a frame body does not end with NUL".into());
            }
            start + n
        }
        None => match buf[start..].iter().position(|&b| b == 0) {
            Some(p) => start + p,
            None if buf.len() - start > MAX_FRAME => {
                return Err("a frame body over the size limit".into())
            }
            None => return Ok(None),
        },
    };
    let body = buf[start..end].to_vec();
    buf.drain(..=end);
    Ok(Some(Frame { command, headers, body }))
}

/// The reading half of a connection.
#[derive(Debug)]
pub struct Reader {
    rd: OwnedReadHalf,
    buf: Vec<u8>,
}

impl Reader {
    /// The next frame; `Err` when the connection ends or breaks.
    pub async fn next(&mut self) -> Result<Frame, String> {
        loop {
            if let Some(f) = decode(&mut self.buf)? {
                return Ok(f);
            }
            let mut chunk = [0u8; 16 << 10];
            let n = self.rd.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the broker closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The writing half of a connection.
#[derive(Debug)]
pub struct Writer {
    wr: OwnedWriteHalf,
}

impl Writer {
    pub async fn send(&mut self, f: &Frame) -> Result<(), String> {
        self.wr.write_all(&f.encode(false)).await.map_err(|e| format!("write: {e}"))?;
        self.wr.flush().await.map_err(|e| format!("write: {e}"))
    }
}

/// Connect and log in; the broker's CONNECTED headers are returned with the halves.
pub async fn connect(
    addr: &str,
    login: Option<(&str, &str)>,
) -> Result<(Reader, Writer, HashMap<String, String>), String> {
    let stream = tokio::time::timeout(std::time::Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream.set_nodelay(true).ok();
    let (rd, wr) = stream.into_split();
    let (mut r, mut w) = (Reader { rd, buf: Vec::new() }, Writer { wr });
    let mut c = Frame::new("CONNECT")
        .header("accept-version", "1.2")
        .header("host", "localhost")
        .header("heart-beat", "0,0");
    if let Some((user, pass)) = login {
        c = c.header("login", user).header("passcode", pass);
    }
    w.send(&c).await?;
    let f = tokio::time::timeout(std::time::Duration::from_secs(10), r.next())
        .await
        .map_err(|_| "no CONNECTED from the broker within 10 s".to_owned())??;
    match f.command.as_str() {
        "CONNECTED" => Ok((r, w, f.headers.into_iter().collect())),
        "ERROR" => {
            Err(format!("the broker refused the connection: {}", f.get("message").unwrap_or("")))
        }
        other => Err(format!("unexpected {other} frame instead of CONNECTED")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let f = Frame::new("SEND")
            .header("destination", "/queue/a:b")
            .header("x", "line\nbreak\\")
            .body(b"{\"id\":1}".to_vec());
        let mut bytes = f.encode(false);
        assert!(!String::from_utf8_lossy(&bytes).contains("content-length"));
        bytes.extend_from_slice(b"\n\n"); // heart-beats after it
        bytes.extend_from_slice(&Frame::new("ACK").header("id", "7").encode(true));
        let mut buf = bytes.clone();
        assert_eq!(decode(&mut buf).unwrap().unwrap(), f);
        let ack = decode(&mut buf).unwrap().unwrap();
        assert_eq!((ack.command.as_str(), ack.get("id"), ack.body.len()), ("ACK", Some("7"), 0));
        assert_eq!(decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
        // Byte by byte: nothing until the whole frame is there.
        let mut buf = Vec::new();
        let one = f.encode(true);
        for (i, b) in one.iter().enumerate() {
            buf.push(*b);
            let got = decode(&mut buf).unwrap();
            assert_eq!(got.is_some(), i == one.len() - 1);
        }
    }

    #[test]
    fn bodies_with_nul_use_content_length_and_first_header_wins() {
        let f = Frame::new("MESSAGE").header("k", "1").header("k", "2").body(vec![1, 0, 2]);
        let mut buf = f.encode(false);
        let g = decode(&mut buf).unwrap().unwrap();
        assert_eq!((g.get("k"), g.body.as_slice()), (Some("1"), [1u8, 0, 2].as_slice()));
        // CRLF line ends are accepted.
        let mut buf = b"MESSAGE\r\nid:3\r\n\r\nhi\0".to_vec();
        let g = decode(&mut buf).unwrap().unwrap();
        assert_eq!((g.get("id"), g.body.as_slice()), (Some("3"), b"hi".as_slice()));
    }

    #[test]
    fn garbage_is_an_error_not_a_hang() {
        assert!(decode(&mut b"hello world\n\n\0".to_vec()).is_err());
        assert!(decode(&mut b"MESSAGE\nbad\n\n\0".to_vec()).is_err());
        assert!(decode(&mut b"MESSAGE\ncontent-length:2\n\nabc\0".to_vec()).is_err());
        assert!(decode(&mut b"MESSAGE\nk:\\x\n\n\0".to_vec()).is_err());
    }
}
