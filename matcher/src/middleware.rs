//! Cross-cutting request handling: request ids and the error envelope, metrics, load shedding,
//! timeouts, authentication, JSON bodies and moving CPU work off the async threads.

use crate::config::Role;
use crate::error::{ApiError, ErrorCode};
use crate::state::{AppState, KeyInfo};
use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The server-assigned id of this request, in `x-request-id`, error bodies and the audit log.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The `x-request-id` the client sent, if it was well-formed (kept apart from [`RequestId`]:
/// clients choose it, so two requests may share it).
#[derive(Clone, Debug)]
pub struct ClientRequestId(pub Option<String>);

/// A new, unique request id: 32 hex digits, the process start time (ms) and a nonce, then a
/// counter, so ids sort by process and arrival and never repeat.
/// A new unique request id (also used by the MOSIP adapter for its audit records).
pub fn new_request_id() -> String {
    use std::sync::atomic::AtomicU64;
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        (ms << 16) | u64::from(rand::random::<u16>())
    });
    format!("{prefix:016x}{:016x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// What the handler tells the audit log about its request (see [`envelope`]).
#[derive(Debug, Default)]
pub struct AuditNote {
    /// The authenticated key, once known.
    pub key_id: Option<String>,
    pub operation: Option<&'static str>,
    pub subjects: Vec<String>,
    /// The outcome code; by default `error:<code>` for errors, `ok` otherwise.
    pub outcome: Option<String>,
    /// The store's journal recorded this request's write already (same commit): no second record.
    pub journaled: bool,
    /// A success answer about a stored write (a replay, a batch with stored items): if its
    /// record cannot be made durable, the answer is "in doubt", never a failure.
    pub about_stored_write: bool,
}

/// The request's [`AuditNote`], shared between the handler and [`envelope`].
pub type AuditSlot = Arc<parking_lot::Mutex<AuditNote>>;

/// The operation name of a `/v1` route, for its audit record.
fn operation_of(method: &axum::http::Method, route: &str) -> Option<&'static str> {
    use axum::http::Method as M;
    Some(match (method, route) {
        (&M::POST, "/v1/subjects") => "enroll",
        (&M::POST, "/v1/subjects/batch") => "enroll_batch",
        (&M::GET, "/v1/subjects/{id}") => "get_subject",
        (&M::DELETE, "/v1/subjects/{id}") => "delete",
        (&M::POST, "/v1/verify") => "verify",
        (&M::POST, "/v1/identify") => "identify",
        (&M::POST, "/v1/extract") => "extract",
        (&M::GET, "/v1/admin/stats") => "admin_stats",
        (&M::POST, "/v1/admin/index/reload") => "admin_index_reload",
        (&M::POST, "/v1/admin/index/build") => "admin_index_build",
        _ => return None,
    })
}

