//! The one place biomatch calls FAISS: a small safe wrapper over `faiss-sys`'s C API.
//!
//! Why not the safe `faiss` crate: its `Index` needs `&mut self` to search (we search one index
//! from many threads), and it lacks per-search `nprobe` (`SearchParametersIVF`), cloning a
//! trained index, and the real memory-map read flag. Everything here is a thin RAII handle plus
//! one return-code → `Result` helper.
//!
//! FAISS reports most misuse by throwing C++ exceptions, which the C API turns into a non-zero
//! return code and a thread-local message; but some checks are `FAISS_ASSERT`s that abort the
//! process. So every call here validates its arguments (dimensions, buffer sizes, k, nprobe,
//! training state, read-only mappings) *before* crossing the FFI boundary.

use faiss_sys as sys;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int};
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};
use std::sync::OnceLock;
use sys::idx_t;

/// Declares [`Api`], FAISS's C API as a table of function pointers, filled either from the
/// statically linked build ([`Api::linked`]) or from a shared library loaded at run time
/// ([`Api::load`]); each entry is `field = c_symbol: fn(args) -> ret`.
macro_rules! faiss_api {
    ($($field:ident = $sym:ident : fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        /// FAISS's C API, one build of it: every call in this module goes through the table of
        /// the index it concerns, so an index is always searched, copied and freed by the build
        /// that made it.
        pub struct Api {
            kernels: &'static str,
            $($field: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
        }

        impl std::fmt::Debug for Api {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("Api").field("kernels", &self.kernels).finish_non_exhaustive()
            }
        }

        impl Api {
            /// The FAISS linked into this binary (faiss-sys, compiled for x86-64-v3).
            fn linked() -> Api {
                Api { kernels: "avx2", $($field: sys::$sym,)* }
            }

            /// FAISS's C API from the shared library at `path` (built by
            /// `scripts/build-faiss-avx512.sh`); kept loaded for the life of the process.
            fn load(path: &Path, kernels: &'static str) -> std::result::Result<Api, String> {
                let c = path_cstring(path).map_err(|e| e.0)?;
                // SAFETY: `c` is a valid C string. The library's initialisers are FAISS's static
                // constructors (no side effects beyond its own globals); RTLD_LOCAL keeps its
                // symbols out of the global namespace, and it only exports the C API.
                let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
                if handle.is_null() {
                    // SAFETY: dlerror returns null or a NUL-terminated string valid until the
                    // next dl* call on this thread; copied out at once.
                    let why = unsafe {
                        let e = libc::dlerror();
                        if e.is_null() { "unknown error".into() } else { CStr::from_ptr(e).to_string_lossy().into_owned() }
                    };
                    return Err(format!("dlopen {}: {why}", path.display()));
                }
                Ok(Api {
                    kernels,
                    $($field: {
                        // SAFETY: `handle` is a live library handle (never closed) and the name
                        // is NUL-terminated.
                        let p = unsafe { libc::dlsym(handle, concat!(stringify!($sym), "\0").as_ptr().cast()) };
                        if p.is_null() {
                            return Err(format!("{}: no symbol {}", path.display(), stringify!($sym)));
                        }
                        // SAFETY: the symbol is FAISS's C API function of that name, built from
                        // the same headers as faiss-sys's bindings (same FAISS release), so it has
                        // exactly this signature; the library is never unloaded.
                        unsafe { std::mem::transmute::<*mut libc::c_void, unsafe extern "C" fn($($arg),*) $(-> $ret)?>(p) }
                    },)*
                })
            }
        }
    };
}

faiss_api! {
    get_last_error = faiss_get_last_error: fn() -> *const c_char;
    index_factory = faiss_index_factory: fn(*mut *mut sys::FaissIndex, c_int, *const c_char, sys::FaissMetricType) -> c_int;
    index_free = faiss_Index_free: fn(*mut sys::FaissIndex);
    index_d = faiss_Index_d: fn(*const sys::FaissIndex) -> c_int;
    index_ntotal = faiss_Index_ntotal: fn(*const sys::FaissIndex) -> idx_t;
    index_is_trained = faiss_Index_is_trained: fn(*const sys::FaissIndex) -> c_int;
    index_train = faiss_Index_train: fn(*mut sys::FaissIndex, idx_t, *const f32) -> c_int;
    index_add = faiss_Index_add: fn(*mut sys::FaissIndex, idx_t, *const f32) -> c_int;
    index_add_with_ids = faiss_Index_add_with_ids: fn(*mut sys::FaissIndex, idx_t, *const f32, *const idx_t) -> c_int;
    index_search_with_params = faiss_Index_search_with_params: fn(*const sys::FaissIndex, idx_t, *const f32, idx_t, *const sys::FaissSearchParameters, *mut f32, *mut idx_t) -> c_int;
    clone_index = faiss_clone_index: fn(*const sys::FaissIndex, *mut *mut sys::FaissIndex) -> c_int;
    write_index_fname = faiss_write_index_fname: fn(*const sys::FaissIndex, *const c_char) -> c_int;
    read_index_fname = faiss_read_index_fname: fn(*const c_char, c_int, *mut *mut sys::FaissIndex) -> c_int;
    ivf_cast = faiss_IndexIVF_cast: fn(*mut sys::FaissIndex) -> *mut sys::FaissIndexIVF;
    ivf_nlist = faiss_IndexIVF_nlist: fn(*const sys::FaissIndexIVF) -> usize;
    ivf_quantizer = faiss_IndexIVF_quantizer: fn(*const sys::FaissIndexIVF) -> *mut sys::FaissIndex;
    flat_cast = faiss_IndexFlat_cast: fn(*mut sys::FaissIndex) -> *mut sys::FaissIndexFlat;
    idmap_cast = faiss_IndexIDMap_cast: fn(*mut sys::FaissIndex) -> *mut sys::FaissIndexIDMap;
    idmap_sub_index = faiss_IndexIDMap_sub_index: fn(*mut sys::FaissIndexIDMap) -> *mut sys::FaissIndex;
    idmap2_cast = faiss_IndexIDMap2_cast: fn(*mut sys::FaissIndex) -> *mut sys::FaissIndexIDMap2;
    idmap2_sub_index = faiss_IndexIDMap2_sub_index: fn(*mut sys::FaissIndexIDMap2) -> *mut sys::FaissIndex;
    pretransform_cast = faiss_IndexPreTransform_cast: fn(*mut sys::FaissIndex) -> *mut sys::FaissIndexPreTransform;
    pretransform_index = faiss_IndexPreTransform_index: fn(*const sys::FaissIndexPreTransform) -> *mut sys::FaissIndex;
    parameter_space_new = faiss_ParameterSpace_new: fn(*mut *mut sys::FaissParameterSpace) -> c_int;
    parameter_space_free = faiss_ParameterSpace_free: fn(*mut sys::FaissParameterSpace);
    parameter_space_set = faiss_ParameterSpace_set_index_parameter: fn(*const sys::FaissParameterSpace, *mut sys::FaissIndex, *const c_char, f64) -> c_int;
    search_params_ivf_new = faiss_SearchParametersIVF_new_with: fn(*mut *mut sys::FaissSearchParametersIVF, *mut sys::FaissIDSelector, usize, usize) -> c_int;
    search_params_ivf_free = faiss_SearchParametersIVF_free: fn(*mut sys::FaissSearchParametersIVF);
}

/// File name of the AVX-512 build of FAISS (`scripts/build-faiss-avx512.sh`).
pub const AVX512_LIBRARY: &str = "libbiomatch_faiss_avx512.so";

/// Which FAISS build this process uses, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FaissKernels {
    /// `"avx512"` (the library loaded at run time) or `"avx2"` (the linked build).
    pub kernels: &'static str,
    /// The library file when `avx512`.
    pub library: Option<PathBuf>,
    /// Why: the CPU's features, `BIOMATCH_FAISS_SIMD`, or the library not found / not loadable.
    pub reason: String,
}

