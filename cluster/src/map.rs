//! The shard map: which nodes hold a replica of each logical shard, and how the controller
//! changes it. Pure: the etcd side ([`crate::meta`]) stores it and swaps it by compare-and-swap.
//!
//! A replica is **active** (it has applied the shard's log up to the head: writes wait for it,
//! reads may go to it) or **catching up** (it is replaying the log; neither writes nor reads
//! wait for it). The desired replicas ([`desired_all`]) spread evenly (per node at most one
//! apart) and depend only on the live set; a node joining 3 others moves at most 12 of the 24
//! replicas of 12 shards (tested), not only the 6 it takes.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The replicas of one shard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardReplicas {
    /// Caught up: every write waits for all of them; any may answer a read.
    pub active: Vec<String>,
    /// Replaying the log; promoted once within `max_promote_lag` of the head.
    pub catching_up: Vec<String>,
}

/// The cluster's shard map, versioned by `epoch` (incremented by every change).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    pub epoch: u64,
    pub replication: u32,
    pub shards: Vec<ShardReplicas>,
}

/// A live node's report of its replicas: per shard, the log position it has applied through.
pub type Progress = BTreeMap<u32, u64>;

impl ShardMap {
    /// The shards `node` holds a replica of (active or catching up).
    pub fn shards_of(&self, node: &str) -> Vec<u32> {
        (0..self.shards.len() as u32)
            .filter(|&s| {
                let r = &self.shards[s as usize];
                r.active.iter().chain(&r.catching_up).any(|n| n == node)
            })
            .collect()
    }

    /// Whether every shard has an active replica (the cluster can take writes and answer 1:N).
    pub fn complete(&self) -> bool {
        !self.shards.is_empty() && self.shards.iter().all(|r| !r.active.is_empty())
    }
}

