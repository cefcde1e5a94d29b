//! `biomatch import`: bulk-load templates from a NumPy file into a store, with a progress bar,
//! resumable after a crash. The format is documented in `docs/import-format.md`:
//!
//! - `--templates FILE.npy`: a NumPy array of shape `(N, d)`, dtype `<f4` (float32), C order,
//!   read through a memory map (`ndarray-npy`), one template per row; `d` must be the model's
//!   dimension;
//! - `--ids FILE`: UTF-8 text, N lines, the subject id of row `i` on line `i`.
//!
//! Rows are enrolled in batches (one commit group, one fsync per batch). After each batch the
//! number of rows done is written atomically to `<data>/import/<name>.progress` (with the
//! file's shape and length, so a different file is never mistaken for it). A re-run with the same
//! files resumes after the last recorded batch; rows of a batch that committed just before a
//! crash, without its progress record, are recognised as already stored (same subject, same
//! template) and counted as imported. A subject already enrolled with a different template is a
//! conflict: counted and listed (first 20), never overwritten. A finished import removes its
//! progress file.

use anyhow::{bail, Context, Result};
use biomatch_core::{Modality, ModelId, SubjectId, Template};
use biomatch_gallery::{Enrollment, GalleryError, ModelSpec, Store, StoreOptions, WriteOp};
use memmap2::Mmap;
use ndarray::ArrayView2;
use ndarray_npy::ViewNpyExt;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Bulk import of templates.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// Store directory.
    #[arg(long)]
    pub data: PathBuf,
    /// Model the templates come from (e.g. `sface@2021dec`).
    #[arg(long)]
    pub model: String,
    /// Templates: NumPy `.npy`, float32, shape (N, d).
    #[arg(long)]
    pub templates: PathBuf,
    /// Subject ids: text file, one per line, N lines.
    #[arg(long)]
    pub ids: PathBuf,
    /// Modality of the templates: `face` or `finger1`..`finger10`.
    #[arg(long, default_value = "face")]
    pub modality: String,
    /// Enrollments per commit (one fsync each).
    #[arg(long, default_value_t = 10_000)]
    pub batch: usize,
    /// No progress bar (for logs).
    #[arg(long)]
    pub quiet: bool,
}

/// What an import did; printed as one JSON line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImportReport {
    pub rows: u64,
    /// Rows enrolled by this run.
    pub imported: u64,
    /// Rows found already stored with the same template (a resumed run).
    pub already_present: u64,
    /// Rows skipped because the progress file said an earlier run did them.
    pub resumed_from: u64,
    /// Subjects enrolled with a different template: not overwritten.
    pub conflicts: u64,
    pub conflict_ids: Vec<String>,
    pub seconds: f64,
    pub per_second: f64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Progress {
    templates_len: u64,
    rows: u64,
    dim: usize,
    done: u64,
}

fn progress_path(data: &Path, templates: &Path) -> PathBuf {
    let name = templates.file_name().map_or("import".into(), |n| n.to_string_lossy().into_owned());
    data.join("import").join(format!("{name}.progress"))
}

fn write_progress(path: &Path, p: &Progress) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(p)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()?;
    Ok(())
}

fn parse_modality(s: &str) -> Result<Modality> {
    if s == "face" {
        return Ok(Modality::Face);
    }
    let p: u8 = s
        .strip_prefix("finger")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("--modality {s}: use face or finger1..finger10"))?;
    Ok(Modality::Finger(biomatch_core::FingerPosition::new(p)?))
}