struct Selected {
    api: &'static Api,
    info: FaissKernels,
}

static SELECTED: OnceLock<Selected> = OnceLock::new();
static LINKED: OnceLock<&'static Api> = OnceLock::new();

fn linked_api() -> &'static Api {
    LINKED.get_or_init(|| Box::leak(Box::new(Api::linked())))
}

/// The CPU has the AVX-512 subsets FAISS's avx512 level is compiled for (F, CD, VL, DQ, BW).
pub fn cpu_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512cd")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Where the AVX-512 library is looked for, in order: `BIOMATCH_FAISS_AVX512_LIB`, next to the
/// executable (and its parent: `target/<profile>/deps` for test binaries), the checkout's
/// `.setup/faiss-avx512/` (where `scripts/setup.sh` builds it).
fn avx512_candidates() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("BIOMATCH_FAISS_AVX512_LIB") {
        return vec![PathBuf::from(p)];
    }
    let mut out = Vec::new();
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf))
    {
        out.push(dir.join(AVX512_LIBRARY));
    }
    out.push(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.setup/faiss-avx512").join(AVX512_LIBRARY),
    );
    out
}

fn select() -> Selected {
    let linked = |reason: String| Selected {
        api: linked_api(),
        info: FaissKernels { kernels: "avx2", library: None, reason },
    };
    let asked = std::env::var("BIOMATCH_FAISS_SIMD").unwrap_or_default();
    match asked.trim() {
        "" | "auto" | "avx512" => {}
        "avx2" => return linked("BIOMATCH_FAISS_SIMD=avx2".into()),
        other => {
            tracing::warn!(
                value = other,
                "BIOMATCH_FAISS_SIMD is not auto, avx2 or avx512; using auto"
            );
        }
    }
    if !cpu_has_avx512() {
        return linked("the CPU has no AVX-512 (F, CD, VL, DQ, BW)".into());
    }
    let mut tried = Vec::new();
    for path in avx512_candidates() {
        if !path.is_file() {
            tried.push(format!("{}: absent", path.display()));
            continue;
        }
        match Api::load(&path, "avx512") {
            Ok(api) => {
                let library = path.canonicalize().unwrap_or(path);
                return Selected {
                    api: Box::leak(Box::new(api)),
                    info: FaissKernels {
                        kernels: "avx512",
                        library: Some(library),
                        reason: "the CPU has AVX-512".into(),
                    },
                };
            }
            Err(e) => tried.push(e),
        }
    }
    let reason = format!("no loadable {AVX512_LIBRARY} ({})", tried.join("; "));
    tracing::warn!(%reason, "FAISS runs its AVX2 kernels on an AVX-512 CPU");
    linked(reason)
}