/// Rendezvous weight of `node` for `shard` (FNV-1a of both, then a 64-bit mix).
fn weight(shard: u32, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in shard.to_le_bytes().iter().chain(node.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64 finaliser: FNV's low bits alone spread poorly.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The `replication` live nodes that should hold each shard: shard after shard, the least
/// loaded live nodes so far, rendezvous order among equals. The replicas per node differ by at
/// most one however few shards there are (plain rendezvous hashing of 12 shards over 3 nodes
/// gave one node 11 of 24 replicas), and the same live set always gives the same answer.
pub fn desired_all(shards: u32, live: &BTreeSet<String>, replication: u32) -> Vec<Vec<String>> {
    let r = (replication as usize).min(live.len());
    let mut load: BTreeMap<&String, usize> = live.iter().map(|n| (n, 0)).collect();
    (0..shards)
        .map(|s| {
            let mut ranked: Vec<&String> = live.iter().collect();
            ranked.sort_by_key(|n| (load[n], std::cmp::Reverse(weight(s, n))));
            ranked.truncate(r);
            for n in &ranked {
                *load.get_mut(n).expect("a live node") += 1;
            }
            ranked.into_iter().cloned().collect()
        })
        .collect()
}

/// The next map from the current one (`None`: the first), the live nodes and their progress
/// (applied log position per shard), and the log's head. `None` when nothing changes.
///
/// Rules, per shard: dead nodes leave (a dead active replica fails over to the others); a
/// desired live node that holds no replica starts catching up (an empty shard — no active
/// replica ever, the cluster's creation — makes it active at once: there is nothing to
/// replay); a catching-up replica within `max_lag` of the head becomes active; once every
/// desired node is active, active replicas beyond them leave (a move completes only after its
/// new replica caught up, so the replication factor never drops on purpose).
pub fn plan(
    current: Option<&ShardMap>,
    shards: u32,
    replication: u32,
    live: &BTreeSet<String>,
    progress: &BTreeMap<String, Progress>,
    head: u64,
    max_lag: u64,
) -> Option<ShardMap> {
    if live.is_empty() {
        return None;
    }
    let fresh = current.is_none();
    let mut next = current.cloned().unwrap_or_else(|| ShardMap {
        epoch: 0,
        replication,
        shards: vec![ShardReplicas::default(); shards as usize],
    });
    let wanted = desired_all(shards, live, replication);
    for s in 0..shards {
        let want = &wanted[s as usize];
        let r = &mut next.shards[s as usize];
        r.active.retain(|n| live.contains(n));
        r.catching_up.retain(|n| live.contains(n));
        for n in want {
            if !r.active.contains(n) && !r.catching_up.contains(n) {
                if fresh {
                    r.active.push(n.clone());
                } else {
                    r.catching_up.push(n.clone());
                }
            }
        }
        let caught_up = |n: &String| {
            progress.get(n).and_then(|p| p.get(&s)).is_some_and(|&at| at + max_lag >= head)
        };
        let (promote, wait): (Vec<String>, Vec<String>) =
            std::mem::take(&mut r.catching_up).into_iter().partition(|n| caught_up(n));
        r.active.extend(promote);
        r.catching_up = wait;
        if want.iter().all(|n| r.active.contains(n)) {
            r.active.retain(|n| want.contains(n));
        }
        r.active.sort();
        r.catching_up.sort();
    }
    if current == Some(&next) {
        return None;
    }
    next.epoch += 1;
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    fn all_caught_up(map: &ShardMap, head: u64) -> BTreeMap<String, Progress> {
        let mut p: BTreeMap<String, Progress> = BTreeMap::new();
        for (s, r) in map.shards.iter().enumerate() {
            for n in r.active.iter().chain(&r.catching_up) {
                p.entry(n.clone()).or_default().insert(s as u32, head);
            }
        }
        p
    }

    #[test]
    fn a_new_cluster_is_active_at_once_and_balanced() {
        let m = plan(None, 12, 2, &live(3), &BTreeMap::new(), 0, 10).unwrap();
        assert_eq!(m.epoch, 1);
        assert!(m.complete());
        for r in &m.shards {
            assert_eq!(r.active.len(), 2);
            assert!(r.catching_up.is_empty());
        }
        let per: Vec<usize> = (0..3).map(|i| m.shards_of(&format!("node-{i}")).len()).collect();
        assert_eq!(per.iter().sum::<usize>(), 24);
        assert_eq!(per, vec![8, 8, 8]);
        assert_eq!(plan(Some(&m), 12, 2, &live(3), &BTreeMap::new(), 0, 10), None);
    }

    #[test]
    fn every_shard_gets_distinct_nodes_and_the_load_is_even() {
        for nodes in 1..=7 {
            for shards in 1..=40 {
                for replication in 1..=3u32 {
                    let want = desired_all(shards, &live(nodes), replication);
                    let r = (replication as usize).min(nodes);
                    let mut per: BTreeMap<&String, usize> = BTreeMap::new();
                    for w in &want {
                        let distinct: BTreeSet<&String> = w.iter().collect();
                        assert_eq!(distinct.len(), r, "{nodes} nodes, {shards} shards: {w:?}");
                        for n in w {
                            *per.entry(n).or_default() += 1;
                        }
                    }
                    let (lo, hi) = (per.values().min(), per.values().max());
                    let cap = (shards as usize * r).div_ceil(nodes);
                    assert!(hi <= Some(&cap), "{nodes}/{shards}/{r}: {per:?}");
                    assert!(
                        lo.is_some_and(|l| *l + 1 >= cap) || per.len() < nodes,
                        "{nodes}/{shards}/{r}: {per:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_dead_node_fails_over_and_is_replaced_after_catching_up() {
        let m = plan(None, 12, 2, &live(3), &BTreeMap::new(), 0, 10).unwrap();
        let mut two = live(3);
        two.remove("node-2");
        let m2 = plan(Some(&m), 12, 2, &two, &BTreeMap::new(), 100, 10).unwrap();
        for (s, r) in m2.shards.iter().enumerate() {
            assert!(!r.active.contains(&"node-2".to_string()));
            assert!(!r.active.is_empty(), "shard {s} lost every replica");
            // The survivor that was not a replica catches up first.
            assert_eq!(r.active.len() + r.catching_up.len(), 2);
        }
        let m3 = plan(Some(&m2), 12, 2, &two, &all_caught_up(&m2, 95), 100, 10).unwrap();
        assert!(m3.shards.iter().all(|r| r.active.len() == 2 && r.catching_up.is_empty()));
    }

    #[test]
    fn a_fourth_node_takes_shards_only_once_caught_up() {
        let m = plan(None, 12, 2, &live(3), &BTreeMap::new(), 0, 10).unwrap();
        let m2 = plan(Some(&m), 12, 2, &live(4), &BTreeMap::new(), 50, 10).unwrap();
        let gained = m2.shards_of("node-3");
        assert!(!gained.is_empty());
        // Nothing left its old replicas yet.
        for r in &m2.shards {
            assert_eq!(r.active.len(), 2);
        }
        let behind = plan(Some(&m2), 12, 2, &live(4), &all_caught_up(&m2, 10), 50, 10);
        assert_eq!(behind, None, "a replica 40 behind is not promoted");
        let m3 = plan(Some(&m2), 12, 2, &live(4), &all_caught_up(&m2, 45), 50, 10).unwrap();
        // Replicas that changed node: the new node's 6, and what the rebalance shifted.
        let moved: usize = m
            .shards
            .iter()
            .zip(&m3.shards)
            .map(|(a, b)| b.active.iter().filter(|n| !a.active.contains(n)).count())
            .sum();
        assert!(moved <= 12, "{moved} of 24 replicas moved");
        let per: Vec<usize> = (0..4).map(|i| m3.shards_of(&format!("node-{i}")).len()).collect();
        assert_eq!(per.iter().sum::<usize>(), 24, "{per:?}");
        assert_eq!(per, vec![6, 6, 6, 6]);
        assert!(m3.shards.iter().all(|r| r.active.len() == 2 && r.catching_up.is_empty()));
    }
}
