//! The `[cluster]` section of a node's configuration.

use serde::{Deserialize, Serialize};

/// How a node joins its cluster. Every node of a cluster must agree on `name`, `shards`,
/// `replication` and `log_replicas`; `node_id` is unique per node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Off: a single-node service on its own store (the default).
    pub enabled: bool,
    /// Names the cluster: etcd keys live under `/biomatch/<name>/`, the log is the JetStream
    /// stream `BIOMATCH_<NAME>` with subjects `bm.<name>.log.<shard>`.
    pub name: String,
    /// This node's id, unique in the cluster and stable across restarts (its shard replicas are
    /// found again under `<data>/shards/`).
    pub node_id: String,
    /// etcd client URLs (every member, so a dead member is skipped).
    pub etcd: Vec<String>,
    /// NATS server URLs (every member).
    pub nats: Vec<String>,
    /// Logical shards: subjects are routed by a hash of their id. More shards than nodes, so
    /// shards can move; fixed when the cluster is created.
    pub shards: u32,
    /// Replicas of each shard (capped at the live nodes).
    pub replication: u32,
    /// Replicas of the JetStream log (capped at the NATS members; 3 tolerates one lost member).
    pub log_replicas: u32,
    /// TTL of a node's etcd lease: a node silent this long is dead and its replicas fail over.
    pub lease_ttl_s: u64,
    /// How long a coordinator waits for a write to be applied by every active replica, or for a
    /// shard's answer to a search, before answering 503.
    pub request_timeout_ms: u64,
    /// A replica whose applied log position is this many messages behind the head is still
    /// catching up (not promoted to active).
    pub max_promote_lag: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            name: "biomatch".into(),
            node_id: String::new(),
            etcd: vec!["http://127.0.0.1:2379".into()],
            nats: vec!["nats://127.0.0.1:4222".into()],
            shards: 12,
            replication: 2,
            log_replicas: 3,
            lease_ttl_s: 3,
            // Below the HTTP layer's default 10 s, so the coordinator answers first.
            request_timeout_ms: 8_000,
            max_promote_lag: 100,
        }
    }
}

impl ClusterConfig {
    /// Check the values a node cannot run with (only when enabled).
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        let token = |what: &str, v: &str| {
            if v.is_empty()
                || v.len() > 64
                || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                Err(format!("cluster.{what} must be 1..=64 characters of [A-Za-z0-9_-]; got {v:?}"))
            } else {
                Ok(())
            }
        };
        token("name", &self.name)?;
        token("node_id", &self.node_id)?;
        if self.etcd.is_empty() || self.nats.is_empty() {
            return Err("cluster.etcd and cluster.nats must each list at least one URL".into());
        }
        if !(1..=4096).contains(&self.shards) {
            return Err(format!("cluster.shards must be in 1..=4096; got {}", self.shards));
        }
        if !(1..=5).contains(&self.replication) || !(1..=5).contains(&self.log_replicas) {
            return Err("cluster.replication and cluster.log_replicas must be in 1..=5".into());
        }
        if self.lease_ttl_s < 1 || self.request_timeout_ms < 100 {
            return Err("cluster.lease_ttl_s must be ≥ 1 and request_timeout_ms ≥ 100".into());
        }
        Ok(())
    }

    /// The JetStream stream holding the log.
    pub fn stream_name(&self) -> String {
        format!("BIOMATCH_{}", self.name.to_ascii_uppercase().replace('-', "_"))
    }

    /// The log subject of a shard.
    pub fn log_subject(&self, shard: u32) -> String {
        format!("bm.{}.log.{shard}", self.name)
    }

    /// The subject a node answers requests on.
    pub fn node_subject(&self, node: &str) -> String {
        format!("bm.{}.node.{node}", self.name)
    }

    /// The etcd key prefix of the cluster.
    pub fn prefix(&self) -> String {
        format!("/biomatch/{}/", self.name)
    }
}
