//! Bad input: each gets the error envelope with the right status and code, and changes nothing.

use crate::common::*;
use axum::http::StatusCode;
use serde_json::json;

#[tokio::test]
async fn malformed_requests() {
    let app = TestApp::new();
    let r = app.call_raw("POST", "/v1/subjects", Some(ISSUER), Some("{not json".into()), &[]).await;
    let v: serde_json::Value = serde_json::from_str(&r.2).unwrap();
    assert_error(&(r.0, v), StatusCode::BAD_REQUEST, "malformed_json");
    assert_eq!(r.1["content-type"], "application/json");
    assert!(r.1.contains_key("x-request-id"));
    // Unknown fields and wrong types are refused, not ignored.
    let e = app.post("/v1/subjects", ISSUER, json!({ "subject_id": "A", "fase": {} })).await;
    assert_error(&e, StatusCode::BAD_REQUEST, "malformed_json");
    let e = app.post("/v1/verify", BANK, json!({ "subject_id": 5 })).await;
    assert_error(&e, StatusCode::BAD_REQUEST, "malformed_json");
    // JSON cannot carry NaN: a literal NaN is malformed JSON.
    let body = format!("{{\"subject_id\":\"A\",\"face\":{{\"template\":{{\"model\":\"{MODEL}\",\"vector\":[NaN]}}}}}}");
    let r = app.call_raw("POST", "/v1/subjects", Some(ISSUER), Some(body), &[]).await;
    assert_eq!(r.0, StatusCode::BAD_REQUEST);
    // Wrong content type.
    let r = app
        .call_raw("POST", "/v1/subjects", Some(ISSUER), None, &[("content-type", "text/plain")])
        .await;
    assert_eq!(r.0, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", r.2);
    // Oversized body.
    let small = TestApp::with_config(config_with(|c| c.limits.body_bytes = 4096), true);
    let big = enroll_body("BIG", 1).to_string() + &" ".repeat(5000);
    let r = small.call_raw("POST", "/v1/subjects", Some(ISSUER), Some(big), &[]).await;
    let v: serde_json::Value = serde_json::from_str(&r.2).unwrap();
    assert_error(&(r.0, v), StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    assert_eq!(app.state.gallery().unwrap().store().len(), 0);
}

#[tokio::test]
async fn invalid_templates_and_ids() {
    let app = TestApp::new();
    let e = |v: serde_json::Value| json!({ "subject_id": "X1", "face": { "template": { "model": MODEL, "vector": v } } });
    let cases = [
        (e(json!(vec![0.1f32; DIM - 1])), "invalid_template"),
        (e(json!(vec![0.0f32; DIM])), "invalid_template"),
        // 1e39 overflows f32 to infinity.
        (e(json!([1e39].iter().chain(&[0.1; DIM - 1]).collect::<Vec<_>>())), "invalid_template"),
        (json!({ "subject_id": "", "face": face(vector(1)) }), "invalid_subject_id"),
        (json!({ "subject_id": "x".repeat(65), "face": face(vector(1)) }), "invalid_subject_id"),
        (json!({ "subject_id": "has space", "face": face(vector(1)) }), "invalid_subject_id"),
        (
            json!({ "subject_id": "X1", "face": { "template": { "model": "synthetic-face@2", "vector": vector(1) } } }),
            "model_mismatch",
        ),
        (
            json!({ "subject_id": "X1", "face": { "template": { "model": "other@1", "vector": vector(1) } } }),
            "unknown_model",
        ),
        (
            json!({ "subject_id": "X1", "fingers": [{ "position": 11, "template": { "model": MODEL, "vector": vector(1) } }] }),
            "invalid_finger_position",
        ),
        (json!({ "subject_id": "X1", "face": { "image": "aGVsbG8=" } }), "extractor_unavailable"),
    ];
    for (body, code) in cases {
        let got = app.post("/v1/subjects", ISSUER, body.clone()).await;
        assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, code);
    }
    for body in [
        json!({ "subject_id": "X1" }),
        json!({ "subject_id": "X1", "face": {} }),
        json!({ "subject_id": "X1", "face": { "image": "not base64!", } }),
    ] {
        let got = app.post("/v1/subjects", ISSUER, body).await;
        assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
    }
    assert_eq!(app.state.gallery().unwrap().store().len(), 0, "nothing was enrolled");
    // The same checks guard probes.
    let got = app
        .post(
            "/v1/identify",
            ISSUER,
            json!({ "face": { "template": { "model": MODEL, "vector": [1.0, 2.0] } } }),
        )
        .await;
    assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_template");
    let got = app
        .post("/v1/identify", ISSUER, json!({ "face": face(vector(1)), "max_results": 0 }))
        .await;
    assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_parameter");
    let got = app
        .post("/v1/identify", ISSUER, json!({ "face": face(vector(1)), "target_fpir": 2.0 }))
        .await;
    assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_rate");
    let got = app
        .post(
            "/v1/identify",
            ISSUER,
            json!({ "face": face(vector(1)), "threshold": 0.5, "target_fpir": 0.01 }),
        )
        .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
    let got = app
        .post(
            "/v1/verify",
            BANK,
            json!({ "subject_id": "X1", "face": face(vector(1)), "target_fmr": 0 }),
        )
        .await;
    assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_rate");
}

#[tokio::test]
async fn unknown_subjects_routes_and_methods() {
    let app = TestApp::new();
    let got = app
        .post("/v1/verify", BANK, json!({ "subject_id": "NOPE", "face": face(vector(1)) }))
        .await;
    assert_error(&got, StatusCode::NOT_FOUND, "unknown_subject");
    assert_error(
        &app.get("/v1/subjects/NOPE", ISSUER).await,
        StatusCode::NOT_FOUND,
        "unknown_subject",
    );
    assert_error(
        &app.delete("/v1/subjects/NOPE", ISSUER).await,
        StatusCode::NOT_FOUND,
        "unknown_subject",
    );
    assert_error(&app.get("/v1/nothing-here", ISSUER).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(
        &app.call("PUT", "/v1/verify", Some(BANK), None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    // Extraction is not available yet: a clear 422, and bad base64 a 400.
    let got = app.post("/v1/extract", BANK, json!({ "image": "aGVsbG8=" })).await;
    assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "extractor_unavailable");
    let got = app.post("/v1/extract", BANK, json!({ "image": "%%%" })).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
    // The audit log records failed verifications too.
    let log = biomatch_matcher::audit::read_log(app.state.audit.path()).unwrap();
    assert_eq!(log.records[0].operation, "verify");
    assert_eq!(log.records[0].outcome, "error:unknown_subject");
}

#[tokio::test]
async fn load_is_shed_with_503_and_retry_after() {
    let app = TestApp::with_config(config_with(|c| c.limits.max_concurrent = 2), true);
    // Two requests in flight (their permits held here) — the third is refused at once.
    let held = app.state.limiter.clone().try_acquire_many_owned(2).unwrap();
    let r = app
        .call_raw(
            "POST",
            "/v1/verify",
            Some(BANK),
            Some(json!({ "subject_id": "A", "face": face(vector(1)) }).to_string()),
            &[],
        )
        .await;
    assert_eq!(r.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.1["retry-after"], "1");
    assert!(r.2.contains("\"overloaded\""));
    // Health endpoints are not shed.
    assert_eq!(app.call("GET", "/healthz", None, None).await.0, StatusCode::OK);
    drop(held);
    let (s, _) = app.post("/v1/subjects", ISSUER, enroll_body("A", 1)).await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn slow_requests_time_out_with_504() {
    use axum::routing::get;
    use tower::ServiceExt;
    let app = TestApp::with_config(config_with(|c| c.limits.request_timeout_ms = 20), true);
    let st = app.state.clone();
    // The real timeout and envelope layers around a handler that takes too long.
    let router = axum::Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                "late"
            }),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            st.clone(),
            biomatch_matcher::middleware::timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            st.clone(),
            biomatch_matcher::middleware::envelope,
        ))
        .with_state(st);
    let resp = router
        .oneshot(axum::http::Request::get("/slow").body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["code"], "timeout");
}
