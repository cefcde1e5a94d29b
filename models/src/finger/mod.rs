//! Fingerprint minutiae extraction with NIST mindtct (through the `nbis-rs` crate), and the
//! Bozorth3 matcher kept as the baseline the MCC matcher is measured against.
//!
//! Images are decoded here with the same bounded decoder as faces (byte, pixel and allocation
//! limits checked before pixels are allocated), checked for size and blankness, and handed to
//! mindtct as an uncompressed PGM (nbis-rs takes encoded bytes). mindtct is re-entrant (its
//! globals are read-only tables) and runs in parallel; Bozorth3 keeps its working state in C
//! globals and is serialised behind one lock.

pub mod bozorth;

use crate::imageio::{decode_gray, ImageLimits};
use crate::ExtractError;
use biomatch_core::finger::{FingerTemplate, Minutia, MinutiaKind, RESOLUTION_500DPI_PPCM};
use biomatch_core::FingerPosition;
use serde::Serialize;

pub use bozorth::BozorthTemplate;

/// Extractor id recorded with finger templates made here.
pub const MINDTCT_MODEL: &str = "nbis-mindtct@5.0";

/// What a fingerprint image must satisfy before extraction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FingerLimits {
    pub image: ImageLimits,
    /// Smallest accepted width and height (a 500-dpi plain impression is ≥ 250 px).
    pub min_side: u32,
    /// Fewer minutiae than this cannot be matched reliably: refused.
    pub min_minutiae: usize,
    /// Grey-level standard deviation below which the image is considered blank.
    pub min_contrast: f32,
}

impl Default for FingerLimits {
    fn default() -> Self {
        Self {
            image: ImageLimits { max_bytes: 10 << 20, max_side: 2000, max_pixels: 2000 * 2000 },
            min_side: 150,
            min_minutiae: 8,
            min_contrast: 8.0,
        }
    }
}

/// Quality signals of one extraction.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FingerQuality {
    /// Minutiae kept in the template.
    pub minutiae: usize,
    /// Mean mindtct reliability of the kept minutiae, 0..=1.
    pub mean_reliability: f32,
    /// Standard deviation of the grey levels (contrast).
    pub contrast: f32,
}

/// A template and what the extractor saw.
#[derive(Clone, Debug)]
pub struct FingerExtraction {
    pub template: FingerTemplate,
    pub quality: FingerQuality,
}

/// mindtct minutiae extraction for 500-dpi images.
#[derive(Clone, Debug, Default)]
pub struct FingerExtractor {
    pub limits: FingerLimits,
}

impl FingerExtractor {
    pub fn new(limits: FingerLimits) -> Self {
        Self { limits }
    }

    /// Extract from an encoded PNG or JPEG.
    pub fn extract(
        &self,
        image: &[u8],
        position: Option<FingerPosition>,
    ) -> Result<FingerExtraction, ExtractError> {
        let gray = decode_gray(image, &self.limits.image)?;
        let (w, h) = gray.dimensions();
        self.extract_gray(w, h, gray.as_raw(), position)
    }

