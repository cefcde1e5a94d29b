//! Up-front checks of FAISS factory strings, so that a build is refused in milliseconds instead
//! of failing after minutes of training.
//!
//! [`validate_factory`] parses the string at the model's dimension (`index_factory`), checks that
//! the layout keeps the ids we add (our row ids are how search results find their subjects), and
//! dry-runs the layout on a tiny seeded sample: train (when the index needs it), add a handful
//! of vectors with ids, search one. Layouts with an OPQ or ITQ rotation are checked by parsing
//! and structure only: OPQ's training alone takes a minute even on a tiny sample.
//! Nothing touches the store or the disk.

use super::ffi::{set_omp_threads, FaissIndex};
use crate::error::{GalleryError, Result};
use rand::{Rng, SeedableRng};

/// Longest factory string accepted.
pub const MAX_FACTORY_LEN: usize = 256;
/// Vectors the dry run trains on (enough for 256 centroids per (sub)quantizer).
const DRY_TRAIN: usize = 256;
/// Vectors the dry run adds, with ids.
const DRY_ADD: usize = 16;
/// Above this many inverted lists the dry run does not fill the coarse quantizer (it would cost
/// more than the check is worth); the string is still parsed and its ids checked.
const DRY_MAX_LISTS: usize = 65_536;
/// More inverted lists than this is refused outright: more lists than a node holds templates.
pub const MAX_LISTS: usize = 1 << 20;

fn random(rng: &mut impl Rng, n: usize, d: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n * d).map(|_| rng.random::<f32>() - 0.5).collect();
    for row in v.chunks_mut(d) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
        row.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Check that `factory` builds an index of dimension `dim` that keeps our ids, by parsing it and
/// dry-running it on a tiny random sample. `Err(GalleryError::BadFactory)` says why (the FAISS
/// message's first line, or the missing `IDMap`). Takes milliseconds (the dry run is
/// single-threaded); it allocates the index's empty structures only.
pub fn validate_factory(dim: usize, factory: &str) -> Result<()> {
    let bad = |m: String| GalleryError::BadFactory(m);
    if factory.trim().is_empty()
        || factory.len() > MAX_FACTORY_LEN
        || !factory.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(bad(format!(
            "a factory string is 1..={MAX_FACTORY_LEN} printable ASCII characters without spaces \
             (e.g. \"IDMap,Flat\", \"IVF1024,PQ32x4fs\")"
        )));
    }
    let lists = |s: &str| {
        s.split(|c: char| !c.is_ascii_alphanumeric())
            .filter_map(|t| t.strip_prefix("IVF"))
            .filter_map(|t| t.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok())
            .max()
    };
    if lists(factory).is_some_and(|n| n > MAX_LISTS as u64) {
        return Err(bad(format!("{factory:?}: more than {MAX_LISTS} inverted lists")));
    }
    let idx = FaissIndex::factory(dim, factory).map_err(|e| {
        bad(format!(
            "{factory:?} does not describe a FAISS index of dimension {dim} ({})",
            reason(&e.0)
        ))
    })?;
    if !idx.keeps_ids() {
        return Err(bad(format!(
            "{factory:?} does not keep the ids it is given (no add_with_ids), so search results \
             could not name their subjects: wrap it as \"IDMap,{factory}\" or use an IVF index"
        )));
    }
    if idx.has_pretransform() && (factory.contains("OPQ") || factory.contains("ITQ")) {
        // An iteratively trained rotation (OPQ's alone: a minute even on a tiny sample) is not
        // dry-run: the string parsed at this dimension and the layout keeps ids.
        return Ok(());
    }
    // The dry run skips PQ's polysemous code training (seconds per sub-quantizer whatever the
    // sample: a real build of "IDMap,PQ32" spends minutes in it); it only reorders codes.
    let mut idx = FaissIndex::factory(dim, &without_polysemous(factory))
        .map_err(|e| bad(format!("{factory:?} at dimension {dim}: {}", reason(&e.0))))?;
    set_omp_threads(1);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x00fa_c7e5);
    let dry = |what: &str, e: super::ffi::FaissError| {
        bad(format!("{factory:?} failed a dry run at dimension {dim} ({what}: {})", reason(&e.0)))
    };
    if !idx.is_trained() {
        if let Some((qd, nlist)) = idx.flat_coarse_quantizer() {
            if nlist > DRY_MAX_LISTS {
                return Ok(());
            }
            if nlist > DRY_TRAIN {
                // A tiny sample cannot train thousands of lists: random centroids instead, so
                // that training checks the encoder that follows.
                let c = random(&mut rng, nlist, qd);
                idx.fill_coarse_quantizer(&c).map_err(|e| dry("quantizer", e))?;
            }
        }
        match idx.train(&random(&mut rng, DRY_TRAIN, dim)) {
            Ok(()) => {}
            // The layout needs more training points than a dry run has (e.g. > 8-bit codes):
            // the string parsed and keeps ids; the real build trains on the gallery.
            Err(e) if e.0.contains("should be at least as large") => return Ok(()),
            Err(e) => return Err(dry("train", e)),
        }
    }
    let x = random(&mut rng, DRY_ADD, dim);
    let ids: Vec<i64> = (0..DRY_ADD as i64).map(|i| 1_000_003 + 7 * i).collect();
    idx.add_with_ids(&x, &ids).map_err(|e| dry("add", e))?;
    let (_, got) = idx.search(&x[..dim], 1, None).map_err(|e| dry("search", e))?;
    if idx.ntotal() != DRY_ADD as u64 || !ids.contains(&got[0]) {
        return Err(bad(format!(
            "{factory:?} does not answer with the ids it was given (dry run at dimension {dim})"
        )));
    }
    Ok(())
}

