//! The SQL executors' work folders (Ballista's shuffle files and results), and the sweep
//! of those whose process is gone.
//!
//! An executor stopped cleanly removes its folder; one killed (`kill -9`, a crash, a lost
//! machine) leaves it behind. Each folder, `halyard-sql-*` in the system's temporary
//! folder (`TMPDIR`), holds an `owner` file: the process id and the process's start time
//! (from `/proc`, so that a reused process id is not taken for the owner). Every SQL
//! executor, when it starts, removes the folders whose owner is no longer running on this
//! machine. Where `/proc` is missing nothing is swept.
//!
//! [`BudgetedEngine`] checks the folder against the node's disk budget (`disk_budget_mb`)
//! and its disk's free space before every task writes shuffle output there: a task that
//! would start past either fails, naming the folder and the budget.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::error::{FeatureError, Result};

/// Folder names begin with this.
const PREFIX: &str = "halyard-sql-";
/// The file naming a folder's owner.
const OWNER: &str = "owner";

/// The start time of process `pid` (clock ticks after boot), if it runs.
fn started(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command's `(name)`, from the state (the third field) on; the
    // start time is the 22nd field.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// `pid start` of this process.
fn owner_line() -> Option<String> {
    let pid = std::process::id();
    Some(format!("{pid} {}", started(pid)?))
}

/// Make a work folder in `parent` owned by this process.
pub fn make(parent: &Path) -> Result<PathBuf> {
    let dir = tempfile::Builder::new()
        .prefix(PREFIX)
        .tempdir_in(parent)
        .map_err(|e| FeatureError::Cluster(format!("cannot make a work folder: {e}")))?
        .keep();
    if let Some(line) = owner_line() {
        std::fs::write(dir.join(OWNER), line).map_err(|e| {
            FeatureError::Cluster(format!("cannot write {}: {e}", dir.join(OWNER).display()))
        })?;
    }
    Ok(dir)
}

/// Whether the folder's owner still runs: `None` when it cannot be told (no owner file,
/// no `/proc`).
fn owner_runs(dir: &Path) -> Option<bool> {
    if !Path::new("/proc/self/stat").exists() {
        return None;
    }
    let text = std::fs::read_to_string(dir.join(OWNER)).ok()?;
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(pid)), Some(Ok(start))) = (parts.next(), parts.next()) else {
        return None;
    };
    let pid = u32::try_from(pid).ok()?;
    Some(started(pid) == Some(start))
}

/// Ballista's execution engine, refusing a task while the work folder is at the node's
/// budget or its disk is full ([`halyard_core::disk::within_budget`]).
pub struct BudgetedEngine {
    inner: ballista_executor::execution_engine::DefaultExecutionEngine,
    /// Bytes the work folder may hold; `None`: only the disk's free space counts.
    budget: Option<u64>,
}

impl BudgetedEngine {
    /// An engine for a work folder of at most `budget` bytes.
    pub fn new(budget: Option<u64>) -> Self {
        BudgetedEngine {
            inner: Default::default(),
            budget,
        }
    }
}

impl ballista_executor::execution_engine::ExecutionEngine for BudgetedEngine {
    fn create_query_stage_exec(
        &self,
        job_id: ballista_core::JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        work_dir: &str,
        config: &datafusion::prelude::SessionConfig,
    ) -> datafusion::error::Result<
        std::sync::Arc<dyn ballista_executor::execution_engine::QueryStageExecutor>,
    > {
        halyard_core::disk::within_budget(Path::new(work_dir), self.budget).map_err(|e| {
            warn!(work_dir, stage_id, task_id, error = %e, "sql task refused: disk");
            datafusion::error::DataFusionError::ResourcesExhausted(e.to_string())
        })?;
        self.inner.create_query_stage_exec(
            job_id,
            stage_id,
            task_id,
            global_output_partition_ids,
            plan,
            work_dir,
            config,
        )
    }
}

/// Remove the work folders in `parent` whose owner no longer runs; returns each with its
/// bytes.
pub fn sweep(parent: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut swept = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let ours = e.file_name().to_string_lossy().starts_with(PREFIX)
            && e.file_type().is_ok_and(|t| t.is_dir());
        if !ours || owner_runs(&path) != Some(false) {
            continue;
        }
        let bytes = halyard_core::disk::usage(&path);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                info!(dir = %path.display(), bytes, "removed the work folder of a sql executor that is gone");
                swept.push((path, bytes));
            }
            Err(e) => {
                warn!(dir = %path.display(), error = %e, "cannot remove a dead sql executor's work folder")
            }
        }
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_removes_folders_of_processes_gone_and_keeps_the_rest() {
        let parent = tempfile::tempdir().unwrap();
        let mine = make(parent.path()).unwrap();
        std::fs::create_dir_all(mine.join("job/1")).unwrap();
        // A process that ran and ended: its id is free (or another process's, with
        // another start time).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = started(pid);
        child.wait().unwrap();
        let dead = parent.path().join(format!("{PREFIX}dead"));
        std::fs::create_dir_all(dead.join("job/1")).unwrap();
        std::fs::write(dead.join("job/1/data.arrow"), vec![0u8; 1000]).unwrap();
        let owner = format!("{pid} {}", start.unwrap_or(1));
        std::fs::write(dead.join(OWNER), &owner).unwrap();
        // A reused process id: this process's id with another start time.
        let reused = parent.path().join(format!("{PREFIX}reused"));
        std::fs::create_dir_all(&reused).unwrap();
        let me = std::process::id();
        std::fs::write(reused.join(OWNER), format!("{me} 1")).unwrap();
        // Without an owner file (an older Halyard's), and another program's folder.
        let unknown = parent.path().join(format!("{PREFIX}unknown"));
        std::fs::create_dir_all(&unknown).unwrap();
        let other = parent.path().join("someone-else");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join(OWNER), format!("{pid} 1")).unwrap();

        let mut swept = sweep(parent.path());
        swept.sort();
        assert_eq!(
            swept,
            vec![
                (dead.clone(), 1000 + owner.len() as u64),
                (reused.clone(), format!("{me} 1").len() as u64)
            ]
        );
        assert!(!dead.exists() && !reused.exists());
        assert!(mine.join("job/1").exists() && unknown.exists() && other.exists());
    }
}
