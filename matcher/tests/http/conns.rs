//! The connection layer over a real socket (`conn::serve_connections` on 127.0.0.1:0): header
//! and idle timeouts, slow request bodies, the connection limit. Bounds are generous: each
//! check is "closed after the configured timeout, and well before a multiple of it".

use crate::common::*;
use biomatch_matcher::config::Config;
use biomatch_matcher::conn::{serve_connections, ConnLimits};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A TestApp served on a real socket until dropped.
struct Served {
    app: TestApp,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn served(f: impl FnOnce(&mut Config)) -> Served {
    let app = TestApp::with_config(config_with(f), true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = biomatch_matcher::app(app.state.clone());
    let limits = ConnLimits::from_config(&app.state.config.limits);
    let task = tokio::spawn(serve_connections(listener, router, limits, async {
        let _ = stopped.await;
    }));
    Served { app, addr, stop: Some(stop), task: Some(task) }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Block until the server closes `s` (EOF or reset), discarding what it sends; the time taken
/// and what was read.
fn until_closed(s: &mut TcpStream) -> (Duration, String) {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return (t0.elapsed(), String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Read one HTTP/1.1 response with a Content-Length body: status and body.
fn read_response(s: &mut TcpStream) -> (u16, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before a full response: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0usize);
            if body.len() >= len {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, body[..len].to_owned());
            }
        }
    }
}

fn request(method: &str, path: &str, key: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Run blocking socket code off the async threads (the server runs on them).
async fn off<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_after_their_timeouts() {
    let s = served(|c| {
        c.limits.header_read_timeout_ms = 600;
        c.limits.idle_timeout_ms = 2_000;
    })
    .await;
    let addr = s.addr;
    off(move || {
        // A head sent a byte every 100 ms never completes: closed ~600 ms after its first byte.
        let mut c = connect(addr);
        let writer = {
            let mut w = c.try_clone().unwrap();
            std::thread::spawn(move || {
                for b in b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaa" {
                    if w.write_all(&[*b]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let (t, _) = until_closed(&mut c);
        assert!(t >= Duration::from_millis(500) && t < Duration::from_millis(3_000), "{t:?}");
        writer.join().unwrap();

        // A connection that sends nothing is closed after the header timeout too.
        let mut c = connect(addr);
        let (t, got) = until_closed(&mut c);
        assert!(t >= Duration::from_millis(500) && t < Duration::from_millis(3_000), "{t:?}");
        assert!(got.is_empty(), "{got}");

        // Keep-alive: answered, then idle for the idle timeout (longer than the header one).
        let mut c = connect(addr);
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut c).0, 200);
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut c).0, 200, "the connection is reused");
        let (t, _) = until_closed(&mut c);
        assert!(t >= Duration::from_millis(1_800) && t < Duration::from_millis(5_000), "{t:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_gets_408_and_never_holds_a_slot() {
    let s = served(|c| {
        c.limits.max_concurrent = 1;
        c.limits.body_timeout_ms = 1_500;
        c.limits.body_grace_ms = 400;
        c.limits.body_min_bytes_per_s = 1_000;
    })
    .await;
    s.app.post("/v1/subjects", ISSUER, enroll_body("C1", 1)).await;
    let addr = s.addr;
    off(move || {
        let verify = serde_json::json!({ "subject_id": "C1", "face": face(probe_vector(1)) });
        let verify = request("POST", "/v1/verify", BANK, &verify.to_string());

        // Stalls after a few bytes of a 10 000-byte body: below 1000 B/s once the 400 ms grace
        // is over.
        let mut slow = connect(addr);
        let head = request("POST", "/v1/verify", BANK, &"x".repeat(10_000));
        slow.write_all(&head.as_bytes()[..head.len() - 9_990]).unwrap();
        // Meanwhile, with max_concurrent = 1, well-behaved requests are answered, not shed.
        let t0 = Instant::now();
        for _ in 0..3 {
            let mut good = connect(addr);
            good.write_all(verify.as_bytes()).unwrap();
            let (status, body) = read_response(&mut good);
            assert_eq!(status, 200, "{body}");
        }
        assert!(t0.elapsed() < Duration::from_millis(400), "before the slow body's deadline");
        let (status, body) = read_response(&mut slow);
        let t = t0.elapsed();
        assert_eq!(status, 408, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["code"], "request_timeout", "{v}");
        assert!(v["message"].as_str().unwrap().contains("bytes/s"), "{v}");
        assert!(t < Duration::from_millis(3_000), "{t:?}");
        // …and the connection is closed.
        let (t, _) = until_closed(&mut slow);
        assert!(t < Duration::from_secs(2), "{t:?}");

        // Fast enough for the rate (2000 B/s) but not done within body_timeout_ms.
        let mut steady = connect(addr);
        let head = request("POST", "/v1/verify", BANK, &"x".repeat(10_000));
        let (hdr, body) = head.split_at(head.len() - 10_000);
        steady.write_all(hdr.as_bytes()).unwrap();
        let mut w = steady.try_clone().unwrap();
        let body = body.to_owned();
        let writer = std::thread::spawn(move || {
            for chunk in body.as_bytes().chunks(200) {
                if w.write_all(chunk).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let t0 = Instant::now();
        let (status, body) = read_response(&mut steady);
        let t = t0.elapsed();
        assert_eq!(status, 408, "{body}");
        assert!(body.contains("within 1500 ms"), "{body}");
        assert!(t >= Duration::from_millis(1_300) && t < Duration::from_millis(4_000), "{t:?}");
        drop(steady);
        writer.join().unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_get_503_and_a_slot_frees_on_close() {
    let s = served(|c| {
        c.limits.max_connections = 2;
        c.limits.header_read_timeout_ms = 20_000;
    })
    .await;
    let addr = s.addr;
    off(move || {
        let mut a = connect(addr);
        a.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut a).0, 200);
        let b = connect(addr);
        std::thread::sleep(Duration::from_millis(100));
        let mut c = connect(addr);
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let (status, body) = read_response(&mut c);
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("\"overloaded\""), "{body}");
        drop((a, b));
        // The slots come back once the server sees the closes.
        let t0 = Instant::now();
        loop {
            let mut d = connect(addr);
            d.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            if read_response(&mut d).0 == 200 {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "no slot came back");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await;
}

/// Shutdown stops the accepting, closes idle keep-alive connections at once and lets a request
/// in flight (here: its body still arriving) finish and be answered; then the loop returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight() {
    let mut s = served(|_| {}).await;
    s.app.post("/v1/subjects", ISSUER, enroll_body("G1", 1)).await;
    let addr = s.addr;
    let verify = serde_json::json!({ "subject_id": "G1", "face": face(probe_vector(1)) });
    let req = request("POST", "/v1/verify", BANK, &verify.to_string());
    let head = req.as_bytes()[..req.len() - 100].to_vec();
    let (mut busy, mut idle) = off(move || {
        let mut idle = connect(addr);
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut idle).0, 200);
        let mut busy = connect(addr);
        busy.write_all(&head).unwrap();
        (busy, idle)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = s.stop.take().unwrap().send(());
    let task = s.task.take().unwrap();
    off(move || {
        // The idle connection is closed at once; no new connection is accepted.
        let (t, _) = until_closed(&mut idle);
        assert!(t < Duration::from_secs(2), "{t:?}");
        std::thread::sleep(Duration::from_millis(100));
        assert!(TcpStream::connect(addr).is_err(), "still accepting");
        // The request in flight gets its answer.
        busy.write_all(&req.as_bytes()[req.len() - 100..]).unwrap();
        let (status, body) = read_response(&mut busy);
        assert_eq!(status, 200, "{body}");
    })
    .await;
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap().unwrap();
}
