//! Operator endpoints (`admin` role) and the unauthenticated health, readiness, metrics and
//! OpenAPI endpoints.

use crate::api::{
    BuildJobError, BuildJobOut, BuildJobStatus, IndexOut, IndexRequest, IndexStatsOut,
};
use crate::config::Role;
use crate::error::{ApiError, ErrorCode};
use crate::middleware::{blocking, ApiJson, Caller};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use biomatch_core::ModelId;
use biomatch_gallery::ann::{self, BuildControl, BuildParams, LoadOptions, ShardedIndex};
use biomatch_gallery::{Gallery, GalleryError};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

type St = State<Arc<AppState>>;

pub async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// 200 once the gallery is loaded, while writes can be made durable (503 while they cannot:
/// a full disk or a storage I/O error, until a write or the maintenance probe succeeds).
pub async fn readyz(State(state): St) -> Result<Json<serde_json::Value>, ApiError> {
    if let Some(node) = state.cluster() {
        // A cluster node: joined, and its active replicas caught up with the log.
        return if node?.is_ready() {
            Ok(Json(serde_json::json!({ "status": "ready" })))
        } else {
            Err(ApiError::not_ready())
        };
    }
    if let Some(fault) = state.gallery()?.store().write_fault() {
        return Err(ApiError::unwritable(&fault));
    }
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

pub async fn metrics(State(state): St) -> impl IntoResponse {
    let st = state.clone();
    let body =
        tokio::task::spawn_blocking(move || st.metrics.render(&st)).await.unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

pub async fn openapi() -> impl IntoResponse {
    use utoipa::OpenApi;
    Json(crate::ApiDoc::openapi())
}

fn index_out(i: &ShardedIndex) -> IndexOut {
    IndexOut {
        model: i.manifest.model.to_string(),
        generation: i.manifest.generation,
        factory: i.manifest.factory.clone(),
        shards: i.manifest.shards.len(),
        vectors: i.manifest.vectors,
        covered_seq: i.manifest.covered_seq,
        bytes_per_template: i.bytes_per_template(),
    }
}

fn models(state: &AppState, req: &IndexRequest) -> Result<Vec<ModelId>, ApiError> {
    match &req.model {
        Some(m) => {
            let id = ModelId::parse(m)?;
            state.model(&id).ok_or_else(|| {
                ApiError::new(ErrorCode::UnknownModel, format!("{id} is not configured"))
            })?;
            Ok(vec![id])
        }
        None => Ok(state.models.iter().map(|m| m.id.clone()).collect()),
    }
}

fn load_options(state: &AppState) -> LoadOptions {
    LoadOptions {
        memory_budget: state.config.search.memory_budget_mb.map(|m| m << 20),
        ..LoadOptions::default()
    }
}

/// Runs `f` on the blocking pool for each model `req` names (every configured model when it
/// names none), in order, and lists the index generations `f` returns.
async fn for_each_model<F>(
    state: &AppState,
    req: &IndexRequest,
    f: F,
) -> Result<Vec<IndexOut>, ApiError>
where
    F: Fn(&Gallery, &ModelId, &LoadOptions) -> Result<Option<Arc<ShardedIndex>>, ApiError>
        + Send
        + 'static,
{
    let ids = models(state, req)?;
    let g = state.gallery()?.clone();
    let opts = load_options(state);
    blocking(move || {
        let mut out = Vec::new();
        for id in ids {
            if let Some(i) = f(&g, &id, &opts)? {
                out.push(index_out(&i));
            }
        }
        Ok(out)
    })
    .await
}

/// Gallery statistics: subjects, rows per model, and per serving index generation
/// (`indexes`: `IndexStatsOut`) what the recall-drift monitor measured and whether a rebuild is
/// due.
#[utoipa::path(get, path = "/v1/admin/stats", responses((status = 200, description = "store and index statistics; `indexes` is a list of `IndexStatsOut`")))]
pub async fn stats(State(state): St, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Role::Admin)?;
    let g = state.gallery()?.clone();
    let (s, metadata) =
        blocking(move || Ok((g.store().stats(), g.store().metadata_bytes()))).await?;
    let g = state.gallery()?;
    let indexes: Vec<IndexStatsOut> = s
        .columns
        .iter()
        .filter_map(|c| {
            let i = g.index(&c.model)?;
            let recall_monitor =
                state.recall_monitor.report(&c.model, &i, c.rows, &state.config.index);
            Some(IndexStatsOut { index: index_out(&i), recall_monitor })
        })
        .collect();
    // Per vector template: heap (index structures + metadata) apart from the mapped fp16.
    let rows: u64 = s.columns.iter().map(|c| c.rows).sum();
    let index_bytes: u64 =
        s.columns.iter().filter_map(|c| g.index(&c.model)).map(|i| i.index_bytes).sum();
    let mapped: u64 = s.columns.iter().map(|c| c.rows * c.dim as u64 * 2).sum();
    let per = |b: u64| if rows == 0 { 0.0 } else { b as f64 / rows as f64 };
    let engine = state.engine()?;
    let fingers = engine.fingers().map(|f| {
        serde_json::json!({
            "subjects": s.fingers.subjects,
            "fingers": s.fingers.fingers,
            "code_model": f.code_model().to_string(),
            "resident_bytes_per_finger": engine.finger_resident_bytes_per_finger(),
            "store": s.fingers,
        })
    });
    Ok(Json(serde_json::json!({
        "store": s,
        "indexes": indexes,
        "fingers": fingers,
        "audit_records": state.audit.written(),
        "metadata_bytes": metadata,
        "resident_bytes_per_template": per(index_bytes + metadata),
        "mapped_bytes_per_template": per(mapped),
        "bytes_per_template": per(index_bytes + metadata + mapped),
        // Which FAISS build searches: "avx512" (loaded at run time) or "avx2" (linked), and why.
        "faiss": biomatch_gallery::ann::ffi::kernels(),
    })))
}

/// Load the current index generation from disk (built by `index/build` or the offline builder).
#[utoipa::path(post, path = "/v1/admin/index/reload", request_body = IndexRequest,
    responses((status = 200, body = [IndexOut])))]
