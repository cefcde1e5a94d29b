//! A full disk over HTTP: the real `biomatch serve` with its data directory on a small tmpfs of
//! the test's own, enrolled into from four clients until the disk is full, then given space back
//! without a restart. Twice: with the audit log on the same disk (its default place in the data
//! directory: the audit journal, written first in each commit group, usually meets the full disk
//! first), and with the audit log elsewhere (only the store's write-ahead log meets it).
//!
//! The contract checked:
//! - a refused enrollment is answered 507 `insufficient_storage` (or 503 with Retry-After:
//!   `store_unavailable` for a write that failed otherwise and was undone, `write_in_doubt` for
//!   one that may have landed), in the JSON envelope, never 500;
//! - `/readyz` answers 503 while nothing can be written;
//! - an enrollment answered 507 or `store_unavailable` is not stored (GET 404 at once, and after a
//!   restart unless it was retried), one in doubt is resolved by a retry with its
//!   Idempotency-Key (201 or 200, then whole);
//! - once a filler file on the tmpfs is deleted, without a restart `/readyz` turns 200 within a
//!   few maintenance periods and enrollments succeed again, refused ones retried included;
//! - after a SIGKILL and a restart every acknowledged enrollment is there, whole.
//!
//! Needs root to mount the tmpfs (CI runs as root); it fails saying so otherwise.

use super::*;
use biomatch_testkit::tmpfs::Tmpfs;

const TMPFS_BYTES: u64 = 4 << 20;
/// Left free by the filler file: room for a couple of hundred enrollments (store and audit).
const LEAVE_FREE: u64 = 192 << 10;
const DF_CLIENTS: u64 = 4;
/// A client stops once this many of its enrollments in a row were refused.
const REFUSED_IN_A_ROW: usize = 8;
/// A bound on each client's enrollments, should the disk never fill.
const MAX_PER_CLIENT: u64 = 3000;
const READY_AGAIN_WITHIN: Duration = Duration::from_secs(15);

/// Subject numbers of this test (ids `CRASH-5cc-iiiiii`), apart from the crash test's.
fn df_subject(client: u64, i: u64) -> u64 {
    500_000_000 + client * 1_000_000 + i
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// 201 or 200.
    Acked,
    /// 507 `insufficient_storage` or 503 `store_unavailable`: nothing stored.
    Refused,
    /// 503 `write_in_doubt`.
    InDoubt,
}

/// What one enrollment was answered, or why the answer breaks the contract.
fn classify(n: u64, r: &Response) -> Result<(Outcome, String), String> {
    let v = r.json();
    let code = v["code"].as_str().unwrap_or("").to_owned();
    let enveloped = v["message"].as_str().is_some_and(|m| !m.is_empty())
        && v["request_id"].as_str().is_some_and(|m| !m.is_empty());
    let outcome = match (r.status, code.as_str()) {
        (200 | 201, _) => return Ok((Outcome::Acked, r.status.to_string())),
        (507, "insufficient_storage") => Outcome::Refused,
        (503, "store_unavailable") if r.retry_after.is_some() => Outcome::Refused,
        (503, "write_in_doubt") if r.retry_after.is_some() => Outcome::InDoubt,
        _ => return Err(format!("POST {}: {}", subject_id(n), r.summary())),
    };
    if !enveloped {
        return Err(format!("POST {}: not the error envelope: {}", subject_id(n), r.summary()));
    }
    Ok((outcome, format!("{} {code}", r.status)))
}

fn readyz(addr: SocketAddr) -> Response {
    request(addr, "GET", "/readyz", None, None).expect("/readyz answers")
}

fn verify(addr: SocketAddr, n: u64) -> Response {
    let body = serde_json::to_vec(&json!({
        "subject_id": subject_id(n),
        "face": { "template": { "model": FACE_MODEL, "vector": face_vector(n) } },
    }))
    .unwrap();
    request(addr, "POST", "/v1/verify", None, Some(&body)).expect("verify answers")
}

#[test]
fn a_full_disk_refuses_enrollments_with_507_and_recovers_without_a_restart() {
    full_disk(true);
}

#[test]
fn a_full_store_disk_refuses_enrollments_with_507_and_recovers_without_a_restart() {
    full_disk(false);
}