/// What FAISS says, without the C++ function and source location it prefixes ("Error in
/// <function> at <file>:<line>: Error: '<condition>' failed: <message>"): the client gets the
/// message, not our build paths.
fn reason(msg: &str) -> &str {
    let m = msg.rsplit_once(" failed: ").map_or(msg, |(_, m)| m);
    let m = match m.find(" at /") {
        Some(i) => m[i..].split_once(": ").map_or(m, |(_, rest)| rest),
        None => m,
    };
    m.trim()
}

/// `factory` with `np` appended to every plain `PQ<M>` / `PQ<M>x<b>` component (no
/// polysemous training). Components inside parentheses are left alone.
fn without_polysemous(factory: &str) -> String {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    let b = factory.as_bytes();
    for i in 0..=b.len() {
        match b.get(i) {
            Some(b'(') => depth += 1,
            Some(b')') => depth -= 1,
            Some(b',') if depth == 0 => {}
            None => {}
            Some(_) => continue,
        }
        if i < b.len() && b[i] != b',' {
            continue;
        }
        let c = &factory[start..i];
        let plain_pq = c.strip_prefix("PQ").is_some_and(|r| {
            let (m, bits) = r.split_once('x').unwrap_or((r, "8"));
            !m.is_empty()
                && !bits.is_empty()
                && m.bytes().all(|x| x.is_ascii_digit())
                && bits.bytes().all(|x| x.is_ascii_digit())
        });
        out.push(if plain_pq { format!("{c}np") } else { c.to_owned() });
        start = i + 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(dim: usize, f: &str) -> String {
        match validate_factory(dim, f) {
            Err(GalleryError::BadFactory(m)) => m,
            other => panic!("{f:?} at {dim}: expected BadFactory, got {other:?}"),
        }
    }

    #[test]
    fn good_layouts_pass() {
        for f in [
            "IDMap,Flat",
            "IDMap2,Flat",
            "IDMap,PQ32x4fs",
            "IDMap,HNSW16",
            "IVF16,Flat",
            "IVF64,SQ8",
            "IVF1024,PQ32x4fs",
            "IVF4096,Flat",
            "IVF256,PQ32",
            "IDMap,PQ64",
            "IVF65536,PQ32x4fs",
            "PCA64,IVF16,Flat",
            "OPQ16,IVF32,PQ16",
            "IDMap,OPQ16,PQ16",
        ] {
            validate_factory(128, f).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }

    #[test]
    fn faiss_messages_lose_their_source_locations() {
        let m = refused(128, "IDMap,PQ48");
        assert!(m.contains("should be a multiple of the number of subquantizers"), "{m}");
        assert!(!m.contains(".cpp") && !m.contains("/"), "{m}");
        let m = refused(128, "NoSuchIndex");
        assert!(!m.contains(".cpp"), "{m}");
    }

    #[test]
    fn the_dry_run_skips_polysemous_training() {
        assert_eq!(without_polysemous("IDMap,PQ32"), "IDMap,PQ32np");
        assert_eq!(without_polysemous("IVF256,PQ16x8"), "IVF256,PQ16x8np");
        assert_eq!(without_polysemous("IDMap,PQ32x4fs"), "IDMap,PQ32x4fs");
        assert_eq!(without_polysemous("IVF256(PQ8),PQ8np"), "IVF256(PQ8),PQ8np");
        assert_eq!(without_polysemous("PCA64,IVF16,Flat"), "PCA64,IVF16,Flat");
    }

    #[test]
    fn bad_strings_are_refused_with_a_reason() {
        assert!(refused(128, "NoSuchIndex").contains("does not describe"));
        assert!(refused(128, "").contains("printable"));
        assert!(refused(128, "IVF 16,Flat").contains("printable"));
        assert!(refused(128, "IDMap,Flat\0").contains("printable"));
        // Layouts without ids: the build would train for minutes and then fail in add.
        for f in ["Flat", "PQ32x4fs", "HNSW32", "PQ16", "OPQ16,PQ16", "PCA64,Flat"] {
            assert!(refused(128, f).contains("IDMap,"), "{f}");
        }
        // Dimension: 128 is not a multiple of 48 sub-quantizers, nor of 7.
        assert!(refused(128, "IDMap,PQ48").contains("dimension 128"));
        assert!(refused(128, "IVF16,PQ7").contains("dimension 128"));
        assert!(refused(100, "IDMap,PQ32x4fs").contains("dimension 100"));
        assert!(refused(128, "IVF99999999,Flat").contains("inverted lists"));
        assert!(refused(128, "PCA256,IVF16,Flat").contains("dimension 128"));
    }
}
