//! End to end: a real ActiveMQ broker (`scripts/activemq.sh`, loopback, its data in a temp
//! dir), the real `biomatch serve` with the MOSIP adapter on, CBEFF documents served by a
//! loopback HTTP server in this test; Insert / Identify / Delete / Ping / PendingJobs /
//! ReferenceCount sent through the inbound queue, responses read from the outbound queue.
//!
//! Needs the Debian package `activemq` and a JRE (`scripts/setup.sh` installs them).

use base64::Engine as _;
use biomatch_fingerprint::iso;
use biomatch_matcher::mosip::stomp::{self, Frame};
use biomatch_testkit::fixtures;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const INBOUND: &str = "test-mosip-to-abis";
const OUTBOUND: &str = "test-abis-to-mosip";
const FINGERS: [u8; 4] = [1, 2, 6, 7];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The broker, stopped (by the script) when dropped, also when the test fails.
struct Broker {
    dir: PathBuf,
    port: u16,
}

impl Broker {
    fn start(dir: &Path) -> Broker {
        let out = Command::new(root().join("scripts/activemq.sh"))
            .arg("start")
            .arg(dir)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/activemq.sh");
        assert!(
            out.status.success(),
            "scripts/activemq.sh start failed (ActiveMQ and a JRE come with scripts/setup.sh)"
        );
        let port = String::from_utf8_lossy(&out.stdout).trim().parse().expect("the STOMP port");
        Broker { dir: dir.to_owned(), port }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ =
            Command::new(root().join("scripts/activemq.sh")).arg("stop").arg(&self.dir).status();
    }
}

/// `biomatch serve`, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    r.split_whitespace().nth(1)?.parse().ok()
}

/// A loopback HTTP server answering GET `path` from a fixed table (404 otherwise); paths
/// starting with `/slow` are answered after 1.5 s.
fn serve_files(files: HashMap<String, Vec<u8>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let files = Arc::new(files);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let files = files.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                if path.starts_with("/slow") {
                    // Long enough for the test to kill the ABIS while it waits for this.
                    std::thread::sleep(Duration::from_millis(1500));
                }
                let (status, body) = match files.get(&path) {
                    Some(b) => ("200 OK", b.clone()),
                    None => ("404 Not Found", b"not found".to_vec()),
                };
                let _ = write!(
                    c,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = c.write_all(&body);
            });
        }
    });
    port
}

fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

fn bir(ty: &str, subtype: &str, format: u32, data: &[u8]) -> String {
    format!(
        "<BIR><Version><Major>1</Major><Minor>1</Minor></Version><CBEFFVersion><Major>1</Major>\
         <Minor>1</Minor></CBEFFVersion><BIRInfo><Integrity>false</Integrity></BIRInfo><BDBInfo>\
         <Format><Organization>Mosip</Organization><Type>{format}</Type></Format><CreationDate>\
         2019-06-27T13:40:06.209Z</CreationDate><Type>{ty}</Type><Subtype>{subtype}</Subtype>\
         <Level>Raw</Level><Purpose>Enroll</Purpose></BDBInfo><BDB>{}</BDB></BIR>",
        b64(data)
    )
}

fn cbeff(birs: &[String]) -> Vec<u8> {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<BIR xmlns=\"http://standards.iso.org/\
         iso-iec/19785/-3/ed-2/\"><BIRInfo><Integrity>false</Integrity></BIRInfo>{}</BIR>",
        birs.concat()
    )
    .into_bytes()
}

const SUBTYPES: [&str; 11] = [
    "",
    "Right Thumb",
    "Right IndexFinger",
    "Right MiddleFinger",
    "Right RingFinger",
    "Right LittleFinger",
    "Left Thumb",
    "Left IndexFinger",
    "Left MiddleFinger",
    "Left RingFinger",
    "Left LittleFinger",
];

