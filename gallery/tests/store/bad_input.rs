//! Every kind of bad input is a typed error and leaves the store unchanged.

use crate::common::*;
use biomatch_core::{CoreError, FingerPosition, Modality, ModelId, SubjectId, Template};
use biomatch_gallery::{
    Enrollment, GalleryError, IdentifyOptions, ModelSpec, Probe, Store, StoreOptions,
};

fn fixture() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.enroll(&enrollment(1, 1)).unwrap();
    (dir, store)
}

fn unchanged(store: &Store) {
    assert_eq!(store.len(), 1);
    assert_eq!(store.stats().last_seq, 1);
    assert!(store.contains(&sid(1)));
}

#[test]
fn malformed_templates_are_refused_before_the_store() {
    assert!(matches!(
        Template::new(model(), DIM, vec![0.5; DIM - 1]),
        Err(CoreError::WrongDimension { .. })
    ));
    let mut v = raw(1, 2);
    v[3] = f32::NAN;
    assert_eq!(Template::new(model(), DIM, v.clone()), Err(CoreError::NonFinite { index: 3 }));
    v[3] = f32::NEG_INFINITY;
    assert_eq!(Template::new(model(), DIM, v), Err(CoreError::NonFinite { index: 3 }));
    assert_eq!(Template::new(model(), DIM, vec![0.0; DIM]), Err(CoreError::ZeroVector));
    assert_eq!(SubjectId::new(""), Err(CoreError::EmptySubjectId));
    assert!(matches!(SubjectId::new("x".repeat(65)), Err(CoreError::SubjectIdTooLong { .. })));
}

#[test]
fn wrong_dimension_for_the_gallery() {
    let (_d, store) = fixture();
    // A template valid for its own (claimed) dimension but not the gallery's.
    let t = Template::new(model(), DIM + 1, vec![0.5; DIM + 1]).unwrap();
    let e = Enrollment {
        subject: sid(2),
        templates: vec![(Modality::Face, t.clone())],
        fingers: Vec::new(),
    };
    assert!(
        matches!(store.enroll(&e), Err(GalleryError::WrongDimension { expected: DIM, got, .. }) if got == DIM + 1)
    );
    let p = Probe { modality: Modality::Face, template: t };
    assert!(matches!(
        store.identify(&p, &IdentifyOptions::default()),
        Err(GalleryError::WrongDimension { .. })
    ));
    assert!(matches!(store.verify(&sid(1), &p), Err(GalleryError::WrongDimension { .. })));
    unchanged(&store);
}

#[test]
fn duplicate_enrollment_and_unknown_subjects() {
    let (_d, store) = fixture();
    assert!(
        matches!(store.enroll(&enrollment(9, 1)), Err(GalleryError::AlreadyEnrolled(s)) if s == sid(1))
    );
    assert!(matches!(store.delete(&sid(2)), Err(GalleryError::UnknownSubject(s)) if s == sid(2)));
    assert!(matches!(store.verify(&sid(2), &probe(1, 1)), Err(GalleryError::UnknownSubject(_))));
    assert!(matches!(store.get(&sid(2)), Err(GalleryError::UnknownSubject(_))));
    let finger = Probe {
        modality: Modality::Finger(FingerPosition::new(2).unwrap()),
        template: template(1, 1),
    };
    assert!(matches!(store.verify(&sid(1), &finger), Err(GalleryError::NoTemplate { .. })));
    unchanged(&store);
}

#[test]
fn malformed_enrollments() {
    let (_d, store) = fixture();
    let empty = Enrollment { subject: sid(2), templates: vec![], fingers: Vec::new() };
    assert!(matches!(store.enroll(&empty), Err(GalleryError::EmptyEnrollment)));
    let twice = Enrollment {
        subject: sid(2),
        templates: vec![(Modality::Face, template(1, 2)), (Modality::Face, template(1, 3))],
        fingers: Vec::new(),
    };
    assert!(matches!(store.enroll(&twice), Err(GalleryError::DuplicateModality(Modality::Face))));
    let batch = [enrollment(1, 5), enrollment(2, 5), enrollment(1, 1)];
    let out = store.enroll_batch(&batch).unwrap();
    assert!(out[0].is_ok());
    assert!(matches!(out[1], Err(GalleryError::DuplicateInBatch(_))));
    assert!(matches!(out[2], Err(GalleryError::AlreadyEnrolled(_))));
    assert_eq!(store.len(), 2);
}

#[test]
fn probe_of_another_model_version_is_refused() {
    let (_d, store) = fixture();
    let other = ModelId::new("synthetic", "2").unwrap();
    let p = Probe {
        modality: Modality::Face,
        template: Template::new(other.clone(), DIM, raw(1, 1)).unwrap(),
    };
    let err = store.identify(&p, &IdentifyOptions::default()).unwrap_err();
    match &err {
        GalleryError::ModelMismatch { got, gallery } => {
            assert_eq!(got, &other);
            assert_eq!(gallery.as_ref(), Some(&model()));
        }
        e => panic!("unexpected {e}"),
    }
    assert!(err.to_string().contains("synthetic@1"), "{err}");
    assert!(matches!(store.verify(&sid(1), &p), Err(GalleryError::ModelMismatch { .. })));
    let e = Enrollment {
        subject: sid(3),
        templates: vec![(Modality::Face, p.template.clone())],
        fingers: Vec::new(),
    };
    assert!(matches!(store.enroll(&e), Err(GalleryError::ModelMismatch { .. })));
    let unknown = ModelId::new("other", "1").unwrap();
    let p = Probe {
        modality: Modality::Face,
        template: Template::new(unknown, DIM, raw(1, 1)).unwrap(),
    };
    assert!(matches!(
        store.identify(&p, &IdentifyOptions::default()),
        Err(GalleryError::ModelMismatch { gallery: None, .. })
    ));
    unchanged(&store);
}

#[test]
fn bad_search_options() {
    let (_d, store) = fixture();
    for n in [0, biomatch_gallery::MAX_RESULTS_LIMIT + 1] {
        let o = IdentifyOptions { max_results: n, ..Default::default() };
        assert!(matches!(
            store.identify(&probe(1, 1), &o),
            Err(GalleryError::BadMaxResults { .. })
        ));
    }
}

#[test]
fn configured_dimension_must_match_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let opts = StoreOptions::new(vec![ModelSpec { model: model(), dim: DIM * 2 }]);
    assert!(matches!(Store::open(dir.path(), opts), Err(GalleryError::Config(_))));
}