    /// Extract from raw 8-bit grey pixels, row-major, 0 = black (the synthetic generator's output).
    pub fn extract_gray(
        &self,
        width: u32,
        height: u32,
        pixels: &[u8],
        position: Option<FingerPosition>,
    ) -> Result<FingerExtraction, ExtractError> {
        let l = &self.limits;
        if pixels.len() as u64 != u64::from(width) * u64::from(height) {
            return Err(ExtractError::Undecodable("pixel buffer does not match the size".into()));
        }
        if width > l.image.max_side || height > l.image.max_side {
            return Err(ExtractError::TooLarge {
                width: width.into(),
                height: height.into(),
                max: l.image.max_side,
            });
        }
        if width < l.min_side || height < l.min_side {
            return Err(ExtractError::TooSmall { width, height, min: l.min_side });
        }
        let contrast = std_dev(pixels);
        if contrast < l.min_contrast {
            return Err(ExtractError::Blank { contrast });
        }
        let pgm = pgm(width, height, pixels);
        // nbis-rs panics on a minutia type it does not know and on a null result; neither may
        // take the service down.
        let found = std::panic::catch_unwind(|| nbis::extract_minutiae(&pgm, Some(500.0)))
            .map_err(|_| ExtractError::Runtime("mindtct failed on this image".into()))?
            .map_err(|e| ExtractError::Runtime(format!("mindtct: {e}")))?;
        let mut minutiae: Vec<(f64, Minutia)> = found
            .get()
            .iter()
            .filter(|m| {
                m.x() >= 0 && m.y() >= 0 && (m.x() as u32) < width && (m.y() as u32) < height
            })
            .map(|m| {
                let r = m.reliability().clamp(0.0, 1.0);
                let minutia = Minutia {
                    x: m.x() as u16,
                    y: m.y() as u16,
                    angle: iso_angle_of_degrees(m.angle()),
                    kind: match m.kind() {
                        nbis::MinutiaKind::RidgeEnding => MinutiaKind::RidgeEnding,
                        nbis::MinutiaKind::Bifurcation => MinutiaKind::Bifurcation,
                    },
                    quality: ((r * 100.0).round() as u8).max(1),
                };
                (r, minutia)
            })
            .collect();
        // Most reliable first; keep what the template format can hold.
        minutiae.sort_by(|a, b| b.0.total_cmp(&a.0));
        minutiae.truncate(biomatch_core::finger::MAX_MINUTIAE);
        if minutiae.len() < l.min_minutiae {
            return Err(ExtractError::TooFewMinutiae { got: minutiae.len(), min: l.min_minutiae });
        }
        let mean_reliability =
            (minutiae.iter().map(|m| m.0).sum::<f64>() / minutiae.len() as f64) as f32;
        let quality = (mean_reliability * 100.0).round() as u8;
        let template = FingerTemplate::new(
            width as u16,
            height as u16,
            RESOLUTION_500DPI_PPCM,
            position,
            quality,
            minutiae.into_iter().map(|m| m.1).collect(),
        )
        .map_err(|e| {
            ExtractError::Runtime(format!("mindtct output is not a valid template: {e}"))
        })?;
        Ok(FingerExtraction {
            quality: FingerQuality {
                minutiae: template.minutiae.len(),
                mean_reliability,
                contrast,
            },
            template,
        })
    }
}

/// Degrees counter-clockwise from +x → ISO units of 360/256°.
fn iso_angle_of_degrees(deg: f64) -> u8 {
    ((deg.rem_euclid(360.0) / (360.0 / 256.0)).round() as u32 % 256) as u8
}

fn std_dev(px: &[u8]) -> f32 {
    let n = px.len().max(1) as f64;
    let (s, s2) = px.iter().fold((0u64, 0u64), |(s, s2), &p| {
        let p = u64::from(p);
        (s + p, s2 + p * p)
    });
    let mean = s as f64 / n;
    ((s2 as f64 / n - mean * mean).max(0.0)).sqrt() as f32
}

/// Binary PGM: what mindtct receives (no compression cost; nbis-rs decodes it with `image`).
fn pgm(width: u32, height: u32, pixels: &[u8]) -> Vec<u8> {
    let mut out = format!("P5\n{width} {height}\n255\n").into_bytes();
    out.extend_from_slice(pixels);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mindtct_directions_map_exactly_to_iso_units() {
        // mindtct reports directions in 11.25° steps; nbis-rs turns them into degrees from +x.
        for d in 0..32 {
            let deg = (90.0 - f64::from(d) * 11.25).rem_euclid(360.0);
            let iso = iso_angle_of_degrees(deg);
            assert_eq!(u32::from(iso), (64 + 256 - 8 * d) % 256);
        }
    }

    #[test]
    fn blank_and_small_images_are_refused_before_mindtct() {
        let x = FingerExtractor::default();
        let flat = vec![200u8; 300 * 300];
        assert!(matches!(x.extract_gray(300, 300, &flat, None), Err(ExtractError::Blank { .. })));
        let small = vec![0u8; 100 * 100];
        assert!(matches!(
            x.extract_gray(100, 100, &small, None),
            Err(ExtractError::TooSmall { width: 100, height: 100, .. })
        ));
        assert!(matches!(
            x.extract_gray(300, 300, &flat[..10], None),
            Err(ExtractError::Undecodable(_))
        ));
    }
}
