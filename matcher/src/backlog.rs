//! `biomatch dedup-gallery`: the backlog deduplication of a store from the command line (the
//! work is [`biomatch_engine::backlog`]), with a progress bar and ETA, resumable (`--resume`), and
//! an optional evaluation against planted duplicates (`--truth`, e.g. the `truth.csv` of
//! `biomatch export-synthetic-backlog`). The store is opened read-only (a snapshot), so it can
//! run next to the service on the same data directory.

use crate::config::Config;
use crate::state::{load_finger_calibration, load_models};
use anyhow::{bail, Context, Result};
use biomatch_engine::backlog::{BacklogCluster, BacklogControl, BacklogParams, BacklogSummary};
use biomatch_engine::{Engine, SearchKind};
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Which vector search the self-join uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DedupSearch {
    /// The serving index generation when there is one (exact re-rank), exact otherwise.
    Auto,
    Exact,
    Index,
}

impl From<DedupSearch> for SearchKind {
    fn from(s: DedupSearch) -> Self {
        match s {
            DedupSearch::Auto => SearchKind::Auto,
            DedupSearch::Exact => SearchKind::Exact,
            DedupSearch::Index => SearchKind::Index,
        }
    }
}

/// `biomatch dedup-gallery`.
#[derive(Debug, Clone, clap::Args)]
pub struct DedupArgs {
    /// Store directory.
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory: checkpoint, `pairs.csv`, `clusters.jsonl`, `summary.json`.
    #[arg(long)]
    pub out: PathBuf,
    /// Target false-positive identification rate of each subject's search: a pair is kept when
    /// its fused FMR ≤ target / N.
    #[arg(long, default_value_t = 1e-3)]
    pub target_fpir: f64,
    /// Candidates kept per subject (besides itself).
    #[arg(long, default_value_t = 10)]
    pub max_candidates: usize,
    /// Continue the run checkpointed in `--out` (its parameters must be the same).
    #[arg(long)]
    pub resume: bool,
    /// Configuration file (TOML) for the models, their calibration and the search settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Vector search of the self-join.
    #[arg(long, value_enum, default_value_t = DedupSearch::Auto)]
    pub search: DedupSearch,
    /// Subjects per checkpoint.
    #[arg(long, default_value_t = BacklogParams::default().chunk)]
    pub chunk: usize,
    /// Planted pairs (CSV `subject_a,subject_b` with a header line): report found/planted and
    /// the pairs found outside them (false pairs).
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The evaluation against planted pairs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TruthReport {
    pub planted: u64,
    pub found_planted: u64,
    pub found_rate: f64,
    /// Pairs found that are not planted.
    pub false_pairs: u64,
    /// Planted pairs not found (first 20).
    pub missed: Vec<(String, String)>,
}

fn ordered(a: &str, b: &str) -> (String, String) {
    if a < b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

/// Read planted pairs: CSV, a header line, then `subject_a,subject_b` per line.
pub fn read_truth(path: &Path) -> Result<HashSet<(String, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = HashSet::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let mut f = line.split(',');
        match (f.next(), f.next()) {
            (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => {
                out.insert(ordered(a.trim(), b.trim()));
            }
            _ => bail!("{} line {}: expected subject_a,subject_b", path.display(), i + 1),
        }
    }
    Ok(out)
}

/// Count found/planted and false pairs of finished clusters.
pub fn evaluate(clusters: &[BacklogCluster], truth: &HashSet<(String, String)>) -> TruthReport {
    let found: HashSet<(String, String)> =
        clusters.iter().flat_map(|c| c.pairs.iter().map(|p| ordered(&p.a, &p.b))).collect();
    let found_planted = truth.iter().filter(|p| found.contains(*p)).count() as u64;
    let mut missed: Vec<(String, String)> =
        truth.iter().filter(|p| !found.contains(*p)).cloned().collect();
    missed.sort();
    missed.truncate(20);
    TruthReport {
        planted: truth.len() as u64,
        found_planted,
        found_rate: if truth.is_empty() { 1.0 } else { found_planted as f64 / truth.len() as f64 },
        false_pairs: found.iter().filter(|p| !truth.contains(*p)).count() as u64,
        missed,
    }
}

/// The engine over a read-only snapshot of the store at `data`, as configured.
pub fn open_engine(config: Option<&Path>, data: &Path) -> Result<Engine> {
    let mut config = Config::load(config).map_err(anyhow::Error::msg)?;
    config.data = data.to_owned();
    config.validate().map_err(anyhow::Error::msg)?;
    let models = load_models(&config).map_err(anyhow::Error::msg)?;
    let fingers = load_finger_calibration(&config).map_err(anyhow::Error::msg)?;
    crate::serve::open_engine(&config, &models, fingers.as_ref(), None, true)
        .map_err(anyhow::Error::msg)
}

/// Run `dedup-gallery`: print the summary (and the truth report) as one JSON line last.
pub fn run_cli(args: &DedupArgs) -> Result<()> {
    if let Some(t) = &args.truth {
        // Fail on a bad truth file before hours of work, not after.
        read_truth(t)?;
    }
    let engine = open_engine(args.config.as_deref(), &args.data)?;
    let params = BacklogParams {
        target_fpir: args.target_fpir,
        max_candidates: args.max_candidates,
        mode: args.search.into(),
        chunk: args.chunk,
    };
    let ctl = Arc::new(BacklogControl::new());
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let watcher = {
        let ctl = ctl.clone();
        let quiet = args.quiet;
        std::thread::Builder::new().name("biomatch-dedup-progress".into()).spawn(move || {
            let bar = if quiet {
                indicatif::ProgressBar::hidden()
            } else {
                crate::progress_bar(0, "dedup")
            };
            let mut started = false;
            loop {
                let total = ctl.total.load(Ordering::Relaxed);
                if total > 0 && !started {
                    bar.set_length(total);
                    bar.set_position(ctl.done_before.load(Ordering::Relaxed));
                    bar.reset_eta();
                    started = true;
                }
                if started {
                    bar.set_position(ctl.done.load(Ordering::Relaxed));
                }
                match stopped.recv_timeout(Duration::from_millis(250)) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => break,
                }
            }
            bar.finish_and_clear();
        })?
    };
    let result = engine.dedup(&args.out, &params, args.resume, &ctl);
    drop(stop);
    let _ = watcher.join();
    let summary: BacklogSummary = result.map_err(|e| anyhow::anyhow!("{}: {e}", e.code()))?;
    let mut line = serde_json::to_value(&summary)?;
    if let (Some(t), true) = (&args.truth, summary.complete) {
        let truth = read_truth(t)?;
        let clusters = biomatch_engine::backlog::read_clusters(&args.out)?;
        line["truth"] = serde_json::to_value(evaluate(&clusters, &truth))?;
    }
    line["out"] = serde_json::to_value(&args.out)?;
    println!("{}", serde_json::to_string(&line)?);
    Ok(())
}

// ---- The admin endpoint: `POST /v1/admin/dedup`, `GET /v1/admin/dedup/{job_id}`. ----

use crate::api::BuildJobError;
use crate::config::Role;
use crate::error::{ApiError, ErrorCode};
use crate::middleware::{ApiJson, Caller};
use crate::state::AppState;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use parking_lot::Mutex;
use serde::Deserialize;

/// `POST /v1/admin/dedup`: every field optional.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupRequest {
    /// Default 1e-3.
    pub target_fpir: Option<f64>,
    /// Candidates kept per subject; default 10.
    pub max_candidates: Option<usize>,
    /// Continue the interrupted run of this job id (its checkpoint in `<dedup_dir>/<job_id>`,
    /// e.g. after a restart) instead of starting a new one; its parameters must be the same.
    pub resume: Option<String>,
}

