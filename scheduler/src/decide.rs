//! The leader's decisions as pure functions over what it read in a tick: which executors
//! a job is placed on, and what becomes of a running job. `leader.rs` reads the
//! coordinator, asks these, and writes what they decide.

use std::collections::HashMap;
use std::time::Duration;

use halyard_core::records::{ExecutorInfo, JobRecord, TaskAssignment, TaskProgress, TaskState};
use halyard_core::spec::ResourceSpec;

/// Free capacity of one executor during a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Free {
    pub(crate) cpus: u32,
    pub(crate) memory_mb: u64,
    pub(crate) gpus: u32,
}

impl Free {
    fn of(e: &ExecutorInfo) -> Self {
        Free {
            cpus: e.cpu_slots,
            memory_mb: e.memory_mb,
            gpus: e.gpus,
        }
    }

    fn fits(&self, need: &ResourceSpec) -> bool {
        self.cpus >= need.cpus && self.memory_mb >= need.memory_mb && self.gpus >= need.gpus
    }

    /// Take `need` from this executor's free capacity.
    pub(crate) fn take(&mut self, need: &ResourceSpec) {
        self.cpus = self.cpus.saturating_sub(need.cpus);
        self.memory_mb = self.memory_mb.saturating_sub(need.memory_mb);
        self.gpus = self.gpus.saturating_sub(need.gpus);
    }

    /// Give back what `need` took (a task released).
    pub(crate) fn give(&mut self, need: &ResourceSpec) {
        self.cpus = self.cpus.saturating_add(need.cpus);
        self.memory_mb = self.memory_mb.saturating_add(need.memory_mb);
        self.gpus = self.gpus.saturating_add(need.gpus);
    }
}

/// Each live executor's capacity less what its assigned tasks hold.
pub(crate) fn free_capacity(
    executors: &[ExecutorInfo],
    tasks: &[TaskAssignment],
) -> HashMap<String, Free> {
    let mut free: HashMap<String, Free> = executors
        .iter()
        .map(|e| (e.id.clone(), Free::of(e)))
        .collect();
    for t in tasks {
        if let Some(f) = free.get_mut(&t.executor) {
            f.take(&t.spec.resources);
        }
    }
    free
}

/// The `wanted` executors a job needing `need` goes to: those that fit, most free CPU
/// slots first (ties by id), all of them or none (`None`: the job waits).
pub(crate) fn choose_executors(
    free: &HashMap<String, Free>,
    need: &ResourceSpec,
    wanted: usize,
) -> Option<Vec<String>> {
    let mut fitting: Vec<(&String, &Free)> = free.iter().filter(|(_, f)| f.fits(need)).collect();
    fitting.sort_by_key(|(id, f)| (std::cmp::Reverse(f.cpus), (*id).clone()));
    (fitting.len() >= wanted).then(|| {
        fitting[..wanted]
            .iter()
            .map(|(id, _)| (*id).clone())
            .collect()
    })
}

/// What becomes of a running job this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing to do: it runs on.
    RunsOn,
    /// Its cancel was asked for.
    Cancel,
    /// Its task reported success.
    Succeed,
    /// Its task failed for good (not a retryable failure).
    Fail,
    /// It must be placed again, for this reason.
    Requeue(String),
    /// It must be placed again, but it has had its attempts: it fails with this reason.
    GiveUp(String),
}

/// Decide a running `job`'s fate from its task's `progress` (this attempt's, if any), the
/// executors alive (`live`), and the attempts a job may have.
pub(crate) fn supervise(
    job: &JobRecord,
    progress: Option<&TaskProgress>,
    live: &dyn Fn(&str) -> bool,
    max_attempts: u32,
) -> Verdict {
    let state = progress.map(|p| p.state);
    if job.cancel_requested {
        return Verdict::Cancel;
    }
    if state == Some(TaskState::Succeeded) {
        return Verdict::Succeed;
    }
    if state == Some(TaskState::Failed) && !progress.is_some_and(|p| p.retry) {
        return Verdict::Fail;
    }
    match lost(job, live, progress) {
        Some(why) if attempts_in_step(job) >= max_attempts => Verdict::GiveUp(why),
        Some(why) => Verdict::Requeue(why),
        None => Verdict::RunsOn,
    }
}