pub async fn reload(
    State(state): St,
    caller: Caller,
    ApiJson(req): ApiJson<IndexRequest>,
) -> Result<Json<Vec<IndexOut>>, ApiError> {
    caller.require(Role::Admin)?;
    let out = for_each_model(&state, &req, |g, id, opts| Ok(g.load_index(id, opts)?)).await?;
    if out.is_empty() {
        return Err(ApiError::new(ErrorCode::NoIndex, "no index generation has been built"));
    }
    Ok(Json(out))
}

/// Index build jobs: `POST /v1/admin/index/build` queues one, a dedicated thread runs them one
/// at a time (FAISS builds use every core), callers poll, wait for or cancel them. Bounded: the
/// most recent [`BuildJobs::KEEP`] jobs are kept (unfinished ones always).
#[derive(Debug, Default)]
pub struct BuildJobs {
    jobs: Mutex<VecDeque<Arc<Job>>>,
    queue: Mutex<Option<std::sync::mpsc::Sender<Arc<Job>>>>,
    /// Jobs queued or running.
    active: Arc<(std::sync::Mutex<usize>, std::sync::Condvar)>,
}

#[derive(Debug)]
pub struct Job {
    id: String,
    models: Vec<ModelId>,
    params: BuildParams,
    gallery: Arc<Gallery>,
    load: LoadOptions,
    timeout: Duration,
    ctl: BuildControl,
    /// Index of the model being built.
    current: AtomicUsize,
    timed_out: AtomicBool,
    state: Mutex<JobState>,
    done: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug)]
struct JobState {
    status: BuildJobStatus,
    result: Vec<IndexOut>,
    error: Option<BuildJobError>,
    created_at: f64,
    started_at: Option<f64>,
    finished_at: Option<f64>,
}

