use biomatch_core::finger::{FingerTemplate, Minutia, MinutiaKind};
use biomatch_core::{FingerPosition, Modality, ModelId, SubjectId, Template};
use biomatch_gallery::{Enrollment, ModelSpec, Probe, Store, StoreOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

pub const DIM: usize = 32;

pub fn model() -> ModelId {
    ModelId::new("synthetic", "1").unwrap()
}

pub fn options() -> StoreOptions {
    StoreOptions::new(vec![ModelSpec { model: model(), dim: DIM }])
}

pub fn open(dir: &Path) -> Store {
    Store::open(dir, options()).unwrap()
}

/// A deterministic raw vector for `(seed, i)`.
pub fn raw(seed: u64, i: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i);
    (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

pub fn template(seed: u64, i: u64) -> Template {
    Template::new(model(), DIM, raw(seed, i)).unwrap()
}

pub fn sid(i: u64) -> SubjectId {
    SubjectId::new(format!("P{i:06}")).unwrap()
}

/// A face template for every subject; odd subjects also enroll two minutiae fingers (one
/// record with the face).
pub fn enrollment(seed: u64, i: u64) -> Enrollment {
    Enrollment {
        subject: sid(i),
        templates: vec![(Modality::Face, template(seed, i))],
        fingers: fingers(seed, i),
    }
}

/// The minutiae fingers `enrollment(seed, i)` carries: positions 2 and 7 for odd `i`, none else.
pub fn fingers(seed: u64, i: u64) -> Vec<FingerTemplate> {
    if i.is_multiple_of(2) {
        return Vec::new();
    }
    [2u8, 7]
        .iter()
        .map(|&p| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ i.wrapping_mul(31) ^ u64::from(p));
            let minutiae = (0..rng.random_range(12..40))
                .map(|_| Minutia {
                    x: rng.random_range(0..400),
                    y: rng.random_range(0..500),
                    angle: rng.random(),
                    kind: MinutiaKind::RidgeEnding,
                    quality: rng.random_range(0..=100),
                })
                .collect();
            FingerTemplate::new(400, 500, 197, Some(FingerPosition::new(p).unwrap()), 70, minutiae)
                .unwrap()
        })
        .collect()
}

pub fn probe(seed: u64, i: u64) -> Probe {
    Probe { modality: Modality::Face, template: template(seed, i) }
}
