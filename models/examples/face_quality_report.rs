//! Print the quality measures of face photos and which uses each passes. Flags (any order, before
//! or between the photos):
//! - `--cover-mouth`: also each photo with a synthetic hand over the mouth and a mask
//!   (`biomatch_testkit::faces`);
//! - `--close-eyes`: also each photo with both eyes synthetically shut;
//! - `--every-face`: every detected face of each photo, not only the largest (`PHOTO#i`).
//!
//! `DUMP_CROPS=DIR` also writes each measured face's aligned 112×112 crop into DIR as PNG.
//!
//! `cargo run -p biomatch-models --example face_quality_report -- [FLAGS] PHOTO...`

use biomatch_core::Modality;
use biomatch_models::face::detect::Face;
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
            print_measures(name, &m);
        }
    }
}

/// One line: the name, the measures as JSON and each use's verdict.
fn print_measures(name: &str, m: &FaceMeasures) {
    let verdicts: Vec<String> = CaptureUse::ALL
        .iter()
        .map(|&u| {
            let f = Thresholds::for_use(u).check(m);
            if f.is_empty() {
                format!("{}: pass", u.as_str())
            } else {
                let names: Vec<&str> = f.iter().map(|f| f.measure.as_str()).collect();
                format!("{}: FAIL {}", u.as_str(), names.join(","))
            }
        })
        .collect();
    println!("{name}\t{}\t{}", serde_json::to_string(m).unwrap_or_default(), verdicts.join("; "));
}

/// The aligned crop as a PNG in `dir`, named `name`.
fn dump(dir: &Path, name: &str, img: &image::RgbImage, face: &Face) -> std::io::Result<()> {
    let crop = biomatch_models::face::align::align(img, &face.landmarks);
    let n = biomatch_models::face::align::SIZE;
    let out = image::RgbImage::from_fn(n as u32, n as u32, |u, v| {
        let i = v as usize * n + u as usize;
        image::Rgb([0, 1, 2].map(|c| crop[c * n * n + i] as u8))
    });
    out.save(dir.join(format!("{name}.png"))).map_err(std::io::Error::other)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut cover = false;
    let mut close = false;
    let mut every = false;
    let mut photos = Vec::new();
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--cover-mouth" => cover = true,
            "--close-eyes" => close = true,
            "--every-face" => every = true,
            _ => photos.push(a),
        }
    }
    let dump_dir = std::env::var_os("DUMP_CROPS").map(std::path::PathBuf::from);
    let x = FaceExtractor::new(FaceConfig::new(RuntimeConfig::from_root(Path::new("."))))?;
    for p in &photos {
        let bytes = std::fs::read(p)?;
        let stem =
            Path::new(p).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let (img, faces) = x.detect(&bytes)?;
        if every {
            // Every detected face, measured on its own crop (the extractor's own report is of
            // the largest face only).
            for (i, f) in faces.iter().enumerate() {
                // Named by index and by the face box's centre as a share of the photo's size.
                let (cx, cy) = f.centre_share(img.width(), img.height());
                print_measures(&format!("{p}#{i}@{cx:.2},{cy:.2}"), &x.measure(&img, f)?);
                if let Some(d) = &dump_dir {
                    dump(d, &format!("{stem}-{i}"), &img, f)?;
                }
            }
            continue;
        }
        report(p, &x, &bytes);
        let Some(f) = biomatch_models::face::detect::largest(&faces) else { continue };
        if let Some(d) = &dump_dir {
            dump(d, &stem, &img, f)?;
        }
        let mut variants: Vec<(&str, Vec<u8>)> = Vec::new();
        if cover {
            variants.push((
                "hand over mouth",
                biomatch_testkit::faces::cover_mouth(&bytes, &f.landmarks),
            ));
            variants.push((
                "mask",
                biomatch_testkit::faces::cover_nose_and_mouth(&bytes, &f.landmarks),
            ));
        }
        if close {
            variants
                .push(("eyes closed", biomatch_testkit::faces::close_eyes(&bytes, &f.landmarks)));
        }
        for (what, changed) in variants {
            report(&format!("{p} ({what})"), &x, &changed);
            if let Some(d) = &dump_dir {
                let (img2, faces2) = x.detect(&changed)?;
                if let Some(f2) = biomatch_models::face::detect::largest(&faces2) {
                    dump(d, &format!("{stem}-{}", what.replace(' ', "-")), &img2, f2)?;
                }
            }
        }
    }
    Ok(())
}
