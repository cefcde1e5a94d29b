//! Fingerprint domain types: minutiae templates and their invariants.
//!
//! Only the data the store, the engine and the service exchange lives here; the algorithms on it
//! (the ISO/ANSI record codec, the MCC matcher, the pre-selection index) are in the
//! `biomatch-fingerprint` crate, so that holding a finger template does not pull them in.
//!
//! Coordinates follow ISO/IEC 19794-2:2005: pixels, origin at the top-left corner of the image,
//! x to the right, y down. Angles are in ISO units of 360/256 degrees (1.40625°), measured
//! counter-clockwise from the positive x axis (as seen on the image, i.e. with y pointing down the
//! angle turns towards −y), in the direction of the ridge leaving the minutia.

use crate::FingerPosition;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Largest number of minutiae one finger template may hold (the ISO count field is one byte).
pub const MAX_MINUTIAE: usize = 255;
/// Largest image side accepted for a finger template, in pixels (ISO allows 14-bit coordinates).
pub const MAX_IMAGE_SIDE: u16 = 16_383;
/// Resolution of the images this system extracts from: 500 dpi = 197 pixels per centimetre.
pub const RESOLUTION_500DPI_PPCM: u16 = 197;

/// Minutia type as ISO/IEC 19794-2 codes it in the two high bits of the x coordinate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MinutiaKind {
    Other = 0,
    RidgeEnding = 1,
    Bifurcation = 2,
}

/// One minutia point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Minutia {
    /// Pixels from the left edge.
    pub x: u16,
    /// Pixels from the top edge.
    pub y: u16,
    /// Direction in ISO units (1.40625°), counter-clockwise from the x axis.
    pub angle: u8,
    pub kind: MinutiaKind,
    /// 1..=100, or 0 when the extractor reports none.
    pub quality: u8,
}

impl Minutia {
    /// Direction in radians, in [0, 2π).
    pub fn angle_rad(&self) -> f32 {
        self.angle as f32 * (std::f32::consts::TAU / 256.0)
    }

    /// The ISO unit nearest to `radians` (any real value; wrapped into one turn).
    pub fn angle_from_rad(radians: f32) -> u8 {
        let turns = (radians / std::f32::consts::TAU).rem_euclid(1.0);
        ((turns * 256.0).round() as u32 % 256) as u8
    }
}

/// A validated finger minutiae template: what the store keeps and the matchers compare.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FingerTemplate {
    /// Image size in pixels; every minutia lies inside it.
    pub width: u16,
    pub height: u16,
    /// Pixels per centimetre, horizontally and vertically (197 for 500 dpi).
    pub resolution_ppcm: u16,
    /// Finger position, if the capture said which finger it is.
    pub position: Option<FingerPosition>,
    /// Finger-level quality 0..=100.
    pub quality: u8,
    pub minutiae: Vec<Minutia>,
}

/// A finger template that breaks an invariant. Messages carry counts and positions, never minutiae.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FingerError {
    #[error("finger image size {width}x{height} is outside 1..={max} pixels per side")]
    BadImageSize { width: u16, height: u16, max: u16 },
    #[error("resolution {0} pixels/cm is outside 50..=2000")]
    BadResolution(u16),
    #[error("finger template has {got} minutiae; the limit is {max}")]
    TooManyMinutiae { got: usize, max: usize },
    #[error("minutia {index} at ({x}, {y}) lies outside the {width}x{height} image")]
    MinutiaOutOfRange { index: usize, x: u16, y: u16, width: u16, height: u16 },
    #[error("quality {0} is above 100")]
    BadQuality(u8),
}

impl FingerTemplate {
    /// Checks every invariant and returns the template unchanged when it holds.
    pub fn new(
        width: u16,
        height: u16,
        resolution_ppcm: u16,
        position: Option<FingerPosition>,
        quality: u8,
        minutiae: Vec<Minutia>,
    ) -> Result<Self, FingerError> {
        let t = FingerTemplate { width, height, resolution_ppcm, position, quality, minutiae };
        t.validate()?;
        Ok(t)
    }

    /// Re-checks the invariants (templates deserialised from JSON bypass [`FingerTemplate::new`]).
    pub fn validate(&self) -> Result<(), FingerError> {
        let (w, h) = (self.width, self.height);
        if w == 0 || h == 0 || w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
            return Err(FingerError::BadImageSize { width: w, height: h, max: MAX_IMAGE_SIDE });
        }
        if !(50..=2000).contains(&self.resolution_ppcm) {
            return Err(FingerError::BadResolution(self.resolution_ppcm));
        }
        if self.quality > 100 {
            return Err(FingerError::BadQuality(self.quality));
        }
        if self.minutiae.len() > MAX_MINUTIAE {
            return Err(FingerError::TooManyMinutiae {
                got: self.minutiae.len(),
                max: MAX_MINUTIAE,
            });
        }
        for (index, m) in self.minutiae.iter().enumerate() {
            if m.x >= w || m.y >= h {
                return Err(FingerError::MinutiaOutOfRange {
                    index,
                    x: m.x,
                    y: m.y,
                    width: w,
                    height: h,
                });
            }
            if m.quality > 100 {
                return Err(FingerError::BadQuality(m.quality));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(x: u16, y: u16) -> Minutia {
        Minutia { x, y, angle: 0, kind: MinutiaKind::RidgeEnding, quality: 50 }
    }

    #[test]
    fn template_invariants_are_checked() {
        assert!(FingerTemplate::new(100, 100, 197, None, 50, vec![m(99, 99)]).is_ok());
        assert!(matches!(
            FingerTemplate::new(100, 100, 197, None, 50, vec![m(100, 5)]),
            Err(FingerError::MinutiaOutOfRange { index: 0, .. })
        ));
        assert!(matches!(
            FingerTemplate::new(0, 100, 197, None, 50, vec![]),
            Err(FingerError::BadImageSize { .. })
        ));
        assert!(matches!(
            FingerTemplate::new(100, 100, 10, None, 50, vec![]),
            Err(FingerError::BadResolution(10))
        ));
        assert!(matches!(
            FingerTemplate::new(100, 100, 197, None, 101, vec![]),
            Err(FingerError::BadQuality(101))
        ));
        assert!(matches!(
            FingerTemplate::new(500, 500, 197, None, 50, vec![m(1, 1); 256]),
            Err(FingerError::TooManyMinutiae { got: 256, .. })
        ));
    }

    #[test]
    fn angles_round_trip_through_radians() {
        for a in 0..=255u8 {
            let m = Minutia { angle: a, ..m(0, 0) };
            assert_eq!(Minutia::angle_from_rad(m.angle_rad()), a);
        }
        assert_eq!(Minutia::angle_from_rad(-std::f32::consts::TAU / 256.0), 255);
    }
}