/// Now, as Unix time in seconds.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Job {
    /// The job as the API shows it.
    pub fn out(&self) -> BuildJobOut {
        let st = self.state.lock();
        let n = self.models.len().max(1) as f64;
        let (stage, p) = self.ctl.progress();
        let (stage, progress) = match st.status {
            BuildJobStatus::Queued => (None, 0.0),
            BuildJobStatus::Running => {
                let name =
                    serde_json::to_value(stage).ok().and_then(|v| v.as_str().map(str::to_owned));
                (name, (self.current.load(Ordering::Relaxed) as f64 + p) / n)
            }
            BuildJobStatus::Done => (None, 1.0),
            BuildJobStatus::Failed | BuildJobStatus::Cancelled => {
                (None, st.result.len() as f64 / n)
            }
        };
        BuildJobOut {
            job_id: self.id.clone(),
            status: st.status,
            models: self.models.iter().map(ToString::to_string).collect(),
            factory: self.params.factory.clone(),
            stage,
            progress: progress.min(1.0),
            cancel_requested: self.ctl.is_cancelled(),
            result: st.result.clone(),
            error: st.error.clone(),
            created_at: st.created_at,
            started_at: st.started_at,
            finished_at: st.finished_at,
        }
    }

    fn finished(&self) -> bool {
        !matches!(self.state.lock().status, BuildJobStatus::Queued | BuildJobStatus::Running)
    }

    /// Ask the job to stop: a queued job is cancelled at once, a running build at its next check.
    pub fn cancel(&self) {
        self.ctl.cancel();
        let mut st = self.state.lock();
        if st.status == BuildJobStatus::Queued {
            st.status = BuildJobStatus::Cancelled;
            st.error = Some(BuildJobError {
                code: ErrorCode::Cancelled,
                message: "cancelled before it started".into(),
            });
            st.finished_at = Some(unix_now());
            drop(st);
            self.done.send_replace(true);
        }
    }

    /// Wait until the job is over.
    pub async fn wait(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    fn finish(&self, status: BuildJobStatus, error: Option<BuildJobError>) {
        let mut st = self.state.lock();
        if !matches!(st.status, BuildJobStatus::Queued | BuildJobStatus::Running) {
            return; // answered already (shutdown)
        }
        st.status = status;
        st.error = error;
        st.finished_at = Some(unix_now());
        drop(st);
        self.done.send_replace(true);
    }

    /// Run the job on the calling (build) thread.
    fn run(self: &Arc<Self>) {
        {
            let mut st = self.state.lock();
            if st.status != BuildJobStatus::Queued {
                return; // cancelled while queued
            }
            st.status = BuildJobStatus::Running;
            st.started_at = Some(unix_now());
        }
        // The build deadline: a watchdog cancels the build when it runs past it.
        let (alive, watch) = std::sync::mpsc::channel::<()>();
        let (timeout, job) = (self.timeout, self.clone());
        let watchdog =
            std::thread::Builder::new().name("biomatch-build-watchdog".into()).spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = watch.recv_timeout(timeout)
                {
                    job.timed_out.store(true, Ordering::SeqCst);
                    job.ctl.cancel();
                }
            });
        let outcome = self.build_all();
        drop(alive);
        if let Ok(w) = watchdog {
            let _ = w.join();
        }
        match outcome {
            Ok(()) => self.finish(BuildJobStatus::Done, None),
            Err(GalleryError::Cancelled) if self.timed_out.load(Ordering::SeqCst) => self.finish(
                BuildJobStatus::Failed,
                Some(BuildJobError {
                    code: ErrorCode::Timeout,
                    message: format!(
                        "the build ran past limits.index_build_timeout_s = {} and was cancelled",
                        self.timeout.as_secs()
                    ),
                }),
            ),
            Err(GalleryError::Cancelled) => self.finish(
                BuildJobStatus::Cancelled,
                Some(BuildJobError {
                    code: ErrorCode::Cancelled,
                    message: "cancelled; nothing was published, the serving generation stays"
                        .into(),
                }),
            ),
            Err(e) => {
                let e = ApiError::from(e);
                self.finish(
                    BuildJobStatus::Failed,
                    Some(BuildJobError { code: e.code, message: e.message }),
                )
            }
        }
    }

    fn build_all(&self) -> Result<(), GalleryError> {
        let g = &self.gallery;
        for (i, id) in self.models.iter().enumerate() {
            self.current.store(i, Ordering::Relaxed);
            if !g.store().stats().columns.iter().any(|c| c.model == *id && c.live > 0) {
                continue;
            }
            ann::build_with(g.store(), id, &self.params, &self.ctl)?;
            let idx = g.load_index(id, &self.load)?.ok_or_else(|| {
                GalleryError::Config(format!("the generation of {id} just built did not load"))
            })?;
            self.state.lock().result.push(index_out(&idx));
        }
        Ok(())
    }
}

