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
use std::os::raw::c_int;
use std::path::Path;
use std::ptr::{self, NonNull};

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

fn check(rc: c_int, what: &str) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: `faiss_get_last_error` returns a pointer to a thread-local, NUL-terminated string
    // owned by FAISS (or null); it stays valid until the next FAISS call on this thread, and we
    // copy it out immediately.
    let msg = unsafe {
        let p = sys::faiss_get_last_error();
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
        // SAFETY: `ptr` was produced by FAISS, is owned uniquely by this handle and freed once.
        unsafe { sys::faiss_Index_free(self.ptr.as_ptr()) }
    }
}

impl FaissIndex {
    fn from_raw(p: *mut sys::FaissIndex, read_only: bool, what: &str) -> Result<Self> {
        let ptr = NonNull::new(p).ok_or_else(|| bad(format!("{what}: FAISS returned no index")))?;
        // SAFETY: `ptr` is a valid index just returned by FAISS.
        let d = unsafe { sys::faiss_Index_d(ptr.as_ptr()) };
        let index = FaissIndex { ptr, dim: d.max(0) as usize, read_only };
        if d <= 0 {
            return Err(bad(format!("{what}: index has dimension {d}")));
        }
        Ok(index)
    }

    /// Build an (untrained) index from a factory string, inner-product metric.
    pub fn factory(dim: usize, description: &str) -> Result<Self> {
        if dim == 0 || dim > 65_536 {
            return Err(bad(format!("dimension {dim} out of range")));
        }
        let desc = CString::new(description).map_err(|_| bad("factory string contains NUL"))?;
        let mut p = ptr::null_mut();
        // SAFETY: `desc` is a valid C string for the duration of the call; `p` is an out-pointer.
        let rc = unsafe {
            sys::faiss_index_factory(
                &mut p,
                dim as c_int,
                desc.as_ptr(),
                sys::FaissMetricType_METRIC_INNER_PRODUCT,
            )
        };
        check(rc, &format!("index_factory({description:?})"))?;
        Self::from_raw(p, false, "index_factory")
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn ntotal(&self) -> u64 {
        // SAFETY: valid index pointer; a const accessor.
        unsafe { sys::faiss_Index_ntotal(self.ptr.as_ptr()) as u64 }
    }

    pub fn is_trained(&self) -> bool {
        // SAFETY: valid index pointer; a const accessor.
        unsafe { sys::faiss_Index_is_trained(self.ptr.as_ptr()) != 0 }
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
        check(unsafe { sys::faiss_Index_train(self.ptr.as_ptr(), n as i64, x.as_ptr()) }, "train")
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
            unsafe {
                sys::faiss_Index_add_with_ids(self.ptr.as_ptr(), n as i64, x.as_ptr(), ids.as_ptr())
            },
            "add_with_ids",
        )
    }

    /// Whether this is an IVF index (per-search `nprobe` applies).
    pub fn is_ivf(&self) -> bool {
        // SAFETY: `faiss_IndexIVF_cast` is a `dynamic_cast` on a valid pointer; null if not IVF.
        !unsafe { sys::faiss_IndexIVF_cast(self.ptr.as_ptr()) }.is_null()
    }

    /// Whether the index keeps the ids given to `add_with_ids` (and so answers with our row
    /// ids): an `IDMap`/`IDMap2` wrapper, an IVF index, or a pre-transform (PCA, OPQ, …) over
    /// one of those. Flat, PQ, HNSW, LSH, refine and fast-scan indexes without an `IDMap` do not
    /// implement `add_with_ids`.
    pub fn keeps_ids(&self) -> bool {
        // SAFETY: a valid index pointer, owned by `self` for the duration of the call.
        unsafe { keeps_ids(self.ptr.as_ptr()) }
    }

