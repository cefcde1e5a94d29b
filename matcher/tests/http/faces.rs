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
    let groups = fixtures::setup_dir().join("fixtures/groups");
    let (table, _) = biomatch_matcher::calibrate::face_table(&x, &fixtures::face_dir(), &groups, 0)
        .expect("calibration photos missing: run scripts/fetch-photos.sh");
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
    // The attack test's item 7: half a JPEG with an end-of-image marker appended.
    let mut half = jpeg[..jpeg.len() / 2].to_vec();
    half.extend_from_slice(&[0xFF, 0xD9]);
    let testdata =
        |n: &str| fixtures::read(&fixtures::workspace_root().join("models/testdata").join(n));
    let cases = [
        (String::new(), StatusCode::BAD_REQUEST, "bad_request"),
        (b64(&jpeg[..jpeg.len() / 2]), StatusCode::UNPROCESSABLE_ENTITY, "undecodable_image"),
        (b64(&half), StatusCode::UNPROCESSABLE_ENTITY, "undecodable_image"),
        // Image bombs: headers declaring 5999 x 5999 pixels (36 MP, over the 24 MP limit).
        (b64(&png_bomb(5999, 5999)), StatusCode::UNPROCESSABLE_ENTITY, "image_too_large"),
        (b64(&jpeg_bomb(&jpeg, 5999, 5999)), StatusCode::UNPROCESSABLE_ENTITY, "image_too_large"),
        (
            b64(&jpeg_bomb(&testdata("progressive-444.jpg"), 5999, 5999)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "image_too_large",
        ),
        (b64(&png_bomb(60_000, 60_000)), StatusCode::UNPROCESSABLE_ENTITY, "image_too_large"),
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
    // Nothing is left reserved from the decode budget.
    assert_eq!(app.state.decode_budget.in_use(), 0);
}

/// A 1x1 RGBA PNG whose header declares `w` x `h` (the IHDR CRC fixed): what a 140 KB PNG of
/// 5999 x 5999 flat pixels looks like to a header check.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut p = Vec::new();
    image::RgbaImage::new(1, 1)
        .write_to(&mut std::io::Cursor::new(&mut p), image::ImageFormat::Png)
        .unwrap();
    p[16..20].copy_from_slice(&w.to_be_bytes());
    p[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32fast::hash(&p[12..29]);
    p[29..33].copy_from_slice(&crc.to_be_bytes());
    p
}

/// `jpeg` with its frame header (SOF0/1/2) rewritten to declare `w` x `h`.
fn jpeg_bomb(jpeg: &[u8], w: u16, h: u16) -> Vec<u8> {
    let mut b = jpeg.to_vec();
    let mut p = 2;
    loop {
        assert_eq!(b[p], 0xFF, "a marker at {p}");
        let m = b[p + 1];
        let len = usize::from(u16::from_be_bytes([b[p + 2], b[p + 3]]));
        if matches!(m, 0xC0..=0xC2) {
            b[p + 5..p + 7].copy_from_slice(&h.to_be_bytes());
            b[p + 7..p + 9].copy_from_slice(&w.to_be_bytes());
            return b;
        }
        p += 2 + len;
    }
}
