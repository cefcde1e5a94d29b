//! The image pipeline's finger templates for the evaluation examples (`finger_eval`,
//! `finger_generator_validation`): SFinGe-style synthetic impressions → mindtct, which takes
//! minutes for a few thousand fingers, so the templates are cached in the example's output
//! directory.
//!
//! Cache file `templates-s<seed>-f<fingers>-i<impressions>.bin`: `"BMFEVAL1"` | fingers u64 |
//! impressions u32 | seed u64, then per (finger, impression): record length u32 (0 = failed to
//! extract) | ISO/IEC 19794-2 record.

use biomatch_core::finger::FingerTemplate;
use biomatch_datasets::finger::{impression, master, FingerSynthConfig};
use biomatch_fingerprint::iso;
use biomatch_models::finger::FingerExtractor;
use rayon::prelude::*;
use std::path::Path;
use std::time::Instant;

/// Per finger, per impression: its template, or `None` where extraction failed.
pub type FingerTemplates = Vec<Vec<Option<FingerTemplate>>>;

const MAGIC: &[u8; 8] = b"BMFEVAL1";

/// The templates of `fingers` synthetic fingers × `impressions` made by the image pipeline, from
/// the cache in `dir` if a run made them before. Also the pipeline's fingers per second when
/// they were made now.
///
/// # Errors
/// Writing the cache fails.
pub fn image_templates(
    cfg: &FingerSynthConfig,
    seed: u64,
    fingers: u64,
    impressions: u32,
    dir: &Path,
) -> anyhow::Result<(FingerTemplates, Option<f64>)> {
    let path = dir.join(format!("templates-s{seed}-f{fingers}-i{impressions}.bin"));
    if let Ok(t) = load(&path, fingers, impressions) {
        eprintln!("image templates from {}", path.display());
        return Ok((t, None));
    }
    let x = FingerExtractor::default();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let t0 = Instant::now();
    let templates: FingerTemplates = (0..fingers)
        .into_par_iter()
        .map(|f| {
            let m = master(cfg, f);
            let out = (0..impressions)
                .map(|i| {
                    let img = impression(cfg, &m, f, i);
                    x.extract_gray(img.width, img.height, &img.pixels, None)
                        .ok()
                        .map(|e| e.template)
                })
                .collect();
            let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if d.is_multiple_of(500) {
                eprintln!("  {d} image fingers in {:.0} s", t0.elapsed().as_secs_f64());
            }
            out
        })
        .collect();
    let fps = fingers as f64 / t0.elapsed().as_secs_f64();
    save(&path, seed, fingers, impressions, &templates)?;
    Ok((templates, Some(fps)))
}

fn save(
    path: &Path,
    seed: u64,
    fingers: u64,
    impressions: u32,
    t: &FingerTemplates,
) -> anyhow::Result<()> {
    let mut b = Vec::new();
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&fingers.to_le_bytes());
    b.extend_from_slice(&impressions.to_le_bytes());
    b.extend_from_slice(&seed.to_le_bytes());
    for t in t.iter().flatten() {
        let r = t.as_ref().map(iso::to_iso).unwrap_or_default();
        b.extend_from_slice(&(r.len() as u32).to_le_bytes());
        b.extend_from_slice(&r);
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &b)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn load(path: &Path, fingers: u64, impressions: u32) -> anyhow::Result<FingerTemplates> {
    let b = std::fs::read(path)?;
    anyhow::ensure!(b.len() >= 28 && &b[..8] == MAGIC, "not a template cache");
    let mut pos = 28;
    let mut out = Vec::with_capacity(fingers as usize);
    for _ in 0..fingers {
        let mut f = Vec::new();
        for _ in 0..impressions {
            let len = u32::from_le_bytes(
                b.get(pos..pos + 4).ok_or_else(|| anyhow::anyhow!("short"))?.try_into()?,
            ) as usize;
            pos += 4;
            let rec = b.get(pos..pos + len).ok_or_else(|| anyhow::anyhow!("short"))?;
            pos += len;
            f.push(if len == 0 { None } else { Some(iso::parse_iso(rec)?) });
        }
        out.push(f);
    }
    Ok(out)
}
