//! Bad parameters, damaged files and budgets: typed errors, the serving generation untouched.

use crate::common::*;
use biomatch_gallery::ann::{self, BuildControl, BuildParams, BuildStage, LoadOptions};
use biomatch_gallery::{AnnParams, Gallery, GalleryError, IdentifyOptions, SearchMode, Store};
use std::sync::Arc;

fn shard_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let idx = dir.join("index").join(model().to_string());
    let mut gens: Vec<_> = std::fs::read_dir(&idx)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    gens.sort();
    let mut v: Vec<_> = std::fs::read_dir(gens.last().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "faiss"))
        .collect();
    v.sort();
    v
}

#[test]
fn refusals_keep_the_serving_generation() {
    let dir = tempfile::tempdir().unwrap();
    let pop = population(25_000, 4, None);
    let g = filled(dir.path(), &pop);
    let p = probe(pop.sample(3, 1));
    let opts = IdentifyOptions { max_results: 3, ..Default::default() };

    // No index yet: Index mode is refused, Auto falls back to exact.
    assert!(matches!(
        g.identify(&p, &opts, SearchMode::Index(AnnParams::default())),
        Err(GalleryError::BadIndexParams(_))
    ));
    assert_eq!(
        g.identify(&p, &opts, SearchMode::Auto(AnnParams::default())).unwrap().1.kind,
        "exact"
    );

    // Bad build parameters.
    let bad_factory =
        BuildParams { factory: Some("IVF-nonsense".into()), ..BuildParams::default() };
    assert!(matches!(
        ann::build(g.store(), &model(), &bad_factory),
        Err(GalleryError::BadFactory(_))
    ));
    // A layout that cannot keep row ids is refused before any training.
    let no_ids = BuildParams { factory: Some("PQ32x4fs".into()), ..BuildParams::default() };
    assert!(matches!(ann::build(g.store(), &model(), &no_ids), Err(GalleryError::BadFactory(_))));
    let zero = BuildParams { shards: 0, ..BuildParams::default() };
    assert!(matches!(ann::build(g.store(), &model(), &zero), Err(GalleryError::BadIndexParams(_))));
    let other = biomatch_core::ModelId::new("other", "1").unwrap();
    assert!(matches!(
        ann::build(g.store(), &other, &BuildParams::default()),
        Err(GalleryError::ModelMismatch { .. })
    ));

    ann::build(g.store(), &model(), &BuildParams { shards: 2, ..BuildParams::default() }).unwrap();
    let idx = g.load_index(&model(), &LoadOptions::default()).unwrap().unwrap();
    assert_eq!(idx.manifest.generation, 1);
    assert!(idx.bytes_per_template() > 256.0, "includes the fp16 template");
    let (c, path) = g.identify(&p, &opts, SearchMode::Auto(AnnParams::default())).unwrap();
    assert_eq!((path.kind, c[0].subject_id.clone()), ("index", biomatch_datasets::subject_id(3)));

    // Bad search parameters.
    for bad in [
        AnnParams { k_prime: 0, nprobe: None },
        AnnParams { k_prime: 10_000, nprobe: None },
        AnnParams { k_prime: 8, nprobe: Some(0) },
    ] {
        assert!(matches!(
            g.identify(&p, &opts, SearchMode::Index(bad)),
            Err(GalleryError::BadIndexParams(_))
        ));
    }

    // Memory budget: refused with a clear error; the loaded generation keeps serving.
    let tight = LoadOptions { memory_budget: Some(1 << 20), ..LoadOptions::default() };
    match g.load_index(&model(), &tight) {
        Err(e @ GalleryError::OverBudget { .. }) => {
            assert!(e.to_string().contains("budget"), "{e}")
        }
        other => panic!("expected OverBudget, got {other:?}"),
    }
    let roomy = LoadOptions { memory_budget: Some(1 << 30), ..LoadOptions::default() };
    g.load_index(&model(), &roomy).unwrap().unwrap();

    // A new generation with a damaged shard file is refused at load; generation 1 keeps serving.
    ann::build(g.store(), &model(), &BuildParams { shards: 2, ..BuildParams::default() }).unwrap();
    let shard = shard_files(dir.path()).remove(1);
    let mut b = std::fs::read(&shard).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x5a;
    std::fs::write(&shard, &b).unwrap();
    assert!(matches!(
        g.load_index(&model(), &LoadOptions::default()),
        Err(GalleryError::Corrupt { .. })
    ));
    assert_eq!(g.index(&model()).unwrap().manifest.generation, 1);
    assert_eq!(
        g.identify(&p, &opts, SearchMode::Auto(AnnParams::default())).unwrap().1.generation,
        Some(1)
    );
    // Truncated, too.
    std::fs::write(&shard, &b[..mid]).unwrap();
    assert!(matches!(
        g.load_index(&model(), &LoadOptions::default()),
        Err(GalleryError::Corrupt { .. })
    ));
}

