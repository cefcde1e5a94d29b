use biomatch_core::{Modality, ModelId, Template};
use biomatch_datasets::{subject_id, ClusterConfig, Population, PopulationConfig};
use biomatch_gallery::{Enrollment, Gallery, ModelSpec, Probe, Store, StoreOptions};
use std::path::Path;
use std::sync::Arc;

pub const DIM: usize = 128;

pub fn model() -> ModelId {
    ModelId::new("synthetic-face", "1").unwrap()
}

pub fn options() -> StoreOptions {
    StoreOptions::new(vec![ModelSpec { model: model(), dim: DIM }])
}

pub fn population(n: u64, seed: u64, families: Option<u64>) -> Population {
    Population::new(PopulationConfig {
        identities: n,
        dim: DIM,
        seed,
        clustered: families.map(|families| ClusterConfig { families, within_family_cosine: 0.35 }),
        ..PopulationConfig::default()
    })
    .unwrap()
}

pub fn enrollment(identity: u64, v: Vec<f32>) -> Enrollment {
    Enrollment {
        subject: subject_id(identity),
        templates: vec![(Modality::Face, Template::new(model(), DIM, v).unwrap())],
        fingers: Vec::new(),
    }
}

pub fn probe(v: Vec<f32>) -> Probe {
    Probe { modality: Modality::Face, template: Template::new(model(), DIM, v).unwrap() }
}

/// A store in `dir` holding the population's enrolment samples.
pub fn filled(dir: &Path, pop: &Population) -> Arc<Gallery> {
    let store = Store::open(dir, options()).unwrap();
    for batch in pop.enrolment_batches(10_000) {
        let e: Vec<_> = batch.into_iter().map(|(i, v)| enrollment(i, v)).collect();
        for r in store.enroll_batch(&e).unwrap() {
            r.unwrap();
        }
    }
    store.checkpoint().unwrap();
    Arc::new(Gallery::new(Arc::new(store)))
}
