//! The recall-drift monitor: samples of the serving generation in `/v1/admin/stats` and
//! `/metrics`, the growing segment, a new generation starting over, the monitor's own thread,
//! and the fingers' code model. Ticks are run synchronously (`recall_monitor::tick`).

use crate::common::*;
use crate::fingers::{b64, finger_app};
use axum::http::StatusCode;
use biomatch_core::ModelId;
use biomatch_gallery::ann::{self, BuildParams, LoadOptions};
use biomatch_matcher::recall_monitor;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A window of 8 probes: two ticks of the default 4.
fn monitor_app() -> TestApp {
    TestApp::with_config(config_with(|c| c.index.recall_monitor.window = 8), true)
}

async fn enroll(app: &TestApp, ids: std::ops::Range<u64>) {
    let subjects: Vec<Value> = ids.map(|i| enroll_body(&format!("R{i}"), i)).collect();
    let n = subjects.len();
    let (s, v) = app.post("/v1/subjects/batch", ISSUER, json!({ "subjects": subjects })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["results"].as_array().unwrap().iter().all(|r| r["status"] == 201), "{v}");
    assert_eq!(v["results"].as_array().unwrap().len(), n);
}

/// The stats of the one serving generation of `model`.
async fn index_stats(app: &TestApp, model: &str) -> Value {
    let (s, v) = app.get("/v1/admin/stats", OPS).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let found: Vec<&Value> =
        v["indexes"].as_array().unwrap().iter().filter(|i| i["model"] == model).collect();
    assert_eq!(found.len(), 1, "{v}");
    found[0].clone()
}