impl BuildJobs {
    /// Jobs kept for `GET` (unfinished ones are never dropped).
    pub const KEEP: usize = 100;

    /// Queue a build of `models` and start the build thread if it is not running.
    pub fn submit(
        &self,
        models: Vec<ModelId>,
        params: BuildParams,
        gallery: Arc<Gallery>,
        load: LoadOptions,
        timeout: Duration,
    ) -> Result<Arc<Job>, ApiError> {
        let (done, _) = tokio::sync::watch::channel(false);
        let job = Arc::new(Job {
            id: format!("{:016x}", rand::random::<u64>()),
            models,
            params,
            gallery,
            load,
            timeout,
            // Wait for the offline builder's lock rather than fail: the job shows `waiting`.
            ctl: BuildControl::new(true),
            current: AtomicUsize::new(0),
            timed_out: AtomicBool::new(false),
            state: Mutex::new(JobState {
                status: BuildJobStatus::Queued,
                result: Vec::new(),
                error: None,
                created_at: unix_now(),
                started_at: None,
                finished_at: None,
            }),
            done,
        });
        {
            let mut jobs = self.jobs.lock();
            jobs.push_back(job.clone());
            while jobs.len() > Self::KEEP {
                match jobs.iter().position(|j| j.finished()) {
                    Some(i) => drop(jobs.remove(i)),
                    None => break,
                }
            }
        }
        *self.active.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        let mut q = self.queue.lock();
        if q.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<Arc<Job>>();
            let active = self.active.clone();
            std::thread::Builder::new()
                .name("biomatch-index-build".into())
                .spawn(move || {
                    for job in rx {
                        job.run();
                        let (n, cv) = &*active;
                        *n.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                        cv.notify_all();
                    }
                })
                .map_err(ApiError::internal)?;
            *q = Some(tx);
        }
        q.as_ref()
            .expect("build thread started")
            .send(job.clone())
            .map_err(|_| ApiError::internal("the index build thread is gone"))?;
        Ok(job)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs.lock().iter().find(|j| j.id == id).cloned()
    }

    /// Every kept job, newest first.
    pub fn list(&self) -> Vec<BuildJobOut> {
        self.jobs.lock().iter().rev().map(|j| j.out()).collect()
    }

    /// Cancel every unfinished job (shutdown), and answer its waiters at once: a build inside a
    /// FAISS call (training) would keep them, and so the shutdown, waiting until it returns.
    pub fn cancel_all(&self) {
        for j in self.jobs.lock().iter() {
            if !j.finished() {
                j.cancel();
                j.finish(
                    BuildJobStatus::Cancelled,
                    Some(BuildJobError {
                        code: ErrorCode::Cancelled,
                        message: "cancelled: the service is stopping".into(),
                    }),
                );
            }
        }
    }

    /// Wait until no job is queued or running, at most `limit`; whether that happened.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let (n, cv) = &*self.active;
        let t0 = Instant::now();
        let mut g = n.lock().unwrap_or_else(|e| e.into_inner());
        while *g > 0 {
            let left = limit.saturating_sub(t0.elapsed());
            if left.is_zero() {
                return false;
            }
            g = cv.wait_timeout(g, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

/// Check a build request before anything is queued: the models, the shard count and the
/// factory string (parsed and dry-run at each model's dimension: 422 `invalid_factory`).
async fn check_build(state: &AppState, req: &IndexRequest) -> Result<Vec<ModelId>, ApiError> {
    let ids = models(state, req)?;
    if let Some(s) = req.shards {
        if s == 0 || s > 1024 {
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                format!("shards = {s} outside 1..=1024"),
            ));
        }
    }
    if let Some(f) = req.factory.clone() {
        let dims: Vec<usize> = ids.iter().filter_map(|id| state.model(id)).map(|m| m.dim).collect();
        let t0 = Instant::now();
        blocking(move || {
            for d in dims {
                ann::validate_factory(d, &f)?;
            }
            Ok(())
        })
        .await?;
        tracing::info!(ms = t0.elapsed().as_secs_f64() * 1e3, "index factory checked");
    }
    Ok(ids)
}

