//! The users' flows end to end: enroll, read, verify, identify, delete; idempotent retries.

use crate::common::*;
use axum::http::StatusCode;
use serde_json::json;

#[tokio::test]
async fn enroll_verify_identify_delete() {
    let app = TestApp::new();
    for (id, i) in [("CM-0001", 1), ("CM-0002", 2)] {
        let (s, v) = app.post("/v1/subjects", ISSUER, enroll_body(id, i)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(v["subject_id"], id);
        assert_eq!(v["templates"][0], json!({ "modality": "face", "model": MODEL }));
    }
    // Metadata only: no vector in the answer.
    let (s, v) = app.get("/v1/subjects/CM-0001", ISSUER).await;
    assert_eq!(s, StatusCode::OK);
    assert!(!v.to_string().contains("vector"), "{v}");

    // 1:1 — the same person matches, someone else does not.
    let verify = |id: &str, i: u64| json!({ "subject_id": id, "face": face(probe_vector(i)) });
    let (s, v) = app.post("/v1/verify", BANK, verify("CM-0001", 1)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["decision"].as_str(), v["is_match"].as_bool()),
        (Some("match"), Some(true)),
        "{v}"
    );
    assert!(v["scores"][0]["score"].as_f64().unwrap() > 0.5);
    assert!(v["fmr"].as_f64().unwrap() <= v["target_fmr"].as_f64().unwrap());
    let (_, v) = app.post("/v1/verify", BANK, verify("CM-0001", 2)).await;
    assert_eq!(v["decision"], "no_match", "{v}");
    // A stricter target is honoured and echoed.
    let mut strict = verify("CM-0001", 1);
    strict["target_fmr"] = json!(1e-8);
    let (_, v) = app.post("/v1/verify", BANK, strict).await;
    assert_eq!(v["target_fmr"], 1e-8);
    assert!(v["scores"][0]["threshold"].as_f64().unwrap() > 0.3);

    // 1:N right after enroll finds the subject; after delete it does not.
    let identify = |i: u64| json!({ "face": face(probe_vector(i)), "max_results": 5 });
    let (s, v) = app.post("/v1/identify", ISSUER, identify(2)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["candidates"][0]["subject_id"], "CM-0002", "{v}");
    assert_eq!(
        v["candidates"].as_array().unwrap().len(),
        1,
        "impostors stay under the FPIR threshold: {v}"
    );
    assert_eq!(v["search"], "exact");
    let (s, v) = app.delete("/v1/subjects/CM-0002", ISSUER).await;
    assert_eq!((s, v["deleted"].as_bool()), (StatusCode::OK, Some(true)));
    let (_, v) = app.post("/v1/identify", ISSUER, identify(2)).await;
    assert_eq!(v["candidates"], json!([]), "{v}");
    let (s, _) = app.get("/v1/subjects/CM-0002", ISSUER).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Every verify and identify was audited, durably, without biometric data.
    let log = biomatch_matcher::audit::read_log(app.state.audit.path()).unwrap();
    let ops: Vec<_> = log.records.iter().map(|r| r.operation.as_str()).collect();
    assert_eq!(ops.iter().filter(|o| **o == "verify").count(), 3);
    assert_eq!(ops.iter().filter(|o| **o == "identify").count(), 2);
    let found = log.records.iter().find(|r| r.operation == "identify").unwrap();
    assert_eq!(found.subject_ids, ["CM-0002"]);
    assert_eq!(found.key_id, "issuer");
    assert_eq!(found.request_id.len(), 32);
    let raw = std::fs::read_to_string(app.state.audit.path()).unwrap();
    assert!(!raw.contains(&format!("{}", vector(1)[0])), "the audit log must not hold templates");
}

#[tokio::test]
async fn idempotent_retries_and_duplicates() {
    let app = TestApp::new();
    let body = enroll_body("ID-7", 7).to_string();
    let key = [("idempotency-key", "retry-abc")];
    let first = app.call_raw("POST", "/v1/subjects", Some(ISSUER), Some(body.clone()), &key).await;
    assert_eq!(first.0, StatusCode::CREATED);
    // The same request again with the same key: the original answer, not a conflict.
    let again = app.call_raw("POST", "/v1/subjects", Some(ISSUER), Some(body.clone()), &key).await;
    assert_eq!((again.0, &again.2), (StatusCode::CREATED, &first.2));
    // Without the key it is a duplicate enrollment.
    let dup = app.post("/v1/subjects", ISSUER, enroll_body("ID-7", 7)).await;
    assert_error(&dup, StatusCode::CONFLICT, "already_enrolled");
    // The same key for a different request is refused.
    let other = enroll_body("ID-8", 8).to_string();
    let reuse = app.call_raw("POST", "/v1/subjects", Some(ISSUER), Some(other), &key).await;
    assert_eq!(reuse.0, StatusCode::UNPROCESSABLE_ENTITY, "{}", reuse.2);
    // A key the cache has never seen (as after a restart): the retry is recognised by content
    // and answered 200 (it had landed), never 409.
    let key2 = [("idempotency-key", "retry-after-restart")];
    let replay = app.call_raw("POST", "/v1/subjects", Some(ISSUER), Some(body), &key2).await;
    assert_eq!(replay.0, StatusCode::OK, "{}", replay.2);
    let replayed: serde_json::Value = serde_json::from_str(&replay.2).unwrap();
    let original: serde_json::Value = serde_json::from_str(&first.2).unwrap();
    assert_eq!(replayed, original, "the stored enrollment is reported");
    let changed = enroll_body("ID-7", 9).to_string();
    let key3 = [("idempotency-key", "retry-changed")];
    let r = app.call_raw("POST", "/v1/subjects", Some(ISSUER), Some(changed), &key3).await;
    assert_eq!(r.0, StatusCode::CONFLICT, "different templates under the same id stay a conflict");
}

