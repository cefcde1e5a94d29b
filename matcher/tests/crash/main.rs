//! Crash safety of enrollment over HTTP: the real `biomatch serve` takes concurrent enrollments
//! (a face template and two ISO minutiae fingers each) and deletes from eight client threads, and
//! is killed with SIGKILL at random moments, then restarted on the same data directory.
//!
//! After every restart, for every subject any client ever touched:
//! - an acknowledged enrollment (201/200) is there with all its modalities (face and both fingers);
//! - an acknowledged delete (200) is gone (404);
//! - no subject is half-enrolled: a subject that exists has its face and both fingers;
//! - an enrollment whose answer was lost (connection reset while in flight) is retried with the
//!   same body and `Idempotency-Key`: it answers 201 or 200 (if the first attempt had landed),
//!   never 409, and the subject is then whole;
//! - a delete whose answer was lost is retried: 200 or 404, and the subject is then gone.
//!
//! Only the HTTP contract is used (README "The service"), so the test holds for any store
//! layout. `diskfull.rs` runs the same server on a disk that fills up. The kill moments come from a seeded RNG: the seed is printed, `BIOMATCH_TEST_SEED`
//! replays it. Loopback only; every request has a timeout and the server is always killed on exit.

use base64::Engine;
use biomatch_fingerprint::iso;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const KILLS: usize = 24;
const CLIENTS: u64 = 8;
const FACE_MODEL: &str = "synthetic-face@1";
const DIM: usize = 128;
/// The two finger positions every subject enrolls.
const FINGERS: [u8; 2] = [2, 7];
const MINUTIAE: usize = 30;
/// Every n-th subject a client enrolls is deleted once its enrollment is acknowledged.
const DELETE_EVERY: u64 = 5;
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 50..=400;
const READY_WITHIN: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

mod dedup;
mod diskfull;
mod jobs;

// ---------------------------------------------------------------------------------------------
// HTTP: the test kit's blocking client, one connection per request.

use biomatch_testkit::http::Response;

/// One request. Any error (refused, reset, timed out, cut short) means "no answer": the caller
/// cannot know whether the server acted on it.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    idempotency_key: Option<&str>,
    body: Option<&[u8]>,
) -> io::Result<Response> {
    let headers: Vec<(&str, &str)> =
        idempotency_key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
    biomatch_testkit::http::request(addr, method, path, &headers, body, REQUEST_TIMEOUT)
}

// ---------------------------------------------------------------------------------------------
// The server: the real binary, killed on drop.

fn biomatch() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_biomatch"));
    c.env("BIOMATCH_LOG", "warn");
    c
}

