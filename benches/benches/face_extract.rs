//! The face extractor on the six fixture photos (scripts/fetch-models.sh): `extract` per photo,
//! `extract_batch` throughput, the stage split (decode, letterbox, detect, align, embed), and the
//! capture-quality gate's cost (`extract` with and without `FaceConfig::measure_quality`,
//! `quality::measure`, all the measures with the eye model (`FaceExtractor::measure`) and
//! `Thresholds::check` alone; issue 16: at most 20 % of extraction),
//! against the Python onnxruntime reference pipeline (models/tools/face_reference.py --bench)
//! run first in a child process as the side-by-side baseline.
//!
//! Sessions use the runtime defaults: one intra-op thread each, one session per core, so
//! `extract` runs on one core and `extract_batch` spreads the images over the rayon pool.
//!
//! `cargo bench -p biomatch-benches --bench face_extract` (only the gate: `... -- gate`)

use biomatch_core::Modality;
use biomatch_models::face::quality::{self, CaptureUse, Thresholds};
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
use std::time::{Duration, Instant};

/// Repetitions per image of the Python baseline.
const PY_REPEATS: u32 = 20;

/// Timed runs per photo of the gate's own ratio (`gate_ratio`), under `cargo bench`.
const GATE_RUNS: usize = 200;

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
            detect::largest(&faces).expect("a face").landmarks
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

    gate(c, &runtime, &photos);
}

/// The capture-quality gate: `extract` by two extractors that differ only in `measure_quality`
/// (the same sessions per model, one intra-op thread each), and `quality::measure` and the verify
/// thresholds' `check` alone on detections and aligned crops computed once beforehand; each
/// benchmark cycles through the six photos (one call = one photo).
fn gate(c: &mut Criterion, runtime: &RuntimeConfig, photos: &[Vec<u8>]) {
    let runtime = RuntimeConfig { intra_threads: 1, ..runtime.clone() };
    let build = |measure_quality| {
        FaceExtractor::new(FaceConfig { measure_quality, ..FaceConfig::new(runtime.clone()) })
    };
    let (without, with) = match (build(false), build(true)) {
        (Ok(without), Ok(with)) => (without, with),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("face_extract/gate: SKIPPED: {e}");
            return;
        }
    };
    let inputs: Vec<(image::RgbImage, detect::Face, Vec<f32>)> = photos
        .iter()
        .map(|bytes| {
            let (img, faces) = with.detect(bytes).expect("detect");
            let face = detect::largest(&faces).expect("a face").clone();
            let crop = align::align(&img, &face.landmarks);
            (img, face, crop)
        })
        .collect();
    let measures: Vec<quality::FaceMeasures> =
        inputs.iter().map(|(img, face, _)| with.measure(img, face).expect("measures")).collect();
    let verify = Thresholds::for_use(CaptureUse::Verify);

    let mut g = c.benchmark_group("face_extract/gate");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    let n = photos.len();
    let mut i = 0;
    // Set by the benchmarks' closures, which criterion calls only when its filter selects them.
    let mut selected = false;
    for (id, x) in [("extract_without_gate", &without), ("extract_with_gate", &with)] {
        g.bench_function(id, |b| {
            selected = true;
            b.iter(|| {
                i = (i + 1) % n;
                black_box(x.extract(&photos[i], Modality::Face).expect("a face"))
            })
        });
    }
    g.bench_function("measure", |b| {
        selected = true;
        b.iter(|| {
            i = (i + 1) % n;
            let (_, face, crop) = &inputs[i];
            black_box(quality::measure(black_box(face), black_box(crop)))
        })
    });
    g.bench_function("measure_with_eye_model", |b| {
        selected = true;
        b.iter(|| {
            i = (i + 1) % n;
            let (img, face, _) = &inputs[i];
            black_box(with.measure(black_box(img), black_box(face)).expect("measures"))
        })
    });
    g.bench_function("check_verify", |b| {
        selected = true;
        b.iter(|| {
            i = (i + 1) % n;
            black_box(verify.check(black_box(&measures[i])))
        })
    });
    g.finish();

    if selected {
        gate_ratio(&without, &with, photos, &inputs, &measures, &verify);
    }
}

/// The gate's cost as a share of extraction, from medians this function times itself with
/// `Instant` (criterion's estimates are not easily read back): a ratio of numbers from the same
/// run, the with/without extractions interleaved so that drift in the machine's speed hits both.
fn gate_ratio(
    without: &FaceExtractor,
    with: &FaceExtractor,
    photos: &[Vec<u8>],
    inputs: &[(image::RgbImage, detect::Face, Vec<f32>)],
    measures: &[quality::FaceMeasures],
    verify: &Thresholds,
) {
    // `cargo test --benches` runs each benchmark once (no `--bench`): a few runs are enough.
    let runs = if std::env::args().any(|a| a == "--bench") { GATE_RUNS } else { 3 };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    let mut sum = [0.0f64; 5];
    for (((name, bytes), (img, face, crop)), m) in
        FACE_PHOTOS.iter().zip(photos).zip(inputs).zip(measures)
    {
        let (mut off, mut on, mut meas, mut chk, mut full) =
            (vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..runs {
            off.push(time(&mut || {
                black_box(without.extract(bytes, Modality::Face).expect("a face"));
            }));
            on.push(time(&mut || {
                black_box(with.extract(bytes, Modality::Face).expect("a face"));
            }));
            meas.push(time(&mut || {
                black_box(quality::measure(black_box(face), black_box(crop)));
            }));
            chk.push(time(&mut || {
                black_box(verify.check(black_box(m)));
            }));
            full.push(time(&mut || {
                black_box(with.measure(black_box(img), black_box(face)).expect("measures"));
            }));
        }
        let med = [median(off), median(on), median(meas), median(chk), median(full)];
        eprintln!(
            "gate {name}: extract without {:.2} ms, with {:.2} ms; crop measures {:.1} µs, \
             all measures with the eye model {:.2} ms, check {:.2} µs ({:.1} % of extraction; \
             median of {runs})",
            med[0] * 1e3,
            med[1] * 1e3,
            med[2] * 1e6,
            med[4] * 1e3,
            med[3] * 1e6,
            100.0 * (med[4] + med[3]) / med[0],
        );
        for (s, v) in sum.iter_mut().zip(med) {
            *s += v;
        }
    }
    // Means over the six photos of the per-photo medians.
    let [off, on, meas, chk, full] = sum.map(|s| s / photos.len() as f64);
    eprintln!(
        "gate cost (CPU): crop measures {:.1} µs = {:.2} % of extraction; eye model {:.2} ms \
         = {:.2} %; all measures + verify check {:.2} ms = {:.2} % (extract with gate {:.2} ms, \
         without {:.2} ms)",
        meas * 1e6,
        100.0 * meas / off,
        (full - meas) * 1e3,
        100.0 * (full - meas) / off,
        (full + chk) * 1e3,
        100.0 * (full + chk) / off,
        on * 1e3,
        off * 1e3,
    );
    eprintln!(
        "gate cost (latency; the eye model runs beside the embedder): extract with - without \
         = {:+.3} ms ({:+.2} %)",
        (on - off) * 1e3,
        100.0 * (on - off) / off,
    );
}

criterion_group!(benches, face);
criterion_main!(benches);
