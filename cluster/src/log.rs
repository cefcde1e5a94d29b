//! The replicated enrollment log: what one message of a shard's log subject holds, and how a
//! subject is routed to its shard.
//!
//! A message is the JSON of a [`LogOp`]. Every replica of the shard applies the shard's messages
//! in stream order to its own store; an operation's outcome depends only on the shard's state
//! before it, so replicas agree on every outcome (and a coordinator may read it from any).

use biomatch_core::finger::FingerTemplate;
use biomatch_core::{Modality, ModelId, SubjectId, Template};
use biomatch_engine::Samples;
use serde::{Deserialize, Serialize};

/// The shard of a subject: FNV-1a (64-bit) of its id, modulo the shard count. Stable across
/// versions and platforms: it decides where a subject's data lives.
pub fn shard_of(subject: &SubjectId, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in subject.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(shards.max(1))) as u32
}

/// A vector template on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireVector {
    pub modality: Modality,
    pub model: ModelId,
    pub vector: Vec<f32>,
}

/// A request's samples on the wire (between nodes and in the log).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WireSamples {
    pub vectors: Vec<WireVector>,
    pub fingers: Vec<FingerTemplate>,
}

impl From<&Samples> for WireSamples {
    fn from(s: &Samples) -> Self {
        WireSamples {
            vectors: s
                .vectors
                .iter()
                .map(|(m, t)| WireVector {
                    modality: *m,
                    model: t.model().clone(),
                    vector: t.vector().to_vec(),
                })
                .collect(),
            fingers: s.fingers.clone(),
        }
    }
}

impl WireSamples {
    /// Back to the engine's samples; templates are checked again (length, finiteness, norm).
    pub fn to_samples(&self) -> Result<Samples, biomatch_core::CoreError> {
        let mut vectors = Vec::with_capacity(self.vectors.len());
        for v in &self.vectors {
            vectors.push((
                v.modality,
                Template::new(v.model.clone(), v.vector.len(), v.vector.clone())?,
            ));
        }
        Ok(Samples { vectors, fingers: self.fingers.clone() })
    }
}

/// One write of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LogOp {
    /// Enroll a subject. `retry`: the client sent an Idempotency-Key, so an identical
    /// enrollment already stored is found rather than refused (as on a single node).
    Enroll {
        subject: SubjectId,
        samples: WireSamples,
        retry: bool,
    },
    Delete {
        subject: SubjectId,
    },
}

impl LogOp {
    pub fn subject(&self) -> &SubjectId {
        match self {
            LogOp::Enroll { subject, .. } | LogOp::Delete { subject } => subject,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        // Pinned: changing the hash would move every stored subject.
        let s = SubjectId::new("citizen-000001").unwrap();
        assert_eq!(shard_of(&s, 1), 0);
        assert_eq!(shard_of(&s, 12), shard_of(&s, 12));
        let mut counts = [0usize; 12];
        for i in 0..12_000 {
            counts[shard_of(&SubjectId::new(format!("id-{i}")).unwrap(), 12) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
    }

    #[test]
    fn ops_round_trip_as_json() {
        let t = Template::new(ModelId::new("m", "1").unwrap(), 3, vec![0.6, 0.8, 0.0]).unwrap();
        let op = LogOp::Enroll {
            subject: SubjectId::new("a").unwrap(),
            samples: (&Samples { vectors: vec![(Modality::Face, t)], fingers: vec![] }).into(),
            retry: true,
        };
        let back: LogOp = serde_json::from_slice(&serde_json::to_vec(&op).unwrap()).unwrap();
        assert_eq!(back, op);
        let LogOp::Enroll { samples, .. } = back else { unreachable!() };
        assert_eq!(samples.to_samples().unwrap().vectors[0].1.vector(), &[0.6, 0.8, 0.0]);
    }
}
