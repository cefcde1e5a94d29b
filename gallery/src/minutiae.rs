//! The stored form of a subject's minutiae fingers, shared by the write-ahead log (`wal.rs`), the
//! sealed finger segments (`finger_segment.rs`) and the reader of the version-1 finger log that
//! migration converts (`legacy.rs`).
//!
//! ## Format (little endian)
//! ```text
//! fingers : finger count u8 (1..=10), then per finger:
//!           position u8 (1..=10) | width u16 | height u16 | resolution_ppcm u16 |
//!           quality u8 | minutia count u8 | count × minutia
//! minutia : (6 bytes) x u16 with the kind in its two high bits (ISO 19794-2 style:
//!           0 other, 1 ridge ending, 2 bifurcation) | y u16 | angle u8 | quality u8
//! ```
//! Decoding is bounds-checked and refuses anything a writer could not have produced (kind bits
//! 3, bad counts, duplicate or missing positions, a template failing
//! [`FingerTemplate::validate`]).

use crate::error::{GalleryError, Result};
use crate::fsutil::Reader;
use biomatch_core::finger::{FingerTemplate, Minutia, MinutiaKind, MAX_MINUTIAE};
use biomatch_core::{FingerPosition, Modality};

/// Most fingers one subject may hold (one per position 1..=10).
pub const MAX_FINGERS: usize = 10;
const MINUTIA_BYTES: usize = 6;
const X_MASK: u16 = 0x3fff;

// The minutia count is stored in one byte, and x shares its u16 with the two kind bits.
const _: () = assert!(MAX_MINUTIAE <= u8::MAX as usize);
const _: () = assert!(biomatch_core::finger::MAX_IMAGE_SIDE <= X_MASK + 1);

/// Check one subject's fingers: 1..=10 templates, each valid and with a position, positions
/// distinct (which also caps the count at 10).
pub fn check_fingers(fingers: &[FingerTemplate]) -> Result<()> {
    if fingers.is_empty() {
        return Err(GalleryError::EmptyEnrollment);
    }
    let mut seen = [false; MAX_FINGERS + 1];
    for (index, f) in fingers.iter().enumerate() {
        let Some(position) = f.position else {
            return Err(GalleryError::MissingFingerPosition { index });
        };
        f.validate().map_err(|source| GalleryError::InvalidFinger { index, source })?;
        let slot = &mut seen[position.code() as usize];
        if *slot {
            return Err(GalleryError::DuplicateModality(Modality::Finger(position)));
        }
        *slot = true;
    }
    Ok(())
}

/// Bytes [`encode`] writes for these fingers.
#[cfg(test)]
pub fn encoded_len(fingers: &[FingerTemplate]) -> usize {
    1 + fingers.iter().map(|f| 9 + f.minutiae.len() * MINUTIA_BYTES).sum::<usize>()
}

/// Append already-checked fingers (see [`check_fingers`]) to `p`.
pub fn encode(p: &mut Vec<u8>, fingers: &[FingerTemplate]) {
    p.push(fingers.len() as u8);
    for f in fingers {
        p.push(f.position.map_or(0, FingerPosition::code));
        p.extend_from_slice(&f.width.to_le_bytes());
        p.extend_from_slice(&f.height.to_le_bytes());
        p.extend_from_slice(&f.resolution_ppcm.to_le_bytes());
        p.push(f.quality);
        p.push(f.minutiae.len() as u8);
        for m in &f.minutiae {
            // Validated: x < width <= MAX_IMAGE_SIDE, so the two high bits are free.
            debug_assert!(m.x <= X_MASK);
            let kind = match m.kind {
                MinutiaKind::Other => 0u16,
                MinutiaKind::RidgeEnding => 1,
                MinutiaKind::Bifurcation => 2,
            };
            p.extend_from_slice(&((kind << 14) | (m.x & X_MASK)).to_le_bytes());
            p.extend_from_slice(&m.y.to_le_bytes());
            p.push(m.angle);
            p.push(m.quality);
        }
    }
}

/// Read one subject's fingers; `None` for anything [`encode`] could not have written.
pub fn decode(r: &mut Reader<'_>) -> Option<Vec<FingerTemplate>> {
    let n = r.u8()? as usize;
    if !(1..=MAX_FINGERS).contains(&n) {
        return None;
    }
    let mut fingers = Vec::with_capacity(n);
    for _ in 0..n {
        fingers.push(decode_finger(r)?);
    }
    check_fingers(&fingers).ok()?;
    Some(fingers)
}

fn decode_finger(r: &mut Reader<'_>) -> Option<FingerTemplate> {
    let position = FingerPosition::new(r.u8()?).ok()?;
    let width = r.u16()?;
    let height = r.u16()?;
    let resolution_ppcm = r.u16()?;
    let quality = r.u8()?;
    let count = r.u8()? as usize;
    let bytes = r.take(count * MINUTIA_BYTES)?;
    let minutiae = bytes
        .chunks_exact(MINUTIA_BYTES)
        .map(|c| {
            let xk = u16::from_le_bytes([c[0], c[1]]);
            let kind = match xk >> 14 {
                0 => MinutiaKind::Other,
                1 => MinutiaKind::RidgeEnding,
                2 => MinutiaKind::Bifurcation,
                _ => return None,
            };
            let y = u16::from_le_bytes([c[2], c[3]]);
            Some(Minutia { x: xk & X_MASK, y, angle: c[4], kind, quality: c[5] })
        })
        .collect::<Option<Vec<_>>>()?;
    let t = FingerTemplate {
        width,
        height,
        resolution_ppcm,
        position: Some(position),
        quality,
        minutiae,
    };
    t.validate().ok()?;
    Some(t)
}

