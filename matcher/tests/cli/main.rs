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
