//! Waking the leader and the executors when what they act on changes, instead of at their
//! next periodic pass: a watch on the coordinator's keys (etcd's watch, the embedded
//! store's equivalent), kept open by a task that watches again, with backoff, when it
//! breaks (etcd restarted, the connection dropped).
//!
//! A wake-up only says "read again": the loops keep their periodic passes and decide from
//! what they read, never from the watch's events, so a broken or lagging watch slows them
//! down and cannot lose or double work. A watch opened again wakes its loop once, for the
//! writes it may have missed meanwhile.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::Coordinator;

/// First wait before watching again after a watch broke; doubled up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest wait between attempts to watch again.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Wake-ups for one loop: [`Wake::changed`] returns once a watched key changed since the
/// last call (several changes meanwhile make one wake-up). Dropping it ends its watches.
#[derive(Debug)]
pub struct Wake {
    notify: Arc<Notify>,
    watches: Vec<JoinHandle<()>>,
}

impl Wake {
    /// Wait until a watched key changed (at once when one did since the last call).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        for w in &self.watches {
            w.abort();
        }
    }
}

impl Coordinator {
    /// Wake-ups on changes under `prefixes` (under the root).
    fn wake_on(&self, prefixes: &[String]) -> Wake {
        let notify = Arc::new(Notify::new());
        let watches = prefixes
            .iter()
            .map(|prefix| {
                let (kv, notify, prefix) = (self.kv.clone(), notify.clone(), self.key(prefix));
                tokio::spawn(async move {
                    let mut backoff = RETRY_MIN;
                    let mut broke = false;
                    loop {
                        match kv.watch(&prefix).await {
                            Ok(mut changes) => {
                                if broke {
                                    info!(%prefix, "watch open again");
                                }
                                notify.notify_one();
                                backoff = RETRY_MIN;
                                while changes.recv().await.is_some() {
                                    notify.notify_one();
                                }
                                warn!(%prefix, "watch broke; opening it again");
                                broke = true;
                            }
                            Err(e) => warn!(%prefix, error = %e, "cannot watch; retrying"),
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(RETRY_MAX);
                    }
                })
            })
            .collect();
        Wake { notify, watches }
    }

    /// What the leader acts on: submissions and cancel requests (`jobs/`: a submission
    /// writes its `active/` key in the same transaction, so that prefix needs no watch of
    /// its own), task reports (`progress/`), executors joining or leaving (`executors/`).
    pub fn leader_wake(&self) -> Wake {
        self.wake_on(&["jobs/".into(), "progress/".into(), "executors/".into()])
    }

    /// What executor `id` acts on: its task assignments.
    pub fn task_wake(&self, id: &str) -> Wake {
        self.wake_on(&[format!("tasks/{id}/")])
    }

    /// What a serving executor acts on: the deployments (splits, aliases, bandits, ramps)
    /// and the leader's placements of them.
    pub fn serving_wake(&self) -> Wake {
        self.wake_on(&["deployments/".into(), "placements/".into()])
    }

    /// What keeps bandits' assignments sticky across nodes: every node's records of them.
    pub fn sticky_wake(&self) -> Wake {
        self.wake_on(&["sticky/".into()])
    }

    /// What the gateway routes by: the executors' advertisements of what they serve.
    pub fn gateway_wake(&self) -> Wake {
        self.wake_on(&["serving/".into()])
    }
}
