//! The coordinator: what any node does with a client's request.
//!
//! - **Writes** (enroll, delete): published to the shard's log subject (JetStream: stored on a
//!   majority of the stream's replicas before its ack; a client's Idempotency-Key becomes the
//!   message id, so a retry within the stream's 2-minute window is the same message), then
//!   acknowledged only once **every active replica** of the shard has applied it (its store
//!   fsynced it) — read-your-writes on any node. A replica that does not confirm is waited for
//!   until the controller drops it from the shard's active replicas (its lease expired), or
//!   until `request_timeout_ms`: then `write_in_doubt` (the log has the write; it will be
//!   applied).
//! - **Reads** carry the log head at their start (`min_seq`): the replica answering waits until
//!   it has applied the log through it, so every write acknowledged before the read began is
//!   seen. 1:1 asks one active replica of the subject's shard; 1:N asks one active replica of
//!   every shard (shards grouped by node, one request per node), merges the parts and cuts at
//!   the cluster-wide N (`Engine::identify_part`, `biomatch_engine::merge_parts`). A node that
//!   does not answer is replaced by another active replica of its shards; a shard with none
//!   fails the request with 503 `shard_unavailable` — never a silently partial answer.

use crate::log::{shard_of, LogOp, WireSamples};
use crate::node::Node;
use crate::rpc::{Outcome, RemoteError, Reply, Request};
use async_nats::jetstream::message::PublishMessage as Publish;
use biomatch_core::SubjectId;
use biomatch_engine::{
    merge_parts, EngineError, Enrolled, ErrorCode, Identification, IdentifyParams, IdentifyPart,
    ProbeKinds, Samples, SubjectView, Verification,
};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// How long one request to a node may take before another replica is asked.
const RPC_TIMEOUT: Duration = Duration::from_secs(3);

fn shard_unavailable(shard: u32, why: &str) -> EngineError {
    EngineError::invalid(
        ErrorCode::ShardUnavailable,
        format!("no replica of shard {shard} answered ({why}); nothing partial is answered"),
    )
}

