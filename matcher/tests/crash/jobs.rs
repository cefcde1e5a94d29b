//! The job queue across SIGKILL: the real `biomatch serve` accepts enroll-if-unique jobs for
//! duplicate pairs (one person, two ids) and identify jobs, is killed while its workers run them
//! and restarted. Every job accepted (202) before the kill finishes after the restart; of every
//! pair exactly one id is enrolled (never both: a rerun of an interrupted job is not a second
//! enrollment), its job `done`, the other's `failed` with `duplicate` naming it.

use super::{enrolled, log_tail, request, seeded_rng, Server, DIM, FACE_MODEL};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const ROUNDS: u64 = 4;
const PAIRS: u64 = 12;
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 0..=20;

fn unit(rng: &mut ChaCha8Rng) -> Vec<f32> {
    let v: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// Pair `pair`'s two enrollment requests (subject id, body), one person captured twice.
fn pair_bodies(pair: u64) -> [(String, Value); 2] {
    let mut rng = ChaCha8Rng::seed_from_u64(pair ^ 0x10B5);
    let person = unit(&mut rng);
    ["a", "b"].map(|side| {
        let noise = unit(&mut rng);
        let v: Vec<f32> = person.iter().zip(noise).map(|(p, n)| p + 0.3 * n).collect();
        let id = format!("JOB-{pair:04}{side}");
        // Strict: random directions are each other's impostors (see dedup.rs).
        let body = json!({ "subject_id": id, "target_fpir": 1e-7,
            "face": { "template": { "model": FACE_MODEL, "vector": v } } });
        (id, body)
    })
}

fn submit(addr: SocketAddr, kind: &str, body: &Value) -> String {
    let job = serde_json::to_vec(&json!({ "kind": kind, "request": body })).unwrap();
    let r = request(addr, "POST", "/v1/jobs", None, Some(&job)).expect("submission answered");
    assert_eq!(r.status, 202, "{}", r.summary());
    r.json()["job_id"].as_str().unwrap().to_owned()
}

fn wait_finished(addr: SocketAddr, id: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let r = request(addr, "GET", &format!("/v1/jobs/{id}"), None, None).expect("GET answered");
        assert_eq!(r.status, 200, "job {id} lost: {}", r.summary());
        let j = r.json();
        if j["status"] == "done" || j["status"] == "failed" {
            return j;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "job {id} never finished: {j}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn jobs_accepted_before_sigkill_all_finish_and_enroll_at_most_once() {
    let mut rng = seeded_rng("jobs crash test", 20261203);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    // One worker, submissions from a thread per job: the queue builds up, so the kill finds
    // jobs queued and running.
    let one = [("BIOMATCH__JOBS__WORKERS", std::path::Path::new("1"))];
    let mut server = Server::start_with(&data, &log, &one);
    for round in 0..ROUNDS {
        let pairs: Vec<u64> = (round * PAIRS..(round + 1) * PAIRS).collect();
        let addr = server.addr;
        let jobs: Vec<(u64, String, String)> = std::thread::scope(|s| {
            let handles: Vec<_> = pairs
                .iter()
                .flat_map(|&p| pair_bodies(p).map(|(id, body)| (p, id, body)))
                .map(|(p, id, body)| {
                    s.spawn(move || (p, id, submit(addr, "enroll_if_unique", &body)))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let probe = json!({ "face": pair_bodies(pairs[0])[0].1["face"].clone() });
        let identify = submit(server.addr, "identify", &probe);
        let kill_ms = rng.random_range(KILL_AFTER_MS);
        std::thread::sleep(Duration::from_millis(kill_ms));
        let before = request(server.addr, "GET", "/v1/jobs", None, None).map(|r| r.json());
        server.kill();
        server = Server::start_with(&data, &log, &one);
        let addr = server.addr;
        let results: Vec<(u64, String, Value)> =
            jobs.into_iter().map(|(p, id, job)| (p, id, wait_finished(addr, &job))).collect();
        let ident = wait_finished(addr, &identify);
        assert_eq!(ident["status"], "done", "{ident}");
        let (mut reruns, mut fails) = (0, Vec::new());
        for &p in &pairs {
            let r: Vec<&(u64, String, Value)> = results.iter().filter(|r| r.0 == p).collect();
            let done: Vec<_> = r.iter().filter(|r| r.2["status"] == "done").collect();
            let failed: Vec<_> = r.iter().filter(|r| r.2["status"] == "failed").collect();
            if done.len() != 1 || failed.len() != 1 {
                fails.push(format!("pair {p}: {:?}", r.iter().map(|r| &r.2).collect::<Vec<_>>()));
                continue;
            }
            let (winner, loser) = (&done[0].1, &failed[0]);
            reruns += usize::from(done[0].2["http_status"] == 200);
            let names = loser.2["error"]["candidates"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["subject_id"] == winner.as_str()));
            if loser.2["error"]["code"] != "duplicate" || !names {
                fails.push(format!("pair {p}: {} must be a duplicate of {winner}", loser.2));
            }
            if !enrolled(addr, winner) || enrolled(addr, &loser.1) {
                fails.push(format!(
                    "pair {p}: store disagrees ({winner} enrolled, {} not)",
                    loser.1
                ));
            }
        }
        assert!(
            fails.is_empty(),
            "after kill {round} at {kill_ms} ms:\n  {}\nserver log:\n{}",
            fails.join("\n  "),
            log_tail(&log)
        );
        let counts = request(addr, "GET", "/v1/jobs", None, None).unwrap().json();
        assert_eq!((counts["pending"].as_u64(), counts["running"].as_u64()), (Some(0), Some(0)));
        eprintln!(
            "kill {round} after {kill_ms:2} ms (queue then: {}): {} jobs finished after the \
             restart, {reruns} enrollments found already stored by their rerun",
            before.map_or_else(|_| "?".into(), |v| v.to_string()),
            results.len() + 1
        );
    }
}
