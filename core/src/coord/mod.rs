//! The coordinator: executor membership with leases, leader election with fencing, the job
//! queue and job state machine, task assignment and progress, model version numbers.
//!
//! Written once over [`KvBackend`]; the etcd and the embedded backends only supply the
//! primitives. This module alone knows the key layout (its methods are grouped by
//! prefix: membership and election here, `jobs.rs`, `models.rs`, `schedules.rs`):
//!
//! ```text
//! <root>/leader                    scheduler id, bound to the leader's lease
//! <root>/executors/<id>            ExecutorInfo, bound to the executor's lease
//! <root>/jobs/<job>                JobRecord
//! <root>/active/<job>              empty; present while the job has not ended
//! <root>/tasks/<executor>/<job>    TaskAssignment (written by the leader)
//! <root>/progress/<job>            TaskProgress (written by the assigned executor)
//! <root>/models/<name>/next        next model version number
//! <root>/models/<name>/versions/<n> ModelVersion (immutable once written)
//! <root>/audiences/<name>/next     next audience version number
//! <root>/audiences/<name>/versions/<n> AudienceVersion (immutable once written)
//! <root>/schedules/<name>          Schedule: a job spec fired on a timing, its runs
//! <root>/deployments/<name>        Deployment: traffic split, aliases, history
//! <root>/serving/<executor>        ServingInfo, bound to the executor's lease
//! <root>/outcomes/<name>/<version> Outcomes fed back for a version
//! <root>/keys/<id>                 KeyRecord: an API key's role, scope and hash
//! <root>/sticky/<name>/<arms>/<node>/<n> StickyBatch: keys a node assigned under a bandit
//! ```
//!
//! **Invariants.** Every write that changes a job's state is one transaction that compares
//! the job's revision (compare-and-swap) and the leader key's revision (the fence): a
//! deposed scheduler's write fails with [`Error::Fenced`]. An executor's progress write
//! compares the revision of its assignment, so an executor whose task was taken away
//! cannot report on it.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::kv::{Compare, KvBackend, KvEntry, TxnOp, TxnOutcome};

use crate::records::{ExecutorInfo, TaskAssignment};

mod audit;
mod jobs;
mod keys;
mod models;
mod schedules;
mod wake;

pub use jobs::{LeaderView, Release};
pub use wake::{OwnWrites, Wake, Writing};

pub use audit::{AuditEvent, Auditor};

/// A value with the revision it was read at, for compare-and-swap.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Revision of the key's last write.
    pub revision: i64,
}

/// What [`Coordinator::update`]'s edit decided.
enum Edit<T> {
    /// Write this value.
    Write(T),
    /// Leave the stored value, which is this.
    Keep(T),
}

/// Proof of leadership: the term's lease and the revision of the leader key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// The scheduler that holds it.
    pub candidate: String,
    /// Its lease.
    pub lease: i64,
    /// Revision at which the leader key was created for this term: the fence.
    pub revision: i64,
}

/// The cluster's coordination, over one backend, under one key root.
#[derive(Clone)]
pub struct Coordinator {
    kv: Arc<dyn KvBackend>,
    root: String,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("backend", &self.kv.name())
            .field("root", &self.root)
            .finish()
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("coordinator records always serialise")
}

fn decode<T: DeserializeOwned>(entry: &KvEntry) -> Result<Versioned<T>> {
    let value = serde_json::from_slice(&entry.value).map_err(|e| Error::Corrupt {
        key: entry.key.clone(),
        message: e.to_string(),
    })?;
    Ok(Versioned {
        value,
        revision: entry.mod_revision,
    })
}

/// The values of `entries`, without their revisions.
fn decode_values<T: DeserializeOwned>(entries: &[KvEntry]) -> Result<Vec<T>> {
    entries
        .iter()
        .map(|e| decode(e).map(|v: Versioned<T>| v.value))
        .collect()
}

fn put(key: String, value: Vec<u8>) -> TxnOp {
    TxnOp::Put {
        key,
        value,
        lease: None,
    }
}

impl Coordinator {
    /// A coordinator over `kv`, with every key under `root` (such as `/halyard`).
    pub fn new(kv: Arc<dyn KvBackend>, root: &str) -> Self {
        Coordinator {
            kv,
            root: root.trim_end_matches('/').to_string(),
        }
    }