/// Outermost layer: assign the request id, render any [`ApiError`] as the JSON envelope, audit
/// every `/v1` request (once, durably, before the answer leaves), count and time the request.
pub async fn envelope(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = new_request_id();
    let client_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned);
    let route =
        req.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_owned();
    let method = req.method().clone();
    let path = req.uri().path();
    let audited = path == "/v1" || path.starts_with("/v1/");
    // For the audit record of a request to no route: the path asked for (bounded).
    let asked: Option<String> =
        (audited && route == "unmatched").then(|| path.chars().take(200).collect());
    let slot: AuditSlot = Arc::default();
    req.extensions_mut().insert(RequestId(id.clone()));
    req.extensions_mut().insert(ClientRequestId(client_id.clone()));
    req.extensions_mut().insert(slot.clone());
    let span = tracing::info_span!("request", request_id = %id, %method, route = %route);
    let start = Instant::now();
    let mut resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let mut err = resp.extensions_mut().remove::<ApiError>();
    if audited {
        let note = std::mem::take(&mut *slot.lock());
        let stored = note.about_stored_write && err.is_none();
        if !note.journaled {
            let status = err.as_ref().map_or(resp.status(), |e| e.status);
            let rec = crate::audit::AuditRecord {
                client_request_id: client_id.clone(),
                status: Some(status.as_u16()),
                ..crate::audit::AuditRecord::now(
                    note.key_id.unwrap_or_default(),
                    note.operation.or_else(|| operation_of(&method, &route)).map_or_else(
                        || format!("{method} {}", asked.as_deref().unwrap_or(&route)),
                        str::to_owned,
                    ),
                    &id,
                    note.subjects,
                    note.outcome.unwrap_or_else(|| match &err {
                        Some(e) => format!("error:{}", e.code),
                        None => "ok".to_owned(),
                    }),
                )
            };
            let batched = state.config.audit_reads == crate::config::AuditReads::Batched
                && !note.about_stored_write;
            if batched {
                state.audit.append_batched(rec);
            } else if let Err(e) = state.audit.append(rec).await {
                // An answer that cannot be audited is not given.
                span.in_scope(
                    || tracing::error!(error = %e, "audit record not durable; refusing the answer"),
                );
                resp = Response::default();
                err = Some(if stored {
                    // A stored write is never answered as failed: the same request again (same
                    // Idempotency-Key) gets its answer.
                    ApiError::in_doubt(
                        "the write is stored but its answer could not be audited: send the same \
                         request again (same Idempotency-Key) for it",
                    )
                } else {
                    ApiError::audit_unavailable(&e)
                });
            }
        }
    }
    if let Some(err) = err {
        let mut body =
            serde_json::json!({ "code": err.code, "message": err.message, "request_id": id });
        if let Some(c) = &err.candidates {
            body["candidates"] = serde_json::to_value(c).unwrap_or_default();
        }
        if let Some(f) = &err.failures {
            body["failures"] = serde_json::to_value(f).unwrap_or_default();
        }
        let mut headers = std::mem::take(resp.headers_mut());
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let mut r = (err.status, body.to_string()).into_response();
        headers.remove(header::CONTENT_LENGTH);
        r.headers_mut().extend(headers);
        resp = r;
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status();
    state.metrics.requests.with_label_values(&[&route, method.as_str(), status.as_str()]).inc();
    state.metrics.latency.with_label_values(&[&route]).observe(start.elapsed().as_secs_f64());
    // Shed requests (503) are counted in biomatch_http_shed_total, not logged one by one: under
    // overload that would be a log line per refused request.
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        span.in_scope(|| tracing::warn!(status = status.as_u16(), "request failed"));
    }
    resp
}

/// Read the whole request body before the request goes on (and so before [`shed`] gives it a
/// `max_concurrent` slot): a slow upload holds a connection, never a slot. The body must arrive
/// within `limits.body_timeout_ms`, and, after `limits.body_grace_ms`, at no less than
/// `limits.body_min_bytes_per_s` on average since the head; otherwise 408 `request_timeout`
/// and the connection is closed. Over `limits.body_bytes`: 413 at once (from Content-Length)
/// or as soon as it is exceeded.
pub async fn read_body(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    use axum::body::HttpBody;
    use http_body_util::BodyExt;
    let (parts, mut body) = req.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let l = &state.config.limits;
    let close = |e: ApiError| {
        let mut r = e.into_response();
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    };
    let too_large =
        || ApiError::new(ErrorCode::BodyTooLarge, "the request body exceeds the configured limit");
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > l.body_bytes as u64) {
        return close(too_large());
    }
    let start = tokio::time::Instant::now();
    let total = start + Duration::from_millis(l.body_timeout_ms);
    let grace = Duration::from_millis(l.body_grace_ms);
    let rate = l.body_min_bytes_per_s;
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(l.body_bytes as u64) as usize);
    loop {
        // The moment the body falls below the minimum rate if nothing more arrives.
        let deadline = if rate == 0 {
            total
        } else {
            let at_rate = Duration::from_secs_f64(buf.len() as f64 / rate as f64);
            total.min(start + grace.max(at_rate))
        };
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                let why = if deadline >= total {
                    format!("the request body did not arrive within {} ms", l.body_timeout_ms)
                } else {
                    format!(
                        "the request body arrived slower than {} bytes/s",
                        l.body_min_bytes_per_s
                    )
                };
                return close(ApiError::new(ErrorCode::RequestTimeout, why));
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return close(ApiError::bad_request("the request body could not be read"))
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > l.body_bytes {
                        return close(too_large());
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
    next.run(Request::from_parts(parts, Body::from(buf))).await
}

/// Shed load instead of queueing without bound: at most `max_concurrent` requests are in
/// flight; the next one is answered 503 with Retry-After at once. Requests reach it with their
/// body read ([`read_body`]).
pub async fn shed(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match state.limiter.clone().try_acquire_owned() {
        Ok(permit) => {
            let resp = next.run(req).await;
            drop(permit);
            resp
        }
        Err(_) => {
            state.metrics.shed.inc();
            ApiError::overloaded(state.config.limits.retry_after_s).into_response()
        }
    }
}

/// Cancel a request that runs past the configured timeout (504).
pub async fn timeout(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let limit = Duration::from_millis(state.config.limits.request_timeout_ms);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::timeout().into_response(),
    }
}