fn api() -> &'static Api {
    SELECTED.get_or_init(select).api
}

/// The FAISS build new indexes use (chosen once per process, at first use).
pub fn kernels() -> &'static FaissKernels {
    &SELECTED.get_or_init(select).info
}

/// FAISS's `IO_FLAG_MMAP` (`IO_FLAG_SKIP_IVF_DATA | 0x646f0000`): inverted lists are mapped from
/// the file instead of read into memory. (`faiss::IoFlags::MEM_MAP` in the safe crate is the
/// skip-storage flag, not this.)
const IO_FLAG_MMAP: c_int = 0x646f_0008;

/// Largest `k` we ask FAISS for in one search (finger-code pre-selection lists are a share of
/// a large gallery; results take 12 bytes per (probe, k)).
pub const MAX_K: usize = 1 << 17;

/// An error reported by FAISS or caught by the wrapper before calling it.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[error("faiss: {0}")]
pub struct FaissError(pub String);

type Result<T> = std::result::Result<T, FaissError>;

fn check(api: &Api, rc: c_int, what: &str) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: `faiss_get_last_error` returns a pointer to a thread-local, NUL-terminated string
    // owned by FAISS (or null); it stays valid until the next FAISS call on this thread, and we
    // copy it out immediately.
    let msg = unsafe {
        let p = (api.get_last_error)();
        if p.is_null() {
            "unknown error".to_owned()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    // FAISS messages can be long (they include the C++ source location); keep the first line.
    let first = msg.lines().find(|l| !l.trim().is_empty()).unwrap_or("unknown error");
    Err(FaissError(format!("{what}: {}", first.trim())))
}

fn bad(msg: impl Into<String>) -> FaissError {
    FaissError(msg.into())
}

/// Restrict FAISS's OpenMP parallelism on the calling thread. We parallelise across shards and
/// probes with rayon; letting every rayon worker also fork an OpenMP team oversubscribes the
/// cores. Building (train/add) uses all cores instead.
pub fn set_omp_threads(n: usize) {
    unsafe extern "C" {
        fn omp_set_num_threads(n: c_int);
    }
    // SAFETY: libgomp is linked by faiss-sys; `omp_set_num_threads` only sets an integer ICV of
    // the calling thread and accepts any positive value.
    unsafe { omp_set_num_threads(n.clamp(1, 1024) as c_int) }
}

/// An owned FAISS index (CPU).
#[derive(Debug)]
pub struct FaissIndex {
    ptr: NonNull<sys::FaissIndex>,
    /// The FAISS build that made this index, and so the one that searches and frees it.
    api: &'static Api,
    dim: usize,
    /// Loaded with the memory-map flag: FAISS must never write into it.
    read_only: bool,
}

// SAFETY: a FAISS CPU index is a plain heap object without thread affinity, so it may move
// between threads (Send). Its `search` is a `const` method that keeps no per-call state in the
// index for the index types we build (Flat, IVF*, HNSW*), so concurrent searches through `&self`
// are safe (Sync); every mutating call here takes `&mut self`.
unsafe impl Send for FaissIndex {}
// SAFETY: see above.
unsafe impl Sync for FaissIndex {}

impl Drop for FaissIndex {
    fn drop(&mut self) {
        // SAFETY: `ptr` was produced by FAISS (this `api`), is owned uniquely by this handle and
        // freed once.
        unsafe { (self.api.index_free)(self.ptr.as_ptr()) }
    }
}

impl FaissIndex {
    fn from_raw(
        api: &'static Api,
        p: *mut sys::FaissIndex,
        read_only: bool,
        what: &str,
    ) -> Result<Self> {
        let ptr = NonNull::new(p).ok_or_else(|| bad(format!("{what}: FAISS returned no index")))?;
        // SAFETY: `ptr` is a valid index just returned by FAISS through `api`.
        let d = unsafe { (api.index_d)(ptr.as_ptr()) };
        let index = FaissIndex { ptr, api, dim: d.max(0) as usize, read_only };
        if d <= 0 {
            return Err(bad(format!("{what}: index has dimension {d}")));
        }
        Ok(index)
    }

    /// Build an (untrained) index from a factory string, inner-product metric.
    pub fn factory(dim: usize, description: &str) -> Result<Self> {
        Self::factory_with(api(), dim, description)
    }

    fn factory_with(api: &'static Api, dim: usize, description: &str) -> Result<Self> {
        if dim == 0 || dim > 65_536 {
            return Err(bad(format!("dimension {dim} out of range")));
        }
        let desc = CString::new(description).map_err(|_| bad("factory string contains NUL"))?;
        let mut p = ptr::null_mut();
        // SAFETY: `desc` is a valid C string for the duration of the call; `p` is an out-pointer.
        let rc = unsafe {
            (api.index_factory)(
                &mut p,
                dim as c_int,
                desc.as_ptr(),
                sys::FaissMetricType_METRIC_INNER_PRODUCT,
            )
        };
        check(api, rc, &format!("index_factory({description:?})"))?;
        Self::from_raw(api, p, false, "index_factory")
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The FAISS build behind this index: `"avx512"` or `"avx2"`.
    pub fn kernels(&self) -> &'static str {
        self.api.kernels
    }

    pub fn ntotal(&self) -> u64 {
        // SAFETY: valid index pointer; a const accessor.
        unsafe { (self.api.index_ntotal)(self.ptr.as_ptr()) as u64 }
    }

    pub fn is_trained(&self) -> bool {
        // SAFETY: valid index pointer; a const accessor.
        unsafe { (self.api.index_is_trained)(self.ptr.as_ptr()) != 0 }
    }

    fn rows(&self, x: &[f32], what: &str) -> Result<usize> {
        if x.is_empty() || !x.len().is_multiple_of(self.dim) {
            return Err(bad(format!(
                "{what}: {} floats is not a whole number of {}-d vectors",
                x.len(),
                self.dim
            )));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!("{what}: non-finite value at {i}")));
        }
        Ok(x.len() / self.dim)
    }

    fn writable(&self, what: &str) -> Result<()> {
        if self.read_only {
            return Err(bad(format!("{what}: index is memory-mapped read-only")));
        }
        Ok(())
    }

    /// Train on `x` (row-major, `n × dim`).
    pub fn train(&mut self, x: &[f32]) -> Result<()> {
        self.writable("train")?;
        let n = self.rows(x, "train")?;
        // SAFETY: `x` holds exactly `n × dim` floats (checked) and outlives the call.
        let rc = unsafe { (self.api.index_train)(self.ptr.as_ptr(), n as i64, x.as_ptr()) };
        check(self.api, rc, "train")
    }

    /// Add vectors with explicit ids (our row ids).
    pub fn add_with_ids(&mut self, x: &[f32], ids: &[i64]) -> Result<()> {
        self.writable("add")?;
        let n = self.rows(x, "add")?;
        if ids.len() != n {
            return Err(bad(format!("add: {} ids for {n} vectors", ids.len())));
        }
        if !self.is_trained() {
            return Err(bad("add: index is not trained"));
        }
        // SAFETY: `x` holds `n × dim` floats and `ids` `n` ids (checked); both outlive the call.
        check(
            self.api,
            unsafe {
                (self.api.index_add_with_ids)(self.ptr.as_ptr(), n as i64, x.as_ptr(), ids.as_ptr())
            },
            "add_with_ids",
        )
    }

    /// Whether this is an IVF index (per-search `nprobe` applies).
    pub fn is_ivf(&self) -> bool {
        // SAFETY: `faiss_IndexIVF_cast` is a `dynamic_cast` on a valid pointer; null if not IVF.
        !unsafe { (self.api.ivf_cast)(self.ptr.as_ptr()) }.is_null()
    }

    /// Whether the index keeps the ids given to `add_with_ids` (and so answers with our row
    /// ids): an `IDMap`/`IDMap2` wrapper, an IVF index, or a pre-transform (PCA, OPQ, …) over
    /// one of those. Flat, PQ, HNSW, LSH, refine and fast-scan indexes without an `IDMap` do not
    /// implement `add_with_ids`.
    pub fn keeps_ids(&self) -> bool {
        // SAFETY: a valid index pointer, owned by `self` for the duration of the call.
        unsafe { keeps_ids(self.api, self.ptr.as_ptr()) }
    }

    /// Whether a pre-transform (PCA, OPQ, ITQ, random rotation, …) sits at the top or under an
    /// `IDMap`/`IDMap2` wrapper.
    pub fn has_pretransform(&self) -> bool {
        // SAFETY: casts of a valid pointer owned by `self`; sub-indexes are owned by it.
        unsafe {
            let mut p = self.ptr.as_ptr();
            loop {
                if !(self.api.pretransform_cast)(p).is_null() {
                    return true;
                }
                let m = (self.api.idmap_cast)(p);
                let m2 = (self.api.idmap2_cast)(p);
                p = if !m.is_null() {
                    (self.api.idmap_sub_index)(m)
                } else if !m2.is_null() {
                    (self.api.idmap2_sub_index)(m2)
                } else {
                    return false;
                };
                if p.is_null() {
                    return false;
                }
            }
        }
    }

    /// The coarse quantizer of the IVF index found under `IDMap`/pre-transform wrappers, when it
    /// is an empty flat index: its dimension and number of lists. Only for the factory dry run
    /// ([`FaissIndex::fill_coarse_quantizer`]).
    pub fn flat_coarse_quantizer(&self) -> Option<(usize, usize)> {
        // SAFETY: valid pointers obtained from FAISS accessors on an index owned by `self`; the
        // casts are `dynamic_cast`s that return null on a type mismatch.
        unsafe {
            let ivf = find_ivf(self.api, self.ptr.as_ptr())?;
            let q = (self.api.ivf_quantizer)(ivf);
            if q.is_null() || (self.api.flat_cast)(q).is_null() || (self.api.index_ntotal)(q) != 0 {
                return None;
            }
            let d = (self.api.index_d)(q);
            (d > 0).then(|| (d as usize, (self.api.ivf_nlist)(ivf)))
        }
    }

    /// Put `x` (`nlist × qdim` floats, see [`FaissIndex::flat_coarse_quantizer`]) into the empty
    /// flat coarse quantizer as its centroids, so that training skips the k-means of the lists.
    /// Used by the factory dry run only, where a tiny sample cannot train thousands of lists.
    pub fn fill_coarse_quantizer(&mut self, x: &[f32]) -> Result<()> {
        self.writable("fill quantizer")?;
        let Some((qd, nlist)) = self.flat_coarse_quantizer() else {
            return Err(bad("fill quantizer: no empty flat coarse quantizer"));
        };
        if x.len() != qd * nlist || x.iter().any(|v| !v.is_finite()) {
            return Err(bad("fill quantizer: need nlist × d finite floats"));
        }
        // SAFETY: `q` is the flat quantizer found above (valid while `self` lives); `x` holds
        // exactly `nlist × qd` floats, matching the quantizer's dimension.
        unsafe {
            let ivf = find_ivf(self.api, self.ptr.as_ptr())
                .ok_or_else(|| bad("fill quantizer: no IVF"))?;
            let q = (self.api.ivf_quantizer)(ivf);
            check(self.api, (self.api.index_add)(q, nlist as i64, x.as_ptr()), "fill quantizer")
        }
    }

    /// Number of inverted lists of an IVF index.
    pub fn nlist(&self) -> Option<usize> {
        // SAFETY: as in `is_ivf`; the accessor is const on a valid IVF pointer.
        unsafe {
            let ivf = (self.api.ivf_cast)(self.ptr.as_ptr());
            (!ivf.is_null()).then(|| (self.api.ivf_nlist)(ivf))
        }
    }

    /// Set a tuning parameter by name (`nprobe`, `efSearch`, …) through FAISS's ParameterSpace.
    /// Takes `&mut self`: it changes the index for every later search.
    pub fn set_parameter(&mut self, name: &str, value: f64) -> Result<()> {
        let cname = CString::new(name).map_err(|_| bad("parameter name contains NUL"))?;
        if !(value.is_finite() && value >= 1.0) {
            return Err(bad(format!("parameter {name} = {value} must be ≥ 1")));
        }
        let mut ps = ptr::null_mut();
        // SAFETY: `ps` is an out-pointer; freed below on every path.
        check(self.api, unsafe { (self.api.parameter_space_new)(&mut ps) }, "ParameterSpace")?;
        // SAFETY: `ps` and the index are valid; `cname` outlives the call.
        let rc =
            unsafe { (self.api.parameter_space_set)(ps, self.ptr.as_ptr(), cname.as_ptr(), value) };
        // SAFETY: `ps` came from faiss_ParameterSpace_new and is freed once.
        unsafe { (self.api.parameter_space_free)(ps) };
        check(self.api, rc, &format!("set {name}"))
    }

    /// k-nearest search (largest inner product first) for `n` queries. Returns (scores, ids),
    /// each `n × k`; missing results have id −1. `nprobe` applies to IVF indexes only.
    pub fn search(
        &self,
        x: &[f32],
        k: usize,
        nprobe: Option<usize>,
    ) -> Result<(Vec<f32>, Vec<i64>)> {
        let n = self.rows(x, "search")?;
        if k == 0 || k > MAX_K {
            return Err(bad(format!("search: k = {k} outside 1..={MAX_K}")));
        }
        let mut dist = vec![0f32; n * k];
        let mut ids = vec![-1i64; n * k];
        let mut params: *mut sys::FaissSearchParametersIVF = ptr::null_mut();
        if let Some(np) = nprobe.filter(|_| self.is_ivf()) {
            if np == 0 {
                return Err(bad("search: nprobe must be ≥ 1"));
            }
            // SAFETY: out-pointer; a null selector means "all ids"; freed below.
            let rc =
                unsafe { (self.api.search_params_ivf_new)(&mut params, ptr::null_mut(), np, 0) };
            check(self.api, rc, "SearchParametersIVF")?;
        }
        // SAFETY: `x` holds `n × dim` floats; `dist` and `ids` hold `n × k` slots; `params` is
        // null or a valid IVF parameter object (the index is IVF in that case). `search` is
        // const, so calling it through `&self` from several threads is safe (see `Sync`).
        let rc = unsafe {
            (self.api.index_search_with_params)(
                self.ptr.as_ptr(),
                n as i64,
                x.as_ptr(),
                k as i64,
                params.cast(),
                dist.as_mut_ptr(),
                ids.as_mut_ptr(),
            )
        };
        if !params.is_null() {
            // SAFETY: created above, freed once.
            unsafe { (self.api.search_params_ivf_free)(params) };
        }
        check(self.api, rc, "search")?;
        Ok((dist, ids))
    }

    /// A deep copy (e.g. one trained-but-empty index cloned per shard).
    pub fn try_clone(&self) -> Result<FaissIndex> {
        let mut p = ptr::null_mut();
        // SAFETY: valid source index; `p` is an out-pointer.
        let rc = unsafe { (self.api.clone_index)(self.ptr.as_ptr(), &mut p) };
        check(self.api, rc, "clone_index")?;
        Self::from_raw(self.api, p, false, "clone_index")
    }

    /// Serialise to `path` (the caller makes the write atomic).
    pub fn write(&self, path: &Path) -> Result<()> {
        let c = path_cstring(path)?;
        // SAFETY: valid index; `c` is a valid C string for the call.
        let rc = unsafe { (self.api.write_index_fname)(self.ptr.as_ptr(), c.as_ptr()) };
        check(self.api, rc, "write_index")
    }

    /// Read an index file; with `mmap`, the inverted lists stay in the file (page cache) and the
    /// index becomes read-only.
    pub fn read(path: &Path, mmap: bool) -> Result<FaissIndex> {
        Self::read_with(api(), path, mmap)
    }

    fn read_with(api: &'static Api, path: &Path, mmap: bool) -> Result<FaissIndex> {
        let c = path_cstring(path)?;
        let mut p = ptr::null_mut();
        let flags = if mmap { IO_FLAG_MMAP } else { 0 };
        // SAFETY: `c` is a valid C string; `p` is an out-pointer.
        check(api, unsafe { (api.read_index_fname)(c.as_ptr(), flags, &mut p) }, "read_index")?;
        Self::from_raw(api, p, mmap, "read_index")
    }
}