/// Run an import (see the module docs).
pub fn import(args: &ImportArgs) -> Result<ImportReport> {
    let model = ModelId::parse(&args.model)?;
    let modality = parse_modality(&args.modality)?;
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let file = std::fs::File::open(&args.templates)
        .with_context(|| format!("cannot open {}", args.templates.display()))?;
    let templates_len = file.metadata()?.len();
    // SAFETY: the import only reads the map; a file changed by another process while it is
    // mapped could make us read torn values, which the template checks then refuse.
    let map = unsafe { Mmap::map(&file) }
        .with_context(|| format!("cannot map {}", args.templates.display()))?;
    let view = ArrayView2::<f32>::view_npy(&map).with_context(|| {
        format!("{} is not a C-order float32 (N, d) .npy array", args.templates.display())
    })?;
    let (rows, dim) = view.dim();
    let data = view.as_slice().context("the template array is not contiguous (C order)")?;
    let ids: Vec<String> = BufReader::new(
        std::fs::File::open(&args.ids)
            .with_context(|| format!("cannot open {}", args.ids.display()))?,
    )
    .lines()
    .collect::<std::io::Result<_>>()
    .with_context(|| format!("{} is not UTF-8 text", args.ids.display()))?;
    if ids.len() != rows {
        bail!(
            "{} has {} ids but {} has {rows} rows",
            args.ids.display(),
            ids.len(),
            args.templates.display()
        );
    }

    let store =
        Store::open(&args.data, StoreOptions::new(vec![ModelSpec { model: model.clone(), dim }]))
            .with_context(|| format!("cannot open the store at {}", args.data.display()))?;
    let ppath = progress_path(&args.data, &args.templates);
    std::fs::create_dir_all(ppath.parent().expect("has a parent"))?;
    let mut progress = Progress { templates_len, rows: rows as u64, dim, done: 0 };
    if let Ok(bytes) = std::fs::read(&ppath) {
        let old: Progress = serde_json::from_slice(&bytes)
            .with_context(|| format!("progress file {} is damaged", ppath.display()))?;
        if (old.templates_len, old.rows, old.dim) == (templates_len, rows as u64, dim) {
            progress.done = old.done.min(rows as u64);
        } else {
            bail!(
                "{} records an import of a different file; remove it to start over",
                ppath.display()
            );
        }
    }
    let resumed_from = progress.done;
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        crate::progress_bar(rows as u64, "import")
    };
    bar.set_position(progress.done);
    let t0 = Instant::now();
    let mut report = ImportReport {
        rows: rows as u64,
        imported: 0,
        already_present: 0,
        resumed_from,
        conflicts: 0,
        conflict_ids: Vec::new(),
        seconds: 0.0,
        per_second: 0.0,
    };
    let mut start = progress.done as usize;
    while start < rows {
        let end = (start + args.batch).min(rows);
        let mut ops = Vec::with_capacity(end - start);
        for (i, id) in ids.iter().enumerate().take(end).skip(start) {
            let subject = SubjectId::new(id.as_str()).with_context(|| {
                format!("{} line {}: bad subject id", args.ids.display(), i + 1)
            })?;
            let t = Template::new(model.clone(), dim, data[i * dim..(i + 1) * dim].to_vec())
                .with_context(|| format!("row {i} ({subject}): bad template"))?;
            ops.push((WriteOp::Enroll(Enrollment::new(subject, vec![(modality, t)])), None));
        }
        let subjects: Vec<SubjectId> = ops.iter().map(|(op, _)| op.subject().clone()).collect();
        let results = store.write_batch(ops).context("the store refused a batch")?;
        for ((i, subject), r) in (start..end).zip(&subjects).zip(results) {
            match r {
                Ok(_) => report.imported += 1,
                Err(GalleryError::AlreadyEnrolled(_) | GalleryError::DuplicateInBatch(_)) => {
                    // Rare (a resumed batch, a conflict): rebuild this row's template to compare.
                    let v =
                        Template::new(model.clone(), dim, data[i * dim..(i + 1) * dim].to_vec())?;
                    let same = store.template(subject, modality).is_ok_and(|(m, stored)| {
                        m == model
                            && stored.iter().zip(v.vector()).all(|(a, b)| (a - b).abs() <= 1e-3)
                    });
                    if same {
                        report.already_present += 1;
                    } else {
                        report.conflicts += 1;
                        if report.conflict_ids.len() < 20 {
                            report.conflict_ids.push(subject.to_string());
                        }
                    }
                }
                Err(e) => bail!("{subject}: {e}"),
            }
        }
        progress.done = end as u64;
        write_progress(&ppath, &progress)?;
        bar.set_position(progress.done);
        start = end;
    }
    bar.finish_and_clear();
    store.checkpoint().context("final checkpoint")?;
    // Done: nothing to resume (a re-run finds every row already present).
    std::fs::remove_file(&ppath).with_context(|| format!("removing {}", ppath.display()))?;
    report.seconds = t0.elapsed().as_secs_f64();
    report.per_second =
        (report.imported + report.already_present) as f64 / report.seconds.max(1e-9);
    Ok(report)
}