impl Node {
    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.cfg.request_timeout_ms)
    }

    /// Ask node `to`; a transport failure is `Err(None)`, an error it answered `Err(Some)`.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        to: &str,
        req: &Request,
        timeout: Duration,
    ) -> Result<T, Option<EngineError>> {
        let body = serde_json::to_vec(req).expect("serialisable");
        let r = self
            .nats
            .send_request(
                self.cfg.node_subject(to),
                async_nats::Request::new().payload(body.into()).timeout(Some(timeout)),
            )
            .await;
        let msg = match r {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(node = to, error = %e, "cluster request failed");
                return Err(None);
            }
        };
        match serde_json::from_slice::<Reply<T>>(&msg.payload) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Some(e.into())),
            Err(e) => Err(Some(EngineError::invalid(
                ErrorCode::Internal,
                format!("node {to} answered something unreadable: {e}"),
            ))),
        }
    }

    /// The active replicas of a shard, this node first (no network hop), then by load spread.
    fn readers(&self, shard: u32) -> Vec<String> {
        let Some(map) = self.current_map() else { return Vec::new() };
        let Some(r) = map.shards.get(shard as usize) else { return Vec::new() };
        let mut v = r.active.clone();
        let turn = self.requests.fetch_add(1, Ordering::Relaxed) as usize;
        if !v.is_empty() {
            let len = v.len();
            v.rotate_left(turn % len);
        }
        if let Some(i) = v.iter().position(|n| n == self.id()) {
            let me = v.remove(i);
            v.insert(0, me);
        }
        v
    }

    /// The log position a read must see: the log's head now, or — while the log is electing
    /// a leader and cannot tell (a NATS member died; writes cannot be acknowledged meanwhile) —
    /// the last head this node saw (refreshed every 200 ms and by its own writes). Every write
    /// acknowledged before was confirmed by every replica active then.
    async fn read_position(&self) -> u64 {
        match tokio::time::timeout(Duration::from_millis(500), self.log_head()).await {
            Ok(Ok(h)) => {
                self.head.fetch_max(h, Ordering::AcqRel);
                h
            }
            _ => self.head.load(Ordering::Acquire),
        }
    }

    /// Append a write to its shard's log and wait until every active replica applied it.
    async fn write(
        &self,
        op: LogOp,
        msg_id: Option<String>,
    ) -> Result<(u64, Outcome), EngineError> {
        let shard = shard_of(op.subject(), self.cfg.shards);
        // Every message has an id, so the publish can be retried through a NATS leader
        // election without being stored twice (the stream de-duplicates ids for 2 minutes).
        let msg_id = msg_id.unwrap_or_else(|| {
            format!(
                "auto:{}:{}:{}",
                self.cfg.node_id,
                self.started_ns,
                self.requests.fetch_add(1, Ordering::Relaxed)
            )
        });
        let payload: bytes::Bytes = serde_json::to_vec(&op).expect("serialisable").into();
        let deadline = self.deadline();
        let ack = loop {
            let publish = Publish::build().payload(payload.clone()).message_id(&msg_id);
            let r = match self.js.send_publish(self.cfg.log_subject(shard), publish).await {
                Ok(f) => f.await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match r {
                Ok(ack) => break ack,
                Err(e) if Instant::now() > deadline => {
                    return Err(EngineError::invalid(
                        ErrorCode::StoreUnavailable,
                        format!("the log (NATS JetStream) did not store the write: {e}"),
                    ))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the log did not take a write; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        let seq = ack.sequence;
        self.head.fetch_max(seq, Ordering::AcqRel);
        let mut confirmed: BTreeSet<String> = BTreeSet::new();
        let mut outcome: Option<Outcome> = None;
        loop {
            let active = self
                .current_map()
                .and_then(|m| m.shards.get(shard as usize).map(|r| r.active.clone()))
                .unwrap_or_default();
            let pending: Vec<String> =
                active.iter().filter(|n| !confirmed.contains(*n)).cloned().collect();
            if !active.is_empty() && pending.is_empty() {
                break;
            }
            let asks = pending.iter().map(|n| async move {
                (
                    n.clone(),
                    self.call::<Option<Outcome>>(n, &Request::Wait { shard, seq }, RPC_TIMEOUT)
                        .await,
                )
            });
            let mut failed = false;
            for (n, r) in futures_util::future::join_all(asks).await {
                match r {
                    Ok(o) => {
                        confirmed.insert(n);
                        if outcome.is_none() {
                            outcome = o;
                        }
                    }
                    Err(_) => failed = true,
                }
            }
            if Instant::now() > deadline {
                return Err(EngineError::invalid(
                    ErrorCode::WriteInDoubt,
                    format!(
                        "the log stored the write (position {seq}) but not every replica of shard \
                         {shard} confirmed it in time; retry with the same Idempotency-Key"
                    ),
                ));
            }
            if failed || active.is_empty() {
                // A replica down or lagging: the map drops a dead one within its lease TTL.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let outcome = match outcome {
            Some(o) => o,
            // Every replica applied it before its last restart: the outcome is read back. (An
            // enrollment refused then as already_enrolled reads as found: a known gap.)
            None => match &op {
                LogOp::Enroll { subject, .. } => match self.subject(subject).await {
                    Ok(view) => Outcome::Enrolled { view, created: false },
                    Err(e) => Outcome::Failed { code: e.code(), message: e.to_string() },
                },
                LogOp::Delete { .. } => Outcome::Deleted,
            },
        };
        Ok((seq, outcome))
    }

    /// Enroll through the log. `retry`: an identical enrollment already stored is found, not
    /// refused (as `Engine::enroll`); `idempotency_key` (scoped by the caller) de-duplicates
    /// retries in the log.
    pub async fn enroll(
        &self,
        subject: SubjectId,
        samples: &Samples,
        retry: bool,
        idempotency_key: Option<String>,
    ) -> Result<Enrolled, EngineError> {
        let op = LogOp::Enroll { subject, samples: samples.into(), retry };
        match self.write(op, idempotency_key.map(|k| format!("enroll:{k}"))).await?.1 {
            Outcome::Enrolled { view, created } => Ok(Enrolled { view, created }),
            Outcome::Failed { code, message } => Err(RemoteError { code, message }.into()),
            Outcome::Deleted => {
                Err(EngineError::invalid(ErrorCode::Internal, "unexpected outcome"))
            }
        }
    }

    /// Delete through the log; the log position of the delete.
    pub async fn delete(&self, subject: SubjectId) -> Result<u64, EngineError> {
        match self.write(LogOp::Delete { subject }, None).await? {
            (seq, Outcome::Deleted) => Ok(seq),
            (_, Outcome::Failed { code, message }) => Err(RemoteError { code, message }.into()),
            _ => Err(EngineError::invalid(ErrorCode::Internal, "unexpected outcome")),
        }
    }

    /// Ask the active replicas of `shard` in turn until one answers.
    async fn read_shard<T: DeserializeOwned>(
        &self,
        shard: u32,
        req: impl Fn(u64) -> Request,
    ) -> Result<T, EngineError> {
        let min_seq = self.read_position().await;
        let mut last = "no active replica".to_string();
        for n in self.readers(shard) {
            match self.call::<T>(&n, &req(min_seq), RPC_TIMEOUT).await {
                Ok(v) => return Ok(v),
                Err(Some(e)) if e.code() != ErrorCode::ShardUnavailable => return Err(e),
                Err(Some(e)) => last = e.to_string(),
                Err(None) => last = format!("node {n} did not answer"),
            }
        }
        Err(shard_unavailable(shard, &last))
    }

    /// What is enrolled for a subject.
    pub async fn subject(&self, subject: &SubjectId) -> Result<SubjectView, EngineError> {
        let shard = shard_of(subject, self.cfg.shards);
        self.read_shard(shard, |min_seq| Request::Subject {
            shard,
            min_seq,
            subject: subject.clone(),
        })
        .await
    }

    /// 1:1 against an enrolled subject.
    pub async fn verify(
        &self,
        subject: &SubjectId,
        samples: &Samples,
        target_fmr: f64,
    ) -> Result<Verification, EngineError> {
        let shard = shard_of(subject, self.cfg.shards);
        let wire = WireSamples::from(samples);
        self.read_shard(shard, |min_seq| Request::Verify {
            shard,
            min_seq,
            subject: subject.clone(),
            samples: wire.clone(),
            target_fmr,
        })
        .await
    }

    /// 1:N over every shard, merged and cut at the cluster-wide N.
    pub async fn identify(
        &self,
        samples: &Samples,
        params: &IdentifyParams,
    ) -> Result<Identification, EngineError> {
        let min_seq = self.read_position().await;
        let deadline = self.deadline();
        let wire = WireSamples::from(samples);
        let shards = self.cfg.shards;
        let mut parts: BTreeMap<u32, IdentifyPart> = BTreeMap::new();
        let mut failed_nodes: BTreeSet<String> = BTreeSet::new();
        loop {
            // One active replica per shard still missing, grouped by node.
            let mut plan: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            for s in (0..shards).filter(|s| !parts.contains_key(s)) {
                let Some(n) = self.readers(s).into_iter().find(|n| !failed_nodes.contains(n))
                else {
                    return Err(shard_unavailable(s, "every active replica failed"));
                };
                plan.entry(n).or_default().push(s);
            }
            if plan.is_empty() {
                break;
            }
            let asks = plan.into_iter().map(|(n, ss)| {
                let req = Request::Identify {
                    shards: ss.clone(),
                    min_seq,
                    samples: wire.clone(),
                    params: params.clone(),
                };
                async move {
                    let r = self.call::<Vec<IdentifyPart>>(&n, &req, RPC_TIMEOUT).await;
                    (n, ss, r)
                }
            });
            for (n, ss, r) in futures_util::future::join_all(asks).await {
                match r {
                    Ok(ps) if ps.len() == ss.len() => parts.extend(ss.into_iter().zip(ps)),
                    Err(Some(e)) if e.code() != ErrorCode::ShardUnavailable => return Err(e),
                    _ => {
                        tracing::warn!(node = %n, "a node did not answer its shards of a 1:N search");
                        failed_nodes.insert(n);
                    }
                }
            }
            if Instant::now() > deadline {
                let s = (0..shards).find(|s| !parts.contains_key(s)).unwrap_or(0);
                return Err(shard_unavailable(s, "timed out"));
            }
        }
        let kinds = ProbeKinds::of_samples(samples);
        merge_parts(parts.into_values().collect(), &kinds, params, |m| self.calibrations.table(m))
    }
}
