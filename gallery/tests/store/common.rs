use biomatch_core::{Modality, ModelId, SubjectId, Template};
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

pub fn enrollment(seed: u64, i: u64) -> Enrollment {
    Enrollment { subject: sid(i), templates: vec![(Modality::Face, template(seed, i))] }
}

pub fn probe(seed: u64, i: u64) -> Probe {
    Probe { modality: Modality::Face, template: template(seed, i) }
}
