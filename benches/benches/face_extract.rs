//! The face extractor on the six fixture photos (scripts/fetch-models.sh): `extract` per photo,
//! `extract_batch` throughput, and the stage split (decode, letterbox, detect, align, embed),
//! against the Python onnxruntime reference pipeline (models/tools/face_reference.py --bench)
//! run first in a child process as the side-by-side baseline.
//!
//! Sessions use the runtime defaults: one intra-op thread each, one session per core, so
//! `extract` runs on one core and `extract_batch` spreads the images over the rayon pool.
//!
//! `cargo bench -p biomatch-benches --bench face_extract`

use biomatch_core::Modality;
use biomatch_models::face::{align, detect, FaceConfig, FaceExtractor};
use biomatch_models::imageio::{decode_rgb, ImageLimits};
use biomatch_models::runtime::{RuntimeConfig, SessionPool};
use biomatch_models::Extractor;
use biomatch_testkit::fixtures::{self, FACE_PHOTOS};
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use std::hint::black_box;
use std::process::Command;
use std::time::Duration;

/// Repetitions per image of the Python baseline.
const PY_REPEATS: u32 = 20;

/// The Python onnxruntime pipeline on the same photos, timed by the script itself.
fn python_baseline() {
    let root = fixtures::workspace_root();
    let python = fixtures::python();
    if !python.exists() {
        eprintln!(
            "python baseline: SKIPPED: {} not found (scripts/fetch-models.sh creates the venv)",
            python.display()
        );
        return;
    }
    let out = Command::new(&python)
        .current_dir(&root)
        .arg("models/tools/face_reference.py")
        .args(["--bench", &PY_REPEATS.to_string(), ".setup/models"])
        .args(FACE_PHOTOS.iter().map(|p| format!(".setup/fixtures/face/{p}")))
        .output();
    match out {
        Ok(o) if o.status.success() => {
            eprintln!("python baseline: {}", String::from_utf8_lossy(&o.stdout).trim())
        }
        Ok(o) => eprintln!(
            "python baseline: SKIPPED: face_reference.py failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("python baseline: SKIPPED: cannot run {}: {e}", python.display()),
    }
}

fn face(c: &mut Criterion) {
    python_baseline();

    let runtime = RuntimeConfig::from_root(&fixtures::workspace_root());
    let extractor = match FaceExtractor::new(FaceConfig::new(runtime.clone())) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("face_extract: SKIPPED: {e} (run scripts/fetch-models.sh)");
            return;
        }
    };
    let photos: Vec<Vec<u8>> =
        match FACE_PHOTOS.iter().map(|p| std::fs::read(fixtures::face_photo(p))).collect() {
            Ok(p) => p,
            Err(e) => {
                eprintln!(
                    "face_extract: SKIPPED: fixture photos: {e} (run scripts/fetch-models.sh)"
                );
                return;
            }
        };
    eprintln!(
        "rust: {} sessions per model, {} intra-op thread(s) each, {} cores (the batch's rayon pool)",
        runtime.sessions,
        runtime.intra_threads,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let mut g = c.benchmark_group("face_extract/single");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    for (name, bytes) in FACE_PHOTOS.iter().zip(&photos) {
        g.bench_with_input(BenchmarkId::from_parameter(name), bytes, |b, bytes| {
            b.iter(|| black_box(extractor.extract(bytes, Modality::Face).expect("a face")))
        });
    }
    g.finish();

    let all: Vec<&[u8]> = photos.iter().map(Vec::as_slice).collect();
    let mut g = c.benchmark_group("face_extract/batch");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(all.len() as u64));
    g.bench_function("extract_batch_6", |b| {
        b.iter(|| black_box(extractor.extract_batch(&all, Modality::Face)))
    });
    g.finish();

    // Stage split, each stage cycling through the six photos (one call = one photo).
    let limits = ImageLimits::default();
    let decoded: Vec<_> =
        photos.iter().map(|p| decode_rgb(p, &limits).expect("decodable")).collect();
    let landmarks: Vec<[[f32; 2]; 5]> = photos
        .iter()
        .map(|bytes| {
            let (_, faces) = extractor.detect(bytes).expect("detect");
            faces.iter().max_by(|a, b| a.area().total_cmp(&b.area())).expect("a face").landmarks
        })
        .collect();
    let crops: Vec<Vec<f32>> =
        decoded.iter().zip(&landmarks).map(|(img, l)| align::align(img, l)).collect();
    let one = RuntimeConfig { sessions: 1, ..runtime.clone() };
    let detector = SessionPool::new(&one, &runtime.models_dir.join("yunet.onnx")).expect("yunet");

    let mut g = c.benchmark_group("face_extract/stage");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(1));
    let n = FACE_PHOTOS.len();
    let mut i = 0;
    g.bench_function("decode", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            black_box(decode_rgb(&photos[i], &limits).expect("decodable"))
        })
    });
    g.bench_function("letterbox", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            black_box(detect::letterbox(&decoded[i]))
        })
    });
    g.bench_function("detect", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            black_box(detect::detect(&detector, &decoded[i]).expect("detect"))
        })
    });
    g.bench_function("align", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            black_box(align::align(&decoded[i], &landmarks[i]))
        })
    });
    g.bench_function("embed", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            black_box(extractor.embed(&crops[i]).expect("embed"))
        })
    });
    g.finish();
}

criterion_group!(benches, face);
criterion_main!(benches);
