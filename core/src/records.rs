//! The records kept in the coordinator: executors, jobs, task assignments, task progress.
//! Serialised as JSON values under the keys of [`crate::coord`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::{JobSpec, Stage};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// What an executor offers; stored under its lease, so it vanishes when the executor dies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutorInfo {
    /// Unique id.
    pub id: String,
    /// `HOST:PORT` it listens on.
    pub address: String,
    /// CPU slots for tasks.
    pub cpu_slots: u32,
    /// Memory for tasks, MiB.
    pub memory_mb: u64,
    /// GPUs.
    pub gpus: u32,
    /// Halyard version.
    pub version: String,
    /// When it registered.
    pub started_ms: i64,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for an executor.
    Pending,
    /// Assigned to an executor.
    Running,
    /// Done; the model is published.
    Succeeded,
    /// Ended with an error.
    Failed,
    /// Stopped by a user.
    Cancelled,
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// One line of a job's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// When.
    pub time_ms: i64,
    /// Who said it: `scheduler/<id>` or `executor/<id>`.
    pub source: String,
    /// What.
    pub message: String,
}

/// The format of the job records this Halyard writes; it refuses to read a newer one.
pub const JOB_FORMAT: u32 = 1;

/// A record format no newer than [`JOB_FORMAT`] (absent: written before formats were).
fn known_format<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    if v > JOB_FORMAT {
        return Err(serde::de::Error::custom(format!(
            "written by a newer Halyard (job record format {v}; this one reads up to {JOB_FORMAT}): upgrade this node"
        )));
    }
    Ok(v)
}

/// A job as the scheduler keeps it. Only the leader changes `state`, by fenced
/// compare-and-swap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The record's format ([`JOB_FORMAT`] when written by this Halyard).
    #[serde(default, deserialize_with = "known_format")]
    pub format: u32,
    /// Job id.
    pub id: String,
    /// The validated spec.
    pub spec: JobSpec,
    /// Life state.
    pub state: JobState,
    /// Placement attempts so far (1 after the first assignment).
    pub attempt: u32,
    /// Executor of the current or last attempt.
    pub executor: Option<String>,
    /// Submission time.
    pub created_ms: i64,
    /// Last change.
    pub updated_ms: i64,
    /// Why it failed.
    pub error: Option<String>,
    /// Final metrics.
    pub metrics: BTreeMap<String, f64>,
    /// URL of the published model version.
    pub artifact: Option<String>,
    /// Published model version.
    pub model_version: Option<u64>,
    /// A user asked to cancel; the leader acts on it.
    pub cancel_requested: bool,
    /// Data-parallel: the executors of the current attempt's workers, by rank (rank 0 is
    /// `executor`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<String>,
    /// A search job's trials (the leader runs each rung of a trial as a job of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<crate::search::SearchState>,
    /// Not placed before this time (ms since the epoch): after a worker group failed, one
    /// lease period passes first, so that a dead executor has left the live set.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub not_before_ms: i64,
    /// The search job this job is a trial of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The id of the API key that submitted it (a submitter may cancel only its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The schedule whose run this job is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Which of the spec's steps ([`JobSpec::steps`]) runs now: 0, the first.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub step: u32,
    /// The attempt before the current step's first (attempts are counted per step).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub step_from: u32,
    /// Scheduler-side events.
    pub events: Vec<LogLine>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// Log lines kept per job record and per progress report; older ones are dropped.
pub const MAX_EVENTS: usize = 200;

/// Add `lines` to a log kept in time order, dropping the oldest past [`MAX_EVENTS`].
pub fn append_lines(log: &mut Vec<LogLine>, lines: impl IntoIterator<Item = LogLine>) {
    log.extend(lines);
    log.sort_by_key(|l| l.time_ms);
    if log.len() > MAX_EVENTS {
        let extra = log.len() - MAX_EVENTS;
        log.drain(..extra);
    }
}

