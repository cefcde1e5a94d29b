//! Health, readiness, metrics, OpenAPI.

use crate::common::*;
use axum::http::StatusCode;
use serde_json::json;

#[tokio::test]
async fn not_ready_until_the_gallery_is_attached() {
    let app = TestApp::with_config(config_with(|_| {}), false);
    assert_eq!(app.call("GET", "/healthz", None, None).await.0, StatusCode::OK);
    assert_error(
        &app.call("GET", "/readyz", None, None).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
    );
    let got = app.post("/v1/subjects", ISSUER, enroll_body("A", 1)).await;
    assert_error(&got, StatusCode::SERVICE_UNAVAILABLE, "not_ready");
}

#[tokio::test]
async fn metrics_and_openapi() {
    let app = TestApp::new();
    app.post("/v1/subjects", ISSUER, enroll_body("M1", 1)).await;
    app.post("/v1/identify", ISSUER, json!({ "face": face(probe_vector(1)) })).await;
    let r = app.call_raw("GET", "/metrics", None, None, &[]).await;
    assert_eq!(r.0, StatusCode::OK);
    let m = r.2;
    assert!(
        m.contains(
            r#"biomatch_http_requests_total{method="POST",route="/v1/subjects",status="201"} 1"#
        ),
        "{m}"
    );
    assert!(
        m.contains(r#"biomatch_http_request_duration_seconds_count{route="/v1/identify"} 1"#),
        "{m}"
    );
    assert!(m.contains("biomatch_gallery_subjects 1"), "{m}");
    assert!(m.contains(r#"biomatch_index_growing_rows{model="synthetic-face@1"} 1"#), "{m}");
    assert!(m.contains("biomatch_audit_records 2"), "{m}");
    let (s, v) = app.call("GET", "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    for p in [
        "/v1/subjects",
        "/v1/subjects/{id}",
        "/v1/verify",
        "/v1/identify",
        "/v1/extract",
        "/v1/admin/index/build",
        "/v1/admin/index/builds",
        "/v1/admin/index/builds/{job_id}",
    ] {
        assert!(v["paths"].get(p).is_some(), "openapi lacks {p}");
    }
    assert!(v["components"]["schemas"].get("IdentifyRequest").is_some());
    assert!(v["components"]["schemas"].get("BuildJobOut").is_some());
    assert!(v["components"]["schemas"]["FaceQualityBody"]["properties"].get("failures").is_some());
    assert!(v["components"]["schemas"]["QualityOut"]["properties"].get("uses").is_some());
    let (s, v) = app.get("/v1/admin/stats", OPS).await;
    assert_eq!((s, v["store"]["subjects"].as_u64()), (StatusCode::OK, Some(1)));
}