fn full_disk(audit_on_the_full_disk: bool) {
    let what = if audit_on_the_full_disk { "store and audit" } else { "store only" };
    let fs = Tmpfs::mount(TMPFS_BYTES);
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("server.log");
    let data = fs.path().join("data");
    let audit = scratch.path().join("audit");
    let env: &[(&str, &Path)] =
        if audit_on_the_full_disk { &[] } else { &[("BIOMATCH__AUDIT_DIR", &audit)] };
    let server = Server::start_with(&data, &log, env);
    let addr = server.addr;

    // Room to spare: enrollments succeed.
    let mut acked: Vec<u64> = Vec::new();
    for i in 0..10 {
        let n = df_subject(DF_CLIENTS, i);
        let r = enroll(addr, n).unwrap();
        assert_eq!(r.status, 201, "{}", r.summary());
        acked.push(n);
    }
    let filler = fs.fill("filler", LEAVE_FREE);

    // Fill the disk from four clients until each has been refused REFUSED_IN_A_ROW times in a
    // row.
    let t0 = Instant::now();
    let per_client: Vec<Vec<(u64, Outcome, String)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..DF_CLIENTS)
            .map(|c| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut in_a_row = 0;
                    for i in 0..MAX_PER_CLIENT {
                        let n = df_subject(c, i);
                        let r = enroll(addr, n)
                            .unwrap_or_else(|e| panic!("POST {}: no answer ({e})", subject_id(n)));
                        let (outcome, what) = match classify(n, &r) {
                            Ok(x) => x,
                            Err(e) => (Outcome::Refused, format!("UNEXPECTED {e}")),
                        };
                        in_a_row = if outcome == Outcome::Acked { 0 } else { in_a_row + 1 };
                        out.push((n, outcome, what));
                        if in_a_row >= REFUSED_IN_A_ROW {
                            break;
                        }
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let fill_s = t0.elapsed().as_secs_f64();
    let answers: Vec<(u64, Outcome, String)> = per_client.into_iter().flatten().collect();
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, _, what) in &answers {
        let key = if what.starts_with("UNEXPECTED") { "unexpected" } else { what.as_str() };
        *tally.entry(key).or_default() += 1;
    }
    eprintln!(
        "disk full ({what}): {} enrollments from {DF_CLIENTS} clients in {fill_s:.1} s, answers \
         {tally:?}",
        answers.len()
    );
    let unexpected: Vec<&String> =
        answers.iter().map(|(_, _, w)| w).filter(|w| w.starts_with("UNEXPECTED")).collect();
    assert!(
        unexpected.is_empty(),
        "answers outside the contract on a full disk:\n  {}\nserver log:\n{}",
        unexpected.iter().take(20).map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
        log_tail(&log)
    );
    let count = |o: Outcome| answers.iter().filter(|a| a.1 == o).count();
    let full_507 = answers.iter().filter(|a| a.2.starts_with("507")).count();
    assert!(count(Outcome::Acked) > 0, "the room left should take some enrollments");
    assert!(full_507 > 0, "a full disk should answer 507: {tally:?}");

    // Nothing can be written: not ready, and says why.
    for _ in 0..3 {
        let r = readyz(addr);
        assert_eq!(r.status, 503, "/readyz on a full disk: {}", r.summary());
        assert_eq!(r.json()["code"], "store_unavailable", "{}", r.summary());
        assert!(r.retry_after.is_some(), "/readyz 503 without Retry-After");
        std::thread::sleep(Duration::from_millis(500));
    }
    // A read is answered, or refused for its audit record: never a 500.
    let v = verify(addr, acked[0]);
    assert!(
        v.status == 200 || (v.status == 507 && v.json()["code"] == "insufficient_storage"),
        "verify on a full disk: {}",
        v.summary()
    );

    let refused: Vec<u64> =
        answers.iter().filter(|a| a.1 == Outcome::Refused).map(|a| a.0).collect();
    let in_doubt: Vec<u64> =
        answers.iter().filter(|a| a.1 == Outcome::InDoubt).map(|a| a.0).collect();
    acked.extend(answers.iter().filter(|a| a.1 == Outcome::Acked).map(|a| a.0));

    // Space is freed: ready again without a restart, and enrollments succeed.
    std::fs::remove_file(&filler).unwrap();
    let t1 = Instant::now();
    loop {
        let r = readyz(addr);
        if r.status == 200 {
            break;
        }
        assert!(
            t1.elapsed() < READY_AGAIN_WITHIN,
            "not ready {READY_AGAIN_WITHIN:?} after space was freed: {}\nserver log:\n{}",
            r.summary(),
            log_tail(&log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ready_after_ms = t1.elapsed().as_millis();
    // Every refused enrollment is absent (looked up once space is freed: a lookup is audited
    // too, and on the full disk its audit record could not be written).
    for &n in &refused {
        assert_eq!(look(addr, n), Ok(Seen::Absent), "refused enrollment of {} is stored", n);
    }
    // In doubt: the retry with the same Idempotency-Key resolves it.
    for &n in &in_doubt {
        let r = enroll(addr, n).unwrap();
        assert!(r.status == 201 || r.status == 200, "retry of in-doubt {n}: {}", r.summary());
        acked.push(n);
    }
    // Half of the refused ones are retried (stored now: 201, as they were absent); the others
    // must stay absent, also after the restart.
    let (retried, left): (Vec<u64>, Vec<u64>) = refused.iter().partition(|&&n| n % 2 == 0);
    for &n in &retried {
        let r = enroll(addr, n).unwrap();
        assert_eq!(r.status, 201, "retry of refused {}: {}", subject_id(n), r.summary());
        acked.push(n);
    }
    for i in 10..20 {
        let n = df_subject(DF_CLIENTS, i);
        let r = enroll(addr, n).unwrap();
        assert_eq!(r.status, 201, "{}", r.summary());
        acked.push(n);
    }
    assert_eq!(readyz(addr).status, 200);

    // Every acknowledged enrollment survives a SIGKILL and a restart; no refused one appears.
    server.kill();
    let server = Server::start_with(&data, &log, env);
    for &n in &acked {
        assert_eq!(look(server.addr, n), Ok(Seen::Whole), "acknowledged {} after restart", n);
    }
    for &n in &left {
        assert_eq!(look(server.addr, n), Ok(Seen::Absent), "refused {} after restart", n);
    }
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("panicked"), "the server panicked:\n{}", log_tail(&log));
    eprintln!(
        "disk full ({what}): {} acknowledged in the room left, then {full_507} answered 507, {} \
         refused in all, {} in doubt (resolved by retry); /readyz 200 {ready_after_ms} ms after \
         space was freed; {} acknowledged enrollments whole after a restart, {} unretried \
         refused ones absent",
        count(Outcome::Acked),
        refused.len(),
        in_doubt.len(),
        acked.len(),
        left.len()
    );
    drop(fs);
}
