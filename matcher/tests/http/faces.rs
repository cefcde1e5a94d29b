//! eKYC end to end with real photos: enroll from one photo, verify with another photo of the
//! same person and of someone else; bad images get a clear 4xx.

use crate::common::*;
use axum::http::StatusCode;
use base64::Engine;
use biomatch_matcher::audit::AuditLog;
use biomatch_matcher::config::ModalityKind;
use biomatch_matcher::state::{AppState, ServiceModel};
use biomatch_models::face::{FaceConfig, FaceExtractor, FaceModel};
use biomatch_models::runtime::RuntimeConfig;
use biomatch_testkit::fixtures;
use serde_json::json;
use std::sync::Arc;

fn photo(name: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(fixtures::read(&fixtures::face_photo(name)))
}

fn face_app() -> TestApp {
    face_app_with(FaceModel::SFace, |_| {})
}

/// A server with the face extractor of `model` and its table built from the real photos.
fn face_app_with(
    model: FaceModel,
    f: impl FnOnce(&mut biomatch_matcher::config::Config),
) -> TestApp {
    let mut fc = FaceConfig::new(RuntimeConfig::from_root(&fixtures::workspace_root()));
    fc.model = model;
    let x = FaceExtractor::new(fc).expect("face models missing: run scripts/fetch-models.sh");
    face_app_from(x, f)
}

/// A server with face extractor `x` and its model's table built from the real photos.
fn face_app_from(
    x: FaceExtractor,
    f: impl FnOnce(&mut biomatch_matcher::config::Config),
) -> TestApp {
    let model = x.face_model();
    let groups = fixtures::groups_dir();
    let (table, _) = biomatch_matcher::calibrate::face_table(&x, &fixtures::face_dir(), &groups, 0)
        .expect("calibration photos missing: run scripts/fetch-photos.sh");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_with(f);
    config.data = dir.path().join("store");
    let models = vec![ServiceModel {
        id: model.id(),
        dim: 128,
        kind: ModalityKind::Face,
        calibration: table,
    }];
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

/// A fixture photo with a synthetic hand over the mouth (base64).
fn covered(name: &str) -> String {
    damaged(name, biomatch_testkit::faces::cover_mouth)
}

/// A fixture photo changed by `damage` at its largest face's landmarks, base64.
fn damaged(name: &str, damage: fn(&[u8], &[[f32; 2]; 5]) -> Vec<u8>) -> String {
    let x =
        FaceExtractor::new(FaceConfig::new(RuntimeConfig::from_root(&fixtures::workspace_root())))
            .unwrap();
    let bytes = fixtures::read(&fixtures::face_photo(name));
    let (_, faces) = x.detect(&bytes).unwrap();
    let face = biomatch_models::face::detect::largest(&faces).unwrap();
    base64::engine::general_purpose::STANDARD.encode(damage(&bytes, &face.landmarks))
}

/// eKYC with shut eyes (lids painted over the eyes of a real selfie): 422 `face_quality` naming
/// `eye_aperture` and saying to open the eyes; with the eye model off the same selfie is compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selfie_with_shut_eyes_is_refused_naming_eye_aperture() {
    let app = face_app();
    let enroll =
        json!({ "subject_id": "NZ-1980-0002", "face": { "image": photo("person_b_1.jpg") } });
    let (s, v) = app.post("/v1/subjects", ISSUER, enroll.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let shut = damaged("person_b_2.jpg", biomatch_testkit::faces::close_eyes);
    let verify = json!({ "subject_id": "NZ-1980-0002", "face": { "image": shut } });
    let (s, v) = app.post("/v1/verify", BANK, verify.clone()).await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("face_quality")));
    let failures = v["failures"].as_array().expect("failures listed");
    let eyes = failures.iter().find(|f| f["measure"] == "eye_aperture").expect("eyes named");
    assert_eq!(eyes["bound"], "min", "{eyes}");
    assert!(eyes["value"].as_f64().unwrap() < eyes["limit"].as_f64().unwrap(), "{eyes}");
    assert!(eyes["advice"].as_str().unwrap().contains("open the eyes"), "{eyes}");
    // A 1:N probe with shut eyes still searches (and finds the subject).
    let (s, v) = app.post("/v1/identify", ISSUER, json!({ "face": { "image": shut } })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["candidates"][0]["subject_id"], "NZ-1980-0002", "{v}");
    // /v1/extract reports the aperture of an open capture too.
    let (_, e) = app.post("/v1/extract", BANK, json!({ "image": photo("person_b_2.jpg") })).await;
    assert!(e["quality"]["measures"]["eye_aperture"].as_f64().unwrap() > 0.13, "{e}");

    // Without the eye model the measure is absent and the selfie is compared.
    let mut fc = FaceConfig::new(RuntimeConfig::from_root(&fixtures::workspace_root()));
    fc.eye_model = false;
    let off = face_app_from(FaceExtractor::new(fc).unwrap(), |_| {});
    off.post("/v1/subjects", ISSUER, enroll).await;
    let (s, v) = off.post("/v1/verify", BANK, verify).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, e) = off.post("/v1/extract", BANK, json!({ "image": shut })).await;
    assert!(e["quality"]["measures"].get("eye_aperture").is_none(), "{e}");
}

