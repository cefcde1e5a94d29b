//! Backlog deduplication as an admin job: `POST /v1/admin/dedup`, `GET /v1/admin/dedup/{id}`.

use crate::common::*;
use axum::http::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const DEDUP: &str = "/v1/admin/dedup";

async fn until_finished(app: &TestApp, id: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let (s, v) = app.get(&format!("{DEDUP}/{id}"), OPS).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if v["status"] != "running" {
            return v;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the run never ended: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A run over the serving store finds the one enrolled duplicate (another id, a fresh sample of
/// the same identity) and writes its cluster; parameters are checked, only admins may start
/// one, and resuming an unknown run is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedup_job_finds_the_duplicate_and_writes_its_cluster() {
    let app = TestApp::new();
    for i in 0..60 {
        let (s, v) = app.post("/v1/subjects", ISSUER, enroll_body(&format!("P{i}"), i)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let dup = json!({ "subject_id": "DUP-1", "face": face(probe_vector(17)) });
    assert_eq!(app.post("/v1/subjects", ISSUER, dup).await.0, StatusCode::CREATED);

    assert_error(&app.post(DEDUP, BANK, json!({})).await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(
        &app.post(DEDUP, OPS, json!({ "target_fpir": 2.0 })).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_parameter",
    );
    assert_error(
        &app.post(DEDUP, OPS, json!({ "resume": "nothing-here" })).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    let (s, v) = app.post(DEDUP, OPS, json!({ "target_fpir": 1e-3 })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["job_id"].as_str().unwrap().to_owned();
    let v = until_finished(&app, &id).await;
    assert_eq!(v["status"], "done", "{v}");
    assert_eq!((v["subjects"].as_u64(), v["done"].as_u64()), (Some(61), Some(61)));
    assert_eq!(v["summary"]["pairs"], 1, "{v}");
    assert_eq!(v["summary"]["clusters"], 1, "{v}");
    let out = std::path::PathBuf::from(v["out"].as_str().unwrap());
    assert!(out.starts_with(app.state.config.dedup_dir()));
    let clusters = std::fs::read_to_string(out.join("clusters.jsonl")).unwrap();
    let c: Value = serde_json::from_str(clusters.lines().next().unwrap()).unwrap();
    assert_eq!(c["members"], json!(["DUP-1", "P17"]));
    let csv = std::fs::read_to_string(out.join("pairs.csv")).unwrap();
    assert!(csv.lines().nth(1).unwrap().starts_with("DUP-1,P17,0,"), "{csv}");
    // Resuming the finished run is allowed and changes nothing.
    let (s, v) = app.post(DEDUP, OPS, json!({ "resume": id })).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let v = until_finished(&app, &id).await;
    assert_eq!((v["status"].as_str(), v["resumed_from"].as_u64()), (Some("done"), Some(61)));
    assert_eq!(std::fs::read_to_string(out.join("clusters.jsonl")).unwrap(), clusters);
    assert_error(&app.get(&format!("{DEDUP}/nope"), OPS).await, StatusCode::NOT_FOUND, "not_found");
}
