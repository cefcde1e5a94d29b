use axum::body::Body;
use axum::http::{Request, StatusCode};
use biomatch_core::{CalibrationTable, ModelId};
use biomatch_matcher::audit::AuditLog;
use biomatch_matcher::config::{hash_key, ApiKey, Config, ModalityKind, Role};
use biomatch_matcher::state::{AppState, ServiceModel};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::sync::Arc;
use tower::ServiceExt;

pub const DIM: usize = 128;
pub const MODEL: &str = "synthetic-face@1";

/// Secrets of the test keys, one per role, plus one with every role.
pub const BANK: &str = "bank-secret";
pub const ISSUER: &str = "issuer-secret";
pub const OPS: &str = "ops-secret";

#[derive(Debug)]
pub struct TestApp {
    pub _dir: tempfile::TempDir,
    pub state: Arc<AppState>,
}

fn calibration() -> CalibrationTable {
    // Cosines of independent random directions in d = 128: the synthetic model's impostors.
    let pop = biomatch_datasets::Population::new(biomatch_datasets::PopulationConfig {
        identities: 1,
        ..Default::default()
    })
    .unwrap();
    let mut s = pop.impostor_scores(200_000, 3);
    CalibrationTable::from_impostor_scores(ModelId::parse(MODEL).unwrap(), &mut s).unwrap()
}

pub fn config_with(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config {
        api_keys: vec![
            ApiKey { id: "bank".into(), sha256: hash_key(BANK), roles: vec![Role::Verify] },
            ApiKey {
                id: "issuer".into(),
                sha256: hash_key(ISSUER),
                roles: vec![Role::Enroll, Role::Identify],
            },
            ApiKey { id: "ops".into(), sha256: hash_key(OPS), roles: vec![Role::Admin] },
        ],
        ..Config::default()
    };
    f(&mut c);
    c.validate().unwrap();
    c
}

/// Open the store of `state.config.data` and attach the engine, as `serve` does.
pub fn attach_engine(state: &AppState) {
    state.attach(Arc::new(biomatch_matcher::serve::load_engine(state).unwrap()));
}

impl TestApp {
    pub fn new() -> TestApp {
        Self::with_config(config_with(|_| {}), true)
    }

    /// A service over an empty store; `ready = false` leaves the gallery unattached.
    pub fn with_config(mut config: Config, ready: bool) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        config.data = dir.path().join("store");
        let audit = Arc::new(AuditLog::open(&dir.path().join("audit")).unwrap());
        let models = vec![ServiceModel {
            id: ModelId::parse(MODEL).unwrap(),
            dim: DIM,
            kind: ModalityKind::Face,
            calibration: calibration(),
        }];
        let state = Arc::new(AppState::with_models(config.clone(), audit, models));
        if ready {
            attach_engine(&state);
        }
        TestApp { _dir: dir, state }
    }

    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (s, _, v) = self.call_raw(method, uri, key, body.map(|b| b.to_string()), &[]).await;
        (s, serde_json::from_str(&v).unwrap_or(Value::String(v)))
    }

    /// `POST uri` with a JSON body, authenticated with `key`.
    pub async fn post(&self, uri: &str, key: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", uri, Some(key), Some(body)).await
    }

    /// `GET uri`, authenticated with `key`.
    pub async fn get(&self, uri: &str, key: &str) -> (StatusCode, Value) {
        self.call("GET", uri, Some(key), None).await
    }

    /// `DELETE uri`, authenticated with `key`.
    pub async fn delete(&self, uri: &str, key: &str) -> (StatusCode, Value) {
        self.call("DELETE", uri, Some(key), None).await
    }

    pub async fn call_raw(
        &self,
        method: &str,
        uri: &str,
        key: Option<&str>,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        for (h, v) in headers {
            req = req.header(*h, *v);
        }
        let req = req.body(body.map_or_else(Body::empty, Body::from)).unwrap();
        let resp = biomatch_matcher::app(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// The synthetic population the test subjects are drawn from.
fn population() -> biomatch_datasets::Population {
    biomatch_datasets::Population::new(biomatch_datasets::PopulationConfig {
        identities: 1_000_000,
        ..Default::default()
    })
    .unwrap()
}

/// A deterministic unit-ish vector for subject `i`, and a noisy probe of it.
pub fn vector(i: u64) -> Vec<f32> {
    population().sample(i, 0)
}

pub fn probe_vector(i: u64) -> Vec<f32> {
    population().sample(i, 1)
}

pub fn face(v: Vec<f32>) -> Value {
    json!({ "template": { "model": MODEL, "vector": v } })
}

pub fn enroll_body(id: &str, i: u64) -> Value {
    json!({ "subject_id": id, "face": face(vector(i)) })
}

/// Assert the error envelope: status, code, a request id.
pub fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "body: {}", got.1);
    assert_eq!(got.1["code"], code, "body: {}", got.1);
    assert!(got.1["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(got.1["request_id"].as_str().map(str::len), Some(32), "body: {}", got.1);
}

/// Now, as Unix time in seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}
