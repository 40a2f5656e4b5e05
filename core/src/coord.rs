//! The coordinator: executor membership with leases, leader election with fencing, the job
//! queue and job state machine, task assignment and progress, model version numbers.
//!
//! Written once over [`KvBackend`]; the etcd and the embedded backends only supply the
//! primitives. This module alone knows the key layout:
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
//! <root>/deployments/<name>        Deployment: traffic split, aliases, history
//! <root>/serving/<executor>        ServingInfo, bound to the executor's lease
//! <root>/outcomes/<name>/<version> Outcomes fed back for a version
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
use crate::records::{ExecutorInfo, JobRecord, TaskAssignment, TaskProgress};
use crate::registry::{Change, Deployment, ModelVersion, Outcomes, ServingInfo};

/// A value with the revision it was read at, for compare-and-swap.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Revision of the key's last write.
    pub revision: i64,
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
        let entries = self.kv.range(&self.key(prefix)).await?;
        entries
            .iter()
            .map(|e| decode(e).map(|v: Versioned<T>| v.value))
            .collect()
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
    fn version_key(&self, name: &str, version: u64) -> String {
        self.key(&format!("models/{name}/versions/{version}"))
    }
    fn deployment_key(&self, name: &str) -> String {
        self.key(&format!("deployments/{name}"))
    }
    fn serving_key(&self, executor: &str) -> String {
        self.key(&format!("serving/{executor}"))
    }
    fn sql_endpoint_key(&self) -> String {
        self.key("sql/endpoint")
    }
    fn outcomes_key(&self, name: &str, version: u64) -> String {
        self.key(&format!("outcomes/{name}/{version}"))
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
            return Err(Error::Coordinator(format!(
                "executor id {} is already registered by a live executor: pick another --id",
                info.id
            )));
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
        let when = vec![
            Compare::ModRevision {
                key: self.leader_key(),
                revision: leadership.revision,
            },
            Compare::ModRevision {
                key: key.to_string(),
                revision,
            },
        ];
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

    // ---- jobs --------------------------------------------------------------------------

    /// Store a new job. Any scheduler may do this: a new key changes no existing state.
    pub async fn submit_job(&self, job: &JobRecord) -> Result<i64> {
        let key = self.job_key(&job.id);
        let out = self
            .cas(
                &key,
                0,
                vec![
                    put(key.clone(), encode(job)),
                    put(self.active_key(&job.id), Vec::new()),
                ],
            )
            .await?;
        if !out.succeeded {
            return Err(Error::Conflict { key });
        }
        Ok(out.revision)
    }

    /// One job.
    pub async fn get_job(&self, id: &str) -> Result<Option<Versioned<JobRecord>>> {
        self.get_versioned(&self.job_key(id)).await
    }

    /// All jobs, oldest first.
    pub async fn list_jobs(&self) -> Result<Vec<Versioned<JobRecord>>> {
        let entries = self.kv.range(&self.key("jobs/")).await?;
        let mut jobs = entries
            .iter()
            .map(decode)
            .collect::<Result<Vec<Versioned<JobRecord>>>>()?;
        jobs.sort_by_key(|j| (j.value.created_ms, j.value.id.clone()));
        Ok(jobs)
    }

    /// Jobs that have not ended, oldest first: what the leader supervises. Reads only the
    /// active index and those jobs, however long the history.
    pub async fn list_active_jobs(&self) -> Result<Vec<Versioned<JobRecord>>> {
        let prefix = self.key("active/");
        let mut jobs = Vec::new();
        for entry in self.kv.range(&prefix).await? {
            let id = &entry.key[prefix.len()..];
            // A job ended between the two reads: its index key is gone now, skip it.
            if let Some(job) = self.get_job(id).await?
                && !job.value.state.is_terminal()
            {
                jobs.push(job);
            }
        }
        jobs.sort_by_key(|j| (j.value.created_ms, j.value.id.clone()));
        Ok(jobs)
    }

    /// A job write, plus dropping the job from the active index when it has ended.
    fn job_write(&self, job: &JobRecord) -> Vec<TxnOp> {
        let mut ops = vec![put(self.job_key(&job.id), encode(job))];
        if job.state.is_terminal() {
            ops.push(TxnOp::Delete {
                key: self.active_key(&job.id),
            });
        }
        ops
    }

    /// Change a job (leader only): compare-and-swap on the job, fenced on leadership.
    pub async fn update_job(
        &self,
        leadership: &Leadership,
        old: &Versioned<JobRecord>,
        new: &JobRecord,
    ) -> Result<i64> {
        let key = self.job_key(&new.id);
        self.fenced(leadership, &key, old.revision, self.job_write(new))
            .await
    }

    /// Record a user's cancel request (any scheduler). Retries lost races.
    pub async fn request_cancel(&self, id: &str) -> Result<JobRecord> {
        loop {
            let Some(old) = self.get_job(id).await? else {
                return Err(Error::NoSuchJob(id.to_string()));
            };
            if old.value.state.is_terminal() || old.value.cancel_requested {
                return Ok(old.value);
            }
            let mut new = old.value.clone();
            new.cancel_requested = true;
            new.log("client", "cancel requested");
            let key = self.job_key(id);
            let out = self
                .cas(&key, old.revision, vec![put(key.clone(), encode(&new))])
                .await?;
            if out.succeeded {
                return Ok(new);
            }
        }
    }

    // ---- tasks -------------------------------------------------------------------------

    /// Place a job's tasks (one, or a data-parallel group's, all or none): the job record
    /// update and the assignments in one fenced transaction.
    pub async fn assign_task(
        &self,
        leadership: &Leadership,
        old: &Versioned<JobRecord>,
        new: &JobRecord,
        tasks: &[TaskAssignment],
    ) -> Result<i64> {
        let key = self.job_key(&new.id);
        let mut ops = self.job_write(new);
        for task in tasks {
            ops.push(put(
                self.task_key(&task.executor, &task.job_id),
                encode(task),
            ));
        }
        ops.push(TxnOp::Delete {
            key: self.progress_key(&new.id),
        });
        self.fenced(leadership, &key, old.revision, ops).await
    }

    /// Take a job's tasks away (requeue, finish, cancel) and update the job, in one fenced
    /// transaction. The executors' later progress writes then fail.
    pub async fn release_task(
        &self,
        leadership: &Leadership,
        old: &Versioned<JobRecord>,
        new: &JobRecord,
    ) -> Result<i64> {
        let key = self.job_key(&new.id);
        let mut ops = self.job_write(new);
        let mut executors: Vec<&String> = old.value.workers.iter().collect();
        executors.extend(old.value.executor.iter());
        executors.sort();
        executors.dedup();
        for executor in executors {
            ops.push(TxnOp::Delete {
                key: self.task_key(executor, &new.id),
            });
        }
        ops.push(TxnOp::Delete {
            key: self.progress_key(&new.id),
        });
        self.fenced(leadership, &key, old.revision, ops).await
    }

    /// Tasks assigned to one executor.
    pub async fn tasks_for(&self, executor: &str) -> Result<Vec<Versioned<TaskAssignment>>> {
        let entries = self
            .kv
            .range(&self.key(&format!("tasks/{executor}/")))
            .await?;
        entries.iter().map(decode).collect()
    }

    /// Every assignment in the cluster.
    pub async fn all_tasks(&self) -> Result<Vec<Versioned<TaskAssignment>>> {
        let entries = self.kv.range(&self.key("tasks/")).await?;
        entries.iter().map(decode).collect()
    }

    /// Report progress on a task, only while the assignment read at `assignment` stands:
    /// [`Error::Conflict`] means the task was taken away and the executor must stop.
    pub async fn report_progress(
        &self,
        assignment: &Versioned<TaskAssignment>,
        progress: &TaskProgress,
    ) -> Result<()> {
        self.fenced_on_task(
            assignment,
            vec![put(self.progress_key(&progress.job_id), encode(progress))],
        )
        .await
    }

    /// The latest progress report of a job's current task.
    pub async fn get_progress(&self, job: &str) -> Result<Option<TaskProgress>> {
        self.get_value(&self.progress_key(job)).await
    }

    // ---- models ------------------------------------------------------------------------

    /// Allocate the next version number of a model (1, 2, …): never the same twice.
    pub async fn next_model_version(&self, name: &str) -> Result<u64> {
        let key = self.model_counter_key(name);
        loop {
            let (current, revision) = match self.kv.get(&key).await? {
                Some(e) => {
                    let text = String::from_utf8_lossy(&e.value).into_owned();
                    let n: u64 = text.parse().map_err(|_| Error::Corrupt {
                        key: key.clone(),
                        message: format!("not a number: {text:?}"),
                    })?;
                    (n, e.mod_revision)
                }
                None => (1, 0),
            };
            let out = self
                .cas(
                    &key,
                    revision,
                    vec![put(key.clone(), (current + 1).to_string().into_bytes())],
                )
                .await?;
            if out.succeeded {
                return Ok(current);
            }
        }
    }

    /// Register a published version, only while the task's assignment read at
    /// `assignment` stands ([`Error::Conflict`] otherwise).
    pub async fn register_version(
        &self,
        assignment: &Versioned<TaskAssignment>,
        version: &ModelVersion,
    ) -> Result<()> {
        self.fenced_on_task(
            assignment,
            vec![put(
                self.version_key(&version.name, version.version),
                encode(version),
            )],
        )
        .await
    }

    /// A model's registered versions, oldest first.
    pub async fn model_versions(&self, name: &str) -> Result<Vec<ModelVersion>> {
        let mut out: Vec<ModelVersion> = self.values(&format!("models/{name}/versions/")).await?;
        out.sort_by_key(|v| v.version);
        Ok(out)
    }

    /// One registered version.
    pub async fn model_version(&self, name: &str, version: u64) -> Result<Option<ModelVersion>> {
        self.get_value(&self.version_key(name, version)).await
    }

    /// Names of the models with at least one registered version, sorted.
    pub async fn model_names(&self) -> Result<Vec<String>> {
        let prefix = self.key("models/");
        let mut names: Vec<String> = self
            .kv
            .range(&prefix)
            .await?
            .iter()
            .filter_map(|e| {
                let rest = &e.key[prefix.len()..];
                let (name, tail) = rest.split_once('/')?;
                tail.starts_with("versions/").then(|| name.to_string())
            })
            .collect();
        names.dedup();
        Ok(names)
    }

    /// A model's deployment, if it was ever deployed.
    pub async fn deployment(&self, name: &str) -> Result<Option<Deployment>> {
        self.get_value(&self.deployment_key(name)).await
    }

    /// Every deployment, by name.
    pub async fn deployments(&self) -> Result<Vec<Deployment>> {
        self.values("deployments/").await
    }

    /// Change a model's deployment (any scheduler): compare-and-swap, retrying lost
    /// races. Versions named by the change must be registered.
    pub async fn change_deployment(&self, name: &str, change: &Change) -> Result<Deployment> {
        let versions: Vec<u64> = self
            .model_versions(name)
            .await?
            .iter()
            .map(|v| v.version)
            .collect();
        if versions.is_empty() {
            return Err(Error::invalid(
                "deployment",
                "model",
                name,
                "no version of this model is registered (see `halyard models`)",
            ));
        }
        let key = self.deployment_key(name);
        loop {
            let (old, revision) = match self.kv.get(&key).await? {
                Some(e) => {
                    let v: Versioned<Deployment> = decode(&e)?;
                    (v.value, v.revision)
                }
                None => (
                    Deployment {
                        name: name.to_string(),
                        ..Deployment::default()
                    },
                    0,
                ),
            };
            let new = old.apply(change, |v| versions.contains(&v))?;
            let out = self
                .cas(&key, revision, vec![put(key.clone(), encode(&new))])
                .await?;
            if out.succeeded {
                return Ok(new);
            }
        }
    }

    /// Publish what an executor serves, bound to its lease (it vanishes with the executor).
    pub async fn advertise_serving(&self, info: &ServingInfo, lease: i64) -> Result<()> {
        self.kv
            .txn(
                Vec::new(),
                vec![TxnOp::Put {
                    key: self.serving_key(&info.executor),
                    value: encode(info),
                    lease: Some(lease),
                }],
            )
            .await?;
        Ok(())
    }

    /// Advertise the leader's SQL (Ballista) scheduler endpoint, under the leader's lease
    /// and fenced on its leadership: it vanishes with the leader.
    pub async fn advertise_sql_endpoint(
        &self,
        leadership: &Leadership,
        endpoint: &str,
    ) -> Result<()> {
        let when = vec![Compare::ModRevision {
            key: self.leader_key(),
            revision: leadership.revision,
        }];
        let then = vec![TxnOp::Put {
            key: self.sql_endpoint_key(),
            value: endpoint.as_bytes().to_vec(),
            lease: Some(leadership.lease),
        }];
        if self.kv.txn(when, then).await?.succeeded {
            Ok(())
        } else {
            Err(Error::Fenced)
        }
    }

    /// The SQL scheduler endpoint (`HOST:PORT`) of the current leader, if it runs one.
    pub async fn sql_endpoint(&self) -> Result<Option<String>> {
        self.get_text(&self.sql_endpoint_key()).await
    }

    /// What every live executor serves.
    pub async fn serving(&self) -> Result<Vec<ServingInfo>> {
        self.values("serving/").await
    }

    /// Add one outcome for a version: compare-and-swap, retrying lost races.
    pub async fn record_outcome(
        &self,
        name: &str,
        version: u64,
        converted: bool,
    ) -> Result<Outcomes> {
        let key = self.outcomes_key(name, version);
        loop {
            let (mut counts, revision) = match self.kv.get(&key).await? {
                Some(e) => {
                    let v: Versioned<Outcomes> = decode(&e)?;
                    (v.value, v.revision)
                }
                None => (Outcomes::default(), 0),
            };
            counts.trials += 1;
            counts.conversions += u64::from(converted);
            let out = self
                .cas(&key, revision, vec![put(key.clone(), encode(&counts))])
                .await?;
            if out.succeeded {
                return Ok(counts);
            }
        }
    }

    /// Outcomes recorded for each version of a model.
    pub async fn outcomes(&self, name: &str) -> Result<Vec<(u64, Outcomes)>> {
        let prefix = self.key(&format!("outcomes/{name}/"));
        let mut out = Vec::new();
        for e in self.kv.range(&prefix).await? {
            let version = e.key[prefix.len()..].parse().map_err(|_| Error::Corrupt {
                key: e.key.clone(),
                message: "the key does not end in a version number".into(),
            })?;
            let counts: Versioned<Outcomes> = decode(&e)?;
            out.push((version, counts.value));
        }
        out.sort_by_key(|(v, _)| *v);
        Ok(out)
    }
}
