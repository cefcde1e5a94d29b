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

/// The id of this request, echoed in `x-request-id` and in error bodies.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Outermost layer: assign the request id, render any [`ApiError`] as the JSON envelope, count
/// and time the request.
pub async fn envelope(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .map_or_else(new_request_id, str::to_owned);
    let route =
        req.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_owned();
    let method = req.method().clone();
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, %method, route = %route);
    let start = Instant::now();
    let mut resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    if let Some(err) = resp.extensions_mut().remove::<ApiError>() {
        let body =
            serde_json::json!({ "code": err.code, "message": err.message, "request_id": id });
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
    pub request_id: String,
}

impl Caller {
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
        if !state.auth_enabled() {
            let key = KeyInfo {
                id: "anonymous".into(),
                roles: vec![Role::Verify, Role::Enroll, Role::Identify, Role::Admin],
            };
            return Ok(Caller { key, request_id });
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
        Ok(Caller { key, request_id })
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