/// eKYC's quality gate: a selfie with a hand over the mouth is refused with 422 `face_quality`
/// naming the occlusion and saying what to do, nothing is stored or compared; the extract
/// endpoint says which uses a capture passes; a 1:N probe tolerates the covered mouth;
/// `/metrics` counts the refusals; the gate can be turned off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn face_quality_gate_refuses_an_occluded_selfie_and_says_why() {
    let app = face_app();
    let enroll = |id: &str, img: String| json!({ "subject_id": id, "face": { "image": img } });
    let (s, v) =
        app.post("/v1/subjects", ISSUER, enroll("FR-1977-0001", photo("person_a_1.jpg"))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let hand = covered("person_a_2.jpg");
    let verify = json!({ "subject_id": "FR-1977-0001", "face": { "image": hand } });
    let (s, v) = app.post("/v1/verify", BANK, verify.clone()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["code"], "face_quality", "{v}");
    let failures = v["failures"].as_array().expect("failures listed");
    let mouth =
        failures.iter().find(|f| f["measure"] == "occlusion_mouth").expect("occlusion named");
    assert_eq!(mouth["bound"], "max");
    assert!(mouth["value"].as_f64().unwrap() > mouth["limit"].as_f64().unwrap(), "{mouth}");
    assert!(mouth["advice"].as_str().unwrap().contains("mouth"), "{mouth}");
    assert!(v["message"].as_str().unwrap().contains("occlusion_mouth"), "{v}");
    // The clean photo of the same person still verifies.
    let (s, v) = app
        .post(
            "/v1/verify",
            BANK,
            json!({ "subject_id": "FR-1977-0001", "face": { "image": photo("person_a_2.jpg") } }),
        )
        .await;
    assert_eq!((s, v["decision"].as_str()), (StatusCode::OK, Some("match")), "{v}");

    // What each use accepts, before sending the capture anywhere.
    let (s, e) = app.post("/v1/extract", BANK, json!({ "image": hand })).await;
    assert_eq!(s, StatusCode::OK, "{e}");
    let uses = e["quality"]["uses"].as_array().unwrap();
    let passes =
        |u: &str| uses.iter().find(|x| x["use"] == u).unwrap()["passes"].as_bool().unwrap();
    assert!(!passes("verify") && !passes("enroll") && passes("identify"), "{e}");
    assert!(e["quality"]["measures"]["occlusion_mouth"].as_f64().unwrap() > 0.75, "{e}");
    let (_, e) = app.post("/v1/extract", BANK, json!({ "image": photo("person_a_2.jpg") })).await;
    assert!(e["quality"]["uses"].as_array().unwrap().iter().all(|u| u["passes"] == true), "{e}");

    // A covered enrollment is refused and stores nothing; a covered 1:N probe still searches.
    let (s, v) = app.post("/v1/subjects", ISSUER, enroll("FR-X", hand.clone())).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("face_quality")),
        "{v}"
    );
    assert_eq!(app.state.gallery().unwrap().store().len(), 1);
    let (s, v) = app.post("/v1/identify", ISSUER, json!({ "face": { "image": hand } })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["candidates"][0]["subject_id"], "FR-1977-0001", "{v}");

    let (_, _, m) = app.call_raw("GET", "/metrics", None, None, &[]).await;
    for (u, n) in [("verify", 1), ("enroll", 1)] {
        let line = format!(
            "biomatch_face_quality_refused_total{{measure=\"occlusion_mouth\",use=\"{u}\"}} {n}"
        );
        assert!(m.contains(&line), "{line} missing from /metrics");
    }

    // Turned off, the same selfie is compared (and matches: the eyes and nose are Macron's).
    let off = face_app_with(FaceModel::SFace, |c| c.extractors.face.quality.disabled = true);
    off.post("/v1/subjects", ISSUER, enroll("FR-1977-0001", photo("person_a_1.jpg"))).await;
    let (s, v) = off.post("/v1/verify", BANK, verify).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// The second face model end to end: a dlib-resnet@v1 server enrolls and verifies with its own
