//! Similarity kernels: dot product of an f32 probe with fp16 gallery rows.
//!
//! Gallery templates are stored as IEEE fp16 (half the memory and disk of f32, and ample precision
//! for unit vectors); probes stay f32. The x86-64 kernel converts 8 halves at a time with F16C and
//! accumulates with FMA in four independent registers; it is chosen at run time, so the binary still
//! runs on CPUs without AVX2. The scalar kernel is the fallback and, with an f64 reference, the
//! yardstick of the property tests.

use half::f16;

/// Dot product `Σ a[i]·b[i]` with `b` in fp16. Panics if the lengths differ (a programming error:
/// dimensions are validated at the gallery boundary).
#[inline]
pub fn dot_f32_f16(a: &[f32], b: &[f16]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot product of vectors of different lengths");
    #[cfg(target_arch = "x86_64")]
    {
        if simd_available() {
            // SAFETY: `simd_available` checked at run time that this CPU has AVX2, FMA and F16C,
            // the target features `dot_avx2` is compiled for; the lengths are equal (asserted above).
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_scalar(a, b)
}

/// Portable kernel: f32 accumulation in four lanes (the same association as the SIMD kernel's
/// tail-free body is not guaranteed; both are checked against an f64 reference).
pub fn dot_scalar(a: &[f32], b: &[f16]) -> f32 {
    let mut acc = [0.0f32; 4];
    let chunks = a.len() / 4;
    for (ca, cb) in a.chunks_exact(4).zip(b.chunks_exact(4)) {
        for ((acc_l, &x), &y) in acc.iter_mut().zip(ca).zip(cb) {
            *acc_l += x * y.to_f32();
        }
    }
    let mut sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for i in chunks * 4..a.len() {
        sum += a[i] * b[i].to_f32();
    }
    sum
}

/// Whether the AVX2 + FMA + F16C kernel runs on this CPU.
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Name of the kernel [`dot_f32_f16`] dispatches to, for reports.
pub fn kernel_name() -> &'static str {
    if simd_available() {
        "avx2+fma+f16c"
    } else {
        "scalar"
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(a: &[f32], b: &[f16]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len();
    let pa = a.as_ptr();
    let pb = b.as_ptr().cast::<u16>();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load reads 8 elements starting at `i`, and each loop condition
    // guarantees `i + 8 <= n` for that load, so all reads stay inside `a` and `b` (same length `n`).
    // Unaligned loads are used, so no alignment is assumed. `f16` is `repr(transparent)` over u16.
    unsafe {
        while i + 32 <= n {
            for (l, acc_l) in acc.iter_mut().enumerate() {
                let off = i + 8 * l;
                let h = _mm_loadu_si128(pb.add(off).cast::<__m128i>());
                let x = _mm256_loadu_ps(pa.add(off));
                *acc_l = _mm256_fmadd_ps(x, _mm256_cvtph_ps(h), *acc_l);
            }
            i += 32;
        }
        while i + 8 <= n {
            let h = _mm_loadu_si128(pb.add(i).cast::<__m128i>());
            let x = _mm256_loadu_ps(pa.add(i));
            acc[0] = _mm256_fmadd_ps(x, _mm256_cvtph_ps(h), acc[0]);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let lo = _mm256_castps256_ps128(s);
        let hi = _mm256_extractf128_ps(s, 1);
        let q = _mm_add_ps(lo, hi);
        let d = _mm_add_ps(q, _mm_movehl_ps(q, q));
        let mut sum = _mm_cvtss_f32(_mm_add_ss(d, _mm_shuffle_ps(d, d, 0b01)));
        while i < n {
            sum += *pa.add(i) * (*b.as_ptr().add(i)).to_f32();
            i += 1;
        }
        sum
    }
}

/// Convert an f32 slice to fp16 (round to nearest even), using the `half` crate's SIMD conversion.
pub fn to_f16(v: &[f32]) -> Vec<f16> {
    use half::slice::HalfFloatSliceExt;
    let mut out = vec![f16::ZERO; v.len()];
    out.convert_from_f32_slice(v);
    out
}

/// Convert fp16 back to f32.
pub fn to_f32(v: &[f16]) -> Vec<f32> {
    use half::slice::HalfFloatSliceExt;
    let mut out = vec![0.0f32; v.len()];
    v.convert_to_f32_slice(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(a: &[f32], b: &[f16]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y.to_f32())).sum()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn kernels_match_f64_reference(
            pairs in proptest::collection::vec((-1.0f32..1.0, -1.0f32..1.0), 0..300)
        ) {
            let a: Vec<f32> = pairs.iter().map(|p| p.0).collect();
            let b: Vec<f16> = pairs.iter().map(|p| f16::from_f32(p.1)).collect();
            let want = reference(&a, &b);
            // f32 accumulation error bound: n·ε·Σ|a·b|, plus an absolute floor.
            let mag: f64 = a.iter().zip(&b).map(|(&x, &y)| (f64::from(x) * f64::from(y.to_f32())).abs()).sum();
            let tol = 1e-6 + mag * (a.len() as f64 + 1.0) * f64::from(f32::EPSILON);
            let fast = f64::from(dot_f32_f16(&a, &b));
            let slow = f64::from(dot_scalar(&a, &b));
            prop_assert!((fast - want).abs() <= tol, "simd {fast} vs {want} (tol {tol})");
            prop_assert!((slow - want).abs() <= tol, "scalar {slow} vs {want} (tol {tol})");
        }
    }

    #[test]
    fn unit_vectors_score_one_against_themselves() {
        let v: Vec<f32> = (0..128).map(|i| ((i * 37 % 11) as f32) - 5.0).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let v: Vec<f32> = v.iter().map(|x| x / norm).collect();
        let h = to_f16(&v);
        assert!((dot_f32_f16(&v, &h) - 1.0).abs() < 2e-3);
        assert_eq!(to_f32(&h).len(), 128);
    }

    #[test]
    #[should_panic(expected = "different lengths")]
    fn mismatched_lengths_panic() {
        dot_f32_f16(&[1.0, 2.0], &[f16::ONE]);
    }
}
