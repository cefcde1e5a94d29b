//! Every request that reaches `/v1` has exactly one audit record, refusals included, under a
//! server-assigned request id; stored writes are recorded with the write (store sequence number).

use crate::common::*;
use axum::http::StatusCode;
use biomatch_matcher::audit::{read_dir_records, verify::verify_dir, AuditRecord};
use serde_json::json;
use std::collections::{HashMap, HashSet};

struct Sent {
    client_id: String,
    server_id: String,
}

async fn send(
    app: &TestApp,
    sent: &mut Vec<Sent>,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: Option<String>,
    extra: &[(&str, &str)],
) -> StatusCode {
    let client_id = format!("matrix-{}", sent.len());
    let mut headers = vec![("x-request-id", client_id.as_str())];
    headers.extend_from_slice(extra);
    let (status, h, _) = app.call_raw(method, uri, key, body, &headers).await;
    let server_id = h["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(server_id, client_id, "the server assigns its own request id");
    sent.push(Sent { client_id, server_id });
    status
}

#[tokio::test]
async fn every_request_and_refusal_has_exactly_one_audit_record() {
    let app = TestApp::with_config(
        config_with(|c| {
            c.limits.body_bytes = 64 << 10;
            c.limits.per_key_rps = Some(0.01);
            c.limits.per_key_burst = Some(40.0);
        }),
        true,
    );
    let mut sent = Vec::new();
    let enroll = |id: &str, i| Some(enroll_body(id, i).to_string());
    let verify =
        |id: &str, i| Some(json!({ "subject_id": id, "face": face(probe_vector(i)) }).to_string());
    let mut expect = Vec::new();
    macro_rules! case {
        ($want:expr, $($arg:expr),+) => {{
            let got = send(&app, &mut sent, $($arg),+).await;
            assert_eq!(got, $want, "request {}", sent.len() - 1);
            expect.push($want);
        }};
    }
    // Stored, then the same request again: a replay.
    for _ in 0..2 {
        let k1 = [("idempotency-key", "k1")];
        case!(StatusCode::CREATED, "POST", "/v1/subjects", Some(ISSUER), enroll("A-1", 1), &k1);
    }
    case!(StatusCode::CONFLICT, "POST", "/v1/subjects", Some(ISSUER), enroll("A-1", 1), &[]);
    case!(StatusCode::OK, "POST", "/v1/verify", Some(BANK), verify("A-1", 1), &[]);
    case!(StatusCode::NOT_FOUND, "POST", "/v1/verify", Some(BANK), verify("NOBODY", 1), &[]);
    case!(StatusCode::BAD_REQUEST, "POST", "/v1/verify", Some(BANK), Some("{not json".into()), &[]);
    case!(StatusCode::UNAUTHORIZED, "POST", "/v1/verify", None, verify("A-1", 1), &[]);
    case!(
        StatusCode::UNAUTHORIZED,
        "POST",
        "/v1/verify",
        Some("wrong-secret"),
        verify("A-1", 1),
        &[]
    );
    case!(StatusCode::FORBIDDEN, "POST", "/v1/subjects", Some(BANK), enroll("A-2", 2), &[]);
    let big = json!({ "subject_id": "A-3", "face": face(vec![0.5; 20_000]) }).to_string();
    case!(StatusCode::PAYLOAD_TOO_LARGE, "POST", "/v1/subjects", Some(ISSUER), Some(big), &[]);
    let bad_dim = json!({ "subject_id": "A-4", "face": face(vec![0.5; 7]) }).to_string();
    case!(
        StatusCode::UNPROCESSABLE_ENTITY,
        "POST",
        "/v1/subjects",
        Some(ISSUER),
        Some(bad_dim),
        &[]
    );
    case!(
        StatusCode::UNPROCESSABLE_ENTITY,
        "POST",
        "/v1/subjects",
        Some(ISSUER),
        enroll("bad id!", 5),
        &[]
    );
    case!(StatusCode::NOT_FOUND, "GET", "/v1/nothing-here", Some(ISSUER), None, &[]);
    case!(StatusCode::METHOD_NOT_ALLOWED, "PUT", "/v1/verify", Some(BANK), None, &[]);
    case!(StatusCode::OK, "GET", "/v1/subjects/A-1", Some(ISSUER), None, &[]);
    case!(StatusCode::OK, "DELETE", "/v1/subjects/A-1", Some(ISSUER), None, &[]);
    case!(StatusCode::NOT_FOUND, "DELETE", "/v1/subjects/A-1", Some(ISSUER), None, &[]);
    {
        // Every permit held: shed with 503.
        let held = app.state.limiter.clone().try_acquire_many_owned(64).unwrap();
        case!(
            StatusCode::SERVICE_UNAVAILABLE,
            "POST",
            "/v1/verify",
            Some(BANK),
            verify("A-1", 1),
            &[]
        );
        drop(held);
    }
    // The ops key's bucket (40) runs dry: 429.
    let mut statuses = Vec::new();
    for _ in 0..41 {
        statuses.push(send(&app, &mut sent, "GET", "/v1/admin/stats", Some(OPS), None, &[]).await);
    }
    assert!(statuses[..40].iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    assert_eq!(statuses[40], StatusCode::TOO_MANY_REQUESTS);
    expect.extend(statuses);
    // Not under /v1: not audited.
    let (s, _, _) =
        app.call_raw("GET", "/healthz", None, None, &[("x-request-id", "ops-probe")]).await;
    assert_eq!(s, StatusCode::OK);

    // Journal records of stored writes reach the audit file lazily: make them durable.
    app.state.audit.sync().unwrap();
    let dir = app.state.audit.dir().to_path_buf();
    let records: Vec<AuditRecord> = read_dir_records(&dir).unwrap();
    let mut by_client: HashMap<&str, Vec<&AuditRecord>> = HashMap::new();
    for r in &records {
        by_client.entry(r.client_request_id.as_deref().unwrap_or("")).or_default().push(r);
    }
    for (s, want) in sent.iter().zip(&expect) {
        let recs = by_client.get(s.client_id.as_str()).map_or(&[][..], Vec::as_slice);
        assert_eq!(recs.len(), 1, "{}: {recs:?}", s.client_id);
        let r = recs[0];
        assert_eq!(r.status, Some(want.as_u16()), "{r:?}");
        assert_eq!(r.request_id, s.server_id, "{r:?}");
    }
    assert!(!by_client.contains_key("ops-probe"));
    assert_eq!(records.len(), sent.len(), "no request has a second record");
    let ids: HashSet<&str> = records.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids.len(), records.len(), "server request ids are unique");

    // What the records say.
    let rec = |i: usize| by_client[sent[i].client_id.as_str()][0];
    assert_eq!((rec(0).operation.as_str(), rec(0).outcome.as_str()), ("enroll", "enrolled"));
    assert!(rec(0).store_seq.is_some(), "a stored write is journaled with its sequence number");
    assert_eq!(rec(1).outcome, format!("replayed:{}", rec(0).store_seq.unwrap()));
    assert_eq!(rec(2).outcome, "error:already_enrolled");
    assert_eq!(
        (rec(3).outcome.as_str(), rec(3).subject_ids.as_slice()),
        ("match", &["A-1".to_owned()][..])
    );
    assert_eq!(rec(5).outcome, "error:malformed_json");
    assert_eq!((rec(6).key_id.as_str(), rec(6).outcome.as_str()), ("", "error:unauthorized"));
    assert_eq!((rec(8).key_id.as_str(), rec(8).outcome.as_str()), ("bank", "error:forbidden"));
    assert_eq!(rec(12).operation, "GET /v1/nothing-here");
    assert_eq!(rec(13).operation, "PUT /v1/verify");
    assert_eq!((rec(15).operation.as_str(), rec(15).outcome.as_str()), ("delete", "deleted"));
    assert_eq!(rec(sent.len() - 1).outcome, "error:rate_limited");
    // The chain of what was written verifies.
    let report = verify_dir(&dir, None).unwrap();
    assert!(report.ok(), "{report}");
}

#[tokio::test]
async fn batched_reads_are_sealed_within_a_checkpoint_without_the_answer_waiting() {
    let app = TestApp::with_config(
        config_with(|c| c.audit_reads = biomatch_matcher::config::AuditReads::Batched),
        true,
    );
    let mut sent = Vec::new();
    let enroll = Some(enroll_body("B-1", 1).to_string());
    let verify = Some(json!({ "subject_id": "B-1", "face": face(probe_vector(1)) }).to_string());
    let s = send(&app, &mut sent, "POST", "/v1/subjects", Some(ISSUER), enroll, &[]).await;
    assert_eq!(s, StatusCode::CREATED);
    let s = send(&app, &mut sent, "POST", "/v1/verify", Some(BANK), verify, &[]).await;
    assert_eq!(s, StatusCode::OK);
    let s = send(&app, &mut sent, "GET", "/v1/subjects/NOBODY", Some(ISSUER), None, &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // No sync from the test: the audit thread's checkpoint (every second) seals them.
    let dir = app.state.audit.dir().to_path_buf();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let sealed = loop {
        let records: Vec<AuditRecord> = read_dir_records(&dir).unwrap();
        let written = sent[1..]
            .iter()
            .all(|s| records.iter().any(|r| r.client_request_id.as_deref() == Some(&s.client_id)));
        // Sealed: a checkpoint (written with an fsync) follows every request record.
        if written && verify_dir(&dir, None).unwrap().unsealed == 0 {
            break records;
        }
        assert!(std::time::Instant::now() < deadline, "not sealed within 5 s: {records:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    for s in &sent[1..] {
        let n = sealed.iter().filter(|r| r.client_request_id.as_deref() == Some(&s.client_id));
        assert_eq!(n.count(), 1, "{}", s.client_id);
    }
    app.state.audit.sync().unwrap();
    let report = verify_dir(&dir, None).unwrap();
    assert!(report.ok(), "{report}");
}
