//! `biomatch serve`: bind, load the gallery in the background (readiness follows), serve until
//! SIGTERM/Ctrl-C, then cancel index builds, finish the requests in flight and exit. The
//! connections themselves (limits, header/idle timeouts, graceful drain) are `crate::conn`.

use crate::audit::AuditLog;
use crate::config::Config;
use crate::state::{engine_models_of, model_specs_of, AppState, ServiceModel};
use biomatch_core::CalibrationTable;
use biomatch_engine::{Engine, Journal, Settings};
use biomatch_gallery::ann::LoadOptions;
use biomatch_gallery::{legacy, FingerGallery, FingerSearchParams, Gallery, Store, StoreOptions};
use std::sync::Arc;
use tokio::sync::watch;

/// Open the store, load the current index generations and build the finger search, then the
/// engine over them (CPU and disk work: call off the async threads). A store of the earlier
/// two-store layout is refused with the command that converts it.
pub fn load_engine(state: &AppState) -> Result<Engine, String> {
    let journal: Arc<dyn Journal> = state.audit.clone();
    let engine = open_engine(
        &state.config,
        &state.models,
        state.finger_calibration.as_ref(),
        Some(journal),
        false,
    )?;
    // Audit records of writes a crash kept out of the audit files (they are in the store's log).
    engine
        .recover_journal()
        .map_err(|e| format!("cannot recover the audit records of the store's log: {e}"))?;
    Ok(engine)
}

/// The engine over the store at `cfg.data` with `models` (and fingers, scored with
/// `finger_calibration`, when configured): the store opened (`read_only`: a snapshot next to a
/// running service, as the offline tools open it), its current index generations loaded.
pub fn open_engine(
    cfg: &Config,
    models: &[ServiceModel],
    finger_calibration: Option<&CalibrationTable>,
    journal: Option<Arc<dyn Journal>>,
    read_only: bool,
) -> Result<Engine, String> {
    let specs = model_specs_of(models, cfg.fingerprints.enabled);
    let mut opts = StoreOptions::new(specs.clone());
    // Checkpoints run on the maintenance thread, off the request path.
    opts.auto_checkpoint = false;
    if legacy::needs_conversion(&cfg.data) {
        return Err(format!(
            "{} holds a store of the earlier layout (fingers in {}/{}); convert it once with \
             `biomatch convert-store --data {}`",
            cfg.data.display(),
            cfg.data.display(),
            legacy::LEGACY_FINGERS_DIR,
            cfg.data.display()
        ));
    }
    let store = if read_only {
        Store::open_read_only(&cfg.data, opts)
    } else {
        Store::open(&cfg.data, opts)
    }
    .map_err(|e| format!("cannot open the store at {}: {e}", cfg.data.display()))?;
    let rec = store.recovery();
    if rec.wal_torn_bytes_discarded > 0 || !rec.leftover_files_removed.is_empty() {
        tracing::warn!(recovery = ?rec, "the store recovered from an unclean shutdown");
    }
    tracing::info!(subjects = store.len(), "store open");
    let g = Gallery::new(Arc::new(store));
    let faiss = biomatch_gallery::ann::ffi::kernels();
    tracing::info!(kernels = faiss.kernels, reason = %faiss.reason, "FAISS build chosen");
    if cfg.search.load_index {
        let opts = LoadOptions {
            memory_budget: cfg.search.memory_budget_mb.map(|m| m << 20),
            ..LoadOptions::default()
        };
        for m in specs {
            match g.load_index(&m.model, &opts) {
                Ok(Some(i)) => {
                    tracing::info!(model = %m.model, generation = i.manifest.generation, "index loaded")
                }
                Ok(None) => {
                    tracing::info!(model = %m.model, "no index generation yet: exact search")
                }
                // Serving exact is slower but correct; the operator sees why.
                Err(e) => {
                    tracing::error!(model = %m.model, error = %e, "index generation not loaded: exact search")
                }
            }
        }
    }
    let fingers = match (finger_calibration, cfg.fingerprints.enabled) {
        (Some(cal), true) => {
            let fp = &cfg.fingerprints;
            let params = FingerSearchParams {
                penetration: fp.penetration,
                min_candidates: fp.min_candidates,
                list_factor: fp.list_factor,
                exhaustive_below: fp.exhaustive_below,
                ..FingerSearchParams::default()
            };
            // Nothing to build: codes and minutiae are in the store (and its index generations).
            let f = FingerGallery::shipped(params)
                .map_err(|e| format!("cannot set up the finger search: {e}"))?;
            let (subjects, fingers) = g.store().finger_counts();
            tracing::info!(subjects, fingers, code_model = %f.code_model(), "fingers ready");
            Some((Arc::new(f), cal.clone()))
        }
        _ => None,
    };
    let settings = Settings { k_prime: cfg.search.k_prime, nprobe: None };
    Ok(Engine::new(Arc::new(g), fingers, engine_models_of(models), settings, journal))
}

