//! External subject identifiers (e.g. a national ID number).

use crate::CoreError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// An external subject id: non-empty, at most [`SubjectId::MAX_LEN`] bytes, printable ASCII
/// (`0x21..=0x7e`, no spaces). Validated on construction and on deserialisation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SubjectId(String);

impl SubjectId {
    /// Longest accepted id in bytes.
    pub const MAX_LEN: usize = 64;

    /// Validate and wrap an external id.
    pub fn new(id: impl Into<String>) -> Result<Self, CoreError> {
        let id = id.into();
        if id.is_empty() {
            return Err(CoreError::EmptySubjectId);
        }
        if id.len() > Self::MAX_LEN {
            return Err(CoreError::SubjectIdTooLong { len: id.len(), max: Self::MAX_LEN });
        }
        if let Some(at) = id.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
            return Err(CoreError::SubjectIdNotPrintable { at });
        }
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SubjectId {
    type Error = CoreError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<SubjectId> for String {
    fn from(value: SubjectId) -> Self {
        value.0
    }
}

impl fmt::Display for SubjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SubjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubjectId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_ids() {
        for id in ["1", "CM-1990-000123", "A".repeat(64).as_str(), "x_y.z:9"] {
            assert_eq!(SubjectId::new(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn rejects_bad_ids() {
        assert_eq!(SubjectId::new(""), Err(CoreError::EmptySubjectId));
        assert_eq!(
            SubjectId::new("A".repeat(65)),
            Err(CoreError::SubjectIdTooLong { len: 65, max: 64 })
        );
        assert_eq!(SubjectId::new("ab c"), Err(CoreError::SubjectIdNotPrintable { at: 2 }));
        assert_eq!(SubjectId::new("ab\n"), Err(CoreError::SubjectIdNotPrintable { at: 2 }));
        assert_eq!(SubjectId::new("é"), Err(CoreError::SubjectIdNotPrintable { at: 0 }));
    }

    #[test]
    fn deserialisation_validates() {
        assert!(serde_json::from_str::<SubjectId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<SubjectId>("\"\"").is_err());
    }
}
