//! `/v1/jobs`: the asynchronous queue of enroll-if-unique and identify requests.

use crate::common::*;
use axum::http::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

/// Poll a job until it has finished (bounded).
async fn finished(app: &TestApp, id: &str) -> Value {
    for _ in 0..500 {
        let (s, j) = app.get(&format!("/v1/jobs/{id}"), ISSUER).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        if j["status"] == "done" || j["status"] == "failed" {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} did not finish");
}

fn started(config: biomatch_matcher::config::Config) -> TestApp {
    let app = TestApp::with_config(config, true);
    biomatch_matcher::jobs::start(&app.state).unwrap();
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_enroll_if_unique_and_identify_with_the_synchronous_answers() {
    let app = started(config_with(|_| {}));
    let submit = |kind: &str, request: Value| json!({ "kind": kind, "request": request });
    let (s, a) =
        app.post("/v1/jobs", ISSUER, submit("enroll_if_unique", enroll_body("JOB-1", 42))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{a}");
    let id = a["job_id"].as_str().unwrap().to_owned();
    // Durable before the answer: its record is on disk.
    assert!(app.state.config.data.join("jobs").join(format!("{id}.job")).exists());
    let j = finished(&app, &id).await;
    assert_eq!((j["status"].as_str(), j["http_status"].as_u64()), (Some("done"), Some(201)), "{j}");
    assert_eq!(j["result"]["subject_id"], "JOB-1");
    assert_eq!(j["kind"], "enroll_if_unique");
    // The same person again: failed with the synchronous 409 body (duplicate, candidates).
    let again = json!({ "subject_id": "JOB-2", "face": face(probe_vector(42)) });
    let (_, a) = app.post("/v1/jobs", ISSUER, submit("enroll_if_unique", again)).await;
    let j = finished(&app, a["job_id"].as_str().unwrap()).await;
    assert_eq!((j["status"].as_str(), j["http_status"].as_u64()), (Some("failed"), Some(409)));
    assert_eq!(j["error"]["code"], "duplicate");
    assert_eq!(j["error"]["candidates"][0]["subject_id"], "JOB-1");
    let (s, _) = app.get("/v1/subjects/JOB-2", ISSUER).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Identify: the body /v1/identify answers.
    let probe = json!({ "face": face(probe_vector(42)) });
    let (_, a) = app.post("/v1/jobs", ISSUER, submit("identify", probe.clone())).await;
    let j = finished(&app, a["job_id"].as_str().unwrap()).await;
    let (_, sync) = app.post("/v1/identify", ISSUER, probe).await;
    assert_eq!(j["status"], "done");
    assert_eq!(j["result"]["candidates"], sync["candidates"]);
    let (s, counts) = app.get("/v1/jobs", ISSUER).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (counts["pending"].as_u64(), counts["running"].as_u64(), counts["done"].as_u64()),
        (Some(0), Some(0), Some(2)),
        "{counts}"
    );
    assert_eq!(counts["failed"], 1);
    assert_eq!(counts["max_pending"], 1000);
    // Another key's job is not shown; unknown ids are 404.
    let (s, _) = app.get(&format!("/v1/jobs/{id}"), BANK).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "the bank key has no job role");
    let (s, _) = app.get(&format!("/v1/jobs/{}", "f".repeat(32)), ISSUER).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_job_bodies_are_refused_and_nothing_is_queued() {
    let app = started(config_with(|_| {}));
    let r = app.post("/v1/jobs", ISSUER, json!({ "kind": "delete", "request": {} })).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "malformed_json");
    let r = app
        .post("/v1/jobs", ISSUER, json!({ "kind": "enroll_if_unique", "request": { "x": 1 } }))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "bad_request");
    let bad_id = json!({ "subject_id": "", "face": face(vector(1)) });
    let r = app
        .post("/v1/jobs", ISSUER, json!({ "kind": "enroll_if_unique", "request": bad_id }))
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_subject_id");
    // Roles: the bank's key may not enroll.
    let r = app
        .post(
            "/v1/jobs",
            BANK,
            json!({ "kind": "identify", "request": { "face": face(vector(1)) } }),
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
    let (_, counts) = app.get("/v1/jobs", ISSUER).await;
    assert_eq!(counts["pending"], 0);
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    // Recovered but no workers: jobs stay queued.
    let app = TestApp::with_config(config_with(|c| c.jobs.max_pending = 2), true);
    let ttl = Duration::from_secs(60);
    app.state.jobs.recover(&app.state.config.data, ttl).unwrap();
    let body = json!({ "kind": "identify", "request": { "face": face(vector(1)) } });
    for _ in 0..2 {
        assert_eq!(app.post("/v1/jobs", ISSUER, body.clone()).await.0, StatusCode::ACCEPTED);
    }
    let (s, h, b) =
        app.call_raw("POST", "/v1/jobs", Some(ISSUER), Some(body.to_string()), &[]).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");
    assert!(b.contains("queue_full"), "{b}");
    assert!(h.contains_key("retry-after"));
    let (_, counts) = app.get("/v1/jobs", ISSUER).await;
    assert_eq!(counts["pending"], 2);
    // A second recovery of the same directory (as after a restart) queues them again.
    let again = biomatch_matcher::jobs::Jobs::default();
    again.recover(&app.state.config.data, ttl).unwrap();
    assert_eq!(again.counts().pending, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_expire_after_their_ttl_and_leave_the_disk() {
    let app = started(config_with(|c| c.jobs.result_ttl_s = 1));
    let body = json!({ "kind": "identify", "request": { "face": face(vector(1)) } });
    let (_, a) = app.post("/v1/jobs", ISSUER, body).await;
    let id = a["job_id"].as_str().unwrap().to_owned();
    finished(&app, &id).await;
    let file = app.state.config.data.join("jobs").join(format!("{id}.job"));
    assert!(file.exists());
    let mut gone = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (s, _) = app.get(&format!("/v1/jobs/{id}"), ISSUER).await;
        if s == StatusCode::NOT_FOUND && !file.exists() {
            gone = true;
            break;
        }
    }
    assert!(gone, "the result is removed from memory and disk after its TTL");
}
