//! eKYC end to end with real photos: enroll from one photo, verify with another photo of the
//! same person and of someone else; bad images get a clear 4xx.

use crate::common::*;
use axum::http::StatusCode;
use base64::Engine;
use biomatch_core::ModelId;
use biomatch_matcher::audit::AuditLog;
use biomatch_matcher::config::ModalityKind;
use biomatch_matcher::state::{AppState, ServiceModel};
use biomatch_models::face::{FaceConfig, FaceExtractor};
use biomatch_models::runtime::RuntimeConfig;
use biomatch_testkit::fixtures;
use serde_json::json;
use std::sync::Arc;

fn photo(name: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(fixtures::read(&fixtures::face_photo(name)))
}

fn face_app() -> TestApp {
    let x =
        FaceExtractor::new(FaceConfig::new(RuntimeConfig::from_root(&fixtures::workspace_root())))
            .expect("face models missing: run scripts/fetch-models.sh");
    let (table, _) =
        biomatch_matcher::calibrate::sface_table(&x, &fixtures::face_dir(), 200_000).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_with(|_| {});
    config.data = dir.path().join("store");
    let sface = ModelId::parse("sface@2021dec").unwrap();
    let models =
        vec![ServiceModel { id: sface, dim: 128, kind: ModalityKind::Face, calibration: table }];
    let audit = Arc::new(AuditLog::open(&dir.path().join("audit")).unwrap());
    let state = AppState::with_models(config.clone(), audit, models).with_face(Arc::new(x));
    attach_engine(&state);
    TestApp { _dir: dir, state: Arc::new(state) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ekyc_selfie_against_enrolled_photo() {
    let app = face_app();
    let (s, v) = app
        .post(
            "/v1/subjects",
            ISSUER,
            json!({ "subject_id": "FR-1977-0001", "face": { "image": photo("person_a_1.jpg") } }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["templates"][0]["model"], "sface@2021dec");
    app.post(
        "/v1/subjects",
        ISSUER,
        json!({ "subject_id": "NZ-1980-0002", "face": { "image": photo("person_b_1.jpg") } }),
    )
    .await;

    let verify = |id: &str, p: &str| json!({ "subject_id": id, "face": { "image": photo(p) } });
    let (s, v) = app.post("/v1/verify", BANK, verify("FR-1977-0001", "person_a_2.jpg")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    eprintln!("same person: {v}");
    assert_eq!(v["decision"], "match", "{v}");
    for other in ["impostor_1.jpg", "impostor_2.jpg", "person_b_2.jpg"] {
        let (_, v) = app.post("/v1/verify", BANK, verify("FR-1977-0001", other)).await;
        eprintln!("{other}: {v}");
        assert_eq!(v["decision"], "no_match", "{other}: {v}");
    }
    // 1:N with a photo finds the right person; a template extracted over HTTP works as a probe.
    let (_, v) = app
        .post("/v1/identify", ISSUER, json!({ "face": { "image": photo("person_b_2.jpg") } }))
        .await;
    assert_eq!(v["candidates"][0]["subject_id"], "NZ-1980-0002", "{v}");
    let (s, e) = app.post("/v1/extract", BANK, json!({ "image": photo("person_a_2.jpg") })).await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(e["vector"].as_array().unwrap().len(), 128);
    assert!(e["quality"]["detector_score"].as_f64().unwrap() > 0.6);
    let t = json!({ "subject_id": "FR-1977-0001", "face": { "template": { "model": "sface@2021dec", "vector": e["vector"] } } });
    let (_, v) = app.post("/v1/verify", BANK, t).await;
    assert_eq!(v["decision"], "match");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_get_clear_4xx() {
    use image::{GrayImage, ImageFormat, RgbImage};
    use std::io::Cursor;
    let app = face_app();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let enc = |img: &dyn Fn(&mut Vec<u8>)| {
        let mut out = Vec::new();
        img(&mut out);
        b64(&out)
    };
    let jpeg = fixtures::read(&fixtures::face_photo("person_a_2.jpg"));
    let blank = enc(&|o| {
        RgbImage::from_fn(300, 300, |x, _| image::Rgb([x as u8, 90, 90]))
            .write_to(&mut Cursor::new(o), ImageFormat::Png)
            .unwrap()
    });
    let huge = enc(&|o| {
        GrayImage::new(10_000, 10_000).write_to(&mut Cursor::new(o), ImageFormat::Png).unwrap()
    });
    let cases = [
        (String::new(), StatusCode::BAD_REQUEST, "bad_request"),
        (b64(&jpeg[..jpeg.len() / 2]), StatusCode::UNPROCESSABLE_ENTITY, "undecodable_image"),
        (b64(b"not an image at all"), StatusCode::UNPROCESSABLE_ENTITY, "undecodable_image"),
        (blank, StatusCode::UNPROCESSABLE_ENTITY, "no_face"),
        (huge, StatusCode::UNPROCESSABLE_ENTITY, "image_too_large"),
    ];
    for (img, status, code) in cases {
        let got = app.post("/v1/extract", BANK, json!({ "image": img })).await;
        assert_error(&got, status, code);
        let got = app
            .post("/v1/subjects", ISSUER, json!({ "subject_id": "X", "face": { "image": img } }))
            .await;
        assert_error(&got, status, code);
    }
    assert_eq!(app.state.gallery().unwrap().store().len(), 0);
}
