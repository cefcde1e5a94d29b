//! End-to-end tests of the `biomatch` command line.

use std::process::Command;

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

/// Wait until `url` answers 200, or give up after a few seconds.
fn wait_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                return true;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn serve_starts_ready_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let d = data.to_str().unwrap();
    assert!(biomatch(&["enroll-synthetic", "--data", d, "--subjects", "300"]).status.success());
    // Templates only (the face extractor has its own tests): a configuration file.
    let cfg = dir.path().join("biomatch.toml");
    std::fs::write(
        &cfg,
        "[extractors.face]\nenabled = false\n[[models]]\nid = \"synthetic-face@1\"\ndim = 128\nmodality = \"face\"\ncalibration = \"calibration/synthetic-face@1.json\"\n",
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    // Without a calibration table the service refuses to start, saying how to make one.
    let out = biomatch(&["serve", "--config", c, "--data", d, "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("calibrate-synthetic"));
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

    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_biomatch"))
        .args(["serve", "--config", c, "--data", d, "--listen", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_ready(port), "service did not become ready");
    // SIGTERM: graceful stop, exit status 0.
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("SIGTERM") && log.contains("stopped"), "{log}");
    assert!(data.join("audit").exists());
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
