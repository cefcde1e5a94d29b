//! One biomatch node of a cluster: its replicas of logical shards (each its own store and
//! engine under `<data>/shards/<shard>/`), the applier that feeds them the log, the requests it
//! answers for other nodes, and the background tasks that keep it registered and (when elected)
//! run the controller. The coordinator side — what a node does with a client's request — is
//! [`crate::coord`].

use crate::config::ClusterConfig;
use crate::journal::{request_id_of, AppliedJournal};
use crate::log::LogOp;
use crate::map::{plan, Progress, ShardMap};
use crate::meta::{ids, Meta, NodeInfo};
use crate::rpc::{Outcome, Reply, Request};
use async_nats::jetstream;
use biomatch_core::{CalibrationTable, ModelId};
use biomatch_engine::{
    AuditContext, Engine, EngineError, EngineModel, ErrorCode, IdentifyPart, Journal,
};
use futures_util::StreamExt;
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Opens the engine of one shard replica over the store in the given directory, with the
/// journal that persists its applied log position.
pub type EngineFactory =
    Arc<dyn Fn(u32, &Path, Arc<dyn Journal>) -> Result<Engine, String> + Send + Sync>;

/// How long a replica waits to have applied the log through a read's position before it
/// answers that it is lagging (the coordinator then asks another replica).
const READ_WAIT: Duration = Duration::from_secs(2);
/// How long a replica holds a `Wait` before answering "not yet" (the coordinator asks again).
const APPLY_WAIT: Duration = Duration::from_secs(1);
/// Outcomes of applied log messages remembered for coordinators' `Wait`s.
const OUTCOMES_KEPT: usize = 100_000;

/// A replica of one shard on this node.
#[derive(Debug)]
pub struct LocalShard {
    pub id: u32,
    pub engine: Arc<Engine>,
    journal: Arc<AppliedJournal>,
    /// Every log message of this shard up to here is applied.
    through: AtomicU64,
    dir: PathBuf,
    /// Checkpoints are held until this instant (ms since the epoch) while another node copies
    /// this replica ([`crate::snapshot`]); the lock is held across a checkpoint and a listing.
    hold_until_ms: AtomicU64,
    maintain: Mutex<()>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl LocalShard {
    pub fn through(&self) -> u64 {
        self.through.load(Ordering::Acquire)
    }

    /// The maintenance thread's turn ([`Engine::maintain`]), unless a copy holds checkpoints.
    pub fn maintain(&self) -> biomatch_engine::Result<bool> {
        let _g = self.maintain.lock();
        if now_ms() < self.hold_until_ms.load(Ordering::Acquire) {
            return Ok(false);
        }
        self.engine.maintain()
    }

    fn hold(&self) {
        self.hold_until_ms
            .store(now_ms() + crate::snapshot::HOLD.as_millis() as u64, Ordering::Release);
    }

    /// The files to copy, checkpoints held from now: the write-ahead log listed up to the end
    /// of its last durable commit group.
    fn snapshot_list(&self) -> Result<Vec<crate::snapshot::FileEntry>, EngineError> {
        let _g = self.maintain.lock();
        self.hold();
        let wal_len = self.engine.store().wal_durable_len();
        crate::snapshot::list_store(&self.dir, wal_len).map_err(|e| {
            EngineError::invalid(ErrorCode::Internal, format!("cannot list the replica: {e}"))
        })
    }
}

/// Calibration of the configured models, for the coordinator's FPIR cut.
#[derive(Clone, Debug)]
pub struct Calibrations {
    pub models: Vec<EngineModel>,
    pub fingers: Option<CalibrationTable>,
}

impl Calibrations {
    pub fn table(&self, model: &ModelId) -> biomatch_engine::Result<&CalibrationTable> {
        if *model == biomatch_engine::mcc_model() {
            if let Some(t) = &self.fingers {
                return Ok(t);
            }
        }
        self.models.iter().find(|m| &m.id == model).map(|m| &m.calibration).ok_or_else(|| {
            EngineError::invalid(ErrorCode::UnknownModel, format!("no calibration for {model}"))
        })
    }
}

/// A cluster node. Cheap to share (`Arc`); its tasks run on the Tokio runtime it started on.
pub struct Node {
    pub(crate) cfg: ClusterConfig,
    pub(crate) url: String,
    data: PathBuf,
    factory: EngineFactory,
    pub(crate) calibrations: Calibrations,
    pub(crate) nats: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) meta: Meta,
    lease: AtomicI64,
    pub(crate) map: watch::Sender<Option<Arc<ShardMap>>>,
    shards: RwLock<BTreeMap<u32, Arc<LocalShard>>>,
    /// Bumped when a shard replica is opened behind the applier's position: it restarts from
    /// the lowest position of its replicas.
    restart: watch::Sender<u64>,
    /// The last log position delivered to the applier (all replicas are through it or behind).
    position: watch::Sender<u64>,
    outcomes: Mutex<BTreeMap<u64, Outcome>>,
    pub(crate) controller: AtomicBool,
    pub(crate) live: RwLock<BTreeMap<String, NodeInfo>>,
    pub(crate) progress: RwLock<BTreeMap<String, Progress>>,
    pub(crate) head: AtomicU64,
    pub(crate) requests: AtomicU64,
    /// This process's start (ns since the epoch): makes its generated message ids unique.
    pub(crate) started_ns: u128,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.cfg.node_id).finish()
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::invalid(ErrorCode::ClusterUnavailable, format!("{what}: {e}"))
}