/// Status of a deduplication job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DedupJobStatus {
    Running,
    Done,
    /// Stopped (service shutdown) at a checkpoint: resume it with `"resume": job_id`.
    Stopped,
    Failed,
}

/// A deduplication job as the API shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DedupJobOut {
    pub job_id: String,
    pub status: DedupJobStatus,
    /// Subjects in the run's snapshot (0 until it is taken).
    pub subjects: u64,
    /// Subjects done, this run and before it.
    pub done: u64,
    /// Subjects an earlier run had done.
    pub resumed_from: u64,
    /// Pair findings so far (a pair found from both sides counts twice until the end).
    pub found: u64,
    /// done / subjects.
    pub progress: f64,
    /// Estimated seconds left, from this run's rate.
    pub eta_s: Option<f64>,
    /// Where `clusters.jsonl`, `pairs.csv` and `summary.json` are written (server side).
    pub out: String,
    /// The final summary, once done.
    #[schema(value_type = Option<Object>)]
    pub summary: Option<BacklogSummary>,
    pub error: Option<BuildJobError>,
    pub started_at: f64,
    pub finished_at: Option<f64>,
}

#[derive(Debug)]
pub struct DedupJob {
    id: String,
    out: PathBuf,
    ctl: Arc<BacklogControl>,
    started: std::time::Instant,
    state: Mutex<JobState>,
}