/// A cancelled build publishes nothing and leaves nothing behind, at whatever step it is
/// cancelled; the generation being served stays current; a later build takes the next number.
#[test]
fn cancelled_builds_leave_the_serving_generation() {
    let dir = tempfile::tempdir().unwrap();
    let g = filled(dir.path(), &population(3_000, 6, None));
    let params = BuildParams { shards: 2, ..BuildParams::default() };
    ann::build(g.store(), &model(), &params).unwrap();
    g.load_index(&model(), &LoadOptions::default()).unwrap().unwrap();
    let idx_dir = dir.path().join("index").join(model().to_string());
    let entries = || {
        let mut v: Vec<String> = std::fs::read_dir(&idx_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = entries();
    for at in [
        BuildStage::Snapshot,
        BuildStage::Train,
        BuildStage::Add,
        BuildStage::Verify,
        BuildStage::Publish,
    ] {
        let ctl = BuildControl::default().on_stage(move |c, s| {
            if s == at {
                c.cancel();
            }
        });
        match ann::build_with(g.store(), &model(), &params, &ctl) {
            Err(GalleryError::Cancelled) => {}
            other => panic!("cancelled at {at:?}: {other:?}"),
        }
        assert_eq!(ctl.progress().0, BuildStage::Done);
        assert_eq!(entries(), before, "cancelled at {at:?}");
        let current = g.load_index(&model(), &LoadOptions::default()).unwrap().unwrap();
        assert_eq!(current.manifest.generation, 1);
    }
    // Waiting for another build's lock: a cancel ends the wait.
    let lock = std::fs::File::options().write(true).open(idx_dir.join("BUILD.lock")).unwrap();
    lock.try_lock().unwrap();
    assert!(matches!(
        ann::build(g.store(), &model(), &params),
        Err(GalleryError::BadIndexParams(m)) if m.contains("another index build")
    ));
    let ctl = Arc::new(BuildControl::new(true));
    let c = ctl.clone();
    let canceller = std::thread::spawn(move || {
        while c.progress().0 != BuildStage::Waiting {
            std::thread::yield_now();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        c.cancel();
    });
    assert!(matches!(
        ann::build_with(g.store(), &model(), &params, &ctl),
        Err(GalleryError::Cancelled)
    ));
    canceller.join().unwrap();
    drop(lock);
    let r = ann::build_with(g.store(), &model(), &params, &BuildControl::new(true)).unwrap();
    assert_eq!(r.manifest.generation, 2);
}

#[test]
fn the_recall_gate_refuses_a_generation_below_its_floor() {
    let dir = tempfile::tempdir().unwrap();
    let g = filled(dir.path(), &population(30_000, 8, None));
    let gated = |factory: &str| BuildParams {
        factory: Some(factory.into()),
        shards: 2,
        recall_floor: Some(0.95),
        ..BuildParams::default()
    };
    let good = ann::build(g.store(), &model(), &gated("IDMap,PQ32x4fs")).unwrap();
    let sample = good.manifest.recall.clone().expect("the build sampled its recall");
    assert_eq!(sample.probes, 500);
    assert!(sample.recall >= 0.95 && sample.worst_shard() >= 0.95, "{sample:?}");
    assert_eq!(sample.shards.iter().map(|s| s.probes).sum::<usize>(), 500);
    g.load_index(&model(), &LoadOptions::default()).unwrap().unwrap();

    // 2 bytes a template: far below the floor. Refused, nothing left behind, gen 1 serves.
    let idx_dir = dir.path().join("index").join(model().to_string());
    let current = std::fs::read(idx_dir.join("CURRENT")).unwrap();
    match ann::build(g.store(), &model(), &gated("IDMap,PQ4x4fs")) {
        Err(GalleryError::RecallBelowFloor { recall, floor, probes, .. }) => {
            assert!(recall < 0.95 && floor == 0.95 && probes == 500, "{recall}")
        }
        other => panic!("expected the gate to refuse: {other:?}"),
    }
    assert_eq!(std::fs::read(idx_dir.join("CURRENT")).unwrap(), current);
    assert!(!std::fs::read_dir(&idx_dir).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));
    let serving = g.load_index(&model(), &LoadOptions::default()).unwrap().unwrap();
    assert_eq!(serving.manifest.generation, 1);
    let p = probe(population(30_000, 8, None).sample(17, 1));
    let opts = IdentifyOptions { max_results: 1, ..Default::default() };
    let (c, path) = g.identify(&p, &opts, SearchMode::Index(AnnParams::default())).unwrap();
    assert_eq!((path.generation, &c[0].subject_id), (Some(1), &biomatch_datasets::subject_id(17)));
}

#[test]
fn an_index_from_another_store_is_refused() {
    let big = tempfile::tempdir().unwrap();
    let small = tempfile::tempdir().unwrap();
    {
        let g = filled(big.path(), &population(22_000, 5, None));
        ann::build(g.store(), &model(), &BuildParams { shards: 1, ..BuildParams::default() })
            .unwrap();
    }
    let g = filled(small.path(), &population(1_000, 5, None));
    let from = big.path().join("index");
    let to = small.path().join("index").join(model().to_string());
    std::fs::create_dir_all(&to).unwrap();
    for e in walk(&from.join(model().to_string())) {
        let rel = e.strip_prefix(from.join(model().to_string())).unwrap();
        std::fs::create_dir_all(to.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(&e, to.join(rel)).unwrap();
    }
    assert!(matches!(
        g.load_index(&model(), &LoadOptions::default()),
        Err(GalleryError::Corrupt { .. })
    ));
    assert!(g.index(&model()).is_none());
}

#[test]
fn a_store_has_one_owner() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(dir.path(), options()).unwrap();
    assert!(matches!(Store::open(dir.path(), options()), Err(GalleryError::Locked(_))));
    drop(a);
    let g = Gallery::new(Arc::new(Store::open(dir.path(), options()).unwrap()));
    // An empty gallery has nothing to index.
    assert!(matches!(
        ann::build(g.store(), &model(), &BuildParams::default()),
        Err(GalleryError::BadIndexParams(_))
    ));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
