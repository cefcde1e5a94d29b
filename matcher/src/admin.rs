//! Operator endpoints (`admin` role) and the unauthenticated health, readiness, metrics and
//! OpenAPI endpoints.

use crate::api::{IndexOut, IndexRequest};
use crate::config::Role;
use crate::error::{ApiError, ErrorCode};
use crate::middleware::{blocking, ApiJson, Caller};
use crate::state::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use biomatch_core::ModelId;
use biomatch_gallery::ann::{self, BuildParams, LoadOptions, ShardedIndex};
use biomatch_gallery::Gallery;
use std::sync::Arc;

type St = State<Arc<AppState>>;

pub async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// 200 once the gallery is loaded, while writes can be made durable (503 while they cannot:
/// a full disk or a storage I/O error, until a write or the maintenance probe succeeds).
pub async fn readyz(State(state): St) -> Result<Json<serde_json::Value>, ApiError> {
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

/// Gallery statistics: subjects, rows per model, the serving index generation.
#[utoipa::path(get, path = "/v1/admin/stats", responses((status = 200, description = "store and index statistics")))]
pub async fn stats(State(state): St, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(Role::Admin)?;
    let g = state.gallery()?.clone();
    let (s, metadata) =
        blocking(move || Ok((g.store().stats(), g.store().metadata_bytes()))).await?;
    let g = state.gallery()?;
    let indexes: Vec<IndexOut> =
        s.columns.iter().filter_map(|c| g.index(&c.model)).map(|i| index_out(&i)).collect();
    // Per vector template: heap (index structures + metadata) apart from the mapped fp16.
    let rows: u64 = s.columns.iter().map(|c| c.rows).sum();
    let index_bytes: u64 =
        s.columns.iter().filter_map(|c| g.index(&c.model)).map(|i| i.index_bytes).sum();
    let mapped: u64 = s.columns.iter().map(|c| c.rows * c.dim as u64 * 2).sum();
    let per = |b: u64| if rows == 0 { 0.0 } else { b as f64 / rows as f64 };
    let fingers = state.engine()?.fingers().map(
        |f| serde_json::json!({ "subjects": f.len(), "fingers": f.fingers(), "store": s.fingers }),
    );
    Ok(Json(serde_json::json!({
        "store": s,
        "indexes": indexes,
        "fingers": fingers,
        "audit_records": state.audit.written(),
        "metadata_bytes": metadata,
        "resident_bytes_per_template": per(index_bytes + metadata),
        "mapped_bytes_per_template": per(mapped),
        "bytes_per_template": per(index_bytes + metadata + mapped)
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

/// Build a new index generation from a snapshot of the store while serving, then load it.
#[utoipa::path(post, path = "/v1/admin/index/build", request_body = IndexRequest,
    responses((status = 200, body = [IndexOut])))]
pub async fn build(
    State(state): St,
    caller: Caller,
    ApiJson(req): ApiJson<IndexRequest>,
) -> Result<Json<Vec<IndexOut>>, ApiError> {
    caller.require(Role::Admin)?;
    let mut params = BuildParams { factory: req.factory.clone(), ..BuildParams::default() };
    if let Some(s) = req.shards {
        params.shards = s;
    }
    let out = for_each_model(&state, &req, move |g, id, opts| {
        if !g.store().stats().columns.iter().any(|c| c.model == *id && c.live > 0) {
            return Ok(None);
        }
        ann::build(g.store(), id, &params)?;
        let i = g
            .load_index(id, opts)?
            .ok_or_else(|| ApiError::internal("built index did not load"))?;
        Ok(Some(i))
    })
    .await?;
    Ok(Json(out))
}
