//! Asynchronous jobs: a durable queue of enroll-if-unique and identify requests
//! (`POST /v1/jobs`, `GET /v1/jobs/{id}`, `GET /v1/jobs`).
//!
//! Why here (the service) and not in the engine: a job *is* an HTTP request deferred — its body
//! is the synchronous endpoint's DTO, its result the synchronous endpoint's JSON answer or error
//! envelope, its roles and audit those of the API. The worker runs exactly the handlers' code
//! ([`crate::routes::enroll_inner`], [`crate::routes::identify_inner`]); the engine stays free
//! of DTOs.
//!
//! # Durability
//!
//! One file per job, `<data>/jobs/<job_id>.job`: magic `BMJOB1\n`, a JSON [`JobRecord`], a
//! CRC32 footer; every state change rewrites it atomically (temp file, fsync, rename, fsync of
//! the directory: [`biomatch_gallery::atomic_write`]). `POST /v1/jobs` answers 202 only after
//! the queued record is durable. A worker runs a job, then durably replaces its record by the
//! result (the request, with its templates, is dropped from the file then). At start every
//! record still queued — never run, or interrupted by a crash — is queued again, in submission
//! order. A rerun has no second visible effect: an enroll-if-unique runs with the retry flag
//! (as with an Idempotency-Key), so an enrollment the first run committed is found and answered
//! as enrolled (`http_status` 200, `created: false`), never as a duplicate of itself; identify
//! stores nothing. A damaged record is renamed `<id>.job.damaged` and logged, never run.
//!
//! Finished records are kept `jobs.result_ttl_s` seconds after they finish, then deleted from
//! memory and disk. Backpressure: at most `jobs.max_pending` jobs queued or running; one more is
//! refused with 429 `queue_full` and Retry-After.

use crate::api::{EnrollRequest, IdentifyRequest};
use crate::error::{ApiError, ErrorCode};
use crate::routes::{enroll_inner, identify_inner, EnrollOutcome};
use crate::state::AppState;
use biomatch_engine::AuditContext;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const MAGIC: &[u8] = b"BMJOB1\n";
/// A job whose run failed with a transient error (503 with Retry-After) is tried this often.
const MAX_ATTEMPTS: u32 = 5;

/// What a job does: the synchronous endpoint it defers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// `POST /v1/subjects?dedup=true`.
    EnrollIfUnique,
    /// `POST /v1/identify`.
    Identify,
}

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    /// The synchronous endpoint would have answered 2xx: `result` is its body.
    Done,
    /// It would have answered an error: `error` is the error body (`code`, `message`, and for
    /// `duplicate` the `candidates`).
    Failed,
}

/// A job's file (see the module docs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub kind: JobKind,
    /// `queued`, `done` or `failed` (running is not recorded: a crash reruns it).
    pub status: JobStatus,
    pub created_unix_ms: u64,
    #[serde(default)]
    pub finished_unix_ms: Option<u64>,
    /// Who submitted it: its enrollment is journaled under this key and request id.
    pub key_id: String,
    pub request_id: String,
    #[serde(default)]
    pub client_request_id: Option<String>,
    /// The synchronous endpoint's request body; dropped once the job has finished.
    #[serde(default)]
    pub request: Option<Value>,
    #[serde(default)]
    pub http_status: Option<u16>,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<Value>,
}

/// What `GET /v1/jobs` reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub pending: usize,
    pub running: usize,
    pub done: usize,
    pub failed: usize,
}

#[derive(Debug, Default)]
struct Inner {
    /// Every job known (queued, running, finished and not yet expired), without its request.
    jobs: HashMap<String, JobRecord>,
    queue: VecDeque<String>,
    running: usize,
}

/// The job queue of the service (in [`AppState`]).
#[derive(Debug, Default)]
pub struct Jobs {
    dir: OnceLock<PathBuf>,
    inner: Mutex<Inner>,
    wake: tokio::sync::Notify,
}

fn encode(r: &JobRecord) -> Vec<u8> {
    let mut buf = MAGIC.to_vec();
    buf.extend(serde_json::to_vec(r).expect("a job record serialises"));
    biomatch_gallery::push_crc(&mut buf);
    buf
}

fn decode(path: &Path, bytes: &[u8]) -> Result<JobRecord, String> {
    if bytes.len() < MAGIC.len() + 4 || !bytes.starts_with(MAGIC) {
        return Err("not a job record (magic or length)".into());
    }
    let body = biomatch_gallery::check_crc(path, bytes).map_err(|e| e.to_string())?;
    serde_json::from_slice(&body[MAGIC.len()..]).map_err(|e| format!("bad job record: {e}"))
}