#[derive(Debug)]
struct JobState {
    status: DedupJobStatus,
    summary: Option<BacklogSummary>,
    error: Option<BuildJobError>,
    started_at: f64,
    finished_at: Option<f64>,
}

impl DedupJob {
    pub fn out(&self) -> DedupJobOut {
        let st = self.state.lock();
        let (total, done, before) = (
            self.ctl.total.load(Ordering::Relaxed),
            self.ctl.done.load(Ordering::Relaxed),
            self.ctl.done_before.load(Ordering::Relaxed),
        );
        let rate =
            (done - before.min(done)) as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        DedupJobOut {
            job_id: self.id.clone(),
            status: st.status,
            subjects: total,
            done,
            resumed_from: before,
            found: self.ctl.found.load(Ordering::Relaxed),
            progress: if total == 0 { 0.0 } else { (done as f64 / total as f64).min(1.0) },
            eta_s: (st.status == DedupJobStatus::Running && rate > 0.0 && total > 0)
                .then(|| total.saturating_sub(done) as f64 / rate),
            out: self.out.display().to_string(),
            summary: st.summary.clone(),
            error: st.error.clone(),
            started_at: st.started_at,
            finished_at: st.finished_at,
        }
    }

    fn running(&self) -> bool {
        self.state.lock().status == DedupJobStatus::Running
    }
}

/// The service's deduplication jobs: one runs at a time, on its own thread (it fans out on the
/// rayon pool), never on the async threads.
#[derive(Debug, Default)]
pub struct DedupJobs {
    jobs: Mutex<Vec<Arc<DedupJob>>>,
}

impl DedupJobs {
    /// Jobs kept for `GET`.
    pub const KEEP: usize = 20;