impl Node {
    /// Join the cluster: connect to etcd and NATS (retrying until `deadline`), make sure the
    /// log stream exists, register, open this node's replicas and start the applier, the
    /// request handler, the lease, the map watcher and the controller campaign.
    pub async fn start(
        cfg: ClusterConfig,
        url: String,
        data: PathBuf,
        calibrations: Calibrations,
        factory: EngineFactory,
    ) -> Result<Arc<Node>, String> {
        cfg.validate()?;
        let meta = retry("etcd", || Meta::connect(&cfg.etcd, cfg.prefix())).await?;
        let servers: Vec<async_nats::ServerAddr> = cfg
            .nats
            .iter()
            .map(|u| u.parse().map_err(|e| format!("cluster.nats {u}: {e}")))
            .collect::<Result<_, String>>()?;
        let nats = retry("NATS", || {
            async_nats::ConnectOptions::new()
                .name(format!("biomatch-{}", cfg.node_id))
                .retry_on_initial_connect()
                .connect(servers.clone())
        })
        .await?;
        let mut js = jetstream::new(nats.clone());
        // A publish whose stream leader died is retried (same message id) rather than waited
        // on for the default 5 s: a new leader is elected within seconds.
        js.set_timeout(Duration::from_millis(1500));
        ensure_stream(&js, &cfg).await?;
        let lease = retry("etcd lease", || meta.grant(cfg.lease_ttl_s)).await?;
        let node = Arc::new(Node {
            url,
            data,
            factory,
            calibrations,
            nats,
            js,
            meta,
            lease: AtomicI64::new(lease),
            map: watch::channel(None).0,
            shards: RwLock::new(BTreeMap::new()),
            restart: watch::channel(0).0,
            position: watch::channel(0).0,
            outcomes: Mutex::new(BTreeMap::new()),
            controller: AtomicBool::new(false),
            live: RwLock::new(BTreeMap::new()),
            progress: RwLock::new(BTreeMap::new()),
            head: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            started_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
            cfg,
        });
        node.register().await.map_err(|e| format!("cannot register in etcd: {e}"))?;
        // Requests first: a coordinator may ask as soon as the map names this node.
        let sub = node
            .nats
            .subscribe(node.cfg.node_subject(&node.cfg.node_id))
            .await
            .map_err(|e| format!("cannot subscribe to NATS: {e}"))?;
        tokio::spawn(node.clone().serve_requests(sub));
        tokio::spawn(node.clone().lease_loop());
        tokio::spawn(node.clone().controller_loop());
        tokio::spawn(node.clone().map_loop());
        tokio::spawn(node.clone().applier_loop());
        tracing::info!(node = %node.cfg.node_id, cluster = %node.cfg.name, "joined the cluster");
        Ok(node)
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    pub fn id(&self) -> &str {
        &self.cfg.node_id
    }

    /// The shard map this node knows (refreshed every 200 ms).
    pub fn current_map(&self) -> Option<Arc<ShardMap>> {
        self.map.borrow().clone()
    }

    /// This node's replicas.
    pub fn local_shards(&self) -> Vec<Arc<LocalShard>> {
        self.shards.read().values().cloned().collect()
    }

    /// Ready: a map is known and every replica the map names active on this node is open and
    /// has applied the log within `max_promote_lag` of the head.
    pub fn is_ready(&self) -> bool {
        let Some(map) = self.current_map() else { return false };
        let head = self.head.load(Ordering::Acquire);
        let local = self.shards.read();
        map.shards.iter().enumerate().all(|(s, r)| {
            !r.active.iter().any(|n| n == self.id())
                || local
                    .get(&(s as u32))
                    .is_some_and(|l| l.through() + self.cfg.max_promote_lag >= head)
        })
    }

    async fn register(&self) -> Result<(), etcd_client::Error> {
        let info = NodeInfo {
            id: self.cfg.node_id.clone(),
            url: self.url.clone(),
            started_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        self.meta.put_node(&info, self.lease.load(Ordering::Acquire)).await
    }

    /// Keep the lease alive (a third of its TTL); report progress; register again with a new
    /// lease when it was lost (etcd unreachable for longer than the TTL).
    async fn lease_loop(self: Arc<Self>) {
        let period = Duration::from_millis((self.cfg.lease_ttl_s * 1000 / 3).max(200));
        let ttl = Duration::from_secs(self.cfg.lease_ttl_s);
        let mut renewed = std::time::Instant::now();
        // False from a new lease until `nodes/<id>` is written under it: a registration that
        // failed (etcd electing a leader) is retried every period, not only when the new lease
        // expires too (a node kept renewing a lease nobody saw and was left out of the map).
        let mut registered = true;
        let mut unlisted = 0u32;
        loop {
            tokio::time::sleep(period).await;
            let lease = self.lease.load(Ordering::Acquire);
            // Unrenewed for a whole TTL (etcd answers "lease not found" once it expired while
            // a member was down): gone, register again.
            // A call stuck on a dead etcd member is abandoned after one period and retried.
            let expired = match tokio::time::timeout(period, self.meta.renew(lease)).await {
                Ok(Ok(true)) => {
                    renewed = std::time::Instant::now();
                    false
                }
                Ok(Ok(false)) => true,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot renew the etcd lease");
                    renewed.elapsed() > ttl
                }
                Err(_) => {
                    tracing::warn!("etcd lease renewal timed out");
                    renewed.elapsed() > ttl
                }
            };
            if expired {
                tracing::warn!("the etcd lease expired: registering again");
                match self.meta.grant(self.cfg.lease_ttl_s).await {
                    Ok(l) => {
                        self.lease.store(l, Ordering::Release);
                        self.controller.store(false, Ordering::Release);
                        registered = false;
                        renewed = std::time::Instant::now();
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot get a new etcd lease"),
                }
            }
            // Belt and braces: a renewed lease whose node key the metadata does not list (the
            // map loop's last read, for three periods running) is registered again.
            if registered && !self.live.read().contains_key(&self.cfg.node_id) {
                unlisted += 1;
                if unlisted >= 3 {
                    tracing::warn!("this node is missing from the live nodes: registering again");
                    registered = false;
                }
            } else {
                unlisted = 0;
            }
            if !registered {
                match tokio::time::timeout(period, self.register()).await {
                    Ok(Ok(())) => {
                        registered = true;
                        unlisted = 0;
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot register again (retrying)"),
                    Err(_) => tracing::warn!("registering again timed out (retrying)"),
                }
            }
            let progress: Progress =
                self.shards.read().values().map(|l| (l.id, l.through())).collect();
            if let Err(e) = self
                .meta
                .put_progress(&self.cfg.node_id, &progress, self.lease.load(Ordering::Acquire))
                .await
            {
                tracing::debug!(error = %e, "cannot report progress");
            }
        }
    }

    /// Every 200 ms: read the map, the live nodes, their progress and the log head; open and
    /// drop replicas to match the map.
    async fn map_loop(self: Arc<Self>) {
        loop {
            if let Err(e) = self.refresh().await {
                tracing::debug!(error = %e, "cluster metadata not refreshed");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn refresh(&self) -> Result<(), String> {
        let (map, _) = self.meta.map().await.map_err(|e| e.to_string())?;
        *self.live.write() = self.meta.nodes().await.map_err(|e| e.to_string())?;
        *self.progress.write() = self.meta.progress().await.map_err(|e| e.to_string())?;
        if let Ok(h) = self.log_head().await {
            self.head.fetch_max(h, Ordering::AcqRel);
        }
        let Some(map) = map else { return Ok(()) };
        let changed = self.current_map().is_none_or(|m| m.epoch != map.epoch);
        if changed {
            tracing::info!(epoch = map.epoch, shards = ?map.shards_of(self.id()), "shard map");
            self.map.send_replace(Some(Arc::new(map.clone())));
        }
        self.reconcile(&map).await;
        Ok(())
    }

    /// Open the replicas the map gives this node, drop those it took away.
    async fn reconcile(&self, map: &ShardMap) {
        let want = map.shards_of(self.id());
        let have: Vec<u32> = self.shards.read().keys().copied().collect();
        for s in want.iter().filter(|s| !have.contains(s)) {
            let dir = self.data.join("shards").join(s.to_string());
            // Nothing to copy before the log's first write (a new cluster).
            if !dir.join("MANIFEST").exists() && self.head.load(Ordering::Acquire) > 0 {
                self.copy_replica(map, *s, &dir).await;
            }
            let factory = self.factory.clone();
            let s = *s;
            let opened = tokio::task::spawn_blocking(move || open_shard(s, dir, factory)).await;
            match opened {
                Ok(Ok(l)) => {
                    let behind = l.through() < *self.position.borrow();
                    tracing::info!(shard = s, applied = l.through(), "replica opened");
                    self.shards.write().insert(s, Arc::new(l));
                    if behind {
                        self.restart.send_modify(|g| *g += 1);
                    }
                }
                Ok(Err(e)) => tracing::error!(shard = s, error = %e, "cannot open the replica"),
                Err(e) => tracing::error!(shard = s, error = %e, "replica opening panicked"),
            }
        }
        for s in have.iter().filter(|s| !want.contains(s)) {
            let Some(l) = self.shards.write().remove(s) else { continue };
            tracing::info!(shard = s, "replica dropped: the shard moved away");
            let dir = l.dir.clone();
            drop(l);
            // Searches still holding the engine keep their mapped files (unlinked, not unmapped).
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        }
    }

    /// Copy shard `s` from one of its active replicas into `dir` (absent): then the new replica
    /// replays the log only from the copy's position. On any failure the directory is left
    /// absent and the replica replays the log from its start instead.
    async fn copy_replica(&self, map: &ShardMap, s: u32, dir: &Path) {
        let sources: Vec<String> = map
            .shards
            .get(s as usize)
            .map(|r| r.active.iter().filter(|n| *n != self.id()).cloned().collect())
            .unwrap_or_default();
        let incoming = dir.with_extension("incoming");
        for src in sources {
            let t = std::time::Instant::now();
            let _ = tokio::fs::remove_dir_all(&incoming).await;
            match self.copy_from(&src, s, &incoming).await {
                Ok((files, bytes)) => {
                    let moved = std::fs::rename(&incoming, dir)
                        .and_then(|()| std::fs::File::open(self.data.join("shards"))?.sync_all());
                    match moved {
                        Ok(()) => {
                            tracing::info!(shard = s, from = %src, files, bytes, seconds = t.elapsed().as_secs_f64(), "replica copied");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(shard = s, error = %e, "cannot move the copied replica into place")
                        }
                    }
                }
                Err(e) => tracing::warn!(shard = s, from = %src, error = %e, "replica copy failed"),
            }
            let _ = self
                .call::<()>(&src, &Request::SnapshotDone { shard: s }, Duration::from_secs(2))
                .await;
        }
        let _ = tokio::fs::remove_dir_all(&incoming).await;
        tracing::warn!(
            shard = s,
            "no replica to copy from: replaying the shard's log from its start"
        );
    }

    async fn copy_from(&self, src: &str, s: u32, into: &Path) -> Result<(usize, u64), String> {
        use base64::Engine as _;
        use tokio::io::AsyncWriteExt;
        let t = Duration::from_secs(10);
        let what = |e: Option<EngineError>| e.map_or("no answer".to_string(), |e| e.to_string());
        let files: Vec<crate::snapshot::FileEntry> =
            self.call(src, &Request::SnapshotList { shard: s }, t).await.map_err(what)?;
        let mut bytes = 0u64;
        for f in &files {
            let path = crate::snapshot::resolve(into, &f.path)
                .ok_or_else(|| format!("refused file name {:?}", f.path))?;
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(|e| e.to_string())?;
            }
            let mut out = tokio::fs::File::create(&path).await.map_err(|e| e.to_string())?;
            let mut offset = 0;
            while offset < f.len {
                let req = Request::SnapshotChunk {
                    shard: s,
                    path: f.path.clone(),
                    offset,
                    len: (f.len - offset).min(crate::snapshot::CHUNK),
                };
                let b64: String = self.call(src, &req, t).await.map_err(what)?;
                let chunk = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| e.to_string())?;
                if chunk.is_empty() {
                    return Err(format!("{} ended before its listed length", f.path));
                }
                out.write_all(&chunk).await.map_err(|e| e.to_string())?;
                offset += chunk.len() as u64;
            }
            out.flush().await.map_err(|e| e.to_string())?;
            bytes += f.len;
        }
        let _ = self.call::<()>(src, &Request::SnapshotDone { shard: s }, t).await;
        let dir = into.to_path_buf();
        tokio::task::spawn_blocking(move || crate::snapshot::sync_tree(&dir))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok((files.len(), bytes))
    }

    /// The log's last sequence number.
    pub(crate) async fn log_head(&self) -> Result<u64, EngineError> {
        let stream = self
            .js
            .get_stream(self.cfg.stream_name())
            .await
            .map_err(|e| unavailable("the log (NATS JetStream) is unreachable", e))?;
        Ok(stream.cached_info().state.last_sequence)
    }

    /// Campaign for the controller key every 500 ms; while holding it, plan the map.
    async fn controller_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let lease = self.lease.load(Ordering::Acquire);
            match self.meta.campaign(&self.cfg.node_id, lease).await {
                Ok(true) => {
                    if !self.controller.swap(true, Ordering::AcqRel) {
                        tracing::info!("elected controller");
                    }
                    if let Err(e) = self.control_once().await {
                        tracing::warn!(error = %e, "controller round failed");
                    }
                }
                Ok(false) => self.controller.store(false, Ordering::Release),
                Err(e) => {
                    self.controller.store(false, Ordering::Release);
                    tracing::debug!(error = %e, "controller campaign failed");
                }
            }
        }
    }

    async fn control_once(&self) -> Result<(), String> {
        // The map with its revision, read now (the swap is conditional on it); the live nodes,
        // their progress and the log head as the map loop read them (every 200 ms).
        let (current, rev) = self.meta.map().await.map_err(|e| e.to_string())?;
        let live = ids(&self.live.read());
        let progress = self.progress.read().clone();
        let head = self.head.load(Ordering::Acquire);
        let Some(next) = plan(
            current.as_ref(),
            self.cfg.shards,
            self.cfg.replication,
            &live,
            &progress,
            head,
            self.cfg.max_promote_lag,
        ) else {
            return Ok(());
        };
        if self.meta.swap_map(&self.cfg.node_id, rev, &next).await.map_err(|e| e.to_string())? {
            tracing::info!(epoch = next.epoch, nodes = live.len(), "shard map changed");
        }
        Ok(())
    }

    /// Apply the log: one ordered consumer over every shard's subject from the lowest position
    /// of this node's replicas; each message goes to its shard's replica if this node has one
    /// that has not applied it. Restarted when a replica is opened behind the position.
    async fn applier_loop(self: Arc<Self>) {
        let mut restart = self.restart.subscribe();
        loop {
            restart.borrow_and_update();
            let lowest = self.shards.read().values().map(|l| l.through()).min();
            let start = match lowest {
                Some(m) => m + 1,
                // No replica: follow the head (nothing to apply).
                None => self.log_head().await.map(|h| h + 1).unwrap_or(1),
            };
            if let Err(e) = self.apply_from(start, &mut restart).await {
                tracing::warn!(error = %e, start, "log consumer stopped; restarting");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    async fn apply_from(
        &self,
        start: u64,
        restart: &mut watch::Receiver<u64>,
    ) -> Result<(), String> {
        let stream = self.js.get_stream(self.cfg.stream_name()).await.map_err(|e| e.to_string())?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: format!("bm.{}.log.>", self.cfg.name),
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        self.position.send_if_modified(|p| {
            let new = start.saturating_sub(1);
            let changed = *p != new;
            *p = new;
            changed
        });
        let prefix = format!("bm.{}.log.", self.cfg.name);
        // A replica is in step with this consumer when it is through the last delivered
        // message; one opened since (behind) waits for the restart this consumer is about to get.
        let mut prev = start.saturating_sub(1);
        // A consumer whose server went away may stay silent instead of failing: restarted when
        // the log has moved past it and nothing arrived for STALL.
        const STALL: Duration = Duration::from_secs(2);
        let mut last_message = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            let msg = tokio::select! {
                m = messages.next() => m,
                _ = restart.changed() => return Ok(()),
                _ = tick.tick() => {
                    if self.head.load(Ordering::Acquire) > prev && last_message.elapsed() > STALL {
                        return Err(format!("no log message for {STALL:?} while behind the head"));
                    }
                    continue;
                }
            };
            last_message = tokio::time::Instant::now();
            let Some(msg) = msg else { return Err("the log consumer ended".into()) };
            let msg = msg.map_err(|e| e.to_string())?;
            let seq = msg.info().map_err(|e| e.to_string())?.stream_sequence;
            let shard: Option<u32> =
                msg.subject.as_str().strip_prefix(&prefix).and_then(|s| s.parse().ok());
            let local = shard.and_then(|s| self.shards.read().get(&s).cloned());
            if let Some(l) = local.filter(|l| l.through() >= prev) {
                if seq > l.through() && seq > l.journal.applied() {
                    let op: Result<LogOp, _> = serde_json::from_slice(&msg.payload);
                    let outcome = match op {
                        Ok(op) => self.apply(&l, seq, op).await,
                        Err(e) => Outcome::Failed {
                            code: ErrorCode::Internal,
                            message: format!("log message {seq} is not a log operation: {e}"),
                        },
                    };
                    let mut o = self.outcomes.lock();
                    o.insert(seq, outcome);
                    while o.len() > OUTCOMES_KEPT {
                        o.pop_first();
                    }
                }
            }
            for l in self.shards.read().values().filter(|l| l.through() >= prev) {
                l.through.fetch_max(seq, Ordering::AcqRel);
            }
            prev = seq;
            self.position.send_replace(seq);
        }
    }

    /// Apply one message to a replica, retrying storage failures (the replica must not skip a
    /// write): the outcome is what the engine answered.
    async fn apply(&self, l: &Arc<LocalShard>, seq: u64, op: LogOp) -> Outcome {
        let mut backoff = Duration::from_millis(100);
        loop {
            let (l2, op2) = (l.clone(), op.clone());
            let r = tokio::task::spawn_blocking(move || apply_op(&l2.engine, seq, op2)).await;
            match r {
                Ok(Err(e)) if e.is_retryable() || e.code() == ErrorCode::InsufficientStorage => {
                    tracing::error!(shard = l.id, seq, error = %e, "cannot store a log write; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Ok(r) => {
                    return match r {
                        Ok(o) => o,
                        Err(e) => Outcome::Failed { code: e.code(), message: e.to_string() },
                    }
                }
                Err(e) => {
                    return Outcome::Failed {
                        code: ErrorCode::Internal,
                        message: format!("applying log message {seq} panicked: {e}"),
                    }
                }
            }
        }
    }

    /// Answer other nodes' requests, each on its own task.
    async fn serve_requests(self: Arc<Self>, mut sub: async_nats::Subscriber) {
        while let Some(msg) = sub.next().await {
            let node = self.clone();
            tokio::spawn(async move {
                let Some(reply) = msg.reply.clone() else { return };
                let answer = match serde_json::from_slice::<Request>(&msg.payload) {
                    Ok(r) => node.answer(r).await,
                    Err(e) => serde_json::to_vec(&Reply::<()>::Err(crate::rpc::RemoteError {
                        code: ErrorCode::BadRequest,
                        message: format!("not a cluster request: {e}"),
                    }))
                    .expect("serialisable"),
                };
                if let Err(e) = node.nats.publish(reply, answer.into()).await {
                    tracing::debug!(error = %e, "cannot answer a cluster request");
                }
            });
        }
    }

    fn replica(&self, shard: u32) -> Result<Arc<LocalShard>, EngineError> {
        self.shards.read().get(&shard).cloned().ok_or_else(|| {
            EngineError::invalid(
                ErrorCode::ShardUnavailable,
                format!("node {} holds no replica of shard {shard}", self.id()),
            )
        })
    }

    /// Wait until the replica of `shard` has applied the log through `seq`.
    async fn wait_through(
        &self,
        shard: u32,
        seq: u64,
        limit: Duration,
    ) -> Result<Arc<LocalShard>, EngineError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut pos = self.position.subscribe();
        loop {
            let l = self.replica(shard)?;
            if l.through() >= seq {
                return Ok(l);
            }
            if tokio::time::timeout_at(deadline, pos.changed()).await.is_err() {
                return Err(EngineError::invalid(
                    ErrorCode::ShardUnavailable,
                    format!(
                        "the replica of shard {shard} on node {} is behind the log ({} < {seq})",
                        self.id(),
                        l.through()
                    ),
                ));
            }
        }
    }

    async fn answer(&self, r: Request) -> Vec<u8> {
        fn enc<T: serde::Serialize>(r: Result<T, EngineError>) -> Vec<u8> {
            let reply: Reply<T> = r.map_err(|e| (&e).into());
            serde_json::to_vec(&reply).expect("serialisable")
        }
        match r {
            Request::Wait { shard, seq } => enc(async {
                self.wait_through(shard, seq, APPLY_WAIT).await?;
                Ok(self.outcomes.lock().get(&seq).cloned())
            }
            .await),
            Request::Verify { shard, min_seq, subject, samples, target_fmr } => enc(async {
                let l = self.wait_through(shard, min_seq, READ_WAIT).await?;
                blocking(move || {
                    let probe = l.engine.prepare(samples.to_samples()?)?;
                    l.engine.verify(&subject, &probe, target_fmr)
                })
                .await
            }
            .await),
            Request::Subject { shard, min_seq, subject } => enc(async {
                let l = self.wait_through(shard, min_seq, READ_WAIT).await?;
                blocking(move || l.engine.subject(&subject)).await
            }
            .await),
            Request::SnapshotList { shard } => enc(async {
                let l = self.replica(shard)?;
                blocking(move || l.snapshot_list()).await
            }
            .await),
            Request::SnapshotChunk { shard, path, offset, len } => enc(async {
                let l = self.replica(shard)?;
                l.hold();
                blocking(move || {
                    let bytes =
                        crate::snapshot::read_chunk(&l.dir, &path, offset, len).map_err(|e| {
                            EngineError::invalid(ErrorCode::BadRequest, format!("{path}: {e}"))
                        })?;
                    use base64::Engine as _;
                    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
                })
                .await
            }
            .await),
            Request::SnapshotDone { shard } => enc(async {
                self.replica(shard)?.hold_until_ms.store(0, Ordering::Release);
                Ok(())
            }
            .await),
            Request::Identify { shards, min_seq, samples, params } => enc(async {
                let mut replicas = Vec::with_capacity(shards.len());
                for s in shards {
                    replicas.push(self.wait_through(s, min_seq, READ_WAIT).await?);
                }
                blocking(move || {
                    let first = replicas.first().ok_or_else(|| {
                        EngineError::invalid(ErrorCode::BadRequest, "no shard to search")
                    })?;
                    let probe = first.engine.prepare(samples.to_samples()?)?;
                    use rayon::prelude::*;
                    replicas
                        .par_iter()
                        .map(|l| l.engine.identify_part(&probe, &params))
                        .collect::<Result<Vec<IdentifyPart>, _>>()
                })
                .await
            }
            .await),
        }
    }
}

/// CPU and disk work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(EngineError::invalid(ErrorCode::Internal, format!("task failed: {e}")))
    })
}

fn open_shard(s: u32, dir: PathBuf, factory: EngineFactory) -> Result<LocalShard, String> {
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let journal = Arc::new(AppliedJournal::open(&dir)?);
    let engine = factory(s, &dir, journal.clone())?;
    engine.recover_journal().map_err(|e| format!("shard {s}: {e}"))?;
    let through = journal.applied();
    Ok(LocalShard {
        id: s,
        engine: Arc::new(engine),
        journal,
        through: AtomicU64::new(through),
        dir,
        hold_until_ms: AtomicU64::new(0),
        maintain: Mutex::new(()),
    })
}

/// One log operation on a replica's engine.
fn apply_op(engine: &Engine, seq: u64, op: LogOp) -> Result<Outcome, EngineError> {
    let ctx = AuditContext {
        key_id: "cluster-log".into(),
        request_id: request_id_of(seq),
        client_request_id: None,
    };
    match op {
        LogOp::Enroll { subject, samples, retry } => {
            let samples = samples.to_samples()?;
            let e = engine.enroll(subject, samples, retry, Some(ctx))?;
            let mut view = e.view;
            // The log position names the write on every replica (store sequences differ).
            view.seq = seq;
            Ok(Outcome::Enrolled { view, created: e.created })
        }
        LogOp::Delete { subject } => {
            engine.delete(&subject, Some(ctx))?;
            Ok(Outcome::Deleted)
        }
    }
}

/// The log stream: created by the first node (file storage, `log_replicas` replicas, kept
/// until deleted, 2 minutes of message-id de-duplication).
async fn ensure_stream(js: &jetstream::Context, cfg: &ClusterConfig) -> Result<(), String> {
    let config = jetstream::stream::Config {
        name: cfg.stream_name(),
        subjects: vec![format!("bm.{}.log.*", cfg.name)],
        storage: jetstream::stream::StorageType::File,
        num_replicas: cfg.log_replicas as usize,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    retry("the log stream", || async { js.get_or_create_stream(config.clone()).await.map(|_| ()) })
        .await
}

/// Retry a connection for up to 60 s (members may still be starting).
async fn retry<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> Result<T, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(format!("cannot reach {what}: {e}"))
            }
            Err(e) => {
                tracing::info!(error = %e, "waiting for {what}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Per node, the shards it has a replica of (for operators).
pub fn replicas_by_node(map: &ShardMap) -> HashMap<String, (Vec<u32>, Vec<u32>)> {
    let mut out: HashMap<String, (Vec<u32>, Vec<u32>)> = HashMap::new();
    for (s, r) in map.shards.iter().enumerate() {
        for n in &r.active {
            out.entry(n.clone()).or_default().0.push(s as u32);
        }
        for n in &r.catching_up {
            out.entry(n.clone()).or_default().1.push(s as u32);
        }
    }
    out
}