#[tokio::test]
async fn identify_options() {
    let app = TestApp::new();
    for i in 0..30u64 {
        let (s, _) = app.post("/v1/subjects", ISSUER, enroll_body(&format!("S{i:03}"), i)).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let p = face(probe_vector(4));
    // Gallery-restricted: the mate outside the subset is not returned.
    let (_, v) =
        app.post("/v1/identify", ISSUER, json!({ "face": p, "gallery": ["S001", "S002"] })).await;
    assert_eq!(v["candidates"], json!([]), "{v}");
    assert_eq!(v["gallery_size"], 2);
    let (_, v) =
        app.post("/v1/identify", ISSUER, json!({ "face": p, "gallery": ["S004", "S002"] })).await;
    assert_eq!(v["candidates"][0]["subject_id"], "S004");
    // MOSIP's FPIR encoding and a raw threshold.
    let (_, v) =
        app.post("/v1/identify", ISSUER, json!({ "face": p, "mosip_target_fpir": 40 })).await;
    assert_eq!(v["target_fpir"], 1e-4);
    assert_eq!(v["candidates"][0]["subject_id"], "S004");
    let (_, v) = app
        .post("/v1/identify", ISSUER, json!({ "face": p, "threshold": -1.0, "max_results": 7 }))
        .await;
    assert_eq!(
        v["candidates"].as_array().unwrap().len(),
        7,
        "a permissive threshold fills the list: {v}"
    );
    let c = v["candidates"].as_array().unwrap();
    assert!(c.windows(2).all(|w| w[0]["score"].as_f64() >= w[1]["score"].as_f64()));
    // Index build through the admin API, then the index path answers the same.
    let (s, v) = app.post("/v1/admin/index/build", OPS, json!({ "wait": true })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v[0]["generation"], 1);
    let (_, v) = app.post("/v1/identify", ISSUER, json!({ "face": p, "search": "index" })).await;
    assert_eq!((v["search"].as_str(), v["index_generation"].as_u64()), (Some("index"), Some(1)));
    assert_eq!(v["candidates"][0]["subject_id"], "S004");
    let (s, v) = app.post("/v1/admin/index/reload", OPS, json!({ "model": MODEL })).await;
    assert_eq!((s, v[0]["generation"].as_u64()), (StatusCode::OK, Some(1)));
}

/// Many subjects in one request: each item answered on its own, one commit for the batch, each
/// enrolled subject found afterwards, and every refused item audited.
#[tokio::test]
async fn batch_enrollment_answers_each_item() {
    let app = TestApp::new();
    app.call("POST", "/v1/subjects", Some(ISSUER), Some(enroll_body("B-0", 0))).await;
    let mut items: Vec<_> = (1..=20).map(|i| enroll_body(&format!("B-{i}"), i)).collect();
    items.push(enroll_body("B-0", 0)); // already enrolled
    items.push(enroll_body("B-3", 3)); // twice in the batch
    items.push(json!({ "subject_id": "bad id", "face": face(vector(99)) }));
    items.push(json!({ "subject_id": "B-99", "face": { "template": { "model": MODEL, "vector": [1.0, 2.0] } } }));
    let (s, v) = app
        .call("POST", "/v1/subjects/batch", Some(ISSUER), Some(json!({ "subjects": items })))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 24);
    for (i, item) in r.iter().take(20).enumerate() {
        assert_eq!(item["status"], 201, "{item}");
        assert_eq!(item["subject_id"], format!("B-{}", i + 1));
        assert!(item["seq"].as_u64().is_some());
    }
    assert_eq!(
        (r[20]["status"].as_u64(), r[20]["code"].as_str()),
        (Some(409), Some("already_enrolled"))
    );
    assert_eq!(
        (r[21]["status"].as_u64(), r[21]["code"].as_str()),
        (Some(400), Some("bad_request"))
    );
    assert_eq!(r[22]["code"], "invalid_subject_id");
    assert_eq!(r[23]["code"], "invalid_template");
    for i in 1..=20 {
        let (s, _) = app.call("GET", &format!("/v1/subjects/B-{i}"), Some(ISSUER), None).await;
        assert_eq!(s, StatusCode::OK, "B-{i}");
    }
    let (s, _) = app.call("GET", "/v1/subjects/B-99", Some(ISSUER), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // One commit group carried the 20 enrollments (plus the earlier single one).
    let stats = app.state.engine().unwrap().store().stats();
    assert_eq!((stats.wal_writes, stats.wal_appends), (21, 2));
    // Limits: empty and oversized batches are refused as a whole.
    let (s, _) =
        app.call("POST", "/v1/subjects/batch", Some(ISSUER), Some(json!({ "subjects": [] }))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) =
        app.call("POST", "/v1/subjects/batch", Some(BANK), Some(json!({ "subjects": [] }))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}