/// Read and check the job record at `path`.
fn read_record(path: &Path) -> Result<JobRecord, String> {
    std::fs::read(path).map_err(|e| e.to_string()).and_then(|b| decode(path, &b))
}

fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Jobs {
    fn dir(&self) -> Result<&Path, ApiError> {
        self.dir.get().map(PathBuf::as_path).ok_or_else(ApiError::not_ready)
    }

    fn path(dir: &Path, id: &str) -> PathBuf {
        dir.join(format!("{id}.job"))
    }

    fn write(dir: &Path, r: &JobRecord) -> Result<(), ApiError> {
        biomatch_gallery::atomic_write(&Self::path(dir, &r.job_id), &encode(r)).map_err(|e| {
            tracing::error!(job_id = %r.job_id, error = %e, "job record not written");
            let mut err = ApiError::new(
                ErrorCode::StoreUnavailable,
                "the job could not be recorded durably; nothing was queued",
            );
            err.retry_after = Some(1);
            err
        })
    }

    /// Read `<data>/jobs`: queue every job still queued (oldest first), keep finished ones until
    /// their expiry, delete expired ones. Called once, when the gallery is attached.
    pub fn recover(&self, data: &Path, ttl: Duration) -> std::io::Result<()> {
        let dir = data.join("jobs");
        std::fs::create_dir_all(&dir)?;
        let mut queued = Vec::new();
        let mut inner = self.inner.lock();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            let Some(id) = name.strip_suffix(".job") else {
                if name.contains(".job.") && !name.ends_with(".damaged") {
                    // A temporary file of an interrupted atomic write: the record is intact.
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            };
            match read_record(&path) {
                Ok(mut r) if r.job_id == id => {
                    if r.status == JobStatus::Queued || r.status == JobStatus::Running {
                        r.status = JobStatus::Queued;
                        queued.push((r.created_unix_ms, id.to_owned()));
                    } else if expired(&r, ttl) {
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    r.request = None;
                    inner.jobs.insert(id.to_owned(), r);
                }
                Ok(_) | Err(_) => {
                    tracing::error!(file = %path.display(), "damaged job record set aside");
                    let _ = std::fs::rename(&path, path.with_extension("job.damaged"));
                }
            }
        }
        queued.sort();
        inner.queue.extend(queued.into_iter().map(|(_, id)| id));
        let requeued = inner.queue.len();
        drop(inner);
        if requeued > 0 {
            tracing::info!(jobs = requeued, "queued jobs recovered; they run again");
        }
        let _ = self.dir.set(dir);
        self.wake.notify_waiters();
        Ok(())
    }

    pub fn counts(&self) -> Counts {
        let inner = self.inner.lock();
        let mut c =
            Counts { pending: inner.queue.len(), running: inner.running, ..Counts::default() };
        for r in inner.jobs.values() {
            match r.status {
                JobStatus::Done => c.done += 1,
                JobStatus::Failed => c.failed += 1,
                _ => {}
            }
        }
        c
    }

    /// Durably queue a job (the record is fsynced before this returns); its id.
    pub fn submit(
        &self,
        kind: JobKind,
        request: Value,
        ctx: &AuditContext,
        max_pending: usize,
        retry_after: u64,
    ) -> Result<String, ApiError> {
        let dir = self.dir()?;
        let id = format!("{:032x}", rand::random::<u128>());
        let record = JobRecord {
            job_id: id.clone(),
            kind,
            status: JobStatus::Queued,
            created_unix_ms: crate::audit::now_ms(),
            finished_unix_ms: None,
            key_id: ctx.key_id.clone(),
            request_id: ctx.request_id.clone(),
            client_request_id: ctx.client_request_id.clone(),
            request: Some(request),
            http_status: None,
            result: None,
            error: None,
        };
        {
            // The slot is taken before the write so that concurrent submissions cannot overrun
            // the bound; a failed write gives it back.
            let mut inner = self.inner.lock();
            if inner.queue.len() + inner.running >= max_pending {
                let mut e = ApiError::new(
                    ErrorCode::QueueFull,
                    format!("{max_pending} jobs are pending: the queue is full; retry later"),
                );
                e.retry_after = Some(retry_after);
                return Err(e);
            }
            let mut r = record.clone();
            r.request = None;
            inner.jobs.insert(id.clone(), r);
        }
        if let Err(e) = Self::write(dir, &record) {
            self.inner.lock().jobs.remove(&id);
            return Err(e);
        }
        self.inner.lock().queue.push_back(id.clone());
        self.wake.notify_one();
        Ok(id)
    }

    /// A job as `GET /v1/jobs/{id}` shows it (`None`: unknown or expired).
    pub fn get(&self, id: &str, ttl: Duration) -> Option<JobRecord> {
        let r = self.inner.lock().jobs.get(id).cloned()?;
        (!expired(&r, ttl)).then_some(r)
    }

    async fn next(&self) -> String {
        loop {
            let notified = self.wake.notified();
            {
                let mut inner = self.inner.lock();
                if let Some(id) = inner.queue.pop_front() {
                    inner.running += 1;
                    if let Some(r) = inner.jobs.get_mut(&id) {
                        r.status = JobStatus::Running;
                    }
                    return id;
                }
            }
            notified.await;
        }
    }

    /// Remove the finished jobs older than `ttl` from memory and disk.
    pub fn expire(&self, ttl: Duration) -> usize {
        let Ok(dir) = self.dir() else { return 0 };
        let gone: Vec<String> = {
            let mut inner = self.inner.lock();
            let ids: Vec<String> =
                inner.jobs.values().filter(|r| expired(r, ttl)).map(|r| r.job_id.clone()).collect();
            for id in &ids {
                inner.jobs.remove(id);
            }
            ids
        };
        for id in &gone {
            if let Err(e) = std::fs::remove_file(Self::path(dir, id)) {
                tracing::warn!(job_id = %id, error = %e, "expired job record not removed");
            }
        }
        if !gone.is_empty() {
            if let Err(e) = biomatch_gallery::sync_dir(dir) {
                tracing::warn!(error = %e, "jobs directory not synced after expiry");
            }
        }
        gone.len()
    }
}

fn expired(r: &JobRecord, ttl: Duration) -> bool {
    r.finished_unix_ms
        .is_some_and(|f| crate::audit::now_ms() >= f.saturating_add(ttl.as_millis() as u64))
}

/// Recover the queue from disk and start `jobs.workers` workers and the expiry task on the
/// current tokio runtime. Call once, before the engine is attached (readiness then implies a
/// recovered queue); the workers wait for the engine.
pub fn start(state: &Arc<AppState>) -> std::io::Result<()> {
    let cfg = &state.config.jobs;
    let ttl = Duration::from_secs(cfg.result_ttl_s);
    state.jobs.recover(&state.config.data, ttl)?;
    let rt = tokio::runtime::Handle::current();
    for _ in 0..cfg.workers {
        let st = state.clone();
        rt.spawn(async move {
            while !st.is_ready() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            loop {
                let id = st.jobs.next().await;
                run(&st, &id).await;
            }
        });
    }
    let st = state.clone();
    rt.spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let st = st.clone();
            let _ = tokio::task::spawn_blocking(move || st.jobs.expire(ttl)).await;
        }
    });
    Ok(())
}

