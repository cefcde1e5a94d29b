//! The cluster's metadata in etcd, under `/biomatch/<name>/`:
//!
//! | key | value | lifetime |
//! |---|---|---|
//! | `nodes/<id>` | [`NodeInfo`] JSON | the node's lease: gone `lease_ttl_s` after the node stops renewing it |
//! | `progress/<id>` | per shard, the log position the node's replica applied through | the node's lease |
//! | `controller` | the elected controller's node id | the controller's lease |
//! | `map` | the [`ShardMap`] JSON, changed only by the controller, by compare-and-swap on its revision | permanent |
//!
//! Only the controller writes the map, and only in a transaction that also checks it still
//! holds the `controller` key: a deposed controller's late write fails.

use crate::map::{Progress, ShardMap};
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// What a node says about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    /// Its HTTP address (for operators and clients).
    pub url: String,
    /// Milliseconds since the epoch at its start.
    pub started_ms: u64,
}

/// etcd, as this cluster uses it.
#[derive(Clone)]
pub struct Meta {
    client: Client,
    prefix: String,
}

impl std::fmt::Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meta").field("prefix", &self.prefix).finish()
    }
}

pub type Result<T> = std::result::Result<T, etcd_client::Error>;

impl Meta {
    pub async fn connect(endpoints: &[String], prefix: String) -> Result<Self> {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
        let client = Client::connect(endpoints, Some(opts)).await?;
        Ok(Self { client, prefix })
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    /// A new lease of `ttl_s` seconds.
    pub async fn grant(&self, ttl_s: u64) -> Result<i64> {
        Ok(self.client.clone().lease_grant(ttl_s as i64, None).await?.id())
    }

    /// Renew a lease once; false when it has expired (the node must register again).
    pub async fn renew(&self, lease: i64) -> Result<bool> {
        let (mut keeper, mut stream) = self.client.clone().lease_keep_alive(lease).await?;
        keeper.keep_alive().await?;
        Ok(stream.message().await?.is_some_and(|r| r.ttl() > 0))
    }

    pub async fn put_node(&self, info: &NodeInfo, lease: i64) -> Result<()> {
        let v = serde_json::to_vec(info).expect("serialisable");
        self.client
            .clone()
            .put(
                self.key(&format!("nodes/{}", info.id)),
                v,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        Ok(())
    }

    pub async fn put_progress(&self, node: &str, p: &Progress, lease: i64) -> Result<()> {
        let v = serde_json::to_vec(p).expect("serialisable");
        self.client
            .clone()
            .put(
                self.key(&format!("progress/{node}")),
                v,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        Ok(())
    }

    async fn get_prefix(&self, p: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let full = self.key(p);
        let r =
            self.client.clone().get(full.clone(), Some(GetOptions::new().with_prefix())).await?;
        Ok(r.kvs()
            .iter()
            .map(|kv| {
                let k = String::from_utf8_lossy(kv.key()).to_string();
                (k[full.len()..].to_owned(), kv.value().to_vec())
            })
            .collect())
    }

    /// The JSON values under a prefix by the rest of their key (unreadable ones skipped).
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        p: &str,
    ) -> Result<BTreeMap<String, T>> {
        Ok(self
            .get_prefix(p)
            .await?
            .into_iter()
            .filter_map(|(id, v)| Some((id, serde_json::from_slice(&v).ok()?)))
            .collect())
    }

    /// The live nodes (those whose lease holds).
    pub async fn nodes(&self) -> Result<BTreeMap<String, NodeInfo>> {
        self.get_json("nodes/").await
    }

    /// Each live node's applied position per replica.
    pub async fn progress(&self) -> Result<BTreeMap<String, Progress>> {
        self.get_json("progress/").await
    }

    /// The shard map and its revision (0 when there is none yet).
    pub async fn map(&self) -> Result<(Option<ShardMap>, i64)> {
        let r = self.client.clone().get(self.key("map"), None).await?;
        Ok(match r.kvs().first() {
            Some(kv) => (serde_json::from_slice(kv.value()).ok(), kv.mod_revision()),
            None => (None, 0),
        })
    }

    /// The elected controller's id.
    pub async fn controller(&self) -> Result<Option<String>> {
        let r = self.client.clone().get(self.key("controller"), None).await?;
        Ok(r.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).to_string()))
    }

    /// Become the controller if there is none: true when `node` holds the key now.
    pub async fn campaign(&self, node: &str, lease: i64) -> Result<bool> {
        let key = self.key("controller");
        let txn = Txn::new()
            .when(vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(key, node, Some(PutOptions::new().with_lease(lease)))]);
        if self.client.clone().txn(txn).await?.succeeded() {
            return Ok(true);
        }
        Ok(self.controller().await?.as_deref() == Some(node))
    }

    /// Replace the map if it is still at `revision` and `node` still holds the controller key.
    pub async fn swap_map(&self, node: &str, revision: i64, next: &ShardMap) -> Result<bool> {
        let key = self.key("map");
        let v = serde_json::to_vec(next).expect("serialisable");
        let txn = Txn::new()
            .when(vec![
                Compare::mod_revision(key.clone(), CompareOp::Equal, revision),
                Compare::value(self.key("controller"), CompareOp::Equal, node),
            ])
            .and_then(vec![TxnOp::put(key, v, None)]);
        Ok(self.client.clone().txn(txn).await?.succeeded())
    }
}

/// The node ids of `nodes`.
pub fn ids(nodes: &BTreeMap<String, NodeInfo>) -> BTreeSet<String> {
    nodes.keys().cloned().collect()
}
