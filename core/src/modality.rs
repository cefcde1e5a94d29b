//! Biometric modalities: face, and fingers by ISO/IEC 19794-2 / ANSI-378 finger position.

use crate::CoreError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Finger position code 1..=10 (1 = right thumb … 5 = right little, 6 = left thumb … 10 = left little).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct FingerPosition(u8);

impl FingerPosition {
    pub fn new(code: u8) -> Result<Self, CoreError> {
        if (1..=10).contains(&code) {
            Ok(Self(code))
        } else {
            Err(CoreError::BadFingerPosition(code))
        }
    }

    pub fn code(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for FingerPosition {
    type Error = CoreError;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<FingerPosition> for u8 {
    fn from(value: FingerPosition) -> Self {
        value.0
    }
}

impl fmt::Debug for FingerPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Finger({})", self.0)
    }
}

/// One biometric sample slot of a subject.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "position")]
pub enum Modality {
    Face,
    Finger(FingerPosition),
}

impl Modality {
    /// Compact code used by the on-disk formats: 0 = face, 1..=10 = finger position.
    pub fn code(self) -> u8 {
        match self {
            Modality::Face => 0,
            Modality::Finger(p) => p.code(),
        }
    }

    pub fn from_code(code: u8) -> Result<Self, CoreError> {
        if code == 0 {
            Ok(Modality::Face)
        } else {
            FingerPosition::new(code).map(Modality::Finger)
        }
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Modality::Face => f.write_str("face"),
            Modality::Finger(p) => write!(f, "finger{}", p.code()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in 0..=10u8 {
            assert_eq!(Modality::from_code(code).unwrap().code(), code);
        }
        assert_eq!(Modality::from_code(11), Err(CoreError::BadFingerPosition(11)));
        assert_eq!(FingerPosition::new(0), Err(CoreError::BadFingerPosition(0)));
    }

    #[test]
    fn serde_shape() {
        let m = Modality::Finger(FingerPosition::new(2).unwrap());
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(s, r#"{"kind":"finger","position":2}"#);
        assert_eq!(serde_json::from_str::<Modality>(&s).unwrap(), m);
        assert!(serde_json::from_str::<Modality>(r#"{"kind":"finger","position":12}"#).is_err());
    }
}
