//! The face quality gate on the real fixture photos: every measure's value, which captures pass
//! which use, a synthesised hand over the mouth refused naming occlusion, and shut eyes (painted
//! on the fixtures, and real ones in the group photos) refused naming `eye_aperture`.

use super::extractor;
use biomatch_core::Modality;
use biomatch_models::face::detect::Face;
use biomatch_models::face::quality::{CaptureUse, FaceMeasures, Thresholds, EYE_APERTURE_MIN};
use biomatch_models::{ExtractOptions, Extractor};
use biomatch_testkit::faces::{close_eyes, cover_mouth, cover_nose_and_mouth};
use biomatch_testkit::fixtures::{face_photo, group_photo, read, FACE_PHOTOS};

fn measures(bytes: &[u8]) -> FaceMeasures {
    let e = extractor().extract(bytes, Modality::Face).expect("a face");
    e.quality.measures.expect("measured by default")
}

/// The five landmarks of the largest face in a photo.
fn landmarks(bytes: &[u8]) -> [[f32; 2]; 5] {
    let (_, faces) = extractor().detect(bytes).unwrap();
    biomatch_models::face::detect::largest(&faces).expect("a face").landmarks
}

fn passes(m: &FaceMeasures) -> Vec<&'static str> {
    CaptureUse::ALL
        .iter()
        .filter(|&&u| Thresholds::for_use(u).check(m).is_empty())
        .map(|u| u.as_str())
        .collect()
}

#[test]
fn the_fixtures_measures_and_the_uses_they_pass() {
    for p in FACE_PHOTOS {
        let m = measures(&std::fs::read(face_photo(p)).unwrap());
        let fails: Vec<String> = CaptureUse::ALL
            .iter()
            .flat_map(|&u| {
                Thresholds::for_use(u)
                    .check(&m)
                    .into_iter()
                    .map(move |f| format!("{}:{}={:.2}", u.as_str(), f.measure, f.value))
            })
            .collect();
        eprintln!(
            "{p:>15} passes {:?} fails {fails:?}\n{:>15} {}",
            passes(&m),
            "",
            serde_json::to_string(&m).unwrap()
        );
        // Clean, frontal, well-lit press photos: fit for every use.
        assert_eq!(passes(&m), ["verify", "enroll", "identify"], "{p}: {m:?}");
    }
}

#[test]
fn a_hand_over_the_mouth_is_refused_naming_occlusion() {
    for p in FACE_PHOTOS {
        let clean = std::fs::read(face_photo(p)).unwrap();
        let covered = cover_mouth(&clean, &landmarks(&clean));
        let before = measures(&clean);
        let after = measures(&covered);
        let failures = Thresholds::for_use(CaptureUse::Verify).check(&after);
        eprintln!(
            "{p:>15} occlusion_mouth {:.3} -> {:.3}; verify failures {:?}",
            before.occlusion_mouth,
            after.occlusion_mouth,
            failures.iter().map(|f| f.measure.as_str()).collect::<Vec<_>>()
        );
        assert!(
            failures.iter().any(|f| f.measure == "occlusion_mouth"),
            "{p}: a covered mouth passed: {after:?}"
        );
        assert!(Thresholds::for_use(CaptureUse::Verify).check(&before).is_empty());
    }
}

#[test]
fn a_mask_over_nose_and_mouth_is_refused_naming_the_nose() {
    for p in FACE_PHOTOS {
        let clean = std::fs::read(face_photo(p)).unwrap();
        let masked = measures(&cover_nose_and_mouth(&clean, &landmarks(&clean)));
        let failures = Thresholds::for_use(CaptureUse::Enroll).check(&masked);
        eprintln!(
            "{p:>15} occlusion_nose {:.3}, occlusion_mouth {:.3}; enroll failures {:?}",
            masked.occlusion_nose,
            masked.occlusion_mouth,
            failures.iter().map(|f| f.measure.as_str()).collect::<Vec<_>>()
        );
        assert!(failures.iter().any(|f| f.measure == "occlusion_nose"), "{p}: {masked:?}");
    }
}

