//! Index builds as jobs: factory strings refused up front, 202 + job, status, list, cancel,
//! waiting for a build.

use crate::common::*;
use axum::http::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const BUILD: &str = "/v1/admin/index/build";

#[tokio::test]
async fn bad_factory_strings_are_422_before_any_work() {
    let app = TestApp::new();
    for i in 0..20 {
        app.post("/v1/subjects", ISSUER, enroll_body(&format!("F{i}"), i)).await;
    }
    for (factory, why) in [
        ("NoSuchIndex,Flat", "does not describe"),
        // No add_with_ids: before, this trained on the whole sample, then failed (500).
        ("PQ32x4fs", "IDMap,"),
        ("HNSW32", "IDMap,"),
        // The model is 128-d: not a multiple of 48 sub-quantizers.
        ("IDMap,PQ48", "dimension 128"),
        ("", "printable"),
    ] {
        let got = app.post(BUILD, OPS, json!({ "factory": factory })).await;
        assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_factory");
        assert!(got.1["message"].as_str().unwrap().contains(why), "{factory}: {}", got.1);
    }
    assert_error(
        &app.post(BUILD, OPS, json!({ "shards": 0 })).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_parameter",
    );
    // Nothing was queued.
    let (s, v) = app.get("/v1/admin/index/builds", OPS).await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
    // Only admins.
    assert_error(&app.post(BUILD, BANK, json!({})).await, StatusCode::FORBIDDEN, "forbidden");
}

async fn job(app: &TestApp, id: &str) -> Value {
    let (s, v) = app.get(&format!("/v1/admin/index/builds/{id}"), OPS).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn until(app: &TestApp, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let v = job(app, id).await;
        if done(&v) {
            return v;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "job never {what}: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Jobs are listed, cancelled (queued: at once; running: at its next check) and leave no
/// generation; a build that is let run is done and served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_jobs_are_listed_cancelled_and_waited_for() {
    let app = TestApp::new();
    for i in 0..50 {
        app.post("/v1/subjects", ISSUER, enroll_body(&format!("J{i}"), i)).await;
    }
    // Another build of the model (the offline builder) holds its lock: the job waits for it.
    let dir = app.state.config.data.join("index").join(MODEL);
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::File::create(dir.join("BUILD.lock")).unwrap();
    lock.try_lock().unwrap();

    let (s, a) = app.post(BUILD, OPS, json!({ "factory": "IDMap,Flat", "shards": 2 })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{a}");
    let a_id = a["job_id"].as_str().unwrap().to_owned();
    assert_eq!(a["models"], json!([MODEL]));
    assert!(["queued", "running"].contains(&a["status"].as_str().unwrap()), "{a}");
    let v = until(&app, &a_id, "waiting", |v| v["stage"] == "waiting").await;
    assert_eq!(v["status"], "running");
    // A second job queues behind it; cancelling it is immediate.
    let (s, b) = app.post(BUILD, OPS, json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let b_id = b["job_id"].as_str().unwrap().to_owned();
    assert_eq!(b["status"], "queued");
    let (s, list) = app.get("/v1/admin/index/builds", OPS).await;
    assert_eq!(s, StatusCode::OK);
    let ids: Vec<&str> =
        list.as_array().unwrap().iter().map(|j| j["job_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [b_id.as_str(), a_id.as_str()], "newest first");
    let (s, v) = app.delete(&format!("/v1/admin/index/builds/{b_id}"), OPS).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("cancelled")), "{v}");
    // The running one stops at its next check.
    let (s, v) = app.delete(&format!("/v1/admin/index/builds/{a_id}"), OPS).await;
    assert_eq!((s, v["cancel_requested"].as_bool()), (StatusCode::OK, Some(true)), "{v}");
    let v = until(&app, &a_id, "cancelled", |v| v["status"] == "cancelled").await;
    assert_eq!(v["error"]["code"], "cancelled", "{v}");
    assert!(v["finished_at"].as_f64().is_some());
    // Nothing was published.
    let (_, stats) = app.get("/v1/admin/stats", OPS).await;
    assert_eq!(stats["indexes"], json!([]), "{stats}");
    assert!(!dir.join("CURRENT").exists());
    drop(lock);

    // Waiting for a build: today's 200 answer.
    let (s, v) = app.post(BUILD, OPS, json!({ "wait": true, "shards": 2 })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v[0]["generation"].as_u64(), v[0]["vectors"].as_u64()), (Some(1), Some(50)));
    let (_, list) = app.get("/v1/admin/index/builds", OPS).await;
    let newest = &list[0];
    assert_eq!((newest["status"].as_str(), newest["progress"].as_f64()), (Some("done"), Some(1.0)));
    assert_eq!(newest["result"][0]["generation"], 1);
    // A job polled to completion.
    let (s, c) = app.post(BUILD, OPS, json!({ "factory": "IVF4,Flat" })).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let c_id = c["job_id"].as_str().unwrap();
    let v = until(&app, c_id, "done", |v| v["status"] == "done").await;
    assert_eq!(v["result"][0]["generation"], 2, "{v}");
    assert_eq!(v["result"][0]["factory"], "IVF4,Flat");
    // Cancelling a finished job changes nothing; an unknown one is 404.
    let (s, v) = app.delete(&format!("/v1/admin/index/builds/{c_id}"), OPS).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("done")));
    assert_error(
        &app.get("/v1/admin/index/builds/nope", OPS).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}
