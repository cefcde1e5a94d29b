//! biomatch past one machine (see ARCHITECTURE.md, "The cluster").
//!
//! Each `biomatch serve` node with `[cluster] enabled` joins the cluster its configuration
//! names. Subjects are routed to one of `shards` logical shards by a hash of their id
//! ([`log::shard_of`]); each shard has `replication` replicas on different nodes, each replica
//! its own subject store and engine. Proven engines carry the distributed part:
//!
//! - **NATS JetStream** holds the replicated enrollment log (one stream, a subject per shard,
//!   `log_replicas` replicas) and carries the nodes' requests to each other (request/reply).
//! - **etcd** holds membership (a lease per node), the elected controller, each node's applied
//!   position and the shard map, changed by compare-and-swap ([`meta`]).
//!
//! [`node`]: a node's replicas and the applier feeding them the log; [`coord`]: what any node
//! does with a client's request (writes through the log, fan-out reads); [`map`]: the shard
//! map and the controller's rules; [`journal`]: a replica's applied position, persisted with its
//! writes.

pub mod config;
pub mod coord;
pub mod journal;
pub mod log;
pub mod map;
pub mod meta;
pub mod node;
pub mod rpc;
pub mod snapshot;

pub use config::ClusterConfig;
pub use map::ShardMap;
pub use node::{Calibrations, EngineFactory, Node};

use serde::Serialize;
use std::sync::atomic::Ordering;

/// What `GET /v1/admin/cluster` shows.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub node_id: String,
    /// Whether this node holds the controller key.
    pub controller: bool,
    pub epoch: u64,
    /// Every shard has an active replica, and this node reaches the log.
    pub accepting_writes: bool,
    /// The log's last position (as last seen).
    pub log_head: u64,
    pub log_stream: String,
    pub shards: Vec<ShardStatus>,
    pub nodes: Vec<NodeStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ShardStatus {
    pub shard: u32,
    pub active: Vec<String>,
    pub catching_up: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    pub id: String,
    pub url: String,
    pub alive: bool,
    pub active: Vec<u32>,
    pub catching_up: Vec<u32>,
    /// Log messages between the head and the least advanced of its replicas.
    pub lag: Option<u64>,
    /// Subjects in its replicas (this node only: others are asked through their own endpoint).
    pub subjects: Option<usize>,
}

impl Node {
    /// The cluster as this node sees it.
    pub async fn status(&self) -> ClusterStatus {
        let head = match self.log_head().await {
            Ok(h) => {
                self.head.fetch_max(h, Ordering::AcqRel);
                Some(h)
            }
            Err(_) => None,
        };
        let map = self.current_map();
        let live = self.live.read().clone();
        let progress = self.progress.read().clone();
        let by_node = map.as_deref().map(node::replicas_by_node).unwrap_or_default();
        let mut ids: std::collections::BTreeSet<String> = live.keys().cloned().collect();
        ids.extend(by_node.keys().cloned());
        let h = self.head.load(Ordering::Acquire);
        let nodes = ids
            .into_iter()
            .map(|id| {
                let (active, catching_up) = by_node.get(&id).cloned().unwrap_or_default();
                let lag =
                    progress.get(&id).and_then(|p| p.values().min()).map(|m| h.saturating_sub(*m));
                let subjects = (id == self.id())
                    .then(|| self.local_shards().iter().map(|l| l.engine.subject_count()).sum());
                NodeStatus {
                    url: live.get(&id).map(|i| i.url.clone()).unwrap_or_default(),
                    alive: live.contains_key(&id),
                    id,
                    active,
                    catching_up,
                    lag,
                    subjects,
                }
            })
            .collect();
        ClusterStatus {
            cluster: self.cfg.name.clone(),
            node_id: self.cfg.node_id.clone(),
            controller: self.controller.load(Ordering::Acquire),
            epoch: map.as_ref().map_or(0, |m| m.epoch),
            accepting_writes: head.is_some() && map.as_ref().is_some_and(|m| m.complete()),
            log_head: h,
            log_stream: self.cfg.stream_name(),
            shards: map
                .as_ref()
                .map(|m| {
                    m.shards
                        .iter()
                        .enumerate()
                        .map(|(s, r)| ShardStatus {
                            shard: s as u32,
                            active: r.active.clone(),
                            catching_up: r.catching_up.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            nodes,
        }
    }
}

impl Node {
    /// This node's cluster gauges in the Prometheus text format (appended to `/metrics`): the
    /// map's epoch, controller, log head, live nodes, shards without an active replica, this
    /// node's replicas by state and each one's lag behind the log head. Labels are bounded by
    /// the shard count.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        let map = self.current_map();
        let head = self.head.load(Ordering::Acquire);
        let (mut active, mut catching) = (0, 0);
        let mut orphaned = 0;
        if let Some(m) = &map {
            for r in &m.shards {
                active += r.active.iter().filter(|n| *n == self.id()).count();
                catching += r.catching_up.iter().filter(|n| *n == self.id()).count();
                orphaned += usize::from(r.active.is_empty());
            }
        }
        let mut s = String::new();
        let mut gauge = |name: &str, help: &str, lines: Vec<(String, u64)>| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, v) in lines {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        gauge(
            "biomatch_cluster_epoch",
            "the shard map's epoch",
            vec![(String::new(), map.as_ref().map_or(0, |m| m.epoch))],
        );
        gauge(
            "biomatch_cluster_controller",
            "1 when this node is the elected controller",
            vec![(String::new(), u64::from(self.controller.load(Ordering::Acquire)))],
        );
        gauge(
            "biomatch_cluster_log_head",
            "the enrollment log's last position",
            vec![(String::new(), head)],
        );
        gauge(
            "biomatch_cluster_nodes_alive",
            "nodes holding a lease",
            vec![(String::new(), self.live.read().len() as u64)],
        );
        gauge(
            "biomatch_cluster_shards_unavailable",
            "shards without an active replica",
            vec![(String::new(), orphaned as u64)],
        );
        gauge(
            "biomatch_cluster_replicas",
            "this node's shard replicas by state",
            vec![
                ("{state=\"active\"}".into(), active as u64),
                ("{state=\"catching_up\"}".into(), catching as u64),
            ],
        );
        gauge(
            "biomatch_cluster_replica_lag",
            "log messages between the head and this node's replica",
            self.local_shards()
                .iter()
                .map(|l| (format!("{{shard=\"{}\"}}", l.id), head.saturating_sub(l.through())))
                .collect(),
        );
        s
    }
}