/// Checkpoints off the request path: a thread that asks the engine every `period` whether the
/// store's log is due for one, until the engine is dropped.
pub fn spawn_maintenance(engine: &Arc<Engine>, period: std::time::Duration) {
    let weak = Arc::downgrade(engine);
    let spawned = std::thread::Builder::new().name("biomatch-maintenance".into()).spawn(move || {
        loop {
            std::thread::sleep(period);
            let Some(e) = weak.upgrade() else { return };
            if let Err(err) = e.maintain() {
                tracing::error!(error = %err, "checkpoint failed; the write-ahead log keeps the data");
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the maintenance thread");
    }
}

/// Join the cluster `[cluster]` names: each shard replica this node is given is a store of its
/// own under `<data>/shards/<shard>/`, opened like the single-node store, with the journal that
/// persists its applied log position.
async fn join_cluster(state: &Arc<AppState>) -> Result<Arc<biomatch_cluster::Node>, String> {
    let cfg = state.config.clone();
    let models = state.models.clone();
    let finger_calibration = state.finger_calibration.clone();
    let factory: biomatch_cluster::EngineFactory = Arc::new(move |_shard, dir, journal| {
        let mut c = cfg.clone();
        c.data = dir.to_path_buf();
        open_engine(&c, &models, finger_calibration.as_ref(), Some(journal), false)
    });
    let calibrations = biomatch_cluster::Calibrations {
        models: state.engine_models(),
        fingers: state.finger_calibration.clone(),
    };
    biomatch_cluster::Node::start(
        state.config.cluster.clone(),
        format!("http://{}", state.config.listen),
        state.config.data.clone(),
        calibrations,
        factory,
    )
    .await
}

/// Checkpoints of a cluster node's replicas, off the request path (as [`spawn_maintenance`]).
fn spawn_cluster_maintenance(node: &Arc<biomatch_cluster::Node>, period: std::time::Duration) {
    let weak = Arc::downgrade(node);
    let spawned = std::thread::Builder::new().name("biomatch-maintenance".into()).spawn(move || {
        loop {
            std::thread::sleep(period);
            let Some(n) = weak.upgrade() else { return };
            for l in n.local_shards() {
                if let Err(err) = l.maintain() {
                    tracing::error!(shard = l.id, error = %err, "checkpoint failed; the write-ahead log keeps the data");
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the maintenance thread");
    }
}

async fn shutdown_signal(mut fatal: watch::Receiver<Option<String>>) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    let failed = async {
        // The loader drops the sender once the gallery is attached: then only signals stop us.
        if fatal.wait_for(Option::is_some).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("interrupt: finishing requests in flight"),
        _ = term => tracing::info!("SIGTERM: finishing requests in flight"),
        _ = failed => {}
    }
}

/// Build the face extractor the configuration asks for. `None` when it is turned off
/// (`extractors.face.enabled = false`), or when it cannot be loaded (face models or ONNX Runtime
/// not installed): the service then starts anyway with image extraction off and says why; face
/// images get 422 `extractor_unavailable`, templates keep working.
pub fn face_extractor(config: &Config) -> Option<Arc<dyn biomatch_models::Extractor>> {
    use biomatch_models::face::{FaceConfig, FaceExtractor, MultiFacePolicy};
    use biomatch_models::runtime::RuntimeConfig;
    use biomatch_models::Extractor as _;
    let f = &config.extractors.face;
    if !f.enabled {
        tracing::info!("face image extraction is off (extractors.face.enabled = false)");
        return None;
    }
    let mut rt = RuntimeConfig::from_root(std::path::Path::new("."));
    if let Some(d) = &f.models_dir {
        rt.models_dir = d.clone();
    }
    if let Some(l) = &f.ort_dylib {
        rt.dylib = l.clone();
    }
    if f.sessions > 0 {
        rt.sessions = f.sessions;
    }
    rt.intra_threads = f.intra_threads;
    rt.cuda = f.cuda;
    let mut fc = FaceConfig::new(rt);
    // Config::validate checked the id.
    fc.model = f.face_model().unwrap_or(biomatch_models::face::FaceModel::SFace);
    fc.policy =
        if f.multi_face == "reject" { MultiFacePolicy::Reject } else { MultiFacePolicy::Largest };
    fc.min_inter_eye_px = f.min_inter_eye_px;
    fc.limits = f.image_limits();
    fc.eye_model = f.eye_model;
    match FaceExtractor::new(fc) {
        Ok(x) => {
            tracing::info!(model = %x.model(), "face extractor loaded");
            Some(Arc::new(x))
        }
        Err(e) => {
            tracing::warn!(
                reason = %e,
                "face extractor not loaded: serving without face image extraction (face images \
                 get 422 extractor_unavailable; templates work). To fix: install the face models \
                 and ONNX Runtime with scripts/fetch-models.sh, or point extractors.face.models_dir \
                 / extractors.face.ort_dylib at them; set extractors.face.enabled = false to turn \
                 image extraction off deliberately"
            );
            None
        }
    }
}

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let key = crate::audit::load_or_create_key(&config.audit_key_file())?;
    let audit = Arc::new(AuditLog::open_with_key(&config.audit_dir(), key)?);
    // Calibration first: a bad table stops the start-up before the slower model loading.
    let mut state = AppState::new(config, audit).map_err(anyhow::Error::msg)?;
    if let Some(f) = face_extractor(&state.config) {
        state = state.with_face(f);
    }
    let state = Arc::new(state);
    let listener = tokio::net::TcpListener::bind(state.config.listen).await?;
    tracing::info!(
        listen = %state.config.listen,
        data = %state.config.data.display(),
        auth = state.auth_enabled(),
        "biomatch serving (not ready until the gallery is loaded)"
    );
    let (fatal_tx, fatal_rx) = watch::channel(None);
    let fatal_rx_for_signal = fatal_rx.clone();
    let st = state.clone();
    let runtime = tokio::runtime::Handle::current();
    if state.config.cluster.enabled {
        tokio::spawn(async move {
            match join_cluster(&st).await {
                Ok(node) => {
                    spawn_cluster_maintenance(&node, std::time::Duration::from_millis(500));
                    if let Err(e) = crate::jobs::start(&st) {
                        tracing::error!(error = %e, "the job queue could not be opened");
                    }
                    st.attach_cluster(node);
                    tracing::info!("joined; ready once this node's replicas caught up");
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot join the cluster; shutting down");
                    let _ = fatal_tx.send(Some(e));
                }
            }
        });
    } else {
        tokio::task::spawn_blocking(move || match load_engine(&st) {
            Ok(e) => {
                let e = Arc::new(e);
                spawn_maintenance(&e, std::time::Duration::from_millis(500));
                // The queue is read before readiness, so a ready service knows every job.
                if let Err(e) = crate::jobs::start(&st) {
                    // Jobs are refused (not_ready); the synchronous endpoints serve.
                    tracing::error!(error = %e, "the job queue could not be opened");
                }
                st.attach(e);
                crate::recall_monitor::spawn(&st);
                if st.config.mosip.enabled {
                    // The adapter consumes only once the engine is there: every request it takes
                    // is served.
                    let _guard = runtime.enter();
                    crate::mosip::spawn(st.clone());
                }
                tracing::info!("ready");
            }
            Err(e) => {
                tracing::error!(error = %e, "gallery failed to load; shutting down");
                let _ = fatal_tx.send(Some(e));
            }
        });
    }
    let app = crate::app(state.clone());
    let limits = crate::conn::ConnLimits::from_config(&state.config.limits);
    let st = state.clone();
    let shutdown = async move {
        shutdown_signal(fatal_rx_for_signal).await;
        // Builds are cancelled first: a caller waiting on one gets its answer, so the drain
        // does not wait for a build to finish.
        st.builds.cancel_all();
        // A deduplication run stops at its next checkpoint; it resumes with `"resume": job_id`.
        st.dedup.stop_all();
    };
    crate::conn::serve_connections(listener, app, limits, shutdown).await?;
    // A build still inside a FAISS call (training) stops at its next check; the process does not
    // wait for it beyond a moment: nothing of it is published, its temporary files are removed
    // by the next build.
    if !state.builds.wait_idle(std::time::Duration::from_secs(2)) {
        tracing::warn!("an index build is still stopping; exiting without it (nothing published)");
    }
    if !state.dedup.wait_idle(std::time::Duration::from_secs(5)) {
        tracing::warn!("a deduplication run is still stopping; its last checkpoint stands");
    }
    if let Some(e) = fatal_rx.borrow().clone() {
        anyhow::bail!(e);
    }
    tracing::info!("stopped");
    Ok(())
}