async fn metrics(app: &TestApp) -> String {
    let (s, _, m) = app.call_raw("GET", "/metrics", None, None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    m
}

/// The value of the one series `name{labels}` (labels in Prometheus's sorted order).
fn series(m: &str, name: &str, labels: &str) -> Option<f64> {
    let key = format!("{name}{{{labels}}} ");
    m.lines().find_map(|l| l.strip_prefix(&key)).map(|v| v.parse().unwrap())
}

const FACE: &str = r#"model="synthetic-face@1""#;

fn gen_labels(generation: u64) -> String {
    format!(r#"generation="{generation}",{FACE}"#)
}

fn flat_build() -> Value {
    json!({ "wait": true, "factory": "IDMap,Flat", "shards": 2 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_samples_the_serving_generation_over_its_window() {
    let app = monitor_app();
    enroll(&app, 0..40).await;
    // No generation: nothing to sample, nothing reported.
    assert_eq!(recall_monitor::tick(&app.state), 0);
    let (_, v) = app.get("/v1/admin/stats", OPS).await;
    assert_eq!(v["indexes"], json!([]), "{v}");

    let (s, v) = app.post("/v1/admin/index/build", OPS, flat_build()).await;
    assert_eq!((s, v[0]["generation"].as_u64()), (StatusCode::OK, Some(1)), "{v}");
    // Built and serving, not sampled yet.
    let i = index_stats(&app, MODEL).await;
    assert_eq!((i["generation"].as_u64(), i["vectors"].as_u64()), (Some(1), Some(40)), "{i}");
    let r = &i["recall_monitor"];
    assert_eq!((r["generation"].as_u64(), r["probes"].as_u64()), (Some(1), Some(0)), "{r}");
    assert_eq!((&r["recall"], &r["last_sample_at"]), (&Value::Null, &Value::Null), "{r}");
    assert_eq!((r["covered_rows"].as_u64(), r["growing_rows"].as_u64()), (Some(40), Some(0)));
    assert_eq!((r["rebuild_due"].as_bool(), r["window"].as_u64()), (Some(false), Some(8)));
    assert_eq!(r["shards"].as_array().unwrap().len(), 2, "{r}");

    let before = crate::common::unix_now();
    assert_eq!(recall_monitor::tick(&app.state), 1);
    let r = index_stats(&app, MODEL).await["recall_monitor"].clone();
    // A flat index is exact: every probe's best match is found, and all of exact's top k.
    assert_eq!((r["probes"].as_u64(), r["hits"].as_u64()), (Some(4), Some(4)), "{r}");
    assert_eq!(
        (r["recall"].as_f64(), r["recall_at_k"].as_f64(), r["worst_shard"].as_f64()),
        (Some(1.0), Some(1.0), Some(1.0)),
        "{r}"
    );
    assert_eq!(
        (r["k"].as_u64(), r["k_prime"].as_u64(), &r["nprobe"]),
        (Some(10), Some(32), &Value::Null)
    );
    let shard_probes: u64 =
        r["shards"].as_array().unwrap().iter().map(|s| s["probes"].as_u64().unwrap()).sum();
    assert_eq!(shard_probes, 4, "{r}");
    let at = r["last_sample_at"].as_f64().unwrap();
    assert!(at >= before && at <= crate::common::unix_now(), "{r}");
    assert!(r["last_sample_seconds"].as_f64().unwrap() >= 0.0, "{r}");

    // Three ticks, 12 probes: the window keeps the newest 8.
    recall_monitor::tick(&app.state);
    recall_monitor::tick(&app.state);
    let r = index_stats(&app, MODEL).await["recall_monitor"].clone();
    assert_eq!((r["probes"].as_u64(), r["recall"].as_f64()), (Some(8), Some(1.0)), "{r}");
    assert_eq!(
        (r["rebuild_due"].as_bool(), r["rebuild_reasons"].clone()),
        (Some(false), json!([]))
    );

    let m = metrics(&app).await;
    assert_eq!(series(&m, "biomatch_index_sampled_recall", &gen_labels(1)), Some(1.0), "{m}");
    assert_eq!(series(&m, "biomatch_index_sampled_recall_probes", &gen_labels(1)), Some(8.0));
    assert_eq!(series(&m, "biomatch_index_recall_probes_total", FACE), Some(12.0), "{m}");
    assert_eq!(series(&m, "biomatch_index_recall_hits_total", FACE), Some(12.0), "{m}");
    assert_eq!(series(&m, "biomatch_index_recall_sample_seconds_count", FACE), Some(3.0), "{m}");
    assert_eq!(series(&m, "biomatch_index_covered_rows", FACE), Some(40.0), "{m}");
    assert_eq!(series(&m, "biomatch_index_growing_rows", FACE), Some(0.0), "{m}");
    assert_eq!(series(&m, "biomatch_index_rebuild_due", FACE), Some(0.0), "{m}");
    assert_eq!(series(&m, "biomatch_index_recall_errors_total", FACE), None, "{m}");
    // Every shard with probes in the window: recall 1; no other series.
    let shards: Vec<&str> =
        m.lines().filter(|l| l.starts_with("biomatch_index_sampled_recall_shard{")).collect();
    assert!(!shards.is_empty() && shards.len() <= 2, "{m}");
    assert!(shards.iter().all(|l| l.contains(&gen_labels(1)) && l.ends_with(" 1")), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_rows_follow_enrollments_and_a_new_generation_starts_over() {
    let app = monitor_app();
    enroll(&app, 0..40).await;
    let (s, _) = app.post("/v1/admin/index/build", OPS, flat_build()).await;
    assert_eq!(s, StatusCode::OK);
    recall_monitor::tick(&app.state);

    // 10 enrollments after the build: the growing segment, past 10 % of the 40 covered rows.
    enroll(&app, 40..50).await;
    let r = index_stats(&app, MODEL).await["recall_monitor"].clone();
    assert_eq!((r["covered_rows"].as_u64(), r["growing_rows"].as_u64()), (Some(40), Some(10)));
    assert_eq!(
        (r["rebuild_due"].as_bool(), r["rebuild_reasons"].clone()),
        (Some(true), json!(["growing_share"]))
    );
    assert_eq!((r["generation"].as_u64(), r["probes"].as_u64()), (Some(1), Some(4)), "{r}");
    // The growing rows are searched exactly within the sample: still every mate found.
    recall_monitor::tick(&app.state);
    let r = index_stats(&app, MODEL).await["recall_monitor"].clone();
    assert_eq!((r["probes"].as_u64(), r["recall"].as_f64()), (Some(8), Some(1.0)), "{r}");
    let m = metrics(&app).await;
    assert_eq!(series(&m, "biomatch_index_growing_rows", FACE), Some(10.0), "{m}");
    assert_eq!(series(&m, "biomatch_index_rebuild_due", FACE), Some(1.0), "{m}");

    // The offline builder writes generation 2 next to the service: generation 1 still serves.
    let store = app.state.gallery().unwrap().store().clone();
    let model = ModelId::parse(MODEL).unwrap();
    let params =
        BuildParams { factory: Some("IDMap,Flat".into()), shards: 2, ..BuildParams::default() };
    tokio::task::spawn_blocking(move || ann::build(&store, &model, &params).unwrap())
        .await
        .unwrap();
    let r = index_stats(&app, MODEL).await["recall_monitor"].clone();
    assert_eq!((r["generation"].as_u64(), r["growing_rows"].as_u64()), (Some(1), Some(10)));

    // Reloaded: generation 2 covers every row, and none of generation 1's samples count.
    let (s, v) = app.post("/v1/admin/index/reload", OPS, json!({ "model": MODEL })).await;
    assert_eq!((s, v[0]["generation"].as_u64()), (StatusCode::OK, Some(2)), "{v}");
    let r = index_stats(&app, MODEL).await["recall_monitor"].clone();
    assert_eq!((r["generation"].as_u64(), r["probes"].as_u64()), (Some(2), Some(0)), "{r}");
    assert_eq!((r["covered_rows"].as_u64(), r["growing_rows"].as_u64()), (Some(50), Some(0)));
    assert_eq!((&r["recall"], r["rebuild_due"].as_bool()), (&Value::Null, Some(false)), "{r}");
    let m = metrics(&app).await;
    assert!(!m.contains(r#"generation="1""#), "generation 1's series are gone: {m}");
    assert_eq!(series(&m, "biomatch_index_sampled_recall", &gen_labels(2)), None, "{m}");
    assert_eq!(series(&m, "biomatch_index_generation", FACE), Some(2.0), "{m}");
    assert_eq!(series(&m, "biomatch_index_growing_rows", FACE), Some(0.0), "{m}");
    assert_eq!(series(&m, "biomatch_index_covered_rows", FACE), Some(50.0), "{m}");
    assert_eq!(series(&m, "biomatch_index_rebuild_due", FACE), Some(0.0), "{m}");
    // The counters go on across generations.
    assert_eq!(series(&m, "biomatch_index_recall_probes_total", FACE), Some(8.0), "{m}");

    recall_monitor::tick(&app.state);
    let r = index_stats(&app, MODEL).await["recall_monitor"].clone();
    assert_eq!((r["generation"].as_u64(), r["probes"].as_u64()), (Some(2), Some(4)), "{r}");
    assert_eq!(r["recall"].as_f64(), Some(1.0), "{r}");
    let m = metrics(&app).await;
    assert_eq!(series(&m, "biomatch_index_sampled_recall", &gen_labels(2)), Some(1.0), "{m}");
}

/// The thread `serve` starts samples on its own every `interval_s`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_thread_samples_every_interval() {
    let app = TestApp::with_config(config_with(|c| c.index.recall_monitor.interval_s = 1), true);
    enroll(&app, 0..30).await;
    let (s, _) = app.post("/v1/admin/index/build", OPS, flat_build()).await;
    assert_eq!(s, StatusCode::OK);
    recall_monitor::spawn(&app.state);
    let t0 = Instant::now();
    let r = loop {
        let r = index_stats(&app, MODEL).await["recall_monitor"].clone();
        if r["probes"].as_u64() >= Some(8) {
            break r;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no second sample: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Two ticks, a second apart.
    assert!(t0.elapsed() >= Duration::from_millis(1500), "{:?}", t0.elapsed());
    assert_eq!(r["recall"].as_f64(), Some(1.0), "{r}");
}

/// The fingers' pre-selection codes (`mpc@1`) are monitored like a face model once a
/// generation of them serves (the service loads it at start-up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_finger_code_generation_is_monitored() {
    use biomatch_datasets::finger::fast::{fast_impression, fast_master, FastFingerConfig};
    let app = finger_app(2000);
    let cfg = FastFingerConfig::default();
    let mut enrolled = 0;
    for f in 0..30u64 {
        let t = fast_impression(&cfg, &fast_master(&cfg, f), f, 0);
        let body = json!({
            "subject_id": format!("FC-{f}"),
            "fingers": [{ "position": 3, "minutiae": b64(&biomatch_fingerprint::iso::to_iso(&t)) }],
        });
        let (s, v) = app.post("/v1/subjects", ISSUER, body).await;
        // A sparse impression may be refused (too few minutiae), as a real capture would be.
        assert!(s == StatusCode::CREATED || s == StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        enrolled += u64::from(s == StatusCode::CREATED);
    }
    assert!(enrolled >= 20, "{enrolled}");
    let g = app.state.gallery().unwrap().clone();
    let code = biomatch_gallery::finger_code_spec().model;
    let codes = tokio::task::spawn_blocking(move || {
        let params =
            BuildParams { factory: Some("IDMap,Flat".into()), shards: 2, ..BuildParams::default() };
        let report = ann::build(g.store(), &code, &params).unwrap();
        g.load_index(&code, &LoadOptions::default()).unwrap().unwrap();
        report.manifest.covered_rows
    })
    .await
    .unwrap();
    assert!(codes > 0);
    // The face model has no generation: only the codes are sampled.
    assert_eq!(recall_monitor::tick(&app.state), 1);
    let i = index_stats(&app, "mpc@1").await;
    let r = &i["recall_monitor"];
    assert_eq!((r["generation"].as_u64(), r["probes"].as_u64()), (Some(1), Some(4)), "{r}");
    assert_eq!((r["recall"].as_f64(), r["covered_rows"].as_u64()), (Some(1.0), Some(codes)), "{r}");
    assert_eq!(r["growing_rows"].as_u64(), Some(0), "{r}");
    let m = metrics(&app).await;
    assert_eq!(
        series(&m, "biomatch_index_sampled_recall", r#"generation="1",model="mpc@1""#),
        Some(1.0),
        "{m}"
    );
}