/// The authenticated caller. With no keys configured (loopback-only deployments) every caller
/// is `anonymous` with every role.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key: KeyInfo,
    /// The server-assigned request id.
    pub request_id: String,
    pub client_request_id: Option<String>,
    audit: AuditSlot,
}

impl Caller {
    /// Tell the audit record of this request its operation, subjects and outcome code.
    pub fn note(&self, operation: &'static str, subjects: Vec<String>, outcome: impl Into<String>) {
        let mut n = self.audit.lock();
        n.operation = Some(operation);
        n.subjects = subjects;
        n.outcome = Some(outcome.into());
    }

    /// The subjects this request concerns (for its audit record, whatever the outcome).
    pub fn note_subjects(&self, subjects: Vec<String>) {
        self.audit.lock().subjects = subjects;
    }

    /// This success answer is about a stored write (see [`AuditNote::about_stored_write`]).
    pub fn about_stored_write(&self) {
        self.audit.lock().about_stored_write = true;
    }

    /// The store's journal recorded this request's write in the same commit: no second record.
    pub fn journaled(&self) {
        self.audit.lock().journaled = true;
    }

    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        self.require_any(&[role])
    }

    pub fn require_any(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.iter().any(|r| self.key.roles.contains(r)) {
            Ok(())
        } else {
            let name =
                serde_json::to_value(roles[0]).ok().and_then(|v| v.as_str().map(str::to_owned));
            Err(ApiError::forbidden(name.as_deref().unwrap_or("?")))
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let request_id =
            parts.extensions.get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
        let client_request_id = parts.extensions.get::<ClientRequestId>().and_then(|c| c.0.clone());
        let audit = parts.extensions.get::<AuditSlot>().cloned().unwrap_or_default();
        if !state.auth_enabled() {
            let key = KeyInfo {
                id: "anonymous".into(),
                roles: vec![Role::Verify, Role::Enroll, Role::Identify, Role::Admin],
            };
            audit.lock().key_id = Some(key.id.clone());
            return Ok(Caller { key, request_id, client_request_id, audit });
        }
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(ApiError::unauthorized)?;
        let key = state
            .key(&crate::config::hash_key(presented))
            .cloned()
            .ok_or_else(ApiError::unauthorized)?;
        audit.lock().key_id = Some(key.id.clone());
        state.take_rate(&key.id).map_err(ApiError::rate_limited)?;
        Ok(Caller { key, request_id, client_request_id, audit })
    }
}

/// `Json<T>` whose rejections become [`ApiError`]s in the envelope (400 malformed, 413 too
/// large, 415 wrong content type).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => {
                let status = rej.status();
                Err(match status {
                    StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                        ErrorCode::BodyTooLarge,
                        "the request body exceeds the configured limit",
                    ),
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
                        ErrorCode::UnsupportedMediaType,
                        "send the body as application/json",
                    ),
                    // serde's message names the field and position, never a value.
                    _ => ApiError::new(ErrorCode::MalformedJson, rej.body_text()),
                })
            }
        }
    }
}

/// Sets its flag when dropped: the request future went away (client gone or timeout).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Run CPU work on the blocking pool (which fans out on rayon), never on an async worker. If the
/// request is dropped before the work starts, the work is skipped.
pub async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    let cancelled = Arc::new(AtomicBool::new(false));
    let guard = CancelOnDrop(cancelled.clone());
    let res = tokio::task::spawn_blocking(move || {
        if cancelled.load(Ordering::Relaxed) {
            return Err(ApiError::timeout());
        }
        f()
    })
    .await;
    drop(guard);
    res.map_err(ApiError::internal)?
}