/// templates and its own calibration; an SFace template is not compared with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dlib_model_enrolls_and_verifies_within_its_own_templates() {
    let app = face_app_with(FaceModel::DlibResnet, |_| {});
    let (s, v) = app
        .post(
            "/v1/subjects",
            ISSUER,
            json!({ "subject_id": "NZ-1980-0002", "face": { "image": photo("person_b_1.jpg") } }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["templates"][0]["model"], "dlib-resnet@v1");
    let verify = |p: &str| json!({ "subject_id": "NZ-1980-0002", "face": { "image": photo(p) } });
    let (_, v) = app.post("/v1/verify", BANK, verify("person_b_2.jpg")).await;
    eprintln!("dlib, same person: {v}");
    assert_eq!(v["decision"], "match", "{v}");
    for other in ["impostor_1.jpg", "impostor_2.jpg", "person_a_1.jpg"] {
        let (_, v) = app.post("/v1/verify", BANK, verify(other)).await;
        eprintln!("dlib, {other}: {v}");
        assert_eq!(v["decision"], "no_match", "{other}: {v}");
    }
    // An SFace template is refused: this server holds no SFace templates to compare it with.
    let t = json!({ "subject_id": "NZ-1980-0002", "face": { "template": { "model": "sface@2021dec", "vector": vec![0.088f32; 128] } } });
    let (s, v) = app.post("/v1/verify", BANK, t).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["code"], "unknown_model", "{v}");
}

/// A presentation-attack detector for the test: every face scores `0`.
#[derive(Debug)]
struct Scores(f32);

impl biomatch_models::face::pad::PresentationAttackDetector for Scores {
    fn name(&self) -> &str {
        "test double"
    }
    fn attack_score(
        &self,
        _: &image::RgbImage,
        _: &biomatch_models::face::detect::Face,
    ) -> Result<f32, biomatch_models::ExtractError> {
        Ok(self.0)
    }
}

/// The presentation-attack hook: with a detector attached, a 1:1 probe it scores over
/// `pad_threshold` is refused with 422 `presentation_attack` (enrollment and 1:N are not its
/// business); under the threshold the verification goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_presentation_attack_detector_guards_verification() {
    let extractor = |score: f32| {
        FaceExtractor::new(FaceConfig::new(RuntimeConfig::from_root(&fixtures::workspace_root())))
            .unwrap()
            .with_pad(Arc::new(Scores(score)))
    };
    let app = face_app_from(extractor(0.9), |_| {});
    let (s, v) = app
        .post(
            "/v1/subjects",
            ISSUER,
            json!({ "subject_id": "FR-1", "face": { "image": photo("person_a_1.jpg") } }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let verify = json!({ "subject_id": "FR-1", "face": { "image": photo("person_a_2.jpg") } });
    let (s, v) = app.post("/v1/verify", BANK, verify.clone()).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("presentation_attack")),
        "{v}"
    );
    let (s, _) = app
        .post("/v1/identify", ISSUER, json!({ "face": { "image": photo("person_a_2.jpg") } }))
        .await;
    assert_eq!(s, StatusCode::OK);
    let live = face_app_from(extractor(0.1), |_| {});
    live.post(
        "/v1/subjects",
        ISSUER,
        json!({ "subject_id": "FR-1", "face": { "image": photo("person_a_1.jpg") } }),
    )
    .await;
    let (s, v) = live.post("/v1/verify", BANK, verify).await;
    assert_eq!((s, v["decision"].as_str()), (StatusCode::OK, Some("match")), "{v}");
}
