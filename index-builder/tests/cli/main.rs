//! The offline builder against a store that a "service" (this test process) holds open and
//! keeps writing to.

use biomatch_core::{Modality, ModelId, SubjectId, Template};
use biomatch_gallery::ann::LoadOptions;
use biomatch_gallery::{Enrollment, Gallery, ModelSpec, Store, StoreOptions};
use std::process::Command;
use std::sync::Arc;

const DIM: usize = 64;

fn model() -> ModelId {
    ModelId::new("synthetic", "1").unwrap()
}

fn vector(i: u64) -> Vec<f32> {
    let mut s = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..DIM)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn enroll(store: &Store, range: std::ops::Range<u64>) {
    let batch: Vec<Enrollment> = range
        .map(|i| Enrollment {
            subject: SubjectId::new(format!("S{i:07}")).unwrap(),
            templates: vec![(Modality::Face, Template::new(model(), DIM, vector(i)).unwrap())],
            fingers: Vec::new(),
        })
        .collect();
    for r in store.enroll_batch(&batch).unwrap() {
        r.unwrap();
    }
}

fn builder(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_biomatch-index-builder"))
        .args(args)
        .env("BIOMATCH_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(
        String::from_utf8(out.stdout).unwrap().lines().last().unwrap().as_bytes(),
    )
    .unwrap()
}

#[test]
fn builds_and_verifies_next_to_a_running_writer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let store = Arc::new(
        Store::open(dir.path(), StoreOptions::new(vec![ModelSpec { model: model(), dim: DIM }]))
            .unwrap(),
    );
    enroll(&store, 0..25_000);
    store.checkpoint().unwrap();
    enroll(&store, 25_000..26_000); // some rows only in the WAL
    let g = Gallery::new(store.clone());

    // The writer holds the store's lock; the builder reads a snapshot anyway.
    let v = builder(&["build", "--data", d, "--shards", "2"]);
    assert_eq!(v["built"][0]["generation"], 1);
    assert_eq!(v["built"][0]["vectors"], 26_000, "the snapshot includes the WAL's rows: {v}");
    // The "service" picks the generation up.
    assert_eq!(
        g.load_index(&model(), &LoadOptions::default()).unwrap().unwrap().manifest.generation,
        1
    );

    // More writes, a second build covering them, and a check of what is current.
    enroll(&store, 26_000..27_000);
    let v = builder(&["build", "--data", d, "--model", "synthetic@1"]);
    assert_eq!(
        (v["built"][0]["generation"].as_u64(), v["built"][0]["vectors"].as_u64()),
        (Some(2), Some(27_000))
    );
    // The report: stage times and the recall gate's sample (floor 0.95 by default).
    let b = &v["built"][0];
    assert!(b["recall"]["recall"].as_f64().unwrap() >= 0.95, "{v}");
    assert_eq!(b["recall"]["probes"], 500, "{v}");
    assert!(b["stages"]["verify_seconds"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(b["index_bytes_per_template"].as_f64().map(|x| x.round()), Some(24.0), "{v}");

    // A deliberately bad layout (2 bytes a template) is refused by the gate: exit 3, a JSON
    // report naming it, CURRENT untouched, the service's generation unchanged.
    let current = dir.path().join("index/synthetic@1/CURRENT");
    let before = std::fs::read(&current).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_biomatch-index-builder"))
        .args(["build", "--data", d, "--factory", "IDMap,PQ4x4fs"])
        .env("BIOMATCH_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["refused"][0]["code"], "recall_below_floor", "{r}");
    assert!(r["built"].as_array().unwrap().is_empty());
    assert_eq!(std::fs::read(&current).unwrap(), before);
    assert_eq!(
        g.load_index(&model(), &LoadOptions::default()).unwrap().unwrap().manifest.generation,
        2
    );
    // The same layout with the gate off is published (and reports what it measured).
    let v = builder(&["build", "--data", d, "--factory", "IDMap,PQ4x4fs", "--recall-floor", "0"]);
    assert!(v["built"][0]["recall"]["recall"].as_f64().unwrap() < 0.95, "{v}");
    let v = builder(&["build", "--data", d]);
    assert_eq!(v["built"][0]["generation"], 4, "{v}");

    let v = builder(&["verify", "--data", d, "--probes", "100"]);
    let r = &v["verified"][0];
    assert_eq!(r["generation"], 4);
    assert!(r["recall"]["recall"].as_f64().unwrap() >= 0.95, "{v}");
    assert_eq!(r["self_top1_exact"], 1.0, "{v}");
    assert!(r["self_top1_index"].as_f64().unwrap() >= 0.99, "{v}");
    // The builder wrote nothing into the store itself: the writer goes on.
    enroll(&store, 27_000..27_010);
    assert_eq!(store.len(), 27_010);
    // A model the store does not hold is an error, not an empty success.
    let out = Command::new(env!("CARGO_BIN_EXE_biomatch-index-builder"))
        .args(["build", "--data", d, "--model", "other@1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