/// A person's ten-print CBEFF (four fingers as ISO 19794-2 minutiae records), plus an iris
/// BIR this ABIS skips.
fn person(seed: u64) -> Vec<u8> {
    let mut birs: Vec<String> = FINGERS
        .iter()
        .map(|&p| {
            let t = biomatch_testkit::fingers::finger_template(seed * 16 + u64::from(p), p, 40);
            bir("Finger", SUBTYPES[p as usize], 2, &iso::to_iso(&t))
        })
        .collect();
    birs.push(bir("Iris", "Left", 9, b"IIR\0 not matched here"));
    cbeff(&birs)
}

fn blank_png() -> Vec<u8> {
    let img = image::GrayImage::from_pixel(300, 300, image::Luma([128u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn now() -> &'static str {
    "2026-01-01T00:00:00.000Z"
}

fn req(id: &str, request_id: &str, extra: Value) -> String {
    let mut v = json!({"id": id, "version": "1.1", "requestId": request_id, "requesttime": now()});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

struct Client {
    rt: tokio::runtime::Runtime,
    reader: stomp::Reader,
    writer: stomp::Writer,
    /// Responses by requestId ("" for those without one).
    got: HashMap<String, Value>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (reader, writer) = rt.block_on(async {
            let (r, mut w, _) = stomp::connect(&format!("127.0.0.1:{port}"), None).await.unwrap();
            w.send(
                &Frame::new("SUBSCRIBE")
                    .header("id", "t")
                    .header("destination", &format!("/queue/{OUTBOUND}"))
                    .header("ack", "auto"),
            )
            .await
            .unwrap();
            (r, w)
        });
        Client { rt, reader, writer, got: HashMap::new() }
    }

    /// Send raw bodies to the inbound queue, as JMS text messages.
    fn send(&mut self, bodies: &[String]) {
        let dest = format!("/queue/{INBOUND}");
        self.rt.block_on(async {
            for b in bodies {
                let f = Frame::new("SEND")
                    .header("destination", &dest)
                    .header("persistent", "true")
                    .body(b.clone().into_bytes());
                self.writer.send(&f).await.unwrap();
            }
        });
    }

    /// Wait until a response for every id in `ids` is in.
    fn wait_for(&mut self, ids: &[&str], within: Duration) {
        let t0 = Instant::now();
        while ids.iter().any(|i| !self.got.contains_key(*i)) {
            let left = within.checked_sub(t0.elapsed()).unwrap_or_else(|| {
                let missing: Vec<_> = ids.iter().filter(|i| !self.got.contains_key(**i)).collect();
                panic!("no responses for {missing:?} within {within:?}")
            });
            let f = self
                .rt
                .block_on(async { tokio::time::timeout(left, self.reader.next()).await })
                .unwrap_or_else(|_| panic!("no responses for some of {ids:?} within {within:?}"))
                .expect("the broker connection");
            if f.command != "MESSAGE" {
                continue;
            }
            let v: Value = serde_json::from_slice(&f.body).expect("a JSON response");
            let rid = v.get("requestId").and_then(Value::as_str).unwrap_or("").to_owned();
            assert!(self.got.insert(rid.clone(), v).is_none(), "two responses for {rid:?}");
        }
    }

    fn response(&self, id: &str) -> &Value {
        &self.got[id]
    }
}

/// Assert a failure with `reason`.
fn failed(c: &Client, id: &str, reason: u8) {
    let v = c.response(id);
    assert_eq!(v["returnValue"], "2", "{id}: {v}");
    assert_eq!(v["failureReason"], reason.to_string(), "{id}: {v}");
}

fn ok(c: &Client, id: &str) -> Value {
    let v = c.response(id).clone();
    assert_eq!(v["returnValue"], "1", "{id}: {v}");
    assert!(v.get("failureReason").is_none(), "{id}: {v}");
    v
}

fn candidates(c: &Client, id: &str) -> Vec<String> {
    let v = ok(c, id);
    let list = &v["candidateList"];
    let ids: Vec<String> = list["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["referenceId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(list["count"], ids.len().to_string(), "{id}: {v}");
    ids
}

#[test]
fn mosip_abis_over_activemq() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("amq"));

    let closed_port = biomatch_testkit::free_port();
    let mut files = HashMap::new();
    files.insert("/a.xml".to_owned(), person(1));
    files.insert("/a-copy.xml".to_owned(), person(1));
    files.insert("/b.xml".to_owned(), person(2));
    files.insert("/c.xml".to_owned(), person(3));
    files.insert("/slow.xml".to_owned(), person(4));
    files.insert("/malformed.xml".to_owned(), b"<BIR><BIR><BDB>oops".to_vec());
    files.insert("/empty.xml".to_owned(), cbeff(&[]));
    files
        .insert("/garbage-bdb.xml".to_owned(), cbeff(&[bir("Finger", "Right Thumb", 2, b"hello")]));
    files.insert("/blank.xml".to_owned(), cbeff(&[bir("Finger", "Right Thumb", 7, &blank_png())]));
    files.insert(
        "/expired.xml".to_owned(),
        br#"{"id":null,"errors":[{"errorCode":"DAT-SER-006","message":"Data share usage expired"}]}"#
            .to_vec(),
    );
    let files_port = serve_files(files);
    let url = |p: &str| format!("http://127.0.0.1:{files_port}{p}");

    let log = dir.path().join("biomatch.log");
    let start_server = || {
        let listen = biomatch_testkit::free_port();
        let server = Server(
            Command::new(env!("CARGO_BIN_EXE_biomatch"))
                .args(["serve", "--data"])
                .arg(dir.path().join("store"))
                .args(["--listen", &format!("127.0.0.1:{listen}")])
                .env("BIOMATCH_LOG", "info")
                // Face images in CBEFF go through the real extractor (YuNet + SFace).
                .env("BIOMATCH__EXTRACTORS__FACE__ENABLED", "true")
                .env("BIOMATCH_MODELS_DIR", fixtures::setup_dir().join("models"))
                .env(
                    "ORT_DYLIB_PATH",
                    fixtures::setup_dir().join("onnxruntime/libonnxruntime.so.1.31.1"),
                )
                .env("BIOMATCH__MOSIP__ENABLED", "true")
                .env("BIOMATCH__MOSIP__BROKER_URL", format!("stomp://127.0.0.1:{}", broker.port))
                .env("BIOMATCH__MOSIP__INBOUND_QUEUE", INBOUND)
                .env("BIOMATCH__MOSIP__OUTBOUND_QUEUE", OUTBOUND)
                .env("BIOMATCH__MOSIP__FETCH_TIMEOUT_MS", "3000")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap())
                .spawn()
                .expect("start biomatch serve"),
        );
        let ready = Instant::now();
        while http_get(listen, "/readyz") != Some(200) {
            assert!(
                ready.elapsed() < Duration::from_secs(60),
                "biomatch not ready: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    };
    let server = start_server();

    let mut c = Client::connect(broker.port);
    let wait = Duration::from_secs(30);
    const INS: &str = "mosip.abis.insert";
    const IDF: &str = "mosip.abis.identify";
    const DEL: &str = "mosip.abis.delete";

    // Inserts and every failure reason that applies to them or to any envelope.
    let insert = |rid: &str, reference: &str, u: &str| {
        req(INS, rid, json!({"referenceId": reference, "referenceURL": u}))
    };
    c.send(&[
        insert("ins-a", "REF-A", &url("/a.xml")),
        insert("ins-b", "REF-B", &url("/b.xml")),
        insert("ins-c", "REF-C", &url("/c.xml")),
        // The same person under another referenceId: Insert never deduplicates.
        insert("ins-a-copy", "REF-A-COPY", &url("/a-copy.xml")),
        // The same Insert again (as after a redelivery): success, no second record.
        insert("ins-a-again", "REF-A", &url("/a.xml")),
        insert("ins-a-other-data", "REF-A", &url("/b.xml")),
        req(INS, "ins-no-url", json!({"referenceId": "REF-X"})),
        insert("ins-unreachable", "REF-X", &format!("http://127.0.0.1:{closed_port}/x")),
        insert("ins-404", "REF-X", &url("/nothing-here.xml")),
        insert("ins-expired", "REF-X", &url("/expired.xml")),
        insert("ins-malformed", "REF-X", &url("/malformed.xml")),
        insert("ins-no-data", "REF-X", &url("/empty.xml")),
        insert("ins-garbage-bdb", "REF-X", &url("/garbage-bdb.xml")),
        insert("ins-blank", "REF-X", &url("/blank.xml")),
        req(INS, "ins-no-ref", json!({"referenceURL": url("/a.xml")})),
        json!({"id": INS, "version": "1.1", "requesttime": now(), "referenceId": "R",
               "referenceURL": url("/a.xml")})
        .to_string(),
        req("mosip.abis.unknown-op", "bad-id", json!({})),
        json!({"id": INS, "version": "0.9", "requestId": "bad-version", "requesttime": now()})
            .to_string(),
        json!({"id": "mosip.abis.ping", "version": "1.1", "requestId": "no-time"}).to_string(),
        json!({"id": "mosip.abis.ping", "version": "1.1", "requestId": "bad-time",
               "requesttime": "29/03/2020 07:01"})
        .to_string(),
        r#"{"id": "mosip.abis.insert", "requestId": "not-json", oops"#.to_owned(),
        "no request id at all".to_owned(),
        req(DEL, "del-no-ref", json!({})),
        req(IDF, "idf-no-probe", json!({"referenceURL": ""})),
    ]);
    let phase1 = [
        "ins-a",
        "ins-b",
        "ins-c",
        "ins-a-copy",
        "ins-a-again",
        "ins-a-other-data",
        "ins-no-url",
        "ins-unreachable",
        "ins-404",
        "ins-expired",
        "ins-malformed",
        "ins-no-data",
        "ins-garbage-bdb",
        "ins-blank",
        "ins-no-ref",
        "",
        "bad-id",
        "bad-version",
        "no-time",
        "bad-time",
        "not-json",
        "del-no-ref",
        "idf-no-probe",
    ];
    c.wait_for(&phase1, wait);
    for id in ["ins-a", "ins-b", "ins-c", "ins-a-copy", "ins-a-again"] {
        ok(&c, id);
        assert_eq!(c.response(id)["id"], INS);
    }
    failed(&c, "ins-a-other-data", 10);
    failed(&c, "ins-no-url", 8);
    failed(&c, "ins-unreachable", 7);
    failed(&c, "ins-404", 7);
    failed(&c, "ins-expired", 17);
    failed(&c, "ins-malformed", 16);
    failed(&c, "ins-no-data", 11);
    failed(&c, "ins-garbage-bdb", 16);
    failed(&c, "ins-blank", 18);
    failed(&c, "ins-no-ref", 5);
    failed(&c, "", 6);
    failed(&c, "bad-id", 14);
    failed(&c, "bad-version", 13);
    failed(&c, "no-time", 9);
    failed(&c, "bad-time", 15);
    failed(&c, "not-json", 4);
    failed(&c, "del-no-ref", 5);
    failed(&c, "idf-no-probe", 5);

    // Identify: duplicates found, the probe itself left out, the gallery honoured.
    let gallery = |ids: &[&str]| json!({"referenceIds": ids.iter().map(|i| json!({"referenceId": i})).collect::<Vec<_>>()});
    c.send(&[
        req(IDF, "idf-a", json!({"referenceId": "REF-A", "referenceURL": ""})),
        req(IDF, "idf-a-gallery-bc", json!({"referenceId": "REF-A", "gallery": gallery(&["REF-B", "REF-C"])})),
        req(IDF, "idf-a-gallery-copy", json!({"referenceId": "REF-A", "gallery": gallery(&["REF-B", "REF-A-COPY", "REF-NEVER"])})),
        req(IDF, "idf-url", json!({"referenceURL": url("/a.xml"), "flags": {"maxResults": "10", "targetFPIR": "30"}})),
        req(IDF, "idf-max-1", json!({"referenceURL": url("/a.xml"), "flags": {"maxResults": "1"}})),
        req(IDF, "idf-b", json!({"referenceId": "REF-B"})),
        req(IDF, "idf-unknown", json!({"referenceId": "REF-NEVER"})),
        req(IDF, "idf-bad-url", json!({"referenceURL": url("/malformed.xml")})),
        req("mosip.abis.ping", "ping", json!({})),
        req("mosip.abis.referenceCount", "count-4", json!({})),
        req("mosip.abis.pendingJobs", "pending", json!({})),
        req("mosip.abis.ping", "ping-2", json!({})),
        req("mosip.abis.ping", "ping-3", json!({})),
    ]);
    c.wait_for(
        &[
            "idf-a",
            "idf-a-gallery-bc",
            "idf-a-gallery-copy",
            "idf-url",
            "idf-max-1",
            "idf-b",
            "idf-unknown",
            "idf-bad-url",
            "ping",
            "count-4",
            "pending",
            "ping-2",
            "ping-3",
        ],
        wait,
    );
    assert_eq!(candidates(&c, "idf-a"), ["REF-A-COPY"], "{}", c.response("idf-a"));
    let v = c.response("idf-a");
    let cand = &v["candidateList"]["candidates"][0];
    assert_eq!(cand["modalities"][0]["biometricType"], "FIR", "{v}");
    assert_eq!(cand["modalities"][0]["analytics"]["fingers"], "4", "{v}");
    let scaled: f64 = cand["analytics"]["scaledScore"].as_str().unwrap().parse().unwrap();
    assert!(scaled >= 30.0, "a duplicate scores past the target FPIR's scale: {v}");
    assert_eq!(candidates(&c, "idf-a-gallery-bc"), Vec::<String>::new());
    assert_eq!(candidates(&c, "idf-a-gallery-copy"), ["REF-A-COPY"]);
    let mut by_url = candidates(&c, "idf-url");
    by_url.sort();
    assert_eq!(by_url, ["REF-A", "REF-A-COPY"]);
    assert_eq!(candidates(&c, "idf-max-1").len(), 1);
    assert_eq!(candidates(&c, "idf-b"), Vec::<String>::new(), "B has no duplicate");
    failed(&c, "idf-unknown", 12);
    failed(&c, "idf-bad-url", 16);
    ok(&c, "ping");
    assert_eq!(ok(&c, "count-4")["count"], "4");
    let jobs: usize = ok(&c, "pending")["jobscount"].as_str().unwrap().parse().unwrap();
    assert!(jobs <= 2, "only the two pings follow the pendingJobs request: {jobs}");

    // Delete: the duplicate goes; a second delete and later identifies see it gone.
    c.send(&[
        req(DEL, "del-copy", json!({"referenceId": "REF-A-COPY"})),
        req(DEL, "del-copy-again", json!({"referenceId": "REF-A-COPY"})),
        req(DEL, "del-unknown", json!({"referenceId": "REF-NEVER"})),
        req(IDF, "idf-a-after", json!({"referenceId": "REF-A"})),
        req(IDF, "idf-copy-after", json!({"referenceId": "REF-A-COPY"})),
        req("mosip.abis.referenceCount", "count-3", json!({})),
    ]);
    c.wait_for(
        &["del-copy", "del-copy-again", "del-unknown", "idf-a-after", "idf-copy-after", "count-3"],
        wait,
    );
    ok(&c, "del-copy");
    assert_eq!(c.response("del-copy")["id"], DEL);
    failed(&c, "del-copy-again", 12);
    failed(&c, "del-unknown", 12);
    assert_eq!(candidates(&c, "idf-a-after"), Vec::<String>::new());
    failed(&c, "idf-copy-after", 12);
    assert_eq!(ok(&c, "count-3")["count"], "3");

    // Every message was answered once (the two without a readable requestId: one answered
    // with reason 6, one acknowledged without an answer), and nothing is left in hand.
    c.send(&[req("mosip.abis.pendingJobs", "pending-end", json!({}))]);
    c.wait_for(&["pending-end"], wait);
    assert_eq!(ok(&c, "pending-end")["jobscount"], "0");
    assert_eq!(c.got.len(), phase1.len() + 13 + 6 + 1);

    // Requests sent while the ABIS is down (killed) wait in the broker and are answered after
    // its restart; what it stored before is still there.
    drop(server);
    c.send(&[
        insert("ins-d", "REF-D", &url("/c.xml")),
        req(IDF, "idf-d", json!({"referenceId": "REF-D"})),
        req("mosip.abis.referenceCount", "count-after-restart", json!({})),
    ]);
    let server = start_server();
    c.wait_for(&["ins-d", "idf-d", "count-after-restart"], wait);
    ok(&c, "ins-d");
    assert_eq!(candidates(&c, "idf-d"), ["REF-C"], "the same person as REF-C");
    assert_eq!(ok(&c, "count-after-restart")["count"], "4");

    // An Insert in flight when the ABIS dies (killed while fetching its CBEFF) was not
    // acknowledged: the broker redelivers it to the restarted ABIS, which answers it once.
    c.send(&[insert("ins-in-flight", "REF-E", &url("/slow.xml"))]);
    std::thread::sleep(Duration::from_millis(500));
    drop(server);
    let server = start_server();
    c.wait_for(&["ins-in-flight"], wait);
    ok(&c, "ins-in-flight");
    c.send(&[req("mosip.abis.referenceCount", "count-5", json!({}))]);
    c.wait_for(&["count-5"], wait);
    assert_eq!(ok(&c, "count-5")["count"], "5");

    // Faces: CBEFF face BIRs holding the fixture photos (JPEG), extracted by the real face
    // pipeline. Two photos of person A are found as duplicates; an impostor is not. The
    // gallery restriction keeps the fingerprint subjects above out of these searches.
    let face =
        |name: &str| cbeff(&[bir("Face", "", 8, &fixtures::read(&fixtures::face_photo(name)))]);
    let face_files = serve_files(HashMap::from([
        ("/a1.xml".to_owned(), face("person_a_1.jpg")),
        ("/a2.xml".to_owned(), face("person_a_2.jpg")),
        ("/imp.xml".to_owned(), face("impostor_1.jpg")),
    ]));
    let face_url = |p: &str| format!("http://127.0.0.1:{face_files}{p}");
    let faces = ["REF-FACE-A1", "REF-FACE-A2", "REF-FACE-IMP"];
    c.send(&[
        insert("ins-face-a1", faces[0], &face_url("/a1.xml")),
        insert("ins-face-a2", faces[1], &face_url("/a2.xml")),
        insert("ins-face-imp", faces[2], &face_url("/imp.xml")),
        req(IDF, "idf-face-a1", json!({"referenceId": faces[0], "gallery": gallery(&faces)})),
        req(IDF, "idf-face-imp", json!({"referenceId": faces[2], "gallery": gallery(&faces)})),
        req(
            IDF,
            "idf-face-url",
            json!({"referenceURL": face_url("/a2.xml"), "gallery": gallery(&faces)}),
        ),
    ]);
    c.wait_for(
        &[
            "ins-face-a1",
            "ins-face-a2",
            "ins-face-imp",
            "idf-face-a1",
            "idf-face-imp",
            "idf-face-url",
        ],
        wait,
    );
    for id in ["ins-face-a1", "ins-face-a2", "ins-face-imp"] {
        ok(&c, id);
    }
    assert_eq!(candidates(&c, "idf-face-a1"), ["REF-FACE-A2"], "{}", c.response("idf-face-a1"));
    assert_eq!(candidates(&c, "idf-face-imp"), Vec::<String>::new());
    let by_url = candidates(&c, "idf-face-url");
    assert!(by_url.contains(&"REF-FACE-A1".to_owned()), "{by_url:?}");
    assert!(!by_url.contains(&"REF-FACE-IMP".to_owned()), "{by_url:?}");

    // The adapter's writes and reads are in the audit log, keyed `mosip`.
    drop(server);
    let audit = std::fs::read_dir(dir.path().join("store/audit"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .collect::<String>();
    assert!(audit.contains("\"key_id\":\"mosip\""), "no MOSIP audit records");
    assert!(audit.contains("mosip.abis.identify"));
    assert!(audit.contains("replayed:"), "the repeated Insert has its own audit record");
    eprintln!("mosip e2e: {:.1} s", t0.elapsed().as_secs_f64());
}
