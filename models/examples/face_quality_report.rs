//! Print the quality measures of face photos and which uses each passes; with `--cover-mouth`,
//! also of each photo with a synthetic hand over the mouth (`biomatch_testkit::faces`).
//!
//! `cargo run -p biomatch-models --example face_quality_report -- [--cover-mouth] PHOTO...`

use biomatch_core::Modality;
use biomatch_models::face::quality::{CaptureUse, FaceMeasures, Thresholds};
use biomatch_models::face::{FaceConfig, FaceExtractor};
use biomatch_models::runtime::RuntimeConfig;
use biomatch_models::Extractor;
use std::path::Path;

fn report(name: &str, x: &FaceExtractor, bytes: &[u8]) {
    match x.extract(bytes, Modality::Face) {
        Err(e) => println!("{name}: {e}"),
        Ok(e) => {
            let m: FaceMeasures = e.quality.measures.expect("measured");
            let verdicts: Vec<String> = CaptureUse::ALL
                .iter()
                .map(|&u| {
                    let f = Thresholds::for_use(u).check(&m);
                    if f.is_empty() {
                        format!("{}: pass", u.as_str())
                    } else {
                        let names: Vec<&str> = f.iter().map(|f| f.measure.as_str()).collect();
                        format!("{}: FAIL {}", u.as_str(), names.join(","))
                    }
                })
                .collect();
            println!(
                "{name}\t{}\t{}",
                serde_json::to_string(&m).unwrap_or_default(),
                verdicts.join("; ")
            );
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let cover = args.first().is_some_and(|a| a == "--cover-mouth");
    if cover {
        args.remove(0);
    }
    let dump = std::env::var_os("DUMP_CROPS").map(std::path::PathBuf::from);
    let x = FaceExtractor::new(FaceConfig::new(RuntimeConfig::from_root(Path::new("."))))?;
    for p in &args {
        let bytes = std::fs::read(p)?;
        report(p, &x, &bytes);
        if let Some(d) = &dump {
            let (img, faces) = x.detect(&bytes)?;
            if let Some(f) = biomatch_models::face::detect::largest(&faces) {
                let crop = biomatch_models::face::align::align(&img, &f.landmarks);
                let n = biomatch_models::face::align::SIZE;
                let out = image::RgbImage::from_fn(n as u32, n as u32, |u, v| {
                    let i = v as usize * n + u as usize;
                    image::Rgb([0, 1, 2].map(|c| crop[c * n * n + i] as u8))
                });
                let name = Path::new(p)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.save(d.join(format!("{name}.png")))?;
            }
        }
        if cover {
            let (_, faces) = x.detect(&bytes)?;
            if let Some(f) = biomatch_models::face::detect::largest(&faces) {
                let covered = biomatch_testkit::faces::cover_mouth(&bytes, &f.landmarks);
                report(&format!("{p} (hand over mouth)"), &x, &covered);
                let masked = biomatch_testkit::faces::cover_nose_and_mouth(&bytes, &f.landmarks);
                report(&format!("{p} (mask)"), &x, &masked);
            }
        }
    }
    Ok(())
}