impl JobRecord {
    /// A new pending job.
    pub fn new(id: String, spec: JobSpec) -> Self {
        let now = now_ms();
        JobRecord {
            format: JOB_FORMAT,
            id,
            spec,
            state: JobState::Pending,
            attempt: 0,
            executor: None,
            created_ms: now,
            updated_ms: now,
            error: None,
            metrics: BTreeMap::new(),
            artifact: None,
            model_version: None,
            cancel_requested: false,
            workers: Vec::new(),
            not_before_ms: 0,
            search: None,
            parent: None,
            owner: None,
            schedule: None,
            step: 0,
            step_from: 0,
            events: Vec::new(),
        }
    }

    /// Append an event and touch `updated_ms`.
    pub fn log(&mut self, source: &str, message: impl Into<String>) {
        self.updated_ms = now_ms();
        let line = LogLine {
            time_ms: self.updated_ms,
            source: source.to_string(),
            message: message.into(),
        };
        append_lines(&mut self.events, [line]);
    }
}

/// A task placed on an executor: one attempt at one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAssignment {
    /// The job.
    pub job_id: String,
    /// Which attempt this is.
    pub attempt: u32,
    /// The executor.
    pub executor: String,
    /// The spec to run.
    pub spec: JobSpec,
    /// When it was placed.
    pub assigned_ms: i64,
    /// Data-parallel: this worker's rank (0 reports progress and publishes).
    #[serde(default)]
    pub rank: u32,
    /// Data-parallel: the workers' addresses (`HOST:PORT`) by rank; empty when training
    /// alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group: Vec<String>,
    /// The stages this task runs (one step of [`JobSpec::steps`]); empty: the whole
    /// pipeline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<Stage>,
}

impl TaskAssignment {
    /// The job whose feature table this task reads: its own, or the one its spec names.
    pub fn feature_job(&self) -> String {
        self.spec
            .features
            .as_ref()
            .and_then(|f| f.table_of.clone())
            .unwrap_or_else(|| self.job_id.clone())
    }

    /// The stages this task runs.
    pub fn stages(&self) -> Vec<Stage> {
        if self.stages.is_empty() {
            self.spec.stages()
        } else {
            self.stages.clone()
        }
    }

    /// The group's name, the same on every rank: `<job>/<attempt>`.
    pub fn group_id(&self) -> String {
        format!("{}/{}", self.job_id, self.attempt)
    }
}

/// State of a task on its executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Training.
    Running,
    /// Trained and published.
    Succeeded,
    /// Failed; the error says why.
    Failed,
}

/// What an executor reports about its task; written only while its assignment stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskProgress {
    /// The job.
    pub job_id: String,
    /// The attempt reporting.
    pub attempt: u32,
    /// The executor.
    pub executor: String,
    /// Task state.
    pub state: TaskState,
    /// Epochs done.
    pub epoch: u32,
    /// Epochs planned.
    pub epochs: u32,
    /// Mean training loss of the last epoch.
    pub loss: Option<f64>,
    /// Metrics once evaluated.
    pub metrics: BTreeMap<String, f64>,
    /// URL of the published artifact.
    pub artifact: Option<String>,
    /// Published version.
    pub model_version: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
    /// The failure is a retryable one ([`crate::Failure::is_retryable`]: a worker group's,
    /// an unreachable coordinator or SQL cluster): the leader places the task again, and a
    /// data-parallel group resumes from its last checkpoint.
    #[serde(default)]
    pub retry: bool,
    /// Executor-side log lines (bounded).
    pub lines: Vec<LogLine>,
    /// Last report.
    pub updated_ms: i64,
}

impl TaskProgress {
    /// A fresh report for a just-started task.
    pub fn started(a: &TaskAssignment) -> Self {
        TaskProgress {
            job_id: a.job_id.clone(),
            attempt: a.attempt,
            executor: a.executor.clone(),
            state: TaskState::Running,
            epoch: 0,
            epochs: a.spec.train.epochs,
            loss: None,
            metrics: BTreeMap::new(),
            artifact: None,
            model_version: None,
            error: None,
            retry: false,
            lines: Vec::new(),
            updated_ms: now_ms(),
        }
    }

    /// Append a log line (bounded like job events).
    pub fn log(&mut self, message: impl Into<String>) {
        self.updated_ms = now_ms();
        let line = LogLine {
            time_ms: self.updated_ms,
            source: format!("executor/{}", self.executor),
            message: message.into(),
        };
        append_lines(&mut self.lines, [line]);
    }
}