    /// Whether a pre-transform (PCA, OPQ, ITQ, random rotation, …) sits at the top or under an
    /// `IDMap`/`IDMap2` wrapper.
    pub fn has_pretransform(&self) -> bool {
        // SAFETY: casts of a valid pointer owned by `self`; sub-indexes are owned by it.
        unsafe {
            let mut p = self.ptr.as_ptr();
            loop {
                if !sys::faiss_IndexPreTransform_cast(p).is_null() {
                    return true;
                }
                let m = sys::faiss_IndexIDMap_cast(p);
                let m2 = sys::faiss_IndexIDMap2_cast(p);
                p = if !m.is_null() {
                    sys::faiss_IndexIDMap_sub_index(m)
                } else if !m2.is_null() {
                    sys::faiss_IndexIDMap2_sub_index(m2)
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
            let ivf = find_ivf(self.ptr.as_ptr())?;
            let q = sys::faiss_IndexIVF_quantizer(ivf);
            if q.is_null()
                || sys::faiss_IndexFlat_cast(q).is_null()
                || sys::faiss_Index_ntotal(q) != 0
            {
                return None;
            }
            let d = sys::faiss_Index_d(q);
            (d > 0).then(|| (d as usize, sys::faiss_IndexIVF_nlist(ivf)))
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
            let ivf = find_ivf(self.ptr.as_ptr()).ok_or_else(|| bad("fill quantizer: no IVF"))?;
            let q = sys::faiss_IndexIVF_quantizer(ivf);
            check(sys::faiss_Index_add(q, nlist as i64, x.as_ptr()), "fill quantizer")
        }
    }

    /// Number of inverted lists of an IVF index.
    pub fn nlist(&self) -> Option<usize> {
        // SAFETY: as in `is_ivf`; the accessor is const on a valid IVF pointer.
        unsafe {
            let ivf = sys::faiss_IndexIVF_cast(self.ptr.as_ptr());
            (!ivf.is_null()).then(|| sys::faiss_IndexIVF_nlist(ivf))
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
        check(unsafe { sys::faiss_ParameterSpace_new(&mut ps) }, "ParameterSpace")?;
        // SAFETY: `ps` and the index are valid; `cname` outlives the call.
        let rc = unsafe {
            sys::faiss_ParameterSpace_set_index_parameter(
                ps,
                self.ptr.as_ptr(),
                cname.as_ptr(),
                value,
            )
        };
        // SAFETY: `ps` came from faiss_ParameterSpace_new and is freed once.
        unsafe { sys::faiss_ParameterSpace_free(ps) };
        check(rc, &format!("set {name}"))
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
            let rc = unsafe {
                sys::faiss_SearchParametersIVF_new_with(&mut params, ptr::null_mut(), np, 0)
            };
            check(rc, "SearchParametersIVF")?;
        }
        // SAFETY: `x` holds `n × dim` floats; `dist` and `ids` hold `n × k` slots; `params` is
        // null or a valid IVF parameter object (the index is IVF in that case). `search` is
        // const, so calling it through `&self` from several threads is safe (see `Sync`).
        let rc = unsafe {
            sys::faiss_Index_search_with_params(
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
            unsafe { sys::faiss_SearchParametersIVF_free(params) };
        }
        check(rc, "search")?;
        Ok((dist, ids))
    }

    /// A deep copy (e.g. one trained-but-empty index cloned per shard).
    pub fn try_clone(&self) -> Result<FaissIndex> {
        let mut p = ptr::null_mut();
        // SAFETY: valid source index; `p` is an out-pointer.
        check(unsafe { sys::faiss_clone_index(self.ptr.as_ptr(), &mut p) }, "clone_index")?;
        Self::from_raw(p, false, "clone_index")
    }

    /// Serialise to `path` (the caller makes the write atomic).
    pub fn write(&self, path: &Path) -> Result<()> {
        let c = path_cstring(path)?;
        // SAFETY: valid index; `c` is a valid C string for the call.
        check(unsafe { sys::faiss_write_index_fname(self.ptr.as_ptr(), c.as_ptr()) }, "write_index")
    }

    /// Read an index file; with `mmap`, the inverted lists stay in the file (page cache) and the
    /// index becomes read-only.
    pub fn read(path: &Path, mmap: bool) -> Result<FaissIndex> {
        let c = path_cstring(path)?;
        let mut p = ptr::null_mut();
        let flags = if mmap { IO_FLAG_MMAP } else { 0 };
        // SAFETY: `c` is a valid C string; `p` is an out-pointer.
        check(unsafe { sys::faiss_read_index_fname(c.as_ptr(), flags, &mut p) }, "read_index")?;
        Self::from_raw(p, mmap, "read_index")
    }
}

/// See [`FaissIndex::keeps_ids`].
///
/// # Safety
/// `p` must be a valid FAISS index pointer.
unsafe fn keeps_ids(p: *mut sys::FaissIndex) -> bool {
    // SAFETY: the casts are `dynamic_cast`s on a valid pointer (null on mismatch); the
    // pre-transform's sub-index is owned by it and valid as long as `p` is.
    unsafe {
        if !sys::faiss_IndexIDMap_cast(p).is_null()
            || !sys::faiss_IndexIDMap2_cast(p).is_null()
            || !sys::faiss_IndexIVF_cast(p).is_null()
        {
            return true;
        }
        let pt = sys::faiss_IndexPreTransform_cast(p);
        if pt.is_null() {
            return false;
        }
        let sub = sys::faiss_IndexPreTransform_index(pt);
        !sub.is_null() && keeps_ids(sub)
    }
}

/// The IVF index at `p` or under its `IDMap`/`IDMap2`/pre-transform wrappers.
///
/// # Safety
/// `p` must be a valid FAISS index pointer.
unsafe fn find_ivf(p: *mut sys::FaissIndex) -> Option<*mut sys::FaissIndexIVF> {
    // SAFETY: as in `keeps_ids`: casts of a valid pointer and sub-indexes owned by it.
    unsafe {
        let ivf = sys::faiss_IndexIVF_cast(p);
        if !ivf.is_null() {
            return Some(ivf);
        }
        let idmap = sys::faiss_IndexIDMap_cast(p);
        let sub = if !idmap.is_null() {
            sys::faiss_IndexIDMap_sub_index(idmap)
        } else if !sys::faiss_IndexIDMap2_cast(p).is_null() {
            sys::faiss_IndexIDMap2_sub_index(sys::faiss_IndexIDMap2_cast(p))
        } else if !sys::faiss_IndexPreTransform_cast(p).is_null() {
            sys::faiss_IndexPreTransform_index(sys::faiss_IndexPreTransform_cast(p))
        } else {
            return None;
        };
        if sub.is_null() {
            None
        } else {
            find_ivf(sub)
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
