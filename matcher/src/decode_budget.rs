//! The decode-memory budget: a weighted semaphore over the bytes that image decoding may hold at
//! once across all requests (`limits.decode_memory_mb`).
//!
//! Before an image is decoded its header is read (`biomatch_models::imageio::probe`: no pixels
//! allocated) and the decode's upper-bound cost is reserved here; the permit travels into the
//! blocking task and is released when the extraction is done. A request waiting for budget waits
//! on the async side: it holds no blocking thread and no decoded pixels, only its body (bounded
//! by `limits.body_bytes`), and its wait ends when the request is cancelled (timeout, client
//! gone). An image whose cost exceeds the whole budget is refused at once.
//!
//! Waiters are not served in order: whoever fits in the free budget goes first, so ordinary
//! photos are not queued behind a flood of images at the size limit (those may wait until their
//! request times out).

use parking_lot::Mutex;
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Debug)]
pub struct DecodeBudget {
    total: u64,
    free: Mutex<u64>,
    released: Notify,
}

/// Bytes reserved from a [`DecodeBudget`]; given back on drop.
#[derive(Debug)]
pub struct DecodePermit {
    budget: Arc<DecodeBudget>,
    bytes: u64,
}

impl DecodePermit {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for DecodePermit {
    fn drop(&mut self) {
        *self.budget.free.lock() += self.bytes;
        self.budget.released.notify_waiters();
    }
}

impl DecodeBudget {
    pub fn new(total_bytes: u64) -> Arc<DecodeBudget> {
        Arc::new(DecodeBudget {
            total: total_bytes,
            free: Mutex::new(total_bytes),
            released: Notify::new(),
        })
    }

    /// The budget's size in bytes.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        self.total - *self.free.lock()
    }

    /// Reserve `bytes`, waiting until they are free. `Err(total)` when `bytes` exceeds the whole
    /// budget (it could never be granted).
    pub async fn acquire(self: &Arc<Self>, bytes: u64) -> Result<DecodePermit, u64> {
        if bytes > self.total {
            return Err(self.total);
        }
        loop {
            // Registered before the check, so a release between the check and the wait is seen.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut free = self.free.lock();
                if *free >= bytes {
                    *free -= bytes;
                    return Ok(DecodePermit { budget: self.clone(), bytes });
                }
            }
            released.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_reservations_never_exceed_the_budget() {
        let budget = DecodeBudget::new(1000);
        let held = Arc::new(AtomicU64::new(0));
        let peak = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..64u64 {
            let (budget, held, peak) = (budget.clone(), held.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let cost = 100 + (i * 37) % 400;
                let permit = budget.acquire(cost).await.unwrap();
                let now = held.fetch_add(cost, Ordering::SeqCst) + cost;
                peak.fetch_max(now, Ordering::SeqCst);
                assert!(budget.in_use() <= budget.total());
                // Hold it across a blocking "decode", as the service does.
                tokio::task::spawn_blocking(move || {
                    std::thread::sleep(Duration::from_millis(2));
                    held.fetch_sub(cost, Ordering::SeqCst);
                    drop(permit);
                })
                .await
                .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= 1000, "{peak} bytes held at once");
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn too_large_is_refused_and_a_cancelled_wait_takes_nothing() {
        let budget = DecodeBudget::new(100);
        assert_eq!(budget.acquire(101).await.unwrap_err(), 100);
        let a = budget.acquire(80).await.unwrap();
        // A request that waits and is then dropped (its timeout) leaves the budget as it was.
        let waiting = tokio::time::timeout(Duration::from_millis(20), budget.acquire(50)).await;
        assert!(waiting.is_err());
        assert_eq!(budget.in_use(), 80);
        // A smaller reservation that fits goes ahead of a larger waiter.
        let big = tokio::spawn({
            let b = budget.clone();
            async move { b.acquire(90).await.map(|p| p.bytes()) }
        });
        tokio::task::yield_now().await;
        let small = budget.acquire(20).await.unwrap();
        assert_eq!(budget.in_use(), 100);
        drop((a, small));
        assert_eq!(big.await.unwrap(), Ok(90));
        assert_eq!(budget.in_use(), 0);
    }
}
