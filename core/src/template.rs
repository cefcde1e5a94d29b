//! Templates: fixed-length feature vectors tagged with the model that produced them.
//!
//! A template is only comparable with templates of the *same* model id and version; the gallery
//! refuses anything else. Vectors are L2-normalised on construction, so the similarity score of two
//! templates is their dot product (cosine similarity, in [-1, 1]).

use crate::CoreError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Identifies a feature extractor: name and version, e.g. `sface@2021dec`. Templates of different
/// ids are never compared.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModelId {
    name: String,
    version: String,
}

impl ModelId {
    const MAX_PART: usize = 48;

    pub fn new(name: &str, version: &str) -> Result<Self, CoreError> {
        for (what, part) in [("name", name), ("version", version)] {
            if part.is_empty() || part.len() > Self::MAX_PART {
                return Err(CoreError::BadModelId(format!(
                    "{what} must be 1..={} bytes",
                    Self::MAX_PART
                )));
            }
            if !part.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                return Err(CoreError::BadModelId(format!(
                    "{what} may contain only ASCII letters, digits, '-', '_' and '.'"
                )));
            }
        }
        Ok(Self { name: name.to_owned(), version: version.to_owned() })
    }

    /// Parse the `name@version` form.
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        let (name, version) = s
            .split_once('@')
            .ok_or_else(|| CoreError::BadModelId("expected NAME@VERSION".into()))?;
        Self::new(name, version)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> &str {
        &self.version
    }
}

impl TryFrom<String> for ModelId {
    type Error = CoreError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ModelId> for String {
    fn from(value: ModelId) -> Self {
        value.to_string()
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

impl fmt::Debug for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelId({self})")
    }
}

/// A validated, L2-normalised feature vector of a known model.
#[derive(Clone, PartialEq)]
pub struct Template {
    model: ModelId,
    vector: Vec<f32>,
}

impl Template {
    /// Validate `vector` (dimension, finite values, non-zero norm) and normalise it to unit length.
    pub fn new(model: ModelId, expected_dim: usize, vector: Vec<f32>) -> Result<Self, CoreError> {
        if vector.len() != expected_dim {
            return Err(CoreError::WrongDimension {
                model: model.to_string(),
                expected: expected_dim,
                got: vector.len(),
            });
        }
        let vector = normalized(vector)?;
        Ok(Self { model, vector })
    }

    pub fn model(&self) -> &ModelId {
        &self.model
    }

    pub fn dim(&self) -> usize {
        self.vector.len()
    }

    /// The unit-length vector.
    pub fn vector(&self) -> &[f32] {
        &self.vector
    }
}

impl fmt::Debug for Template {
    // Never print the vector: templates are biometric data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Template")
            .field("model", &self.model)
            .field("dim", &self.vector.len())
            .finish_non_exhaustive()
    }
}

/// Check that every value is finite and the norm non-zero, then scale to unit length.
pub fn normalized(mut vector: Vec<f32>) -> Result<Vec<f32>, CoreError> {
    if let Some(index) = vector.iter().position(|v| !v.is_finite()) {
        return Err(CoreError::NonFinite { index });
    }
    let norm = vector.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt();
    if !norm.is_finite() || norm <= 0.0 {
        return Err(CoreError::ZeroVector);
    }
    let inv = 1.0 / norm;
    for v in &mut vector {
        *v = (f64::from(*v) * inv) as f32;
    }
    Ok(vector)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelId {
        ModelId::new("synthetic", "1").unwrap()
    }

    #[test]
    fn model_id_parse_and_display() {
        let m = ModelId::parse("sface@2021dec").unwrap();
        assert_eq!((m.name(), m.version()), ("sface", "2021dec"));
        assert_eq!(m.to_string(), "sface@2021dec");
        assert!(ModelId::parse("sface").is_err());
        assert!(ModelId::parse("@1").is_err());
        assert!(ModelId::parse("a b@1").is_err());
    }

    #[test]
    fn template_is_normalised() {
        let t = Template::new(model(), 3, vec![3.0, 0.0, 4.0]).unwrap();
        assert_eq!(t.vector(), &[0.6, 0.0, 0.8]);
    }

    #[test]
    fn template_rejects_bad_vectors() {
        assert!(matches!(
            Template::new(model(), 4, vec![1.0; 3]),
            Err(CoreError::WrongDimension { expected: 4, got: 3, .. })
        ));
        assert_eq!(
            Template::new(model(), 2, vec![1.0, f32::NAN]),
            Err(CoreError::NonFinite { index: 1 })
        );
        assert_eq!(
            Template::new(model(), 2, vec![f32::INFINITY, 1.0]),
            Err(CoreError::NonFinite { index: 0 })
        );
        assert_eq!(Template::new(model(), 2, vec![0.0, 0.0]), Err(CoreError::ZeroVector));
    }

    #[test]
    fn debug_hides_the_vector() {
        let t = Template::new(model(), 2, vec![0.25, 0.5]).unwrap();
        let s = format!("{t:?}");
        assert!(!s.contains("0.4") && !s.contains("0.8"), "{s}");
    }
}
