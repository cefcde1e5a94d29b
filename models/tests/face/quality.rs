//! The face quality gate on the real fixture photos: every measure's value, which captures pass
//! which use, and a synthesised hand over the mouth refused naming occlusion.

use super::extractor;
use biomatch_core::Modality;
use biomatch_models::face::quality::{CaptureUse, FaceMeasures, Thresholds};
use biomatch_models::Extractor;
use biomatch_testkit::faces::{cover_mouth, cover_nose_and_mouth};
use biomatch_testkit::fixtures::{face_photo, FACE_PHOTOS};

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