/// Test helpers shared by this crate's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A valid finger at position `p` with `n` minutiae spread over a 400×500 image.
    pub fn finger(p: u8, n: usize) -> FingerTemplate {
        let minutiae = (0..n)
            .map(|i| Minutia {
                x: (i * 7 % 400) as u16,
                y: (i * 13 % 500) as u16,
                angle: (i * 31) as u8,
                kind: [MinutiaKind::Other, MinutiaKind::RidgeEnding, MinutiaKind::Bifurcation]
                    [i % 3],
                quality: (i % 101) as u8,
            })
            .collect();
        FingerTemplate::new(400, 500, 197, Some(FingerPosition::new(p).unwrap()), 60, minutiae)
            .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::finger;
    use super::*;
    use proptest::prelude::*;

    fn enc(fingers: &[FingerTemplate]) -> Vec<u8> {
        let mut p = Vec::new();
        encode(&mut p, fingers);
        assert_eq!(p.len(), encoded_len(fingers));
        p
    }

    fn dec(p: &[u8]) -> Option<Vec<FingerTemplate>> {
        let mut r = Reader::new(p);
        let f = decode(&mut r)?;
        r.is_empty().then_some(f)
    }

    fn two() -> Vec<FingerTemplate> {
        vec![finger(1, 30), finger(6, 0)]
    }

    #[test]
    fn fingers_round_trip() {
        for f in [two(), vec![finger(10, 255)], (1..=10).map(|p| finger(p, 5)).collect()] {
            assert_eq!(dec(&enc(&f)), Some(f));
        }
        // Count + 2 × 9 finger bytes + 30 × 6 minutia bytes.
        assert_eq!(enc(&two()).len(), 1 + 2 * 9 + 30 * 6);
    }

    #[test]
    fn every_truncation_is_refused() {
        let p = enc(&two());
        for n in 0..p.len() {
            assert_eq!(dec(&p[..n]), None, "prefix of {n} bytes");
        }
    }

    #[test]
    fn nonsense_fields_are_refused() {
        let p = enc(&two());
        let first_finger = 1;
        let first_minutia = first_finger + 9;
        let patch = |at: usize, v: &[u8]| {
            let mut q = p.clone();
            q[at..at + v.len()].copy_from_slice(v);
            dec(&q)
        };
        assert_eq!(patch(0, &[0]), None, "no fingers");
        assert_eq!(patch(0, &[11]), None, "more than 10 fingers");
        assert_eq!(patch(first_finger, &[0]), None, "position 0");
        assert_eq!(patch(first_finger, &[11]), None, "position 11");
        assert_eq!(patch(first_finger, &[6]), None, "duplicate position");
        assert_eq!(patch(first_finger + 1, &0u16.to_le_bytes()), None, "zero width");
        assert_eq!(patch(first_finger + 5, &10u16.to_le_bytes()), None, "resolution 10");
        assert_eq!(patch(first_finger + 7, &[101]), None, "finger quality 101");
        assert_eq!(patch(first_finger + 8, &[31]), None, "minutia count too high");
        assert_eq!(patch(first_minutia + 1, &[0xc0]), None, "minutia kind 3");
        assert_eq!(patch(first_minutia, &400u16.to_le_bytes()), None, "x outside the image");
        assert_eq!(patch(first_minutia + 2, &500u16.to_le_bytes()), None, "y outside");
        assert_eq!(patch(first_minutia + 5, &[200]), None, "minutia quality 200");
        // Changing a field to another valid value still decodes (the CRC guards integrity).
        assert!(patch(first_minutia + 4, &[3]).is_some());
    }

    #[test]
    fn check_fingers_reports_the_rule_broken() {
        assert!(matches!(check_fingers(&[]), Err(GalleryError::EmptyEnrollment)));
        let mut no_pos = finger(2, 3);
        no_pos.position = None;
        assert!(matches!(
            check_fingers(&[finger(1, 3), no_pos]),
            Err(GalleryError::MissingFingerPosition { index: 1 })
        ));
        let mut bad = finger(3, 3);
        bad.minutiae[2].x = 400;
        assert!(matches!(
            check_fingers(&[finger(1, 3), bad]),
            Err(GalleryError::InvalidFinger { index: 1, .. })
        ));
        let dup = check_fingers(&[finger(4, 3), finger(5, 1), finger(4, 2)]).unwrap_err();
        assert!(
            matches!(dup, GalleryError::DuplicateModality(Modality::Finger(p)) if p.code() == 4),
            "{dup}"
        );
        let all: Vec<_> = (1..=10).map(|p| finger(p, 5)).collect();
        check_fingers(&all).unwrap();
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = dec(&bytes);
        }

        #[test]
        fn decode_never_panics_on_mutated_records(at in 0usize..1000, v in any::<u8>(), cut in 0usize..1000) {
            let mut p = enc(&two());
            let at = at % p.len();
            p[at] = v;
            p.truncate(p.len() - cut % p.len());
            if let Some(f) = dec(&p) {
                // Whatever decodes re-encodes to the same bytes: no two encodings of one record.
                prop_assert_eq!(enc(&f), p);
            }
        }
    }
}
