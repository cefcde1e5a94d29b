//! biomatch-matcher: the HTTP service (axum + tokio) over the gallery.
//!
//! `app(state)` builds the router; `serve` runs it with graceful shutdown. Handlers never do
//! CPU work on the async threads (see [`middleware::blocking`]); errors map to HTTP in one place
//! ([`error::ApiError`] + [`middleware::envelope`]).

pub mod admin;
pub mod api;
pub mod audit;
pub mod backlog;
pub mod calibrate;
pub mod config;
pub mod conn;
pub mod decode_budget;
pub mod error;
pub mod import;
pub mod jobs;
pub mod metrics;
pub mod middleware;
pub mod mosip;
pub mod recall_monitor;
pub mod routes;
pub mod samples;
pub mod serve;
pub mod state;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

pub use state::AppState;

/// A progress bar for the command-line tools (drawn on stderr).
pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(
        title = "biomatch",
        description = "Biometric enrollment, 1:1 verification and 1:N identification"
    ),
    paths(
        routes::enroll,
        routes::enroll_batch,
        routes::get_subject,
        routes::delete_subject,
        routes::verify,
        routes::identify,
        routes::extract,
        jobs::submit,
        jobs::get,
        jobs::list,
        admin::stats,
        admin::reload,
        admin::build,
        admin::list_builds,
        admin::get_build,
        admin::cancel_build,
        backlog::start,
        backlog::get
    ),
    components(schemas(
        api::TemplateIn,
        api::SampleIn,
        api::FingerIn,
        api::EnrollRequest,
        api::BatchEnrollRequest,
        api::BatchEnrollResponse,
        api::BatchItemOut,
        api::SubjectOut,
        api::TemplateInfoOut,
        api::DeleteOut,
        api::VerifyRequest,
        api::VerifyResponse,
        api::ModalityScoreOut,
        api::IdentifyRequest,
        api::IdentifyResponse,
        api::CandidateOut,
        api::SearchKindIn,
        api::ExtractRequest,
        api::ExtractResponse,
        api::QualityOut,
        api::UseVerdictOut,
        api::FingerQualityOut,
        api::FingerSearchOut,
        api::ErrorBody,
        api::DuplicateBody,
        api::FaceQualityBody,
        jobs::JobKind,
        jobs::JobStatus,
        jobs::JobRequest,
        jobs::JobAccepted,
        jobs::JobOut,
        jobs::JobsOut,
        error::ErrorCode,
        api::IndexRequest,
        api::IndexOut,
        api::IndexStatsOut,
        api::RecallMonitorOut,
        api::ShardRecallOut,
        api::RebuildReason,
        api::BuildJobOut,
        api::BuildJobStatus,
        api::BuildJobError,
        backlog::DedupRequest,
        backlog::DedupJobOut,
        backlog::DedupJobStatus
    ))
)]
pub struct ApiDoc;

/// The service's router over `state`.
pub fn app(state: Arc<AppState>) -> Router {
    let limits = &state.config.limits;
    let api = Router::new()
        .route("/v1/subjects", post(routes::enroll))
        .route("/v1/subjects/batch", post(routes::enroll_batch))
        .route("/v1/subjects/{id}", get(routes::get_subject).delete(routes::delete_subject))
        .route("/v1/verify", post(routes::verify))
        .route("/v1/identify", post(routes::identify))
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/extract", post(routes::extract))
        .route("/v1/admin/stats", get(admin::stats))
        .route("/v1/admin/cluster", get(admin::cluster))
        .route("/v1/admin/index/reload", post(admin::reload))
        .route("/v1/admin/index/builds", get(admin::list_builds))
        .route("/v1/admin/index/builds/{job_id}", get(admin::get_build).delete(admin::cancel_build))
        .route("/v1/admin/dedup", post(backlog::start))
        .route("/v1/admin/dedup/{job_id}", get(backlog::get))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), middleware::timeout))
        // Builds are jobs with their own deadline (limits.index_build_timeout_s); a caller may
        // wait for one (`"wait": true`) past the request timeout.
        .route("/v1/admin/index/build", post(admin::build))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), middleware::shed))
        // Outside the shed: a request takes a max_concurrent slot only once its body is in.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), middleware::read_body));
    let ops = Router::new()
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
        .route("/openapi.json", get(admin::openapi));
    api.merge(ops)
        .fallback(|| async { error::ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            error::ApiError::new(
                error::ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(limits.body_bytes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::envelope))
        .with_state(state)
}