/// See [`FaissIndex::keeps_ids`].
///
/// # Safety
/// `p` must be a valid FAISS index pointer.
unsafe fn keeps_ids(api: &Api, p: *mut sys::FaissIndex) -> bool {
    // SAFETY: the casts are `dynamic_cast`s on a valid pointer (null on mismatch); the
    // pre-transform's sub-index is owned by it and valid as long as `p` is.
    unsafe {
        if !(api.idmap_cast)(p).is_null()
            || !(api.idmap2_cast)(p).is_null()
            || !(api.ivf_cast)(p).is_null()
        {
            return true;
        }
        let pt = (api.pretransform_cast)(p);
        if pt.is_null() {
            return false;
        }
        let sub = (api.pretransform_index)(pt);
        !sub.is_null() && keeps_ids(api, sub)
    }
}

/// The IVF index at `p` or under its `IDMap`/`IDMap2`/pre-transform wrappers.
///
/// # Safety
/// `p` must be a valid FAISS index pointer.
unsafe fn find_ivf(api: &Api, p: *mut sys::FaissIndex) -> Option<*mut sys::FaissIndexIVF> {
    // SAFETY: as in `keeps_ids`: casts of a valid pointer and sub-indexes owned by it.
    unsafe {
        let ivf = (api.ivf_cast)(p);
        if !ivf.is_null() {
            return Some(ivf);
        }
        let idmap = (api.idmap_cast)(p);
        let sub = if !idmap.is_null() {
            (api.idmap_sub_index)(idmap)
        } else if !(api.idmap2_cast)(p).is_null() {
            (api.idmap2_sub_index)((api.idmap2_cast)(p))
        } else if !(api.pretransform_cast)(p).is_null() {
            (api.pretransform_index)((api.pretransform_cast)(p))
        } else {
            return None;
        };
        if sub.is_null() {
            None
        } else {
            find_ivf(api, sub)
        }
    }
}