/// `v` as JSON the way an HTTP answer writes it (through its text: an `f32` keeps its short
/// form instead of widening to the `f64` digits).
fn as_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_vec(v).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// The error envelope of a job's failure: what the synchronous endpoint would have answered.
fn error_body(e: &ApiError, request_id: &str) -> Value {
    let mut body =
        serde_json::json!({ "code": e.code, "message": e.message, "request_id": request_id });
    if let Some(c) = &e.candidates {
        body["candidates"] = as_json(c);
    }
    body
}

async fn execute(state: &Arc<AppState>, r: &JobRecord) -> Result<(u16, Value), ApiError> {
    let request =
        r.request.clone().ok_or_else(|| ApiError::internal("a queued job without its request"))?;
    let ctx = AuditContext {
        key_id: r.key_id.clone(),
        request_id: r.request_id.clone(),
        client_request_id: r.client_request_id.clone(),
    };
    let bad = |e: serde_json::Error| ApiError::bad_request(format!("request: {e}"));
    match r.kind {
        JobKind::EnrollIfUnique => {
            let req: EnrollRequest = serde_json::from_value(request).map_err(bad)?;
            // Retry semantics always: a rerun after a crash finds its own enrollment.
            let out = enroll_inner(state, req, None, true, ctx, true).await?;
            let (status, body) = match out {
                EnrollOutcome::Created(o) | EnrollOutcome::Cached(o) => (201, o),
                EnrollOutcome::Replayed(o) => (200, o),
            };
            Ok((status, as_json(&body)))
        }
        JobKind::Identify => {
            let req: IdentifyRequest = serde_json::from_value(request).map_err(bad)?;
            let out = identify_inner(state, req).await?;
            Ok((200, as_json(&out)))
        }
    }
}

