//! `POST /v1/subjects?dedup=true`: enroll-if-unique over HTTP.

use crate::common::*;
use axum::http::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;

fn dedup_body(id: &str, v: Vec<f32>) -> Value {
    json!({ "subject_id": id, "face": face(v) })
}

const DEDUP: &str = "/v1/subjects?dedup=true";

#[tokio::test]
async fn unique_enrolls_and_a_second_application_is_a_duplicate_naming_the_first() {
    let app = TestApp::new();
    for i in 0..20u64 {
        let (s, _) = app.post("/v1/subjects", ISSUER, enroll_body(&format!("BG{i}"), i)).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let (s, first) = app.post(DEDUP, ISSUER, dedup_body("APP-1", vector(500))).await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    assert_eq!(first["subject_id"], "APP-1");
    // The same person under another id: 409 duplicate naming APP-1, nothing enrolled.
    let dup = app.post(DEDUP, ISSUER, dedup_body("APP-2", probe_vector(500))).await;
    assert_error(&dup, StatusCode::CONFLICT, "duplicate");
    let cands = dup.1["candidates"].as_array().expect("candidates listed");
    assert_eq!(cands[0]["subject_id"], "APP-1");
    assert!(cands.iter().all(|c| c["subject_id"] != "APP-2"));
    // The candidate DTO is the one of /v1/identify.
    let (_, ident) =
        app.post("/v1/identify", ISSUER, json!({ "face": face(probe_vector(500)) })).await;
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&cands[0]), keys(&ident["candidates"][0]));
    let (s, _) = app.get("/v1/subjects/APP-2", ISSUER).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A stricter request-level rate still finds a true mate; `max_results` bounds the list.
    let strict = json!({ "subject_id": "APP-3", "face": face(probe_vector(500)),
        "target_fpir": 1e-6, "max_results": 1 });
    let dup = app.post(DEDUP, ISSUER, strict).await;
    assert_error(&dup, StatusCode::CONFLICT, "duplicate");
    assert_eq!(dup.1["candidates"].as_array().unwrap().len(), 1);
    // Somebody else is unique.
    let (s, _) = app.post(DEDUP, ISSUER, dedup_body("APP-4", vector(501))).await;
    assert_eq!(s, StatusCode::CREATED);
    // The audit names the refused subject and its candidate.
    let log = biomatch_matcher::audit::read_log(app.state.audit.path()).unwrap();
    let refused = log.records.iter().find(|r| r.operation == "enroll_if_unique").unwrap();
    assert_eq!(refused.subject_ids[..2], ["APP-2", "APP-1"]);
    assert_eq!(refused.outcome, "duplicate:1");
}

#[tokio::test]
async fn dedup_parameters_are_checked() {
    let app = TestApp::new();
    let mut body = dedup_body("P-1", vector(1));
    body["target_fpir"] = json!(1e-3);
    // Dedup parameters without ?dedup=true.
    let r = app.post("/v1/subjects", ISSUER, body.clone()).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "bad_request");
    let r = app.post("/v1/subjects?dedup=maybe", ISSUER, body.clone()).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_parameter");
    let r = app.post("/v1/subjects?dedupe=true", ISSUER, body.clone()).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_parameter");
    body["target_fpir"] = json!(1.5);
    let r = app.post(DEDUP, ISSUER, body.clone()).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_rate");
    body["target_fpir"] = json!(1e-3);
    body["max_results"] = json!(0);
    let r = app.post(DEDUP, ISSUER, body).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_parameter");
    let (s, _) = app.get("/v1/subjects/P-1", ISSUER).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "refused requests store nothing");
    // ?dedup=false is a plain enrollment.
    let (s, _) = app.post("/v1/subjects?dedup=false", ISSUER, dedup_body("P-1", vector(1))).await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn a_retry_after_a_lost_answer_is_the_earlier_success_not_a_duplicate() {
    let app = TestApp::new();
    let body = dedup_body("R-1", vector(9)).to_string();
    let k = [("idempotency-key", "dedup-k1")];
    let first = app.call_raw("POST", DEDUP, Some(ISSUER), Some(body.clone()), &k).await;
    assert_eq!(first.0, StatusCode::CREATED, "{}", first.2);
    let again = app.call_raw("POST", DEDUP, Some(ISSUER), Some(body.clone()), &k).await;
    assert_eq!((again.0, &again.2), (StatusCode::CREATED, &first.2));
    // A key this process has not seen (as after a restart): found stored, 200, never 409.
    let k2 = [("idempotency-key", "dedup-k2")];
    let replay = app.call_raw("POST", DEDUP, Some(ISSUER), Some(body), &k2).await;
    assert_eq!(replay.0, StatusCode::OK, "{}", replay.2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_pairs_over_http() {
    let app = Arc::new(TestApp::new());
    let mut tasks = Vec::new();
    for p in 0..16u64 {
        for (side, v) in [("a", vector(1000 + p)), ("b", probe_vector(1000 + p))] {
            let app = app.clone();
            let id = format!("PAIR{p}{side}");
            tasks.push(tokio::spawn(async move {
                let r = app.post(DEDUP, ISSUER, dedup_body(&id, v)).await;
                (p, id, r)
            }));
        }
    }
    type Answer = (String, (StatusCode, Value));
    let mut by_pair: std::collections::BTreeMap<u64, Vec<Answer>> = Default::default();
    for t in tasks {
        let (p, id, r) = t.await.unwrap();
        by_pair.entry(p).or_default().push((id, r));
    }
    for (p, mut rs) in by_pair {
        rs.sort_by_key(|(_, r)| r.0 != StatusCode::CREATED);
        let [(winner, won), (loser, lost)] = <[_; 2]>::try_from(rs).unwrap();
        assert_eq!(won.0, StatusCode::CREATED, "pair {p}: {}", won.1);
        assert_error(&lost, StatusCode::CONFLICT, "duplicate");
        assert_eq!(lost.1["candidates"][0]["subject_id"], winner.as_str(), "pair {p}");
        let (s, _) = app.get(&format!("/v1/subjects/{loser}"), ISSUER).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
}