fn path_cstring(path: &Path) -> Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| bad("path contains NUL"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, d: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        let mut v: Vec<f32> = (0..n * d)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) - 0.5
            })
            .collect();
        for row in v.chunks_mut(d) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }

    #[test]
    fn flat_index_finds_itself_and_round_trips() {
        let d = 16;
        let x = data(500, d, 1);
        let mut idx = FaissIndex::factory(d, "Flat").unwrap();
        let ids: Vec<i64> = (0..500).map(|i| 1000 + i).collect();
        idx.add_with_ids(&x, &ids).unwrap_err(); // IndexFlat has no add_with_ids
        let mut idx = FaissIndex::factory(d, "IDMap,Flat").unwrap();
        idx.add_with_ids(&x, &ids).unwrap();
        let (s, l) = idx.search(&x[..d * 3], 2, None).unwrap();
        assert_eq!(l[0], 1000);
        assert_eq!(l[2], 1001);
        assert!((s[0] - 1.0).abs() < 1e-5);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.faiss");
        idx.write(&p).unwrap();
        let back = FaissIndex::read(&p, false).unwrap();
        assert_eq!(back.ntotal(), 500);
        assert_eq!(back.search(&x[..d], 1, None).unwrap().1[0], 1000);
    }

    #[test]
    fn ivf_with_per_search_nprobe_and_mmap() {
        let d = 16;
        let x = data(4000, d, 2);
        let mut idx = FaissIndex::factory(d, "IVF16,SQ8").unwrap();
        assert!(!idx.is_trained());
        assert!(idx.add_with_ids(&x, &(0..4000).collect::<Vec<_>>()).is_err());
        idx.train(&x).unwrap();
        let shard = idx.try_clone().unwrap();
        assert!(shard.is_trained() && shard.ntotal() == 0);
        idx.add_with_ids(&x, &(0..4000).collect::<Vec<_>>()).unwrap();
        assert!(idx.is_ivf());
        assert_eq!(idx.nlist(), Some(16));
        let (_, l) = idx.search(&x[..d], 1, Some(16)).unwrap();
        assert_eq!(l[0], 0);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ivf.faiss");
        idx.write(&p).unwrap();
        let mut mapped = FaissIndex::read(&p, true).unwrap();
        assert_eq!(mapped.ntotal(), 4000);
        assert_eq!(mapped.search(&x[d..2 * d], 1, Some(16)).unwrap().1[0], 1);
        // Writing into a mapped index would abort inside FAISS: refused here instead.
        assert!(mapped.add_with_ids(&x[..d], &[9]).is_err());
        assert!(mapped.train(&x).is_err());
    }

    /// On an AVX-512 CPU with the library built (`scripts/test.sh` sets
    /// `BIOMATCH_REQUIRE_FAISS_AVX512` there, so it cannot be skipped silently), the AVX-512 build
    /// serves by default and answers like the linked AVX2 build on the same index file.
    #[test]
    fn the_avx512_build_answers_like_the_linked_build() {
        let chosen = kernels();
        if chosen.kernels != "avx512" {
            assert!(
                std::env::var_os("BIOMATCH_REQUIRE_FAISS_AVX512").is_none(),
                "the AVX-512 FAISS build is required here but not used: {}",
                chosen.reason
            );
            eprintln!("skipped: FAISS runs its AVX2 build ({})", chosen.reason);
            return;
        }
        assert!(cpu_has_avx512());
        let (d, n) = (64, 3000);
        let x = data(n, d, 4);
        let ids: Vec<i64> = (0..n as i64).map(|i| 7 * i + 3).collect();
        let dir = tempfile::tempdir().unwrap();
        for factory in ["IDMap,Flat", "IDMap,PQ16x4fs", "IVF8,PQ16x4fs"] {
            // Trained and filled by the linked build, read back by both.
            let mut made = FaissIndex::factory_with(linked_api(), d, factory).unwrap();
            assert_eq!(made.kernels(), "avx2");
            made.train(&x).unwrap();
            made.add_with_ids(&x, &ids).unwrap();
            let p = dir.path().join("i.faiss");
            made.write(&p).unwrap();
            let avx2 = FaissIndex::read_with(linked_api(), &p, true).unwrap();
            let avx512 = FaissIndex::read(&p, true).unwrap();
            assert_eq!(avx512.kernels(), "avx512");
            let q = &x[..d * 200];
            let (s2, l2) = avx2.search(q, 10, Some(8)).unwrap();
            let (s5, l5) = avx512.search(q, 10, Some(8)).unwrap();
            // Every query's own vector comes first in both (the quantized scans find it too).
            for (i, (a, b)) in l2.chunks(10).zip(l5.chunks(10)).enumerate() {
                assert_eq!(a[0], ids[i], "{factory}: avx2 top-1 of query {i}");
                assert_eq!(b[0], ids[i], "{factory}: avx512 top-1 of query {i}");
            }
            // The same candidates and scores, up to ties and float rounding of the lookup tables.
            let same = l2.iter().zip(&l5).filter(|(a, b)| a == b).count();
            assert!(same * 100 >= l2.len() * 95, "{factory}: {same} of {} results agree", l2.len());
            let worst = s2.iter().zip(&s5).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 0.02, "{factory}: scores differ by up to {worst}");
            // An index made by the AVX-512 build is freed by it (Drop through its own table).
            let copy = FaissIndex::read(&p, false).unwrap().try_clone().unwrap();
            assert_eq!((copy.kernels(), copy.ntotal()), ("avx512", n as u64));
        }
    }

    #[test]
    fn misuse_is_an_error_not_a_crash() {
        let d = 8;
        assert!(FaissIndex::factory(d, "NoSuchIndex").is_err());
        assert!(FaissIndex::factory(0, "Flat").is_err());
        let mut idx = FaissIndex::factory(d, "IDMap,Flat").unwrap();
        let x = data(10, d, 3);
        assert!(idx.add_with_ids(&x[..d + 1], &[1]).is_err());
        assert!(idx.add_with_ids(&x, &[1, 2]).is_err());
        idx.add_with_ids(&x, &(0..10).collect::<Vec<_>>()).unwrap();
        assert!(idx.search(&x[..d - 1], 1, None).is_err());
        assert!(idx.search(&x[..d], 0, None).is_err());
        assert!(idx.search(&x[..d], MAX_K + 1, None).is_err());
        let mut nan = x[..d].to_vec();
        nan[0] = f32::NAN;
        assert!(idx.search(&nan, 1, None).is_err());
        assert!(idx.set_parameter("nprobe", 0.0).is_err());
        assert!(FaissIndex::read(Path::new("/nonexistent/x.faiss"), false).is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("garbage.faiss");
        std::fs::write(&p, b"this is not an index").unwrap();
        assert!(FaissIndex::read(&p, false).is_err());
        assert!(FaissIndex::read(&p, true).is_err());
        // More results than vectors: the rest are −1.
        let (_, l) = idx.search(&x[..d], 20, None).unwrap();
        assert_eq!(l.iter().filter(|&&i| i < 0).count(), 10);
    }
}