/// Run one job to its result, record the result durably, audit it.
async fn run(state: &Arc<AppState>, id: &str) {
    let Ok(dir) = state.jobs.dir().map(Path::to_owned) else { return };
    let loaded = {
        let path = Jobs::path(&dir, id);
        tokio::task::spawn_blocking(move || read_record(&path))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
    };
    let mut record = match loaded {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(job_id = %id, error = %e, "job record unreadable; not run");
            let mut inner = state.jobs.inner.lock();
            inner.running -= 1;
            inner.jobs.remove(id);
            return;
        }
    };
    let mut attempt = 0;
    let outcome = loop {
        attempt += 1;
        match execute(state, &record).await {
            Err(e) if e.retry_after.is_some() && attempt < MAX_ATTEMPTS => {
                tokio::time::sleep(Duration::from_secs(e.retry_after.unwrap_or(1))).await;
            }
            r => break r,
        }
    };
    let subjects: Vec<String> = record
        .request
        .as_ref()
        .and_then(|r| r["subject_id"].as_str().map(str::to_owned))
        .into_iter()
        .collect();
    match outcome {
        Ok((status, body)) => {
            record.status = JobStatus::Done;
            record.http_status = Some(status);
            record.result = Some(body);
        }
        Err(e) => {
            record.status = JobStatus::Failed;
            record.http_status = Some(e.status.as_u16());
            record.error = Some(error_body(&e, &record.request_id));
        }
    }
    record.request = None;
    record.finished_unix_ms = Some(crate::audit::now_ms());
    // A stored enrollment is journaled with the store's commit; every other outcome gets a
    // record here, before the result is visible (an identify names its candidates).
    let stored = record.kind == JobKind::EnrollIfUnique && record.status == JobStatus::Done;
    if !stored {
        let mut named = subjects;
        let list = |v: &Option<Value>| -> Vec<String> {
            v.as_ref()
                .and_then(|v| v["candidates"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|c| c["subject_id"].as_str().map(str::to_owned))
                .collect()
        };
        named.extend(list(&record.result));
        named.extend(list(&record.error));
        let outcome = match &record.error {
            Some(e) => format!("job:{id};error:{}", e["code"].as_str().unwrap_or("?")),
            None => format!("job:{id};ok"),
        };
        let op = match record.kind {
            JobKind::EnrollIfUnique => "job_enroll_if_unique",
            JobKind::Identify => "job_identify",
        };
        let mut rec = crate::audit::AuditRecord::now(
            record.key_id.clone(),
            op,
            record.request_id.clone(),
            named,
            outcome,
        );
        rec.status = record.http_status;
        rec.client_request_id = record.client_request_id.clone();
        if let Err(e) = state.audit.append(rec).await {
            // Not recorded as finished: the job runs again after a restart (no second effect).
            tracing::error!(job_id = %id, error = %e, "job result not audited; left queued");
            state.jobs.inner.lock().running -= 1;
            return;
        }
    }
    let (d, r) = (dir.clone(), record.clone());
    let written = tokio::task::spawn_blocking(move || Jobs::write(&d, &r))
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(e)));
    let mut inner = state.jobs.inner.lock();
    inner.running -= 1;
    if written.is_ok() {
        inner.jobs.insert(id.to_owned(), record);
    } else if let Some(r) = inner.jobs.get_mut(id) {
        // Still queued on disk: a restart runs it again.
        r.status = JobStatus::Queued;
    }
}

// ---------------------------------------------------------------------------------------------
// The endpoints.

/// `POST /v1/jobs`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub kind: JobKind,
    /// The synchronous endpoint's request body: an `EnrollRequest` (for `enroll_if_unique`, as
    /// `POST /v1/subjects?dedup=true`) or an `IdentifyRequest`.
    #[schema(value_type = Object)]
    pub request: Value,
}

/// 202 of `POST /v1/jobs`: the job is durably queued.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobAccepted {
    pub job_id: String,
}

/// `GET /v1/jobs/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobOut {
    pub job_id: String,
    pub kind: JobKind,
    pub status: JobStatus,
    pub created_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    /// The status the synchronous endpoint would have answered (done or failed jobs).
    pub http_status: Option<u16>,
    /// `done`: the synchronous endpoint's answer body.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// `failed`: its error body (`code`, `message`, `request_id`; `candidates` for `duplicate`).
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
}

/// `GET /v1/jobs`: the queue's counts and configuration.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobsOut {
    /// Queued, not yet running.
    pub pending: usize,
    pub running: usize,
    /// Finished and kept (until `result_ttl_s` after they finished).
    pub done: usize,
    pub failed: usize,
    pub workers: usize,
    pub max_pending: usize,
    pub result_ttl_s: u64,
}

