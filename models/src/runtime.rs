//! ONNX Runtime: the process-wide environment (the library is loaded dynamically, from the
//! onnxruntime wheel's `libonnxruntime.so`), and pools of sessions — `Session::run` needs
//! exclusive access, so concurrent extractions each borrow a session of the pool.

use crate::ExtractError;
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Where the model files and the runtime library are.
#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeConfig {
    /// `libonnxruntime.so` (default: `$ORT_DYLIB_PATH`, else `.setup/onnxruntime/…`).
    pub dylib: PathBuf,
    /// Folder with `yunet.onnx` and `sface.onnx` (default: `$BIOMATCH_MODELS_DIR`, else `.setup/models`).
    pub models_dir: PathBuf,
    /// Sessions per model: extractions that can run at once.
    pub sessions: usize,
    /// Threads each session uses inside an operator.
    pub intra_threads: usize,
    /// Ask for the CUDA execution provider (needs the `cuda` feature and the GPU runtime;
    /// ONNX Runtime falls back to the CPU when it cannot use it).
    pub cuda: bool,
}

impl RuntimeConfig {
    /// Defaults relative to `root` (the project directory), overridable by environment.
    pub fn from_root(root: &Path) -> Self {
        let dylib = std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".setup/onnxruntime/libonnxruntime.so.1.31.1"));
        let models_dir = std::env::var_os("BIOMATCH_MODELS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".setup/models"));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self { dylib, models_dir, sessions: cores, intra_threads: 1, cuda: false }
    }
}

static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, loading the library on first use. Later calls
/// return the same environment whatever path they name (a process loads one runtime).
pub fn environment(dylib: &Path) -> Result<Environment, ExtractError> {
    ENV.get_or_init(|| {
        if !dylib.exists() {
            return Err(format!(
                "ONNX Runtime library {} not found: run scripts/fetch-models.sh (or set ORT_DYLIB_PATH)",
                dylib.display()
            ));
        }
        ort::init_from(dylib)
            .map_err(|e| format!("cannot load {}: {e}", dylib.display()))?
            .with_name("biomatch")
            .build()
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(ExtractError::Runtime)
}

/// A fixed set of sessions of one model.
#[derive(Debug)]
pub struct SessionPool {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
}

impl SessionPool {
    pub fn new(cfg: &RuntimeConfig, model: &Path) -> Result<Self, ExtractError> {
        if !model.exists() {
            return Err(ExtractError::Runtime(format!(
                "model {} not found: run scripts/fetch-models.sh",
                model.display()
            )));
        }
        let env = environment(&cfg.dylib)?;
        let rt = |e: ort::Error<ort::session::builder::SessionBuilder>| {
            ExtractError::Runtime(e.to_string())
        };
        let mut sessions = Vec::with_capacity(cfg.sessions.max(1));
        for _ in 0..cfg.sessions.max(1) {
            let mut b = Session::builder(&env)?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(rt)?
                .with_intra_threads(cfg.intra_threads.max(1))
                .map_err(rt)?;
            if cfg.cuda {
                b = with_cuda(b)?;
            }
            sessions.push(Mutex::new(b.commit_from_file(model)?));
        }
        Ok(Self { sessions, next: AtomicUsize::new(0) })
    }

    /// Run `f` with a session of the pool: a free one if there is one, else wait for the next
    /// in turn.
    pub fn with<R>(&self, f: impl FnOnce(&mut Session) -> R) -> R {
        let n = self.sessions.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Some(mut s) = self.sessions[(start + i) % n].try_lock() {
                return f(&mut s);
            }
        }
        f(&mut self.sessions[start % n].lock())
    }

    /// Run the model on one f32 tensor `data` of `shape` fed as `input`, and return its output
    /// `output` flattened.
    pub fn run_one(
        &self,
        input: &str,
        shape: &[usize],
        data: &[f32],
        output: &str,
    ) -> Result<Vec<f32>, ExtractError> {
        self.with(|s| {
            let t = ort::value::TensorRef::from_array_view((shape.to_vec(), data))?;
            let out = s.run(ort::inputs![input => t])?;
            let (_, v) = out[output].try_extract_tensor::<f32>()?;
            Ok(v.to_vec())
        })
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(feature = "cuda")]
fn with_cuda(
    b: ort::session::builder::SessionBuilder,
) -> Result<ort::session::builder::SessionBuilder, ExtractError> {
    tracing::info!("requesting the CUDA execution provider; ONNX Runtime falls back to the CPU without a usable GPU");
    b.with_execution_providers([ort::ep::CUDA::default().build()])
        .map_err(|e| ExtractError::Runtime(e.to_string()))
}

#[cfg(not(feature = "cuda"))]
fn with_cuda(
    b: ort::session::builder::SessionBuilder,
) -> Result<ort::session::builder::SessionBuilder, ExtractError> {
    tracing::warn!("CUDA requested but this build has no `cuda` feature: running on the CPU");
    Ok(b)
}
