//! The job queue and the job state machine, task assignment and progress: the
//! coordinator's methods over `jobs/`, `active/`, `tasks/` and `progress/`.

use std::collections::{HashMap, HashSet};

use super::{Coordinator, Edit, Leadership, Versioned, decode, decode_values, encode, put};
use crate::error::{Error, Result};
use crate::kv::{Compare, KvEntry, TxnOp};
use crate::records::{ExecutorInfo, JobRecord, TaskAssignment, TaskProgress};

/// A job's release, written on its own ([`Coordinator::commit_release`]) or with an
/// assignment ([`Coordinator::assign_task`]): fenced on the job's record as read.
#[derive(Debug, Clone)]
pub struct Release {
    key: String,
    revision: i64,
    ops: Vec<TxnOp>,
}

/// What one pass of the leader reads ([`Coordinator::leader_view`]).
#[derive(Debug, Clone)]
pub struct LeaderView {
    /// The live executors.
    pub executors: Vec<ExecutorInfo>,
    /// The jobs that have not ended, oldest first.
    pub jobs: Vec<Versioned<JobRecord>>,
    /// Every task assignment.
    pub tasks: Vec<Versioned<TaskAssignment>>,
    /// The latest progress report of each active job with a task, by job id.
    pub reports: HashMap<String, TaskProgress>,
}