#[test]
fn painted_shut_eyes_are_refused_naming_eye_aperture() {
    for p in FACE_PHOTOS {
        let clean = std::fs::read(face_photo(p)).unwrap();
        let shut = close_eyes(&clean, &landmarks(&clean));
        let (before, after) = (measures(&clean), measures(&shut));
        let failures = Thresholds::for_use(CaptureUse::Verify).check(&after);
        eprintln!(
            "{p:>15} eye_aperture {:?} -> {:?}; verify failures {:?}",
            before.eye_aperture,
            after.eye_aperture,
            failures.iter().map(|f| f.measure.as_str()).collect::<Vec<_>>()
        );
        assert!(before.eye_aperture.expect("measured by default") >= EYE_APERTURE_MIN, "{p}");
        assert!(failures.iter().any(|f| f.measure == "eye_aperture"), "{p}: {after:?}");
        // A 1:N probe with shut eyes is still a probe.
        let probe = Thresholds::for_use(CaptureUse::Identify).check(&after);
        assert!(probe.iter().all(|f| f.measure != "eye_aperture"));
    }
}

/// Faces of the group photos, each named by its box centre (share of the photo's width and
/// height) and whether its eyes are shut, as judged by eye on the photos.
const GROUP_EYES: [(&str, f32, f32, bool); 8] = [
    // insightface's t1.jpg: the two women at the edges look down with their lids shut.
    ("t1.jpg", 0.09, 0.38, true),
    ("t1.jpg", 0.92, 0.38, true),
    ("t1.jpg", 0.41, 0.39, false),
    ("t1.jpg", 0.62, 0.46, false),
    ("t1.jpg", 0.74, 0.14, false),
    ("t1.jpg", 0.25, 0.24, false),
    // face-api's sample2.jpg: two frontal faces with shut, made-up eyes.
    ("sample2.jpg", 0.80, 0.20, true),
    ("sample2.jpg", 0.52, 0.25, true),
];

/// Whether the verify gate refuses this face naming `eye_aperture`, and the aperture.
fn refused_for_shut_eyes(img: &image::RgbImage, face: &Face) -> (bool, f32) {
    let m = extractor().measure(img, face).unwrap();
    let failures = Thresholds::for_use(CaptureUse::Verify).check(&m);
    let refused = failures.iter().any(|f| f.measure == "eye_aperture");
    (refused, m.eye_aperture.expect("measured by default"))
}

#[test]
fn real_shut_eyes_are_refused_and_open_ones_pass() {
    for photo in ["t1.jpg", "sample2.jpg"] {
        let (img, faces) = extractor().detect(&read(&group_photo(photo))).unwrap();
        for &(_, cx, cy, shut) in GROUP_EYES.iter().filter(|c| c.0 == photo) {
            let off = |f: &Face| {
                let (fx, fy) = f.centre_share(img.width(), img.height());
                (fx - cx).hypot(fy - cy)
            };
            let face = faces.iter().min_by(|a, b| off(a).total_cmp(&off(b))).expect("faces");
            assert!(off(face) < 0.05, "{photo}: no face near ({cx}, {cy})");
            let (refused, a) = refused_for_shut_eyes(&img, face);
            eprintln!("{photo} ({cx}, {cy}) shut {shut}: eye_aperture {a:.3}, refused {refused}");
            assert_eq!(refused, shut, "{photo} ({cx}, {cy}): eye_aperture {a:.3}");
        }
    }
    // face-api's sample6.jpg: four faces looking at the camera.
    let (img, faces) = extractor().detect(&read(&group_photo("sample6.jpg"))).unwrap();
    assert_eq!(faces.len(), 4);
    for face in &faces {
        let (refused, a) = refused_for_shut_eyes(&img, face);
        eprintln!("sample6.jpg open: eye_aperture {a:.3}");
        assert!(!refused, "sample6.jpg: an open face refused, eye_aperture {a:.3}");
    }
}

#[test]
fn the_eye_model_runs_only_when_asked() {
    let bytes = std::fs::read(face_photo(FACE_PHOTOS[0])).unwrap();
    let x = extractor();
    let with = x.extract_with(&bytes, Modality::Face, ExtractOptions { eye_state: true }).unwrap();
    let without =
        x.extract_with(&bytes, Modality::Face, ExtractOptions { eye_state: false }).unwrap();
    let (a, b) = (with.quality.measures.unwrap(), without.quality.measures.unwrap());
    assert!(a.eye_aperture.is_some() && b.eye_aperture.is_none());
    // Everything else, the template included, is the same.
    assert_eq!(FaceMeasures { eye_aperture: None, ..a }, b);
    assert_eq!(with.template, without.template);
}
