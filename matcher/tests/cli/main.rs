//! End-to-end tests of the `biomatch` command line.

use base64::Engine;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn biomatch(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_biomatch"))
        .args(args)
        .env("BIOMATCH_LOG", "warn")
        .output()
        .expect("run biomatch")
}

fn last_json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let last = stdout.lines().last().expect("some output");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"))
}

const SMALL: &[&str] = &["--subjects", "3000", "--seed", "5", "--calibration-scores", "200000"];

#[test]
fn eval_synthetic_reports_identification_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let data = data.to_str().unwrap();
    let mut args = vec!["eval-synthetic", "--data", data, "--probes", "200"];
    args.extend_from_slice(SMALL);
    let v = last_json(&biomatch(&args));
    assert_eq!(v["subjects"], 3000);
    assert_eq!(v["mated_probes"], 200);
    assert_eq!(v["nonmated_probes"], 200);
    assert_eq!(v["search"], "exact");
    let (fnir, fpir) = (v["fnir"].as_f64().unwrap(), v["fpir"].as_f64().unwrap());
    assert!((0.0..=0.05).contains(&fnir), "fnir {fnir}");
    assert!((0.0..=0.02).contains(&fpir), "fpir {fpir}");
    assert!(v["rank1_hit_rate"].as_f64().unwrap() >= 0.99);
    let t = v["threshold"].as_f64().unwrap();
    assert!(t > 0.2 && t < 0.9, "threshold {t}");
    assert!(v["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(v["p99_ms"].as_f64().unwrap() >= v["p50_ms"].as_f64().unwrap());
    assert!(v["enroll_seconds"].as_f64().unwrap() > 0.0);

    // A second run reuses the enrolled store and reports the same accuracy.
    let again = last_json(&biomatch(&args));
    assert_eq!(again["enroll_seconds"], 0.0);
    assert_eq!(again["fnir"], v["fnir"]);
    assert_eq!(again["threshold"], v["threshold"]);

    // A different population is refused instead of being mixed into that store.
    let mut other = vec!["eval-synthetic", "--data", data, "--probes", "10"];
    other.extend_from_slice(&["--subjects", "3000", "--seed", "6"]);
    let out = biomatch(&other);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another population"));
}

#[test]
fn mosip_fpir_encoding_is_accepted() {
    let mut args = vec!["eval-synthetic", "--probes", "50", "--mosip-fpir", "20"];
    args.extend_from_slice(SMALL);
    let v = last_json(&biomatch(&args));
    assert_eq!(v["target_fpir"], 0.01);
    assert_eq!(v["target_fpir_mosip"], 20);
}

#[test]
fn bad_arguments_fail_clearly() {
    let out = biomatch(&["eval-synthetic", "--subjects", "100", "--target-fpir", "2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("target FPIR"));
    let out = biomatch(&["eval-synthetic", "--subjects", "10", "--probes", "20"]);
    assert!(!out.status.success(), "more mated probes than subjects must fail");
}

#[test]
fn enroll_synthetic_fills_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("s");
    let v = last_json(&biomatch(&[
        "enroll-synthetic",
        "--data",
        data.to_str().unwrap(),
        "--subjects",
        "500",
    ]));
    assert_eq!(v["subjects"], 500);
    assert!(data.join("MANIFEST").exists());
}

#[test]
fn eval_synthetic_with_the_index_reports_recall_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let args = [
        "eval-synthetic",
        "--data",
        data.to_str().unwrap(),
        "--subjects",
        "25000",
        "--probes",
        "300",
        "--calibration-scores",
        "200000",
        "--search",
        "index",
        "--shards",
        "3",
    ];
    let v = last_json(&biomatch(&args));
    assert_eq!(v["search"], "index");
    assert_eq!(v["index"]["shards"], 3);
    assert_eq!(v["index"]["factory"], "IDMap,PQ32x4fs");
    assert!(v["index"]["build_seconds"].as_f64().unwrap() > 0.0);
    let recall = v["recall_vs_exact"].as_f64().unwrap();
    assert!(recall >= 0.99, "recall_vs_exact {recall}");
    // The side-by-side bench's measures (docs/bench.md): mates in the candidates, and the exact
    // best candidate of every probe (non-mated ones included) among the index's candidates.
    assert!(v["mate_hit_rate"].as_f64().unwrap() >= 0.99);
    assert!(v["exact_mate_hit_rate"].as_f64().unwrap() >= 0.99);
    let top1 = v["top1_recall_vs_exact"].as_f64().unwrap();
    assert!(top1 > 0.5 && top1 <= 1.0, "top1_recall_vs_exact {top1}");
    let bpt = v["bytes_per_template"].as_f64().unwrap();
    assert!(bpt > 256.0 && bpt < 1024.0, "bytes_per_template {bpt}");
    assert!(v["exact_p50_ms"].as_f64().unwrap() > 0.0);

    // The generation is reused by the next run; a budget too small for it is refused clearly.
    let again = last_json(&biomatch(&args));
    assert_eq!(again["index"]["generation"], 1);
    assert_eq!(again["index"]["build_seconds"], 0.0);
    let mut tight: Vec<&str> = args.to_vec();
    tight.extend_from_slice(&["--memory-budget-mb", "1"]);
    let out = biomatch(&tight);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("budget"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fields every `eval-synthetic` run with fingers reports, and the bounds the contract holds
/// them to.
fn check_finger_eval(v: &serde_json::Value, per_subject: u64, subjects: u64) {
    let f = &v["fingers"];
    assert_eq!(f["per_subject"], per_subject, "{v}");
    assert_eq!(f["gallery_fingers"], per_subject * subjects, "{v}");
    for key in ["fnir", "fpir", "fnir_empirical", "threshold_empirical", "p50_ms", "p99_ms"] {
        assert!(v[key].is_number(), "{key} missing: {v}");
    }
    for key in ["penetration", "mcc_comparisons_per_search", "mated_rank1_hit_rate"] {
        assert!(f[key].is_number(), "fingers.{key} missing: {v}");
    }
    let hit = f["preselection_hit_rate"].as_f64().unwrap();
    assert!(hit >= 0.9, "preselection_hit_rate {hit}");
    let fnir = v["fnir"].as_f64().unwrap();
    assert!(fnir <= 0.1, "fnir {fnir}");
    assert!(v["p99_ms"].as_f64().unwrap() >= v["p50_ms"].as_f64().unwrap());
    assert!(f["resident_bytes_per_finger"].as_f64().unwrap() > 0.0);
    assert!(f["startup_seconds"].as_f64().unwrap() > 0.0);
    let penetration = f["penetration"].as_f64().unwrap();
    assert!(penetration > 0.0 && penetration <= 1.0, "penetration {penetration}");
}

#[test]
fn eval_synthetic_with_fingers_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let data = data.to_str().unwrap();
    let args = [
        "eval-synthetic",
        "--data",
        data,
        "--subjects",
        "300",
        "--probes",
        "40",
        "--fingers-per-subject",
        "2",
        "--no-face",
    ];
    let v = last_json(&biomatch(&args));
    check_finger_eval(&v, 2, 300);
    assert_eq!(v["face"], false);
    assert_eq!(v["mated_probes"], 40);
    assert_eq!(v["nonmated_probes"], 40);
    let fpir = v["fpir"].as_f64().unwrap();
    assert!(fpir <= 0.1, "fpir {fpir}");
    assert!(v["enroll_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(v["fingers"]["preselected_share"], 0.0, "300 subjects: compared exhaustively");

    // The same store through the codes' pre-selection: 10 % of the subjects shortlisted.
    let mut pre = args.to_vec();
    pre.extend([
        "--finger-penetration",
        "0.1",
        "--finger-min-candidates",
        "10",
        "--finger-exhaustive-below",
        "50",
    ]);
    let p = last_json(&biomatch(&pre));
    check_finger_eval(&p, 2, 300);
    assert_eq!(p["fingers"]["preselected_share"], 1.0, "{p}");
    let pen = p["fingers"]["penetration"].as_f64().unwrap();
    assert!((pen - 0.1).abs() < 0.01, "penetration {pen}");

    // The store is reused for the same population, and refused for other fingers or a face.
    let again = last_json(&biomatch(&args));
    assert_eq!(again["enroll_seconds"], 0.0);
    assert_eq!(again["fnir"], v["fnir"]);
    assert_eq!(again["fpir"], v["fpir"]);
    let mut ten = args.to_vec();
    ten[8] = "10";
    let with_face = &args[..args.len() - 1];
    for other in [&ten[..], with_face] {
        let out = biomatch(other);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("another population"));
    }
}

#[test]
fn eval_synthetic_with_face_and_fingers() {
    let v = last_json(&biomatch(&[
        "eval-synthetic",
        "--subjects",
        "300",
        "--probes",
        "40",
        "--fingers-per-subject",
        "2",
        "--calibration-scores",
        "200000",
    ]));
    check_finger_eval(&v, 2, 300);
    assert_eq!(v["face"], true);
    // A finger that does not match reads FMR 1 (no evidence): impostors stay below the cut.
    // (When it read 0.1, every non-matching finger lowered an impostor's fused FMR tenfold:
    // FPIR 0.15 here at a target of 1e-3.)
    assert!(v["fpir"].as_f64().unwrap() <= 0.1, "{v}");
}

#[test]
fn finger_arguments_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("s");
    let d = data.to_str().unwrap();
    for cmd in ["eval-synthetic", "enroll-synthetic"] {
        let out = biomatch(&[cmd, "--data", d, "--fingers-per-subject", "3"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("must be 0 (none), 1 (right index), 2 (both index fingers) or 10"),
            "{err}"
        );
        let out = biomatch(&[cmd, "--data", d, "--no-face"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--no-face"), "{err}");
    }
    assert!(!data.exists(), "a refused command created the store");

    let v = last_json(&biomatch(&[
        "enroll-synthetic",
        "--data",
        d,
        "--subjects",
        "50",
        "--fingers-per-subject",
        "1",
        "--no-face",
    ]));
    assert_eq!(v["subjects"], 50);
    assert_eq!(v["fingers"], 50);
    assert_eq!(v["fingers_per_subject"], 1);
}

/// The project's root (where `.setup/` lives).
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// A `biomatch serve` child process, killed if the test ends before it is stopped.
struct Server {
    child: Option<Child>,
    port: u16,
}

impl Server {
    /// Start `biomatch serve ARGS --listen 127.0.0.1:<free port>` with `envs` set.
    fn start(args: &[&str], envs: &[(&str, &Path)]) -> Server {
        let port = biomatch_testkit::free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_biomatch"));
        cmd.arg("serve").args(args).args(["--listen", &format!("127.0.0.1:{port}")]);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.env("BIOMATCH_LOG", "info").stderr(Stdio::piped()).spawn().unwrap();
        Server { child: Some(child), port }
    }

    /// Poll `/readyz` until it answers 200 (at most `limit`); panics with the server's log if it
    /// exits or does not get ready.
    fn wait_ready(&mut self, limit: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            let child = self.child.as_mut().unwrap();
            if child.try_wait().unwrap().is_some() {
                let out = self.child.take().unwrap().wait_with_output().unwrap();
                panic!("serve exited early: {}", String::from_utf8_lossy(&out.stderr));
            }
            if http(self.port, "GET", "/readyz", None).is_some_and(|(s, _)| s == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("service not ready after {limit:?}");
    }

    /// SIGTERM, then wait: the exit status and the log.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let child = self.child.take().unwrap();
        let pid = child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let out = child.wait_with_output().unwrap();
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One HTTP/1.1 request; the status and the JSON body (`Null` if none). `None`: no connection.
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Option<(u16, serde_json::Value)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let (_, rest) = out.split_once("\r\n\r\n")?;
    let json = match (rest.find('{'), rest.rfind('}')) {
        (Some(a), Some(b)) if a < b => serde_json::from_str(&rest[a..=b]).ok()?,
        _ => serde_json::Value::Null,
    };
    Some((status, json))
}

/// A store of 300 synthetic subjects and a configuration file serving it with templates only
/// (the face extractor has its own tests): (temp dir, store dir, configuration file).
fn synthetic_store() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let d = data.to_str().unwrap();
    assert!(biomatch(&["enroll-synthetic", "--data", d, "--subjects", "300"]).status.success());
    let cfg = dir.path().join("biomatch.toml");
    std::fs::write(
        &cfg,
        "[extractors.face]\nenabled = false\n[[models]]\nid = \"synthetic-face@1\"\ndim = 128\nmodality = \"face\"\ncalibration = \"calibration/synthetic-face@1.json\"\n",
    )
    .unwrap();
    (dir, data, cfg)
}

#[test]
fn serve_starts_ready_and_stops_on_sigterm() {
    let (_dir, data, cfg) = synthetic_store();
    let (d, c) = (data.to_str().unwrap(), cfg.to_str().unwrap());
    // A table written into the data directory overrides the built-in one.
    assert!(biomatch(&["calibrate-synthetic", "--data", d, "--scores", "100000"]).status.success());
    // No keys and a public address: refused — from the flag and from the environment.
    let out = biomatch(&["serve", "--config", c, "--data", d, "--listen", "0.0.0.0:0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("non-loopback"));
    let out = Command::new(env!("CARGO_BIN_EXE_biomatch"))
        .args(["serve", "--config", c, "--data", d])
        .env("BIOMATCH__LISTEN", "0.0.0.0:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("non-loopback"));
    // A malformed configuration value stops the start-up with a message.
    let out = Command::new(env!("CARGO_BIN_EXE_biomatch"))
        .args(["serve", "--config", c, "--data", d])
        .env("BIOMATCH__LIMITS__MAX_CONCURRENT", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_concurrent"));

    let mut server = Server::start(&["--config", c, "--data", d], &[]);
    server.wait_ready(Duration::from_secs(60));
    // Two audited requests: a lookup of nobody (404) and the stats.
    assert_eq!(http(server.port, "GET", "/v1/subjects/NOBODY", None).map(|r| r.0), Some(404));
    assert_eq!(http(server.port, "GET", "/v1/admin/stats", None).map(|r| r.0), Some(200));
    // SIGTERM: graceful stop, exit status 0.
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("SIGTERM") && log.contains("stopped"), "{log}");
    let table = data.join("calibration").join("synthetic-face@1.json");
    assert!(log.contains(&format!("source=file {}", table.display())), "{log}");
    assert!(log.contains("face image extraction is off"), "{log}");
    assert!(data.join("audit").exists());

    // `audit verify` on the log that run left: intact (exit 0); then one line deleted (exit 1,
    // naming the damage).
    let out = biomatch(&["audit", "verify", "--data", d]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("OK") && text.contains("MACs checked"), "{text}");
    let files = biomatch_matcher::audit::list_files(&data.join("audit")).unwrap();
    let (_, path) = files.last().unwrap();
    let lines: Vec<String> =
        std::fs::read_to_string(path).unwrap().lines().map(|l| format!("{l}\n")).collect();
    assert!(lines.len() >= 4, "open, two requests and a checkpoint at least: {lines:?}");
    std::fs::write(path, [&lines[..1], &lines[2..]].concat().concat()).unwrap();
    let out = biomatch(&["audit", "verify", "--data", d, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["problems"][0]["kind"], "deleted", "{report}");
}

/// Write `n` templates of dimension 128 and their ids as an import would get them.
fn import_files(
    dir: &std::path::Path,
    n: usize,
    seed: u64,
) -> (std::path::PathBuf, std::path::PathBuf) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let data: Vec<f32> = (0..n * 128).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let a = ndarray::Array2::from_shape_vec((n, 128), data).unwrap();
    let t = dir.join("backlog.npy");
    ndarray_npy::write_npy(&t, &a).unwrap();
    let ids = dir.join("backlog.ids");
    let text: String = (0..n).map(|i| format!("{}\n", 100_000_000_000u64 + i as u64)).collect();
    std::fs::write(&ids, text).unwrap();
    (t, ids)
}

fn import_args<'a>(data: &'a str, t: &'a str, ids: &'a str, batch: &'a str) -> Vec<&'a str> {
    vec![
        "import",
        "--data",
        data,
        "--model",
        "synthetic-face@1",
        "--templates",
        t,
        "--ids",
        ids,
        "--batch",
        batch,
        "--quiet",
    ]
}

/// `biomatch import` loads a NumPy file, resumes after SIGKILL without losing or doubling a
/// row, and reports conflicts instead of overwriting them.
#[test]
fn import_resumes_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let n = 200_000;
    let (t, ids) = import_files(dir.path(), n, 3);
    let data = dir.path().join("store");
    let (d, ts, is) = (data.to_str().unwrap(), t.to_str().unwrap(), ids.to_str().unwrap());
    // Killed part-way (the batches are small so many commits happen before the kill).
    let mut child = Command::new(env!("CARGO_BIN_EXE_biomatch"))
        .args(import_args(d, ts, is, "500"))
        .env("BIOMATCH_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let progress = data.join("import/backlog.npy.progress");
    let t0 = std::time::Instant::now();
    while !progress.exists() && t0.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(150));
    child.kill().unwrap();
    child.wait().unwrap();
    let v = last_json(&biomatch(&import_args(d, ts, is, "500")));
    let resumed = v["resumed_from"].as_u64().unwrap();
    assert!(resumed > 0 && resumed < n as u64, "killed mid-way: resumed from {resumed}");
    assert_eq!(v["rows"], n);
    assert_eq!(v["conflicts"], 0);
    assert_eq!(
        v["imported"].as_u64().unwrap() + v["already_present"].as_u64().unwrap() + resumed,
        n as u64,
        "{v}"
    );
    // Everything is there exactly once: a fresh import of the same files finds every row.
    assert!(!progress.exists(), "a finished import leaves nothing to resume");
    let again = last_json(&biomatch(&import_args(d, ts, is, "5000")));
    assert_eq!(
        (again["imported"].as_u64(), again["already_present"].as_u64()),
        (Some(0), Some(n as u64))
    );
    // Other templates under the same ids are conflicts, never overwritten.
    let other = tempfile::tempdir().unwrap();
    let (t2, ids2) = import_files(other.path(), 10, 4);
    let c =
        last_json(&biomatch(&import_args(d, t2.to_str().unwrap(), ids2.to_str().unwrap(), "5000")));
    assert_eq!((c["conflicts"].as_u64(), c["imported"].as_u64()), (Some(10), Some(0)));
    assert_eq!(c["conflict_ids"][0], "100000000000");
}

/// Bad import input gets a clear error and stores nothing.
#[test]
fn import_refuses_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let (t, ids) = import_files(dir.path(), 10, 5);
    let data = dir.path().join("store");
    let d = data.to_str().unwrap();
    std::fs::write(&ids, "1\n2\n3\n").unwrap();
    let out = biomatch(&import_args(d, t.to_str().unwrap(), ids.to_str().unwrap(), "10"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has 3 ids but"), "{out:?}");
    let not_npy = dir.path().join("x.npy");
    std::fs::write(&not_npy, b"not numpy").unwrap();
    let out = biomatch(&import_args(d, not_npy.to_str().unwrap(), ids.to_str().unwrap(), "10"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("float32"), "{out:?}");
}

/// `biomatch serve --data NEWDIR` with no other command run first and no face models installed:
/// ready on the built-in calibration tables, templates work, face images get a clear 422.
#[test]
fn serve_starts_on_a_fresh_directory_without_face_models() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("new");
    let no_models = dir.path().join("no-models");
    let mut server = Server::start(
        &["--data", data.to_str().unwrap()],
        &[("BIOMATCH__EXTRACTORS__FACE__MODELS_DIR", &no_models)],
    );
    server.wait_ready(Duration::from_secs(60));
    let port = server.port;

    let v = 1.0 / (128f32).sqrt();
    let template = serde_json::json!({ "model": "synthetic-face@1", "vector": vec![v; 128] });
    let enroll = serde_json::json!({ "subject_id": "CM-1", "face": { "template": template } });
    let (s, body) = http(port, "POST", "/v1/subjects", Some(&enroll)).unwrap();
    assert_eq!(s, 201, "{body}");
    let verify = serde_json::json!({ "subject_id": "CM-1", "face": { "template": template } });
    let (s, body) = http(port, "POST", "/v1/verify", Some(&verify)).unwrap();
    assert_eq!((s, body["is_match"].as_bool()), (200, Some(true)), "{body}");

    let image = base64::engine::general_purpose::STANDARD.encode(png());
    let by_image = serde_json::json!({ "subject_id": "CM-2", "face": { "image": image } });
    let extract = serde_json::json!({ "modality": "face", "image": image });
    for (path, body) in [("/v1/subjects", &by_image), ("/v1/extract", &extract)] {
        let (s, got) = http(port, "POST", path, Some(body)).unwrap();
        assert_eq!((s, got["code"].as_str()), (422, Some("extractor_unavailable")), "{got}");
    }

    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(log.contains("face extractor not loaded") && log.contains("no-models"), "{log}");
    for model in ["sface@2021dec", "synthetic-face@1", "mcc@1"] {
        assert!(log.contains(&format!("model={model} source=built-in")), "{model}: {log}");
    }
}

/// A small grey PNG: a well-formed image without a face.
fn png() -> Vec<u8> {
    let img = image::GrayImage::from_pixel(64, 64, image::Luma([128]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A calibration file in the data directory that cannot be used stops the start-up, naming it;
/// so does a model with neither a file nor a built-in table.
#[test]
fn serve_refuses_a_bad_calibration_override() {
    let dir = tempfile::tempdir().unwrap();
    let no_models = dir.path().join("no-models");
    let custom = dir.path().join("custom.toml");
    std::fs::write(
        &custom,
        "[extractors.face]\nenabled = false\n[[models]]\nid = \"custom-face@1\"\ndim = 128\nmodality = \"face\"\ncalibration = \"calibration/custom-face@1.json\"\n",
    )
    .unwrap();
    let mcc = std::fs::read_to_string(root().join("matcher/calibration/mcc@1.json")).unwrap();
    let cases: [(&str, Option<&str>, Option<&Path>, &str); 4] = [
        ("synthetic-face@1.json", Some("not json"), None, "is invalid"),
        ("sface@2021dec.json", Some(mcc.as_str()), None, "is for mcc@1"),
        ("mcc@1.json", Some("{\"model\": \"mcc@1\"}"), None, "is invalid"),
        ("custom-face@1.json", None, Some(custom.as_path()), "no built-in table"),
    ];
    for (i, (file, content, config, why)) in cases.into_iter().enumerate() {
        let data = dir.path().join(format!("store-{i}"));
        let table = data.join("calibration").join(file);
        if let Some(c) = content {
            std::fs::create_dir_all(table.parent().unwrap()).unwrap();
            std::fs::write(&table, c).unwrap();
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_biomatch"));
        cmd.args(["serve", "--data", data.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let out = cmd.env("BIOMATCH__EXTRACTORS__FACE__MODELS_DIR", &no_models).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file}: {err}");
        assert!(err.contains(&table.display().to_string()) && err.contains(why), "{file}: {err}");
    }
}

/// The built-in tables of the shipped face models are what `biomatch calibrate-synthetic` and
/// `biomatch calibrate-face` write today (floats within 1e-4: the SFace scores come from ONNX
/// Runtime, whose kernels differ a little between CPUs). Needs the face models and photos
/// (`scripts/fetch-models.sh`, `scripts/fetch-photos.sh`); SFace and dlib's descriptor, and
/// SFace through the `calibrate-sface` alias too, the documented name of the first version.
#[test]
fn builtin_calibration_tables_are_what_the_commands_write() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = biomatch(&["calibrate-synthetic", "--data", d]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let face = |command: &str, data: &str, model: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_biomatch"))
            .args([command, "--data", data, "--model", model])
            .current_dir(root())
            .env("BIOMATCH_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command} needs scripts/fetch-models.sh and scripts/fetch-photos.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    face("calibrate-face", d, "sface@2021dec");
    face("calibrate-face", d, "dlib-resnet@v1");
    let alias = dir.path().join("alias");
    face("calibrate-sface", alias.to_str().unwrap(), "sface@2021dec");
    for file in [
        "synthetic-face@1.json",
        "sface@2021dec.json",
        "sface@2021dec.basis.json",
        "dlib-resnet@v1.json",
        "dlib-resnet@v1.basis.json",
    ] {
        let read = |p: &Path| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
        };
        let built_in = read(&root().join("matcher/calibration").join(file));
        let written = read(&dir.path().join("calibration").join(file));
        assert_close(&built_in, &written, file);
        if file.starts_with("sface") {
            assert_close(&written, &read(&alias.join("calibration").join(file)), file);
        }
    }
}

/// `a` and `b` are the same JSON, numbers within 1e-4.
fn assert_close(a: &serde_json::Value, b: &serde_json::Value, at: &str) {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{at}: {x} vs {y}");
        }
        (V::Array(x), V::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: lengths");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                assert_close(x, y, &format!("{at}[{i}]"));
            }
        }
        (V::Object(x), V::Object(y)) => {
            let keys = |o: &serde_json::Map<String, V>| o.keys().cloned().collect::<Vec<_>>();
            assert_eq!(keys(x), keys(y), "{at}: keys");
            for (k, v) in x {
                assert_close(v, &y[k], &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

/// SIGTERM while an index build runs (here: waiting for the build lock another builder holds,
/// so the build is surely in progress) cancels it: the caller waiting on it gets 409
/// `cancelled`, the process exits at once with status 0, and no generation is published.
#[test]
fn sigterm_during_an_index_build_exits_promptly() {
    let (_dir, data, cfg) = synthetic_store();
    let d = data.to_str().unwrap();
    let index = data.join("index").join("synthetic-face@1");
    std::fs::create_dir_all(&index).unwrap();
    let lock = std::fs::File::create(index.join("BUILD.lock")).unwrap();
    lock.try_lock().unwrap();
    let mut server = Server::start(&["--config", cfg.to_str().unwrap(), "--data", d], &[]);
    server.wait_ready(Duration::from_secs(60));
    let port = server.port;
    let waiter = std::thread::spawn(move || {
        http(port, "POST", "/v1/admin/index/build", Some(&serde_json::json!({ "wait": true })))
    });
    let t0 = Instant::now();
    loop {
        // (`http` parses the body's outermost object: the one job of the list.)
        let (s, v) = http(port, "GET", "/v1/admin/index/builds", None).unwrap();
        assert_eq!(s, 200, "{v}");
        if v["stage"] == "waiting" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the build never started: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let t0 = Instant::now();
    let (status, log) = server.stop();
    let took = t0.elapsed();
    assert!(status.success(), "{log}");
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}: {log}");
    let (s, v) = waiter.join().unwrap().expect("answered");
    assert_eq!((s, v["code"].as_str()), (409, Some("cancelled")), "{v}");
    assert!(!index.join("CURRENT").exists());
    drop(lock);
}

/// A synthetic backlog with planted duplicates, imported into a store (the `biomatch import`
/// path): `(store, truth.csv)`.
fn planted_backlog(dir: &Path, subjects: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let exp = dir.join("exp");
    let e = exp.to_str().unwrap();
    let v = last_json(&biomatch(&[
        "export-synthetic-backlog",
        "--out",
        e,
        "--subjects",
        subjects,
        "--duplicates",
        "0.01",
        "--seed",
        "3",
    ]));
    assert_eq!(v["planted_duplicates"], subjects.parse::<u64>().unwrap() / 100);
    let store = dir.join("store");
    let (t, ids) = (exp.join("backlog.npy"), exp.join("backlog.ids"));
    last_json(&biomatch(&[
        "import",
        "--data",
        store.to_str().unwrap(),
        "--model",
        "synthetic-face@1",
        "--templates",
        t.to_str().unwrap(),
        "--ids",
        ids.to_str().unwrap(),
        "--quiet",
    ]));
    (store, exp.join("truth.csv"))
}

fn dedup_args<'a>(store: &'a str, out: &'a str, truth: &'a str) -> Vec<&'a str> {
    vec![
        "dedup-gallery",
        "--data",
        store,
        "--out",
        out,
        "--truth",
        truth,
        "--search",
        "exact",
        "--chunk",
        "16",
        "--quiet",
    ]
}

/// The real binary SIGKILLed mid-run resumes from its checkpoint without redoing finished
/// subjects, and ends with what an uninterrupted run finds: every planted pair, no other.
#[test]
fn dedup_gallery_resumes_after_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (store, truth) = planted_backlog(dir.path(), "4000");
    let (s, t) = (store.to_str().unwrap(), truth.to_str().unwrap());
    let whole = dir.path().join("whole");
    let full = last_json(&biomatch(&dedup_args(s, whole.to_str().unwrap(), t)));
    assert_eq!(full["subjects"], 4040);
    assert_eq!(full["complete"], true);
    assert_eq!(full["truth"]["planted"], 40);
    assert_eq!(full["truth"]["found_planted"], 40, "{full}");
    assert_eq!(full["truth"]["false_pairs"], 0, "{full}");

    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_biomatch"))
        .args(dedup_args(s, o, t))
        .env("BIOMATCH_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = out.join("checkpoint.bin");
    let t0 = Instant::now();
    while !ckpt.exists() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!out.join("clusters.jsonl").exists(), "killed before the end");
    // Not resumed: refused, naming --resume; other parameters: refused too.
    let again = biomatch(&dedup_args(s, o, t));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    let mut other = dedup_args(s, o, t);
    other.extend(["--resume", "--target-fpir", "0.01"]);
    let refused = biomatch(&other);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("dedup_parameters_changed") && err.contains("target_fpir"), "{err}");

    let mut resume = dedup_args(s, o, t);
    resume.push("--resume");
    let v = last_json(&biomatch(&resume));
    let before = v["resumed_from"].as_u64().unwrap();
    assert!(before > 0 && before < 4040, "killed mid-run: resumed from {before}");
    assert_eq!(v["processed"].as_u64().unwrap() + before, 4040, "{v}");
    assert_eq!(v["truth"], full["truth"]);
    assert_eq!(
        std::fs::read(out.join("pairs.csv")).unwrap(),
        std::fs::read(whole.join("pairs.csv")).unwrap()
    );
    assert_eq!(
        std::fs::read(out.join("clusters.jsonl")).unwrap(),
        std::fs::read(whole.join("clusters.jsonl")).unwrap()
    );
}
