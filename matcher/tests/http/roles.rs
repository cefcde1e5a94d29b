//! Every role allowed where it should be and refused elsewhere; 401 without a valid key.

use crate::common::*;
use axum::http::StatusCode;
use serde_json::json;

#[tokio::test]
async fn role_matrix() {
    let app = TestApp::new();
    let (s, _) = app.post("/v1/subjects", ISSUER, enroll_body("R1", 1)).await;
    assert_eq!(s, StatusCode::CREATED);
    let verify = json!({ "subject_id": "R1", "face": face(probe_vector(1)) });
    let identify = json!({ "face": face(probe_vector(1)) });
    let extract = json!({ "image": "aGVsbG8=" });
    // (method, uri, body, keys allowed)
    let routes: Vec<(&str, &str, Option<serde_json::Value>, Vec<&str>)> = vec![
        ("POST", "/v1/verify", Some(verify.clone()), vec![BANK]),
        ("POST", "/v1/identify", Some(identify.clone()), vec![ISSUER]),
        ("POST", "/v1/extract", Some(extract.clone()), vec![BANK, ISSUER]),
        ("GET", "/v1/subjects/R1", None, vec![ISSUER]),
        ("POST", "/v1/subjects", Some(enroll_body("R2", 2)), vec![ISSUER]),
        ("GET", "/v1/admin/stats", None, vec![OPS]),
        ("POST", "/v1/admin/index/reload", Some(json!({})), vec![OPS]),
    ];
    for (method, uri, body, allowed) in &routes {
        for key in [BANK, ISSUER, OPS] {
            let (s, v) = app.call(method, uri, Some(key), body.clone()).await;
            if allowed.contains(&key) {
                assert!(
                    s != StatusCode::FORBIDDEN && s != StatusCode::UNAUTHORIZED,
                    "{method} {uri} with {key}: {s} {v}"
                );
            } else {
                assert_error(&(s, v), StatusCode::FORBIDDEN, "forbidden");
            }
        }
        assert_error(
            &app.call(method, uri, None, body.clone()).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        assert_error(
            &app.call(method, uri, Some("wrong-key"), body.clone()).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    }
    // Delete last (it changes the state the other checks use).
    assert_error(&app.delete("/v1/subjects/R1", BANK).await, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(app.delete("/v1/subjects/R1", ISSUER).await.0, StatusCode::OK);
    // Authentication comes before parsing: a malformed body without a key is still 401.
    let r = app.call_raw("POST", "/v1/verify", None, Some("{".into()), &[]).await;
    assert_eq!(r.0, StatusCode::UNAUTHORIZED);
    // The x-api-key header works too.
    let r = app.call_raw("GET", "/v1/admin/stats", None, None, &[("x-api-key", OPS)]).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
}
