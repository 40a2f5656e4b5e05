//! Waking the leader and the executors when what they act on changes, instead of at their
//! next periodic pass: a watch on the coordinator's keys (etcd's watch, the embedded
//! store's equivalent), kept open by a task that watches again, with backoff, when it
//! breaks (etcd restarted, the connection dropped).
//!
//! A wake-up only says "read again": the loops keep their periodic passes and decide from
//! what they read, never from the watch's events, so a broken or lagging watch slows them
//! down and cannot lose or double work. A watch opened again wakes its loop once, for the
//! writes it may have missed meanwhile.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::Coordinator;

/// First wait before watching again after a watch broke; doubled up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest wait between attempts to watch again.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The longest a change waits for a loop's write in flight before it is judged.
const OWN_WAIT: Duration = Duration::from_secs(1);

/// A loop's own writes, which need not wake it (it acts on what it wrote in the same
/// pass): [`OwnWrites::writing`] before each, [`Writing::wrote`] with its revision after.
/// A change that comes while one is in flight waits for it (up to a second) before it is
/// judged, so a write's own event cannot overtake its revision.
#[derive(Debug)]
pub struct OwnWrites {
    in_flight: tokio::sync::watch::Sender<usize>,
    revisions: Mutex<VecDeque<i64>>,
}

impl Default for OwnWrites {
    fn default() -> Self {
        OwnWrites {
            in_flight: tokio::sync::watch::Sender::new(0),
            revisions: Mutex::new(VecDeque::new()),
        }
    }
}

impl OwnWrites {
    /// Revisions remembered (a write's event on every watched prefix comes soon after).
    const KEPT: usize = 64;

    /// A write is about to be sent.
    pub fn writing(self: &Arc<Self>) -> Writing {
        self.in_flight.send_modify(|n| *n += 1);
        Writing { own: self.clone() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<i64>> {
        self.revisions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_own(&self, revision: i64) -> bool {
        self.lock().contains(&revision)
    }

    /// Whether the change at `revision` was one of these writes, once none is in flight.
    async fn made(&self, revision: i64) -> bool {
        if !self.is_own(revision) {
            let mut rx = self.in_flight.subscribe();
            let _ = tokio::time::timeout(OWN_WAIT, rx.wait_for(|n| *n == 0)).await;
        }
        self.is_own(revision)
    }
}

/// A write in flight ([`OwnWrites::writing`]); dropped without [`Writing::wrote`]: it wrote
/// nothing.
#[derive(Debug)]
pub struct Writing {
    own: Arc<OwnWrites>,
}

impl Writing {
    /// The write made `revision`.
    pub fn wrote(self, revision: i64) {
        let mut kept = self.own.lock();
        kept.push_back(revision);
        if kept.len() > OwnWrites::KEPT {
            kept.pop_front();
        }
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.own.in_flight.send_modify(|n| *n = n.saturating_sub(1));
    }
}

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
    /// Wake-ups on changes under `prefixes` (under the root), but for those of `own`.
    fn wake_on(&self, prefixes: &[String], own: Option<Arc<OwnWrites>>) -> Wake {
        let notify = Arc::new(Notify::new());
        let watches = prefixes
            .iter()
            .map(|prefix| {
                let (kv, notify, prefix) = (self.kv.clone(), notify.clone(), self.key(prefix));
                let own = own.clone();
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
                                while let Some(change) = changes.recv().await {
                                    if let Some(own) = &own
                                        && own.made(change.revision).await
                                    {
                                        continue;
                                    }
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
        self.leader_wake_but(None)
    }

    /// [`Coordinator::leader_wake`], but not for the leader's own writes that `own` holds
    /// (an assignment, a job's end: the pass that wrote them went on from them).
    pub fn leader_wake_but(&self, own: Option<Arc<OwnWrites>>) -> Wake {
        self.wake_on(
            &["jobs/".into(), "progress/".into(), "executors/".into()],
            own,
        )
    }

    /// What executor `id` acts on: its task assignments.
    pub fn task_wake(&self, id: &str) -> Wake {
        self.wake_on(&[format!("tasks/{id}/")], None)
    }

    /// What a serving executor acts on: the deployments (splits, aliases, bandits, ramps)
    /// and the leader's placements of them.
    pub fn serving_wake(&self) -> Wake {
        self.wake_on(&["deployments/".into(), "placements/".into()], None)
    }

    /// What keeps bandits' assignments sticky across nodes: every node's records of them.
    pub fn sticky_wake(&self) -> Wake {
        self.wake_on(&["sticky/".into()], None)
    }

    /// What the gateway routes by: the executors' advertisements of what they serve.
    pub fn gateway_wake(&self) -> Wake {
        self.wake_on(&["serving/".into()], None)
    }
}