    /// The same coordinator, its operations timed into a node's `metrics`.
    pub fn timed(&self, metrics: &crate::metrics::Metrics) -> Self {
        Coordinator {
            kv: Arc::new(crate::metrics::Timed::new(self.kv.clone(), metrics.clone())),
            root: self.root.clone(),
        }
    }

    /// The backend's name.
    pub fn backend(&self) -> &'static str {
        self.kv.name()
    }

    /// Apply `then` if `key` was last written at `revision` (0: if it does not exist).
    async fn cas(&self, key: &str, revision: i64, then: Vec<TxnOp>) -> Result<TxnOutcome> {
        let when = vec![Compare::ModRevision {
            key: key.to_string(),
            revision,
        }];
        self.kv.txn(when, then).await
    }

    /// Change the value at `key` by compare-and-swap: `edit` gets the current value (`None`
    /// when there is none) and says what to write, or to keep it; a lost race reads again
    /// and asks again. Returns the value as it stands after.
    async fn update<T, F>(&self, key: &str, mut edit: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> Result<Edit<T>>,
    {
        loop {
            let (current, revision) = match self.get_versioned::<T>(key).await? {
                Some(v) => (Some(v.value), v.revision),
                None => (None, 0),
            };
            let new = match edit(current)? {
                Edit::Keep(value) => return Ok(value),
                Edit::Write(value) => value,
            };
            let out = self
                .cas(key, revision, vec![put(key.to_string(), encode(&new))])
                .await?;
            if out.succeeded {
                return Ok(new);
            }
        }
    }

    /// A key's value with its revision.
    async fn get_versioned<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Versioned<T>>> {
        self.kv.get(key).await?.map(|e| decode(&e)).transpose()
    }

    /// A key's value.
    async fn get_value<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        Ok(self
            .get_versioned(key)
            .await?
            .map(|v: Versioned<T>| v.value))
    }

    /// The values of every key under `prefix` (relative to the root), in key order.
    async fn values<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        decode_values(&self.kv.range(&self.key(prefix)).await?)
    }

    /// Apply `then` only while the task assignment read at `assignment` stands:
    /// [`Error::Conflict`] means the task was taken away.
    async fn fenced_on_task(
        &self,
        assignment: &Versioned<TaskAssignment>,
        then: Vec<TxnOp>,
    ) -> Result<()> {
        let task_key = self.task_key(&assignment.value.executor, &assignment.value.job_id);
        if self
            .cas(&task_key, assignment.revision, then)
            .await?
            .succeeded
        {
            Ok(())
        } else {
            Err(Error::Conflict { key: task_key })
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.root)
    }
    fn leader_key(&self) -> String {
        self.key("leader")
    }
    fn executor_key(&self, id: &str) -> String {
        self.key(&format!("executors/{id}"))
    }
    fn job_key(&self, id: &str) -> String {
        self.key(&format!("jobs/{id}"))
    }
    fn active_key(&self, id: &str) -> String {
        self.key(&format!("active/{id}"))
    }
    fn task_key(&self, executor: &str, job: &str) -> String {
        self.key(&format!("tasks/{executor}/{job}"))
    }
    fn progress_key(&self, job: &str) -> String {
        self.key(&format!("progress/{job}"))
    }
    fn model_counter_key(&self, name: &str) -> String {
        self.key(&format!("models/{name}/next"))
    }
    /// The version a job registered of a model: one per job.
    fn job_version_key(&self, name: &str, job_id: &str) -> String {
        self.key(&format!("models/{name}/jobs/{job_id}"))
    }
    fn version_key(&self, name: &str, version: u64) -> String {
        self.key(&format!("models/{name}/versions/{version}"))
    }
    fn deployment_key(&self, name: &str) -> String {
        self.key(&format!("deployments/{name}"))
    }
    fn serving_key(&self, executor: &str) -> String {
        self.key(&format!("serving/{executor}"))
    }
    fn placement_key(&self, model: &str) -> String {
        self.key(&format!("placements/{model}"))
    }
    fn sql_endpoint_key(&self) -> String {
        self.key("sql/endpoint")
    }
    fn drift_key(&self, name: &str, version: u64, executor: &str) -> String {
        self.key(&format!("drift/{name}/{version}/{executor}"))
    }
    fn tally_key(&self, name: &str, node: &str) -> String {
        self.key(&format!("tallies/{name}/{node}"))
    }

    // ---- leases ------------------------------------------------------------------------

    /// Grant a lease of `ttl`.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<i64> {
        self.kv.grant_lease(ttl).await
    }

    /// Renew a lease; [`Error::LeaseLost`] once it expired.
    pub async fn keep_alive(&self, lease: i64) -> Result<()> {
        self.kv.keep_alive(lease).await
    }

    /// End a lease and drop its keys.
    pub async fn revoke(&self, lease: i64) -> Result<()> {
        self.kv.revoke(lease).await
    }

    // ---- membership --------------------------------------------------------------------

    /// Register an executor under `lease`. Refused when a live executor has the same id.
    pub async fn register_executor(&self, info: &ExecutorInfo, lease: i64) -> Result<()> {
        let key = self.executor_key(&info.id);
        let out = self
            .cas(
                &key,
                0,
                vec![TxnOp::Put {
                    key: key.clone(),
                    value: encode(info),
                    lease: Some(lease),
                }],
            )
            .await?;
        if !out.succeeded {
            return Err(Error::IdInUse(info.id.clone()));
        }
        Ok(())
    }

    /// Live executors.
    pub async fn list_executors(&self) -> Result<Vec<ExecutorInfo>> {
        self.values("executors/").await
    }

    // ---- election ----------------------------------------------------------------------

    /// Try once to become leader with `lease`. `Some` when this candidate now leads
    /// (or already led with this lease), `None` when another does.
    pub async fn campaign(&self, candidate: &str, lease: i64) -> Result<Option<Leadership>> {
        let key = self.leader_key();
        let out = self
            .cas(
                &key,
                0,
                vec![TxnOp::Put {
                    key: key.clone(),
                    value: candidate.as_bytes().to_vec(),
                    lease: Some(lease),
                }],
            )
            .await?;
        if out.succeeded {
            return Ok(Some(Leadership {
                candidate: candidate.to_string(),
                lease,
                revision: out.revision,
            }));
        }
        match self.kv.get(&key).await? {
            Some(e) if e.lease == lease && e.value == candidate.as_bytes() => {
                Ok(Some(Leadership {
                    candidate: candidate.to_string(),
                    lease,
                    revision: e.mod_revision,
                }))
            }
            _ => Ok(None),
        }
    }

    /// The current leader's id.
    pub async fn leader(&self) -> Result<Option<String>> {
        self.get_text(&self.leader_key()).await
    }

    /// A key's value as text.
    async fn get_text(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .kv
            .get(key)
            .await?
            .map(|e| String::from_utf8_lossy(&e.value).into_owned()))
    }

    /// Whether `leadership` still holds.
    pub async fn is_leader(&self, leadership: &Leadership) -> Result<bool> {
        Ok(self
            .kv
            .get(&self.leader_key())
            .await?
            .is_some_and(|e| e.mod_revision == leadership.revision))
    }

    /// Give up leadership (a clean shutdown): a standby can take over at once.
    pub async fn resign(&self, leadership: &Leadership) -> Result<()> {
        self.cas(
            &self.leader_key(),
            leadership.revision,
            vec![TxnOp::Delete {
                key: self.leader_key(),
            }],
        )
        .await?;
        self.kv.revoke(leadership.lease).await
    }

    /// A transaction fenced on `leadership`, comparing `key`'s revision too. Tells
    /// a lost fence ([`Error::Fenced`]) from a lost race on the key ([`Error::Conflict`]).
    async fn fenced(
        &self,
        leadership: &Leadership,
        key: &str,
        revision: i64,
        then: Vec<TxnOp>,
    ) -> Result<i64> {
        self.fenced_if(leadership, key, revision, Vec::new(), then)
            .await
    }

    /// [`Coordinator::fenced`] with more comparisons (`also`); a failed one is a lost race
    /// ([`Error::Conflict`] on `key`) like a changed `key`.
    async fn fenced_if(
        &self,
        leadership: &Leadership,
        key: &str,
        revision: i64,
        also: Vec<Compare>,
        then: Vec<TxnOp>,
    ) -> Result<i64> {
        let mut when = vec![
            Compare::ModRevision {
                key: self.leader_key(),
                revision: leadership.revision,
            },
            Compare::ModRevision {
                key: key.to_string(),
                revision,
            },
        ];
        when.extend(also);
        let out = self.kv.txn(when, then).await?;
        if out.succeeded {
            return Ok(out.revision);
        }
        if self.is_leader(leadership).await? {
            Err(Error::Conflict {
                key: key.to_string(),
            })
        } else {
            Err(Error::Fenced)
        }
    }
}
