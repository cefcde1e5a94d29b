//! Enroll-if-unique across SIGKILL: the real `biomatch serve` takes 16 concurrent duplicate
//! pairs (one person, two captures, two subject ids, `POST /v1/subjects?dedup=true` with an
//! Idempotency-Key each), is killed at a random moment while they are in flight and restarted;
//! every request whose answer was lost is sent again (same body, same key). For every pair,
//! after every restart: exactly one of the two ids is enrolled, its request answered 201 (or 200:
//! a retry that had landed), the other answered 409 `duplicate` naming it; never both enrolled.

use super::{enrolled, log_tail, request, seeded_rng, Response, Server, DIM, FACE_MODEL};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Barrier, Mutex};
use std::time::Duration;

const ROUNDS: u64 = 12;
const PAIRS: u64 = 16;
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 0..=40;

fn unit(rng: &mut ChaCha8Rng) -> Vec<f32> {
    let v: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// Pair `pair`'s two requests: (subject id, idempotency key, body).
fn pair_requests(pair: u64) -> [(String, String, Vec<u8>); 2] {
    let mut rng = ChaCha8Rng::seed_from_u64(pair ^ 0xDED0);
    let person = unit(&mut rng);
    ["a", "b"].map(|side| {
        // Another capture of the person: cosine ≈ 0.95.
        let noise = unit(&mut rng);
        let v: Vec<f32> = person.iter().zip(noise).map(|(p, n)| p + 0.3 * n).collect();
        let id = format!("DEDUP-{pair:04}{side}");
        // A strict target: the random directions here are impostors of one another, and at the
        // default 1e-3 a few of the 256 searches would be expected to find a false match.
        let body = json!({ "subject_id": id, "target_fpir": 1e-7, "face": { "template": {
            "model": FACE_MODEL, "vector": v } } });
        (id.clone(), format!("dedup-{id}"), serde_json::to_vec(&body).unwrap())
    })
}

fn send(addr: SocketAddr, (_, key, body): &(String, String, Vec<u8>)) -> Option<Response> {
    let r = request(addr, "POST", "/v1/subjects?dedup=true", Some(key), Some(body)).ok()?;
    // Not ready / shed / in doubt: no decision was given; the same request again decides.
    (r.status != 503).then_some(r)
}

/// Send until answered (the server is up): bounded.
fn resend(addr: SocketAddr, req: &(String, String, Vec<u8>)) -> Response {
    for _ in 0..100 {
        if let Some(r) = send(addr, req) {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{}: no answer after 100 tries", req.0);
}

/// The pair's final answers and the store agree: one enrolled, the other a duplicate naming it.
fn check_pair(addr: SocketAddr, pair: u64, answers: &[Response; 2]) -> Result<(), String> {
    let reqs = pair_requests(pair);
    let ok = |r: &Response| matches!(r.status, 200 | 201);
    let (w, l) = match (ok(&answers[0]), ok(&answers[1])) {
        (true, false) => (0, 1),
        (false, true) => (1, 0),
        _ => {
            return Err(format!(
                "pair {pair}: exactly one must be enrolled, answers {} / {}",
                answers[0].summary(),
                answers[1].summary()
            ))
        }
    };
    let lost = answers[l].json();
    let names_winner = lost["candidates"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["subject_id"] == reqs[w].0.as_str()));
    if answers[l].status != 409 || lost["code"] != "duplicate" || !names_winner {
        return Err(format!(
            "pair {pair}: {} must be a duplicate naming {}: {}",
            reqs[l].0,
            reqs[w].0,
            answers[l].summary()
        ));
    }
    match (enrolled(addr, &reqs[w].0), enrolled(addr, &reqs[l].0)) {
        (true, false) => Ok(()),
        seen => Err(format!("pair {pair}: enrolled ({}, {}) = {seen:?}", reqs[w].0, reqs[l].0)),
    }
}

#[test]
fn sigkill_during_concurrent_duplicate_pairs_never_enrolls_both() {
    let mut rng = seeded_rng("dedup crash test", 20261202);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let mut server = Server::start(&data, &log);
    // Every pair decided so far, with its final answers.
    let mut decided: Vec<(u64, [Response; 2])> = Vec::new();
    let (mut lost_total, mut landed_total) = (0, 0);
    for round in 0..ROUNDS {
        let pairs: Vec<u64> = (round * PAIRS..(round + 1) * PAIRS).collect();
        let answers: Mutex<Vec<[Option<Response>; 2]>> =
            Mutex::new((0..PAIRS).map(|_| [None, None]).collect());
        let kill_ms = rng.random_range(KILL_AFTER_MS);
        let barrier = Barrier::new(2 * PAIRS as usize + 1);
        let addr = server.addr;
        std::thread::scope(|s| {
            for (i, &pair) in pairs.iter().enumerate() {
                for side in 0..2 {
                    let (answers, barrier) = (&answers, &barrier);
                    s.spawn(move || {
                        let req = &pair_requests(pair)[side];
                        barrier.wait();
                        let r = send(addr, req);
                        answers.lock().unwrap()[i][side] = r;
                    });
                }
            }
            barrier.wait();
            std::thread::sleep(Duration::from_millis(kill_ms));
            server.kill();
        });
        server = Server::start(&data, &log);
        let mut answers = answers.into_inner().unwrap();
        let (mut lost, mut landed) = (0, 0);
        for (i, &pair) in pairs.iter().enumerate() {
            let reqs = pair_requests(pair);
            for side in 0..2 {
                if answers[i][side].is_none() {
                    lost += 1;
                    let r = resend(server.addr, &reqs[side]);
                    landed += usize::from(r.status == 200);
                    answers[i][side] = Some(r);
                }
            }
            let [a, b] = std::mem::take(&mut answers[i]);
            decided.push((pair, [a.unwrap(), b.unwrap()]));
        }
        // Every pair so far, including earlier rounds' (the kill must not undo a decision).
        for (pair, answers) in &decided {
            if let Err(e) = check_pair(server.addr, *pair, answers) {
                panic!("after kill {round} at {kill_ms} ms: {e}\nserver log:\n{}", log_tail(&log));
            }
        }
        eprintln!(
            "kill {round} after {kill_ms:3} ms: {lost} of {} answers lost and re-sent ({landed} \
             had landed); {} pairs checked",
            2 * PAIRS,
            decided.len()
        );
        (lost_total, landed_total) = (lost_total + lost, landed_total + landed);
    }
    eprintln!("{ROUNDS} kills: {lost_total} answers lost and re-sent, {landed_total} had landed");
    assert!(lost_total > 0, "some kills should land while requests are in flight");
}