    /// Start a run on `engine`'s store writing to `dir/<job id>`; 409 `dedup_running` while one
    /// runs.
    pub fn submit(
        &self,
        engine: Arc<Engine>,
        dir: &Path,
        req: &DedupRequest,
    ) -> Result<Arc<DedupJob>, ApiError> {
        let defaults = BacklogParams::default();
        let params = BacklogParams {
            target_fpir: req.target_fpir.unwrap_or(defaults.target_fpir),
            max_candidates: req.max_candidates.unwrap_or(defaults.max_candidates),
            ..defaults
        };
        let (id, resume) = match &req.resume {
            Some(id) => {
                let ok = !id.is_empty()
                    && id.len() <= 32
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if !ok || !biomatch_engine::backlog::has_checkpoint(&dir.join(id)) {
                    return Err(ApiError::new(
                        ErrorCode::NotFound,
                        format!("no deduplication run {id:?} to resume"),
                    ));
                }
                (id.clone(), true)
            }
            None => (format!("{:016x}", rand::random::<u64>()), false),
        };
        let mut jobs = self.jobs.lock();
        if jobs.iter().any(|j| j.running()) {
            return Err(ApiError::new(
                ErrorCode::DedupRunning,
                "a deduplication run is in progress; wait for it or poll GET /v1/admin/dedup/{job_id}",
            ));
        }
        let job = Arc::new(DedupJob {
            id: id.clone(),
            out: dir.join(&id),
            ctl: Arc::new(BacklogControl::new()),
            started: std::time::Instant::now(),
            state: Mutex::new(JobState {
                status: DedupJobStatus::Running,
                summary: None,
                error: None,
                started_at: crate::admin::unix_now(),
                finished_at: None,
            }),
        });
        let j = job.clone();
        std::thread::Builder::new()
            .name("biomatch-dedup".into())
            .spawn(move || {
                let r = engine.dedup(&j.out, &params, resume, &j.ctl);
                let mut st = j.state.lock();
                match r {
                    Ok(s) => {
                        st.status =
                            if s.complete { DedupJobStatus::Done } else { DedupJobStatus::Stopped };
                        st.summary = Some(s);
                    }
                    Err(e) => {
                        let e = ApiError::from(e);
                        st.status = DedupJobStatus::Failed;
                        st.error = Some(BuildJobError { code: e.code, message: e.message });
                    }
                }
                st.finished_at = Some(crate::admin::unix_now());
            })
            .map_err(ApiError::internal)?;
        jobs.retain(|j| j.running() || j.id != id);
        jobs.push(job.clone());
        while jobs.len() > Self::KEEP {
            match jobs.iter().position(|j| !j.running()) {
                Some(i) => drop(jobs.remove(i)),
                None => break,
            }
        }
        Ok(job)
    }

    pub fn get(&self, id: &str) -> Option<Arc<DedupJob>> {
        self.jobs.lock().iter().find(|j| j.id == id).cloned()
    }

    /// Stop the running job at its next checkpoint (shutdown); it can be resumed later.
    pub fn stop_all(&self) {
        for j in self.jobs.lock().iter() {
            j.ctl.cancel();
        }
    }

    /// Wait (at most `limit`) until no job runs.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let t0 = std::time::Instant::now();
        while self.jobs.lock().iter().any(|j| j.running()) {
            if t0.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

/// Start a backlog deduplication of the serving store (admin role): 202 with the job; it writes
/// `clusters.jsonl`, `pairs.csv` and `summary.json` to `<dedup_dir>/<job_id>` on the server.
/// One run at a time (409 `dedup_running`).
#[utoipa::path(post, path = "/v1/admin/dedup", request_body = DedupRequest,
    responses(
        (status = 202, description = "started", body = DedupJobOut),
        (status = 409, description = "dedup_running", body = crate::api::ErrorBody),
        (status = 404, description = "resume: no such run", body = crate::api::ErrorBody),
        (status = 422, description = "invalid_parameter", body = crate::api::ErrorBody)))]
pub async fn start(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<DedupRequest>,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    if let Some(f) = req.target_fpir.filter(|f| !(*f > 0.0 && *f < 1.0)) {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!("target_fpir must be in (0, 1), got {f}"),
        ));
    }
    if let Some(k) =
        req.max_candidates.filter(|k| *k == 0 || *k >= biomatch_gallery::MAX_RESULTS_LIMIT)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!(
                "max_candidates must be in 1..{}, got {k}",
                biomatch_gallery::MAX_RESULTS_LIMIT
            ),
        ));
    }
    let engine = state.engine()?.clone();
    let job = state.dedup.submit(engine, &state.config.dedup_dir(), &req)?;
    let loc = format!("/v1/admin/dedup/{}", job.id);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, loc)], Json(job.out())).into_response())
}

/// A deduplication job: progress, ETA, then its summary or error.
#[utoipa::path(get, path = "/v1/admin/dedup/{job_id}",
    params(("job_id" = String, Path, description = "from POST /v1/admin/dedup")),
    responses((status = 200, body = DedupJobOut), (status = 404, body = crate::api::ErrorBody)))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<DedupJobOut>, ApiError> {
    caller.require(Role::Admin)?;
    state
        .dedup
        .get(&id)
        .map(|j| Json(j.out()))
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no deduplication job {id:?}")))
}
