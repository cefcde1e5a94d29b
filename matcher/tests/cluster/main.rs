//! A real cluster on loopback: `scripts/cluster.sh up` starts etcd (3 members), NATS JetStream
//! (3 members) and three `biomatch serve` nodes (12 logical shards, 2 replicas each); a plain
//! single-node `biomatch serve` holds the same subjects as the reference.
//!
//! - enrollments through one node, identify and verify through the others: the answers equal
//!   the single node's (same candidates, order, scores, N);
//! - idempotent retries (same Idempotency-Key through another node) answer the first
//!   enrollment; a conflicting enrollment is 409; a delete is seen by every node at once;
//! - `kill -9` of a node under enroll + identify load, then of a NATS member and of an etcd
//!   member: no acknowledged enrollment lost, identify failures only within the failover
//!   window (printed), the node restarts and catches up.
//!
//! Needs the Debian packages etcd-server and nats-server (`scripts/setup.sh` installs them).
//! Every process is stopped on exit (`scripts/cluster.sh down`).

use biomatch_testkit::http::{self, Response};
use biomatch_testkit::SplitMix64;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MODEL: &str = "synthetic-face@1";
const DIM: usize = 128;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

fn cluster_sh(args: &[&str]) -> std::process::Output {
    let out = Command::new(root().join("scripts/cluster.sh"))
        .args(args)
        .env("BIOMATCH_BIN", env!("CARGO_BIN_EXE_biomatch"))
        .env("BIOMATCH_LOG", "info")
        .output()
        .expect("run scripts/cluster.sh");
    assert!(
        out.status.success(),
        "scripts/cluster.sh {args:?} failed (etcd-server and nats-server come with \
         scripts/setup.sh):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The cluster of a test, stopped on drop.
struct Cluster {
    dir: tempfile::TempDir,
    nodes: Vec<SocketAddr>,
}

impl Cluster {
    fn up(nodes: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().to_str().expect("utf-8 path").to_owned();
        cluster_sh(&["up", &d, "--nodes", &nodes.to_string()]);
        let mut c = Cluster { dir, nodes: Vec::new() };
        c.reload();
        c
    }

    fn manifest(&self) -> Value {
        let text = std::fs::read_to_string(self.dir.path().join("nodes.json")).expect("nodes.json");
        serde_json::from_str(&text).expect("nodes.json is JSON")
    }

    fn reload(&mut self) {
        self.nodes = self.manifest()["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| {
                let url = n["url"].as_str().expect("url");
                url.trim_start_matches("http://").parse().expect("host:port")
            })
            .collect();
    }

    fn dir(&self) -> &str {
        self.dir.path().to_str().expect("utf-8 path")
    }

    fn kill(&self, what: &str, i: usize) {
        cluster_sh(&["kill", self.dir(), what, &i.to_string()]);
    }

    fn start(&self, what: &str, i: usize) {
        cluster_sh(&["start", self.dir(), what, &i.to_string()]);
    }

    fn status(&self, node: usize) -> Value {
        get(self.nodes[node], "/v1/admin/cluster").expect("cluster status").json()
    }

    /// Wait until the map has every shard at full replication, nothing catching up.
    fn settled(&self, node: usize, replication: usize, within: Duration) {
        let t = Instant::now();
        loop {
            if let Some(r) = get(self.nodes[node], "/v1/admin/cluster") {
                let v = r.json();
                let ok = v["shards"].as_array().is_some_and(|s| {
                    !s.is_empty()
                        && s.iter().all(|x| {
                            x["active"].as_array().is_some_and(|a| a.len() == replication)
                                && x["catching_up"].as_array().is_some_and(|c| c.is_empty())
                        })
                });
                if ok {
                    return;
                }
                assert!(t.elapsed() < within, "cluster not settled: {v}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/cluster.sh"))
            .args(["down", self.dir()])
            .stdout(Stdio::null())
            .status();
        if std::thread::panicking() {
            // Keep the logs for the failure report.
            let keep = std::env::temp_dir().join("biomatch-cluster-test-failed");
            let _ = std::fs::remove_dir_all(&keep);
            let _ = Command::new("cp").arg("-r").arg(self.dir.path()).arg(&keep).status();
            eprintln!("cluster logs kept in {}", keep.display());
        }
    }
}

/// A single-node `biomatch serve` (the reference), killed on drop.
struct Single {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Single {
    fn start() -> Single {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr: SocketAddr =
            format!("127.0.0.1:{}", biomatch_testkit::free_port()).parse().expect("addr");
        let child = Command::new(env!("CARGO_BIN_EXE_biomatch"))
            .args(["serve", "--data"])
            .arg(dir.path().join("store"))
            .args(["--listen", &addr.to_string()])
            .env("BIOMATCH_LOG", "warn")
            .env("BIOMATCH__EXTRACTORS__FACE__ENABLED", "false")
            .env(
                "BIOMATCH__MODELS",
                format!(
                    "[{{id=\"{MODEL}\",dim={DIM},modality=\"face\",calibration=\"calibration/{MODEL}.json\"}}]"
                ),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("start biomatch");
        let s = Single { child, addr, _dir: dir };
        let t = Instant::now();
        while get(addr, "/readyz").is_none_or(|r| r.status != 200) {
            assert!(t.elapsed() < Duration::from_secs(60), "single node not ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }
}

impl Drop for Single {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(addr: SocketAddr, path: &str) -> Option<Response> {
    http::json(addr, "GET", path, None)
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> Option<Response> {
    http::json(addr, "POST", path, Some(body))
}

fn post_key(addr: SocketAddr, path: &str, key: &str, body: &Value) -> Option<Response> {
    let bytes = serde_json::to_vec(body).expect("json");
    http::request(
        addr,
        "POST",
        path,
        &[("Idempotency-Key", key)],
        Some(&bytes),
        Duration::from_secs(30),
    )
    .ok()
}

fn delete(addr: SocketAddr, path: &str) -> Option<Response> {
    http::json(addr, "DELETE", path, None)
}

/// A random unit vector.
fn unit(rng: &mut SplitMix64) -> Vec<f32> {
    let v: Vec<f32> = (0..DIM).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// `v` plus noise of relative size `eps`, normalised (a mate's probe).
fn noisy(v: &[f32], eps: f32, rng: &mut SplitMix64) -> Vec<f32> {
    let w: Vec<f32> = v.iter().map(|x| x + eps * (rng.uniform(-1.0, 1.0))).collect();
    let n = w.iter().map(|x| x * x).sum::<f32>().sqrt();
    w.into_iter().map(|x| x / n).collect()
}

fn face(v: &[f32]) -> Value {
    json!({ "template": { "model": MODEL, "vector": v } })
}

fn enroll_body(id: &str, v: &[f32]) -> Value {
    json!({ "subject_id": id, "face": face(v) })
}

/// Active replicas per node (`nodes` of them) in a `/v1/admin/cluster` answer.
fn replicas_per_node(status: &Value, nodes: usize) -> Vec<usize> {
    let mut per = vec![0; nodes];
    for s in status["shards"].as_array().expect("shards") {
        for a in s["active"].as_array().expect("active") {
            let i: usize = a
                .as_str()
                .and_then(|x| x.strip_prefix("node-"))
                .and_then(|x| x.parse().ok())
                .expect("node-<i>");
            per[i] += 1;
        }
    }
    per
}

/// The parts of an identify answer that must agree between the cluster and the single node.
fn candidates(r: &Response) -> (Vec<(String, f64)>, u64) {
    let v = r.json();
    let c = v["candidates"]
        .as_array()
        .unwrap_or_else(|| panic!("identify: {}", r.summary()))
        .iter()
        .map(|c| {
            (c["subject_id"].as_str().expect("id").to_owned(), c["fmr"].as_f64().expect("fmr"))
        })
        .collect();
    (c, v["gallery_size"].as_u64().expect("gallery_size"))
}

#[test]
fn three_nodes_answer_like_one_and_survive_kill_9() {
    let cluster = Cluster::up(3);
    let single = Single::start();
    let n = &cluster.nodes;
    cluster.settled(0, 2, Duration::from_secs(60));
    let status = cluster.status(1);
    assert_eq!(status["accepting_writes"], true, "{status}");
    assert_eq!(status["shards"].as_array().map(Vec::len), Some(12), "{status}");

    // Enroll through node 0 (and the reference), some with an Idempotency-Key.
    let mut rng = SplitMix64::new(15);
    let subjects: Vec<(String, Vec<f32>)> =
        (0..120).map(|i| (format!("citizen-{i:05}"), unit(&mut rng))).collect();
    for (i, (id, v)) in subjects.iter().enumerate() {
        let body = enroll_body(id, v);
        let r = if i % 3 == 0 {
            post_key(n[0], "/v1/subjects", &format!("key-{id}"), &body)
        } else {
            post(n[0], "/v1/subjects", &body)
        }
        .expect("enroll answered");
        assert_eq!(r.status, 201, "{}", r.summary());
        let s = post(single.addr, "/v1/subjects", &body).expect("single enroll");
        assert_eq!(s.status, 201, "{}", s.summary());
    }
    // Read-your-writes on every node at once: each subject is there through node 1 and 2.
    for (id, _) in subjects.iter().take(20) {
        for a in &n[1..] {
            let r = get(*a, &format!("/v1/subjects/{id}")).expect("get answered");
            assert_eq!(r.status, 200, "{}", r.summary());
        }
    }
    // An idempotent retry through another node answers the same enrollment, stores nothing.
    let (id0, v0) = &subjects[0];
    let retry = post_key(n[2], "/v1/subjects", &format!("key-{id0}"), &enroll_body(id0, v0))
        .expect("retry answered");
    assert!(matches!(retry.status, 200 | 201), "{}", retry.summary());
    assert_eq!(retry.json()["subject_id"], id0.as_str());
    // A different enrollment under an enrolled id is refused.
    let clash = post(n[1], "/v1/subjects", &enroll_body(id0, &unit(&mut rng))).expect("answered");
    assert_eq!(clash.status, 409, "{}", clash.summary());
    assert_eq!(clash.json()["code"], "already_enrolled");

    // Identify and verify through nodes 1 and 2: the single node's answers exactly.
    for (k, (id, v)) in subjects.iter().enumerate().step_by(7) {
        let probe = noisy(v, 0.05, &mut rng);
        for (body, what) in [
            (json!({ "face": face(&probe), "max_results": 5 }), "fpir"),
            (json!({ "face": face(&probe), "max_results": 3, "threshold": 0.1 }), "threshold"),
            (
                json!({ "face": face(&unit(&mut rng)), "max_results": 4, "threshold": 0.05 }),
                "impostor",
            ),
        ] {
            let c = post(n[1 + k % 2], "/v1/identify", &body).expect("cluster identify");
            let s = post(single.addr, "/v1/identify", &body).expect("single identify");
            assert_eq!(c.status, 200, "{}", c.summary());
            assert_eq!(candidates(&c), candidates(&s), "identify ({what}) differs for {id}");
        }
        let (c, s) = (
            post(n[2 - k % 2], "/v1/verify", &json!({ "subject_id": id, "face": face(&probe) })),
            post(single.addr, "/v1/verify", &json!({ "subject_id": id, "face": face(&probe) })),
        );
        let (c, s) = (c.expect("cluster verify"), s.expect("single verify"));
        assert_eq!(c.status, 200, "{}", c.summary());
        assert_eq!(c.json()["fmr"], s.json()["fmr"]);
        assert_eq!(c.json()["decision"], "match");
    }
    let found =
        post(n[2], "/v1/identify", &json!({ "face": face(&subjects[5].1), "max_results": 1 }))
            .expect("identify");
    assert_eq!(candidates(&found).0[0].0, subjects[5].0);

    // A delete through node 1 is seen through node 2 at once.
    let (gone, gone_v) = &subjects[5];
    let d = delete(n[1], &format!("/v1/subjects/{gone}")).expect("delete answered");
    assert_eq!(d.status, 200, "{}", d.summary());
    assert_eq!(get(n[2], &format!("/v1/subjects/{gone}")).expect("get").status, 404);
    let after = post(n[0], "/v1/identify", &json!({ "face": face(gone_v), "max_results": 3 }))
        .expect("identify");
    assert!(candidates(&after).0.iter().all(|(c, _)| c != gone));
    assert_eq!(delete(n[2], &format!("/v1/subjects/{gone}")).expect("answered").status, 404);

    // kill -9 under load: a node (twice), a NATS member, an etcd member.
    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    // BIOMATCH_CLUSTER_KILL_ROUNDS (default 4) rounds through this cycle.
    let cycle = [
        ("node", 1usize),
        ("nats", 0),
        ("node", 2),
        ("etcd", 1),
        ("node", 0),
        ("nats", 2),
        ("etcd", 0),
    ];
    let rounds: usize = std::env::var("BIOMATCH_CLUSTER_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut windows = Vec::new();
    for (round, (what, i)) in cycle.iter().cycle().take(rounds).enumerate() {
        let stop = Arc::new(AtomicBool::new(false));
        let failures: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
        let served = Arc::new(AtomicUsize::new(0));
        let slowest_enroll: Arc<Mutex<Duration>> = Arc::new(Mutex::new(Duration::ZERO));
        // Load goes to the nodes that stay up.
        let targets: Vec<SocketAddr> = n
            .iter()
            .enumerate()
            .filter(|(k, _)| *what != "node" || k != i)
            .map(|(_, a)| *a)
            .collect();
        let mut load = Vec::new();
        for c in 0..2usize {
            let (stop, failures, served, acked, slowest) = (
                stop.clone(),
                failures.clone(),
                served.clone(),
                acked.clone(),
                slowest_enroll.clone(),
            );
            let targets = targets.clone();
            let probe = subjects[10 + c].1.clone();
            load.push(std::thread::spawn(move || {
                let mut rng = SplitMix64::new((round * 10 + c) as u64);
                let mut k = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let to = targets[k % targets.len()];
                    k += 1;
                    let id = format!("load-{round}-{c}-{k}");
                    let key = format!("key-{id}");
                    let body = enroll_body(&id, &unit(&mut rng));
                    // Unanswered or refused: retried with the same key until acknowledged.
                    let began = Instant::now();
                    for attempt in 0.. {
                        match post_key(to, "/v1/subjects", &key, &body) {
                            Some(r) if r.status == 201 || r.status == 200 => {
                                acked.lock().unwrap().push(id.clone());
                                let took = began.elapsed();
                                let mut w = slowest.lock().unwrap();
                                *w = (*w).max(took);
                                break;
                            }
                            _ if attempt > 100 => panic!("enrollment {id} never acknowledged"),
                            _ => std::thread::sleep(Duration::from_millis(100)),
                        }
                    }
                    match post(
                        to,
                        "/v1/identify",
                        &json!({ "face": face(&probe), "max_results": 1 }),
                    ) {
                        Some(r) if r.status == 200 => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => failures.lock().unwrap().push(Instant::now()),
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(1500));
        let killed_at = Instant::now();
        cluster.kill(what, *i);
        std::thread::sleep(Duration::from_secs(6));
        cluster.start(what, *i);
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        for t in load {
            t.join().expect("load thread");
        }
        let f = failures.lock().unwrap().clone();
        let window = f.iter().max().map(|last| last.duration_since(killed_at));
        let stall = *slowest_enroll.lock().unwrap();
        eprintln!(
            "round {round}: kill -9 {what} {i}: {} identifies served, {} failed, identify \
             failover window {window:?}; slowest acknowledged enrollment (retries included) {stall:?}",
            served.load(Ordering::Relaxed),
            f.len(),
        );
        // A NATS stream leader's election (nats-server 2.9: seconds) holds writes up.
        assert!(stall < Duration::from_secs(30), "an enrollment stalled {stall:?}");
        assert!(window.is_none_or(|w| w < Duration::from_secs(10)), "failover took {window:?}");
        windows.push(window.unwrap_or_default());
        let watcher = if *what == "node" && *i == 0 { 1 } else { 0 };
        cluster.settled(watcher, 2, Duration::from_secs(60));
    }
    // Every acknowledged enrollment is there, through every node (the restarted ones caught up).
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "too little load: {}", acked.len());
    for id in &acked {
        for a in n {
            let r = get(*a, &format!("/v1/subjects/{id}")).expect("get answered");
            assert_eq!(r.status, 200, "acknowledged {id} lost: {}", r.summary());
        }
    }
    // A fourth node: shards move to it once caught up, the counts balance, every subject is
    // still found exactly once (a subject in two shards would make the merge refuse).
    let before: Vec<usize> = replicas_per_node(&cluster.status(0), 3);
    cluster_sh(&["add-node", cluster.dir()]);
    let mut cluster = cluster;
    cluster.reload();
    let n = cluster.nodes.clone();
    assert_eq!(n.len(), 4);
    let t = Instant::now();
    while replicas_per_node(&cluster.status(0), 4)[3] == 0 {
        assert!(t.elapsed() < Duration::from_secs(30), "no shard moved to the fourth node");
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.settled(0, 2, Duration::from_secs(120));
    // The settled view (node 0's): another node's may still be an epoch behind.
    let after = replicas_per_node(&cluster.status(0), 4);
    // Its replicas were copied from active ones (segments, log, position), not replayed.
    let log = cluster.manifest()["nodes"][3]["log"].as_str().expect("log path").to_owned();
    let copied = std::fs::read_to_string(&log)
        .expect("node log")
        .lines()
        .filter(|l| l.contains("replica copied"))
        .count();
    assert_eq!(copied, after[3], "replicas copied by the fourth node (its log: {log})");
    for (i, node) in cluster.manifest()["nodes"].as_array().expect("nodes").iter().enumerate() {
        let text = std::fs::read_to_string(node["log"].as_str().expect("log")).unwrap_or_default();
        let count = |what: &str| text.lines().filter(|l| l.contains(what)).count();
        eprintln!(
            "node {i}: {} replicas copied, {} copies failed, {} replayed from the log's start; last copy: {}",
            count("replica copied"),
            count("replica copy failed"),
            count("replaying the shard's log from its start"),
            text.lines().rfind(|l| l.contains("replica copied")).unwrap_or("-")
        );
    }
    eprintln!("replicas per node: 3 nodes {before:?}, after adding a fourth {after:?}");
    assert_eq!(after.iter().sum::<usize>(), 24);
    assert!(after.iter().all(|&c| (3..=9).contains(&c)), "unbalanced: {after:?}");
    for (k, id) in acked
        .iter()
        .enumerate()
        .step_by(97)
        .chain(subjects.iter().map(|(id, _)| id).enumerate().skip(6).step_by(11))
    {
        let r = get(n[k % 4], &format!("/v1/subjects/{id}")).expect("get answered");
        assert_eq!(r.status, 200, "{id} lost after the move: {}", r.summary());
    }
    for (id, v) in subjects.iter().skip(6).step_by(13) {
        for a in &n {
            let r = post(*a, "/v1/identify", &json!({ "face": face(v), "max_results": 2 }))
                .expect("identify");
            let (c, size) = candidates(&r);
            assert_eq!(c[0].0, *id, "{}", r.summary());
            assert_ne!(c.get(1).map(|x| &x.0), Some(id), "found twice");
            assert_eq!(
                size as usize,
                subjects.len() - 1 + acked.len(),
                "N counts every subject once"
            );
        }
    }
    eprintln!(
        "{} acknowledged enrollments under {rounds} kill -9 rounds, all found on every node; \
         longest failover window {:?}",
        acked.len(),
        windows.iter().max()
    );
}