/// Attempts `job` has made at its current step (each step counts its own).
pub(crate) fn attempts_in_step(job: &JobRecord) -> u32 {
    job.attempt - job.step_from.min(job.attempt)
}

/// The longest wait before a requeued task is placed again.
const MAX_REQUEUE_WAIT: Duration = Duration::from_secs(30);

/// How long a task requeued after its `used`-th attempt of the step (1 for the first)
/// waits before it is placed again: a lone task's first retry goes at once, then 1 s,
/// 2 s, 4 s…; a data-parallel group waits one lease period (a dead peer's lease must end
/// first, or the new group would include it), then two, four… Both at most
/// [`MAX_REQUEUE_WAIT`]. The waits spread the attempts over a passing fault (a node's disk
/// full for a while, a leader moving) instead of spending them in its first seconds.
pub(crate) fn requeue_wait(group: bool, used: u32, lease_ttl: Duration) -> Duration {
    let doublings = used.saturating_sub(1).min(16);
    if group {
        lease_ttl
            .saturating_mul(1 << doublings)
            .min(MAX_REQUEUE_WAIT)
            .max(lease_ttl)
    } else if doublings == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs(1 << (doublings - 1)).min(MAX_REQUEUE_WAIT)
    }
}

/// Why a running job's task must be placed again, if it must: one of its executors'
/// leases expired, or its task failed with a retryable failure (a worker group's).
fn lost(
    job: &JobRecord,
    live: &dyn Fn(&str) -> bool,
    progress: Option<&TaskProgress>,
) -> Option<String> {
    let mut executors: Vec<&String> = job.workers.iter().collect();
    if executors.is_empty() {
        executors.extend(job.executor.iter());
    }
    if let Some(gone) = executors.iter().find(|e| !live(e.as_str())) {
        return Some(format!("executor {gone} lost"));
    }
    if executors.is_empty() {
        return Some("executor lost".into());
    }
    progress
        .filter(|p| p.retry && p.state == TaskState::Failed)
        .map(|p| {
            format!(
                "worker group failed: {}",
                p.error.as_deref().unwrap_or("no reason given")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeued_tasks_wait_longer_after_each_attempt() {
        let ttl = Duration::from_secs(2);
        let secs = |group, used| requeue_wait(group, used, ttl).as_secs_f64();
        let lone: Vec<f64> = (1..=6).map(|n| secs(false, n)).collect();
        assert_eq!(lone, [0.0, 1.0, 2.0, 4.0, 8.0, 16.0]);
        let group: Vec<f64> = (1..=6).map(|n| secs(true, n)).collect();
        assert_eq!(group, [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]);
        // Five attempts of a group span 30 s of waits, of a lone task 7 s.
        assert_eq!((1..5).map(|n| secs(true, n)).sum::<f64>(), 30.0);
        assert_eq!((1..5).map(|n| secs(false, n)).sum::<f64>(), 7.0);
        // Never shorter than a lease for a group, never past the cap, however many.
        assert_eq!(
            requeue_wait(true, 0, Duration::from_secs(45)),
            Duration::from_secs(45)
        );
        assert_eq!(requeue_wait(false, 1000, ttl), MAX_REQUEUE_WAIT);
    }

    fn need(cpus: u32, memory_mb: u64, gpus: u32) -> ResourceSpec {
        ResourceSpec {
            cpus,
            memory_mb,
            gpus,
        }
    }

    fn free(rows: &[(&str, u32, u64, u32)]) -> HashMap<String, Free> {
        rows.iter()
            .map(|(id, cpus, memory_mb, gpus)| {
                (
                    id.to_string(),
                    Free {
                        cpus: *cpus,
                        memory_mb: *memory_mb,
                        gpus: *gpus,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn placement_takes_the_most_free_executors_that_fit_all_or_none() {
        let cluster = free(&[
            ("a", 2, 4096, 0),
            ("b", 4, 4096, 0),
            ("c", 4, 512, 1),
            ("d", 1, 8192, 1),
        ]);
        // (need, workers wanted, chosen)
        let table: [(ResourceSpec, usize, Option<Vec<&str>>); 7] = [
            (need(1, 1024, 0), 1, Some(vec!["b"])),
            (need(1, 256, 0), 1, Some(vec!["b"])), // b and c tie on cpus: by id
            (need(1, 256, 0), 3, Some(vec!["b", "c", "a"])),
            (need(1, 1024, 0), 4, None), // c has too little memory: all or none
            (need(1, 256, 1), 2, Some(vec!["c", "d"])),
            (need(3, 1024, 0), 1, Some(vec!["b"])),
            (need(8, 1024, 0), 1, None),
        ];
        for (need, wanted, chosen) in table {
            let got = choose_executors(&cluster, &need, wanted);
            let want = chosen.map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(got, want, "need {need:?} x{wanted}");
        }
    }

    fn job(attempt: u32, executor: Option<&str>, workers: &[&str], cancel: bool) -> JobRecord {
        let spec = halyard_core::spec::JobSpec::from_toml(
            "name = \"j\"\n[data]\nsource = \"x.csv\"\nlabel = \"y\"\n",
            "test",
        )
        .unwrap();
        let mut j = JobRecord::new("j".into(), spec);
        j.state = halyard_core::records::JobState::Running;
        j.attempt = attempt;
        j.executor = executor.map(String::from);
        j.workers = workers.iter().map(|s| s.to_string()).collect();
        j.cancel_requested = cancel;
        j
    }

    fn progress(state: TaskState, retry: bool) -> TaskProgress {
        TaskProgress {
            job_id: "j".into(),
            attempt: 1,
            executor: "a".into(),
            state,
            epoch: 0,
            epochs: 1,
            loss: None,
            metrics: Default::default(),
            artifact: None,
            model_version: None,
            error: Some("boom".into()),
            retry,
            lines: Vec::new(),
            updated_ms: 0,
        }
    }

    #[test]
    fn supervision_decides_each_running_job_by_its_progress_and_executors() {
        let live = |e: &str| e != "dead";
        let (ok, failed, group) = (
            progress(TaskState::Succeeded, false),
            progress(TaskState::Failed, false),
            progress(TaskState::Failed, true),
        );
        let running = progress(TaskState::Running, false);
        // (job, progress, verdict)
        let table: Vec<(JobRecord, Option<&TaskProgress>, Verdict)> = vec![
            (job(1, Some("a"), &[], false), None, Verdict::RunsOn),
            (
                job(1, Some("a"), &[], false),
                Some(&running),
                Verdict::RunsOn,
            ),
            (job(1, Some("a"), &[], true), Some(&ok), Verdict::Cancel),
            (job(1, Some("a"), &[], false), Some(&ok), Verdict::Succeed),
            (job(1, Some("a"), &[], false), Some(&failed), Verdict::Fail),
            // A failed task whose executor died: it failed for good all the same.
            (
                job(1, Some("dead"), &[], false),
                Some(&failed),
                Verdict::Fail,
            ),
            (
                job(1, Some("dead"), &[], false),
                Some(&running),
                Verdict::Requeue("executor dead lost".into()),
            ),
            (
                job(5, Some("dead"), &[], false),
                None,
                Verdict::GiveUp("executor dead lost".into()),
            ),
            (
                job(2, Some("a"), &["a", "b"], false),
                Some(&group),
                Verdict::Requeue("worker group failed: boom".into()),
            ),
            (
                job(2, Some("a"), &["a", "dead"], false),
                None,
                Verdict::Requeue("executor dead lost".into()),
            ),
            (
                job(1, None, &[], false),
                None,
                Verdict::Requeue("executor lost".into()),
            ),
        ];
        for (j, p, verdict) in table {
            assert_eq!(
                supervise(&j, p, &live, 5),
                verdict,
                "{:?} {:?} {:?}",
                j.executor,
                j.workers,
                p.map(|p| p.state)
            );
        }
    }
}