use crate::config::Role;
use crate::middleware::{blocking, ApiJson, Caller};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;

fn role_of(kind: JobKind) -> Role {
    match kind {
        JobKind::EnrollIfUnique => Role::Enroll,
        JobKind::Identify => Role::Identify,
    }
}

#[utoipa::path(post, path = "/v1/jobs", request_body = JobRequest,
    responses((status = 202, body = JobAccepted, description = "durably queued"),
        (status = 400, body = crate::api::ErrorBody), (status = 422, body = crate::api::ErrorBody),
        (status = 429, body = crate::api::ErrorBody, description = "queue_full, with Retry-After")))]
pub async fn submit(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<JobRequest>,
) -> Result<(StatusCode, Json<JobAccepted>), ApiError> {
    caller.require(role_of(req.kind))?;
    state.engine()?;
    // The body's shape is checked now, so that a malformed one is refused at once.
    let bad = |e: serde_json::Error| ApiError::bad_request(format!("request: {e}"));
    let subjects = match req.kind {
        JobKind::EnrollIfUnique => {
            let r: EnrollRequest = serde_json::from_value(req.request.clone()).map_err(bad)?;
            biomatch_core::SubjectId::new(r.subject_id.clone())?;
            vec![r.subject_id]
        }
        JobKind::Identify => {
            serde_json::from_value::<IdentifyRequest>(req.request.clone()).map_err(bad)?;
            Vec::new()
        }
    };
    caller.note_subjects(subjects.clone());
    let ctx = AuditContext {
        key_id: caller.key.id.clone(),
        request_id: caller.request_id.clone(),
        client_request_id: caller.client_request_id.clone(),
    };
    let (st, kind) = (state.clone(), req.kind);
    let cfg = state.config.jobs.clone();
    let retry_after = state.config.limits.retry_after_s;
    let id =
        blocking(move || st.jobs.submit(kind, req.request, &ctx, cfg.max_pending, retry_after))
            .await?;
    caller.note("job_submit", subjects, format!("job:{id}"));
    caller.about_stored_write();
    Ok((StatusCode::ACCEPTED, Json(JobAccepted { job_id: id })))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", params(("id" = String, Path)),
    responses((status = 200, body = JobOut), (status = 404, body = crate::api::ErrorBody, description = "unknown, expired, or another key's job")))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<JobOut>, ApiError> {
    caller.require_any(&[Role::Enroll, Role::Identify, Role::Admin])?;
    let ttl = Duration::from_secs(state.config.jobs.result_ttl_s);
    let r = valid_id(&id)
        .then(|| state.jobs.get(&id, ttl))
        .flatten()
        .filter(|r| r.key_id == caller.key.id || caller.key.roles.contains(&Role::Admin))
        .ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, "no such job (unknown, expired or not yours)")
        })?;
    caller.note("job_status", Vec::new(), format!("job:{id};{:?}", r.status));
    Ok(Json(JobOut {
        job_id: r.job_id,
        kind: r.kind,
        status: r.status,
        created_unix_ms: r.created_unix_ms,
        finished_unix_ms: r.finished_unix_ms,
        http_status: r.http_status,
        result: r.result,
        error: r.error,
    }))
}

#[utoipa::path(get, path = "/v1/jobs", responses((status = 200, body = JobsOut)))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<JobsOut>, ApiError> {
    caller.require_any(&[Role::Enroll, Role::Identify, Role::Admin])?;
    let c = state.jobs.counts();
    let cfg = &state.config.jobs;
    Ok(Json(JobsOut {
        pending: c.pending,
        running: c.running,
        done: c.done,
        failed: c.failed,
        workers: cfg.workers,
        max_pending: cfg.max_pending,
        result_ttl_s: cfg.result_ttl_s,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_detected() {
        let r = JobRecord {
            job_id: "0".repeat(32),
            kind: JobKind::Identify,
            status: JobStatus::Queued,
            created_unix_ms: 1,
            finished_unix_ms: None,
            key_id: "k".into(),
            request_id: "r".into(),
            client_request_id: None,
            request: Some(serde_json::json!({ "face": null })),
            http_status: None,
            result: None,
            error: None,
        };
        let mut bytes = encode(&r);
        let path = Path::new("t.job");
        let back = decode(path, &bytes).unwrap();
        assert_eq!((back.job_id, back.status, back.request), (r.job_id, r.status, r.request));
        let n = bytes.len();
        bytes[n / 2] ^= 1;
        assert!(decode(path, &bytes).unwrap_err().contains("checksum"));
        assert!(decode(path, &bytes[..n - 3]).is_err());
        assert!(decode(path, b"BMJOB1\n").is_err());
    }
}