impl Coordinator {
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
        let mut jobs: Vec<Versioned<JobRecord>> = Vec::with_capacity(entries.len());
        for e in &entries {
            // One record that cannot be read does not hide the others (`halyard job ID`
            // shows its error).
            match decode(e) {
                Ok(job) => jobs.push(job),
                Err(err) => {
                    tracing::warn!(key = %e.key, error = %err, "an unreadable job record left out of the list")
                }
            }
        }
        jobs.sort_by_key(|j| (j.value.created_ms, j.value.id.clone()));
        Ok(jobs)
    }

    /// Jobs that have not ended, oldest first: what the leader supervises. Reads only the
    /// active index and those jobs, however long the history. A job whose record cannot
    /// be read (corrupt, or written by a newer Halyard) is quarantined: taken out of the
    /// active index and recorded under `quarantine/<job>` with the reason, so the rest go
    /// on; its record stays as it is for inspection.
    pub async fn list_active_jobs(&self) -> Result<Vec<Versioned<JobRecord>>> {
        let ids = self.active_ids(&self.kv.range(&self.key("active/")).await?);
        let keys: Vec<String> = ids.iter().map(|id| self.job_key(id)).collect();
        let entries = self.kv.get_many(&keys).await?;
        self.active_jobs(&ids, entries).await
    }

    /// What one pass of the leader reads, in two round trips to etcd (per 128 keys): the
    /// live executors, the active index and every task assignment at one revision, then
    /// the active jobs and the latest reports of those with a task. Jobs are read as
    /// [`Coordinator::list_active_jobs`] reads them.
    pub async fn leader_view(&self) -> Result<LeaderView> {
        let prefixes = [
            self.key("executors/"),
            self.key("active/"),
            self.key("tasks/"),
        ];
        let [executors, active, tasks]: [Vec<KvEntry>; 3] = self
            .kv
            .ranges(&prefixes)
            .await?
            .try_into()
            .map_err(|read: Vec<_>| {
                Error::Coordinator(format!("3 prefixes read, {} answers", read.len()))
            })?;
        let executors: Vec<ExecutorInfo> = decode_values(&executors)?;
        let tasks = tasks.iter().map(decode).collect::<Result<Vec<_>>>()?;
        let ids = self.active_ids(&active);
        let assigned: HashSet<&str> = tasks
            .iter()
            .map(|t: &Versioned<TaskAssignment>| t.value.job_id.as_str())
            .collect();
        let reported: Vec<&String> = ids
            .iter()
            .filter(|id| assigned.contains(id.as_str()))
            .collect();
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.job_key(id))
            .chain(reported.iter().map(|id| self.progress_key(id)))
            .collect();
        let mut entries = self.kv.get_many(&keys).await?;
        let reports = entries.split_off(ids.len());
        let reports = reported
            .into_iter()
            .zip(reports)
            .filter_map(|(id, e)| Some((id.clone(), e?)))
            .map(|(id, e)| decode(&e).map(|p: Versioned<TaskProgress>| (id, p.value)))
            .collect::<Result<HashMap<_, _>>>()?;
        Ok(LeaderView {
            executors,
            jobs: self.active_jobs(&ids, entries).await?,
            tasks,
            reports,
        })
    }

    /// The job ids of the active index's entries.
    fn active_ids(&self, active: &[KvEntry]) -> Vec<String> {
        let prefix = self.key("active/");
        active
            .iter()
            .filter_map(|e| e.key.strip_prefix(&prefix).map(String::from))
            .collect()
    }

    /// The jobs of `ids` from their records as read (`entries`, in the same order), oldest
    /// first: those that ended between the two reads left out, unreadable ones
    /// quarantined.
    async fn active_jobs(
        &self,
        ids: &[String],
        entries: Vec<Option<KvEntry>>,
    ) -> Result<Vec<Versioned<JobRecord>>> {
        let mut jobs = Vec::new();
        for (id, entry) in ids.iter().zip(entries) {
            match entry.map(|e| decode::<JobRecord>(&e)).transpose() {
                // A job ended between the two reads: its index key is gone now, skip it.
                Ok(Some(job)) if !job.value.state.is_terminal() => jobs.push(job),
                Ok(_) => {}
                Err(e @ Error::Corrupt { .. }) => self.quarantine_job(id, &e.to_string()).await?,
                Err(e) => return Err(e),
            }
        }
        jobs.sort_by_key(|j| (j.value.created_ms, j.value.id.clone()));
        Ok(jobs)
    }

    /// Take job `id` out of the active index and record why under `quarantine/<id>`.
    async fn quarantine_job(&self, id: &str, reason: &str) -> Result<()> {
        tracing::error!(job = %id, reason = %reason, "job record quarantined: it cannot be read; the other jobs go on");
        self.kv
            .txn(
                Vec::new(),
                vec![
                    put(
                        self.key(&format!("quarantine/{id}")),
                        reason.as_bytes().to_vec(),
                    ),
                    TxnOp::Delete {
                        key: self.active_key(id),
                    },
                ],
            )
            .await?;
        Ok(())
    }

    /// Jobs quarantined by the leader: id and reason.
    pub async fn quarantined_jobs(&self) -> Result<Vec<(String, String)>> {
        let prefix = self.key("quarantine/");
        Ok(self
            .kv
            .range(&prefix)
            .await?
            .into_iter()
            .map(|e| {
                (
                    e.key[prefix.len()..].to_string(),
                    String::from_utf8_lossy(&e.value).into_owned(),
                )
            })
            .collect())
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
        self.update(&self.job_key(id), |job: Option<JobRecord>| {
            let mut job = job.ok_or_else(|| Error::NoSuchJob(id.to_string()))?;
            if job.state.is_terminal() || job.cancel_requested {
                return Ok(Edit::Keep(job));
            }
            job.cancel_requested = true;
            job.log("client", "cancel requested");
            Ok(Edit::Write(job))
        })
        .await
    }

    // ---- tasks -------------------------------------------------------------------------

    /// Place a job's tasks (one, or a data-parallel group's, all or none): the job record
    /// update and the assignments in one fenced transaction; with `release`, another
    /// job's release ([`Coordinator::release_write`]) in the same transaction (one write,
    /// and one wake-up of the executor that ends one task and starts the next).
    pub async fn assign_task(
        &self,
        leadership: &Leadership,
        old: &Versioned<JobRecord>,
        new: &JobRecord,
        tasks: &[TaskAssignment],
        release: Option<&Release>,
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
        let mut also = Vec::new();
        if let Some(r) = release {
            also.push(Compare::ModRevision {
                key: r.key.clone(),
                revision: r.revision,
            });
            ops.extend(r.ops.iter().cloned());
        }
        self.fenced_if(leadership, &key, old.revision, also, ops)
            .await
    }

    /// Take a job's tasks away (requeue, finish, cancel) and update the job, in one fenced
    /// transaction. The executors' later progress writes then fail.
    pub async fn release_task(
        &self,
        leadership: &Leadership,
        old: &Versioned<JobRecord>,
        new: &JobRecord,
    ) -> Result<i64> {
        self.commit_release(leadership, self.release_write(old, new))
            .await
    }

    /// The writes of [`Coordinator::release_task`], to send with an assignment.
    pub fn release_write(&self, old: &Versioned<JobRecord>, new: &JobRecord) -> Release {
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
        Release {
            key: self.job_key(&new.id),
            revision: old.revision,
            ops,
        }
    }

    /// Write a release on its own ([`Coordinator::release_write`]).
    pub async fn commit_release(&self, leadership: &Leadership, r: Release) -> Result<i64> {
        self.fenced(leadership, &r.key, r.revision, r.ops).await
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
}