/// Build a new index generation of each model (every configured one by default) from a
/// snapshot of the store while serving, then load it — as a job: 202 with the job at once, or,
/// with `"wait": true`, 200 with the generations once it is over. Bad parameters (factory
/// string, shards, model) are refused before the job is queued.
#[utoipa::path(post, path = "/v1/admin/index/build", request_body = IndexRequest,
    responses(
        (status = 202, description = "queued", body = BuildJobOut),
        (status = 200, description = "with wait: built and loaded", body = [IndexOut]),
        (status = 422, description = "invalid_factory, invalid_parameter, unknown_model", body = crate::api::ErrorBody),
        (status = 409, description = "with wait: cancelled", body = crate::api::ErrorBody)))]
pub async fn build(
    State(state): St,
    caller: Caller,
    ApiJson(req): ApiJson<IndexRequest>,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let g = state.gallery()?.clone();
    let ids = check_build(&state, &req).await?;
    // The recall gate: the new generation, searched as this service searches, must reach
    // `index.recall_floor` against exact search before it is published.
    let mut params = BuildParams {
        factory: req.factory.clone(),
        k_prime: state.config.search.k_prime,
        recall_floor: Some(state.config.index.recall_floor).filter(|f| *f > 0.0),
        ..BuildParams::default()
    };
    if let Some(s) = req.shards {
        params.shards = s;
    }
    let timeout = Duration::from_secs(state.config.limits.index_build_timeout_s);
    let job = state.builds.submit(ids, params, g, load_options(&state), timeout)?;
    if !req.wait {
        let loc = format!("/v1/admin/index/builds/{}", job.id);
        return Ok(
            (StatusCode::ACCEPTED, [(header::LOCATION, loc)], Json(job.out())).into_response()
        );
    }
    job.wait().await;
    let out = job.out();
    match (out.status, out.error) {
        (BuildJobStatus::Done, _) => Ok(Json(out.result).into_response()),
        (_, Some(e)) => Err(ApiError::new(e.code, e.message)),
        (_, None) => Err(ApiError::internal("a finished build job has no outcome")),
    }
}

/// The index build jobs kept, newest first.
#[utoipa::path(get, path = "/v1/admin/index/builds",
    responses((status = 200, body = [BuildJobOut])))]
pub async fn list_builds(
    State(state): St,
    caller: Caller,
) -> Result<Json<Vec<BuildJobOut>>, ApiError> {
    caller.require(Role::Admin)?;
    Ok(Json(state.builds.list()))
}

fn job(state: &AppState, id: &str) -> Result<Arc<Job>, ApiError> {
    state
        .builds
        .get(id)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no build job {id:?}")))
}

/// One index build job: status, stage, progress, result or error.
#[utoipa::path(get, path = "/v1/admin/index/builds/{job_id}",
    params(("job_id" = String, Path, description = "from POST /v1/admin/index/build")),
    responses((status = 200, body = BuildJobOut), (status = 404, body = crate::api::ErrorBody)))]
pub async fn get_build(
    State(state): St,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<BuildJobOut>, ApiError> {
    caller.require(Role::Admin)?;
    Ok(Json(job(&state, &id)?.out()))
}

/// Cancel an index build job: a queued one at once, a running one at its next check (between
/// training and batches of added vectors; training itself is one FAISS call). A cancelled
/// build publishes nothing: the serving generation stays. Cancelling a finished job changes
/// nothing. Answers the job as it is now.
#[utoipa::path(delete, path = "/v1/admin/index/builds/{job_id}",
    params(("job_id" = String, Path, description = "from POST /v1/admin/index/build")),
    responses((status = 200, body = BuildJobOut), (status = 404, body = crate::api::ErrorBody)))]
pub async fn cancel_build(
    State(state): St,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<BuildJobOut>, ApiError> {
    caller.require(Role::Admin)?;
    let j = job(&state, &id)?;
    if !j.finished() {
        j.cancel();
    }
    Ok(Json(j.out()))
}

/// `GET /v1/admin/cluster`: nodes, shards, replicas, lag, the map's epoch (cluster nodes only).
pub async fn cluster(
    State(state): St,
    caller: Caller,
) -> Result<Json<biomatch_cluster::ClusterStatus>, ApiError> {
    caller.require(Role::Admin)?;
    let Some(node) = state.cluster() else {
        return Err(ApiError::new(
            ErrorCode::NotSupported,
            "this service is not a cluster node ([cluster] enabled = false)",
        ));
    };
    Ok(Json(node?.status().await))
}