struct Server {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return "(empty: BIOMATCH_LOG=warn)".into();
    }
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Server {
    /// Start `biomatch serve` on `data` at a fresh loopback port; wait (bounded) for `/readyz`.
    fn start(data: &Path, log: &Path) -> Server {
        Self::start_with(data, log, &[])
    }

    /// [`Server::start`] with more `BIOMATCH__*` environment variables.
    fn start_with(data: &Path, log: &Path, env: &[(&str, &Path)]) -> Server {
        let addr: SocketAddr =
            format!("127.0.0.1:{}", biomatch_testkit::free_port()).parse().unwrap();
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = biomatch()
            .args(["serve", "--data"])
            .arg(data)
            .args(["--listen", &addr.to_string()])
            .env("BIOMATCH__EXTRACTORS__FACE__ENABLED", "false")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("start biomatch serve");
        let mut server = Server { child, addr, log: log.to_owned() };
        let t0 = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("biomatch serve exited during start-up ({status}):\n{}", log_tail(log));
            }
            if request(addr, "GET", "/readyz", None, None).is_ok_and(|r| r.status == 200) {
                return server;
            }
            assert!(
                t0.elapsed() < READY_WITHIN,
                "biomatch serve not ready within {READY_WITHIN:?}:\n{}",
                log_tail(log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL on Unix
        self.child.wait().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Subjects: deterministic bodies from the subject number.

fn subject_id(n: u64) -> String {
    format!("CRASH-{}-{:06}", n / 1_000_000, n % 1_000_000)
}

fn face_vector(n: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(n ^ 0xFACE);
    let v: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

fn finger_record(n: u64, position: u8) -> Vec<u8> {
    let seed = n.wrapping_mul(16) + u64::from(position);
    iso::to_iso(&biomatch_testkit::fingers::finger_template(seed, position, MINUTIAE))
}

fn enroll_body(n: u64) -> Vec<u8> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let fingers: Vec<Value> = FINGERS
        .iter()
        .map(|&p| json!({ "position": p, "minutiae": b64(&finger_record(n, p)) }))
        .collect();
    serde_json::to_vec(&json!({
        "subject_id": subject_id(n),
        "face": { "template": { "model": FACE_MODEL, "vector": face_vector(n) } },
        "fingers": fingers,
    }))
    .unwrap()
}

fn idempotency_key(n: u64) -> String {
    format!("crash-enroll-{n}")
}

fn enroll(addr: SocketAddr, n: u64) -> io::Result<Response> {
    request(addr, "POST", "/v1/subjects", Some(&idempotency_key(n)), Some(&enroll_body(n)))
}

fn delete(addr: SocketAddr, n: u64) -> io::Result<Response> {
    request(addr, "DELETE", &format!("/v1/subjects/{}", subject_id(n)), None, None)
}

fn get(addr: SocketAddr, n: u64) -> io::Result<Response> {
    request(addr, "GET", &format!("/v1/subjects/{}", subject_id(n)), None, None)
}

/// What the clients know about a subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// The enrollment was answered 201/200.
    Enrolled,
    /// The enrollment got no answer.
    EnrollUnanswered,
    /// The enrollment was acknowledged, then the delete was answered 200.
    Deleted,
    /// The enrollment was acknowledged, then the delete got no answer.
    DeleteUnanswered,
}

/// What `GET /v1/subjects/{id}` shows.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Absent,
    Whole,
    /// Present without all of face + both fingers: the modalities it lists.
    Partial(Vec<String>),
}

fn whole_modalities() -> Vec<String> {
    let mut m: Vec<String> = FINGERS.iter().map(|p| format!("finger{p}")).collect();
    m.push("face".into());
    m.sort();
    m
}

fn look(addr: SocketAddr, n: u64) -> Result<Seen, String> {
    let r = get(addr, n).map_err(|e| format!("GET {}: no answer ({e})", subject_id(n)))?;
    match r.status {
        404 => Ok(Seen::Absent),
        200 => {
            let v = r.json();
            let mut modalities: Vec<String> = v["templates"]
                .as_array()
                .map(|ts| {
                    ts.iter().filter_map(|t| t["modality"].as_str().map(str::to_owned)).collect()
                })
                .unwrap_or_default();
            modalities.sort();
            let face_model_ok = v["templates"].as_array().is_some_and(|ts| {
                ts.iter().any(|t| t["modality"] == "face" && t["model"] == FACE_MODEL)
            });
            if modalities == whole_modalities() && face_model_ok {
                Ok(Seen::Whole)
            } else {
                Ok(Seen::Partial(modalities))
            }
        }
        _ => Err(format!("GET {}: unexpected {}", subject_id(n), r.summary())),
    }
}

// ---------------------------------------------------------------------------------------------
// The clients.

#[derive(Debug, Default)]
struct Shared {
    ledger: Mutex<BTreeMap<u64, Fate>>,
    /// Clients may start requests.
    running: AtomicBool,
    /// Clients between "may I start?" and "recorded the outcome".
    active: AtomicUsize,
    stop: AtomicBool,
    /// Answers the contract does not allow during load (e.g. 409, 500), with the subject.
    unexpected: Mutex<Vec<String>>,
    addr: Mutex<Option<SocketAddr>>,
}

impl Shared {
    fn record(&self, n: u64, fate: Fate) {
        self.ledger.lock().unwrap().insert(n, fate);
    }
}

/// One client: enrolls its subjects one after the other, deletes every `DELETE_EVERY`-th once
/// its enrollment is acknowledged. Requests start only while `running`.
fn client(shared: &Shared, id: u64) {
    let mut next = 0u64;
    let mut pending_delete: Option<u64> = None;
    while !shared.stop.load(Ordering::SeqCst) {
        shared.active.fetch_add(1, Ordering::SeqCst);
        if !shared.running.load(Ordering::SeqCst) {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let addr = shared.addr.lock().unwrap().expect("server address");
        if let Some(n) = pending_delete.take() {
            match delete(addr, n) {
                Ok(r) if r.status == 200 => shared.record(n, Fate::Deleted),
                Ok(r) => shared.unexpected.lock().unwrap().push(format!(
                    "DELETE {} (enrollment acknowledged): {}",
                    subject_id(n),
                    r.summary()
                )),
                Err(_) => shared.record(n, Fate::DeleteUnanswered),
            }
        } else {
            let n = id * 1_000_000 + next;
            next += 1;
            match enroll(addr, n) {
                Ok(r) if r.status == 201 || r.status == 200 => {
                    shared.record(n, Fate::Enrolled);
                    if next.is_multiple_of(DELETE_EVERY) {
                        pending_delete = Some(n);
                    }
                }
                Ok(r) => shared.unexpected.lock().unwrap().push(format!(
                    "POST {}: {}",
                    subject_id(n),
                    r.summary()
                )),
                Err(_) => shared.record(n, Fate::EnrollUnanswered),
            }
        }
        shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// The check after a restart.

#[derive(Debug, Default)]
struct Tally {
    checked: usize,
    enrolled: usize,
    deleted: usize,
    enroll_retries: usize,
    /// Unanswered enrollments found durable before their retry.
    enroll_retries_landed: usize,
    delete_retries: usize,
    /// Unanswered deletes found durable before their retry.
    delete_retries_landed: usize,
}

impl Tally {
    fn add(&mut self, t: &Tally) {
        self.checked += t.checked;
        self.enrolled += t.enrolled;
        self.deleted += t.deleted;
        self.enroll_retries += t.enroll_retries;
        self.enroll_retries_landed += t.enroll_retries_landed;
        self.delete_retries += t.delete_retries;
        self.delete_retries_landed += t.delete_retries_landed;
    }
}

/// Check one subject; resolve an unanswered request by retrying it. Returns the subject's fate
/// afterwards.
fn check(addr: SocketAddr, n: u64, fate: Fate, tally: &mut Tally) -> Result<Fate, String> {
    let id = subject_id(n);
    let seen = look(addr, n)?;
    tally.checked += 1;
    if let Seen::Partial(m) = &seen {
        let mut msg = format!("{id} ({fate:?}) is half-enrolled: it lists {m:?}");
        if fate == Fate::EnrollUnanswered {
            // What a client retrying it would get.
            match enroll(addr, n) {
                Ok(r) => {
                    msg.push_str(&format!("; a retry of its enrollment answers {}", r.summary()))
                }
                Err(e) => msg.push_str(&format!("; a retry of its enrollment got no answer ({e})")),
            }
        }
        return Err(msg);
    }
    match fate {
        Fate::Enrolled => {
            if seen != Seen::Whole {
                return Err(format!("acknowledged enrollment of {id} is lost ({seen:?})"));
            }
            tally.enrolled += 1;
            Ok(Fate::Enrolled)
        }
        Fate::Deleted => {
            if seen != Seen::Absent {
                return Err(format!("acknowledged delete of {id} is undone ({seen:?})"));
            }
            tally.deleted += 1;
            Ok(Fate::Deleted)
        }
        Fate::EnrollUnanswered => {
            tally.enroll_retries += 1;
            tally.enroll_retries_landed += usize::from(seen == Seen::Whole);
            let r = enroll(addr, n).map_err(|e| format!("retry of POST {id}: no answer ({e})"))?;
            if r.status != 201 && r.status != 200 {
                return Err(format!(
                    "retry of the unanswered enrollment of {id} (same body and Idempotency-Key; \
                     before it: {seen:?}) answered {}",
                    r.summary()
                ));
            }
            match look(addr, n)? {
                Seen::Whole => Ok(Fate::Enrolled),
                s => Err(format!("{id} after its retried enrollment answered {}: {s:?}", r.status)),
            }
        }
        Fate::DeleteUnanswered => {
            tally.delete_retries += 1;
            tally.delete_retries_landed += usize::from(seen == Seen::Absent);
            let r =
                delete(addr, n).map_err(|e| format!("retry of DELETE {id}: no answer ({e})"))?;
            if r.status != 200 && r.status != 404 {
                return Err(format!(
                    "retry of the unanswered delete of {id} (before it: {seen:?}) answered {}",
                    r.summary()
                ));
            }
            match look(addr, n)? {
                Seen::Absent => Ok(Fate::Deleted),
                s => Err(format!("{id} after its retried delete answered {}: {s:?}", r.status)),
            }
        }
    }
}

/// Check every subject in the ledger, `CLIENTS` at a time; unanswered requests are resolved
/// (the ledger is updated with their outcome).
fn check_all(shared: &Shared, addr: SocketAddr, round: usize, log: &Path) -> Tally {
    let subjects: Vec<(u64, Fate)> =
        shared.ledger.lock().unwrap().iter().map(|(&n, &f)| (n, f)).collect();
    let chunk = subjects.len().div_ceil(CLIENTS as usize).max(1);
    let failures = Mutex::new(Vec::new());
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let handles: Vec<_> = subjects
            .chunks(chunk)
            .map(|part| {
                let failures = &failures;
                s.spawn(move || {
                    let mut tally = Tally::default();
                    for &(n, fate) in part {
                        match check(addr, n, fate, &mut tally) {
                            Ok(after) if after != fate => shared.record(n, after),
                            Ok(_) => {}
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                    tally
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "after kill {round}: {} of {} subjects fail the contract:\n  {}\nserver log:\n{}",
        failures.len(),
        subjects.len(),
        failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n  "),
        log_tail(log)
    );
    let mut total = Tally::default();
    for t in &tallies {
        total.add(t);
    }
    total
}

/// Every stored enrollment and every delete has its audit record: the journal makes it durable
/// in the store's commit group, before the write itself.
fn check_audit(shared: &Shared, data: &Path, round: usize) -> usize {
    let mut enrolled = std::collections::HashSet::new();
    let mut deleted = std::collections::HashSet::new();
    let records = biomatch_matcher::audit::read_dir_records(&data.join("audit")).unwrap();
    {
        for r in records {
            let into = match (r.operation.as_str(), r.outcome.split(':').next()) {
                ("enroll", Some("enrolled")) => &mut enrolled,
                ("delete", Some("deleted")) => &mut deleted,
                _ => continue,
            };
            into.extend(r.subject_ids);
        }
    }
    let ledger = shared.ledger.lock().unwrap();
    let mut checked = 0;
    for (&n, &fate) in ledger.iter() {
        let id = subject_id(n);
        if matches!(fate, Fate::Enrolled | Fate::Deleted) {
            assert!(
                enrolled.contains(&id),
                "after kill {round}: {id} stored without an audit record"
            );
            checked += 1;
        }
        if fate == Fate::Deleted {
            assert!(
                deleted.contains(&id),
                "after kill {round}: {id} deleted without an audit record"
            );
        }
    }
    checked
}

/// The crash tests' generator: seeded from `BIOMATCH_TEST_SEED` when set (to replay a run),
/// else `default`; the seed is printed under `what`.
fn seeded_rng(what: &str, default: u64) -> ChaCha8Rng {
    let seed: u64 =
        std::env::var("BIOMATCH_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    eprintln!("{what} seed: {seed} (set BIOMATCH_TEST_SEED to replay)");
    ChaCha8Rng::seed_from_u64(seed)
}

/// Whether `id` is enrolled (GET answers 200; anything but 200 or 404 fails the test).
fn enrolled(addr: SocketAddr, id: &str) -> bool {
    let r = request(addr, "GET", &format!("/v1/subjects/{id}"), None, None).expect("GET answered");
    assert!(matches!(r.status, 200 | 404), "GET {id}: {}", r.summary());
    r.status == 200
}

#[test]
fn sigkill_under_concurrent_enrollments_keeps_every_acknowledged_write() {
    let mut rng = seeded_rng("crash test", 20261201);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");

    // No set-up: `serve` starts on a fresh directory with its built-in calibration tables.
    let shared = Shared::default();
    let mut server = Some(Server::start(&data, &log));
    *shared.addr.lock().unwrap() = Some(server.as_ref().unwrap().addr);
    let mut total = Tally::default();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let shared = &shared;
        // Stop the clients even if a check below panics, so the scope can end.
        struct StopOnDrop<'a>(&'a Shared);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.running.store(false, Ordering::SeqCst);
                self.0.stop.store(true, Ordering::SeqCst);
            }
        }
        let _stop = StopOnDrop(shared);
        for id in 0..CLIENTS {
            s.spawn(move || client(shared, id));
        }
        for round in 1..=KILLS {
            let load_ms = rng.random_range(KILL_AFTER_MS);
            shared.running.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(load_ms));
            shared.running.store(false, Ordering::SeqCst);
            server.take().unwrap().kill();
            while shared.active.load(Ordering::SeqCst) > 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let unexpected = std::mem::take(&mut *shared.unexpected.lock().unwrap());
            assert!(
                unexpected.is_empty(),
                "before kill {round}, answers outside the contract:\n  {}\nserver log:\n{}",
                unexpected.join("\n  "),
                log_tail(&log)
            );

            let restarted = Server::start(&data, &log);
            *shared.addr.lock().unwrap() = Some(restarted.addr);
            let t = check_all(shared, restarted.addr, round, &restarted.log);
            let audited = check_audit(shared, &data, round);
            // The audit log's hash chain and checkpoints survive every kill.
            let audit_dir = data.join("audit");
            let key = hex::decode(
                std::fs::read_to_string(audit_dir.join(biomatch_matcher::audit::KEY_FILE))
                    .unwrap()
                    .trim(),
            )
            .unwrap();
            let chain =
                biomatch_matcher::audit::verify::verify_dir(&audit_dir, Some(&key)).unwrap();
            assert!(chain.ok(), "after kill {round}: {chain}");
            eprintln!(
                "kill {round:2} after {load_ms:3} ms: {} subjects checked ({} enrolled, {} \
                 deleted, {audited} audited); retried {} unanswered enrollments ({} had landed), \
                 {} unanswered deletes ({} had landed)",
                t.checked,
                t.enrolled,
                t.deleted,
                t.enroll_retries,
                t.enroll_retries_landed,
                t.delete_retries,
                t.delete_retries_landed
            );
            total.add(&t);
            server = Some(restarted);
        }
    });
    drop(server);
    let ledger = shared.ledger.lock().unwrap();
    let enrolled = ledger.values().filter(|f| **f == Fate::Enrolled).count();
    let deleted = ledger.values().filter(|f| **f == Fate::Deleted).count();
    eprintln!(
        "{KILLS} SIGKILLs in {:.1} s: {} subjects, {enrolled} enrolled and {deleted} deleted at \
         the end; {} subject checks; {} unanswered enrollments retried ({} had landed), {} \
         unanswered deletes retried ({} had landed)",
        t0.elapsed().as_secs_f64(),
        ledger.len(),
        total.checked,
        total.enroll_retries,
        total.enroll_retries_landed,
        total.delete_retries,
        total.delete_retries_landed
    );
    assert!(enrolled > KILLS, "the clients should make progress between kills");
    assert!(deleted > 0, "some deletes should be acknowledged");
}
