//! The client commands of the CLI. Results go to stdout (tables, or JSON with `--json`);
//! progress goes to stderr and only when it is a terminal.

use std::io::{IsTerminal, Write};
use std::path::Path;

use halyard_core::proto::JobInfo;
use halyard_core::spec::JobSpec;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use halyard_client::Client;

use crate::{CliError, Result};

/// A job as JSON, for scripts.
pub fn job_json(j: &JobInfo) -> serde_json::Value {
    json!({
        "id": j.id,
        "name": j.name,
        "state": j.state,
        "attempt": j.attempt,
        "executor": j.executor,
        "model_type": j.model_type,
        "epoch": j.epoch,
        "epochs": j.epochs,
        "loss": if j.loss.is_finite() { json!(j.loss) } else { json!(null) },
        "metrics": j.metrics,
        "artifact": if j.artifact.is_empty() { json!(null) } else { json!(j.artifact) },
        "error": if j.error.is_empty() { json!(null) } else { json!(j.error) },
        "cancel_requested": j.cancel_requested,
        "workers": j.workers,
        "schedule": if j.schedule.is_empty() { json!(null) } else { json!(j.schedule) },
        "trials": j.trials.iter().map(|t| json!({
            "index": t.index,
            "params": serde_json::from_str::<serde_json::Value>(&t.params).unwrap_or_default(),
            "state": t.state,
            "losses": t.losses,
            "epochs": t.epochs,
            "job": t.job,
            "metrics": t.metrics,
            "error": if t.error.is_empty() { json!(null) } else { json!(t.error) },
            "best": t.best,
        })).collect::<Vec<_>>(),
        "created_ms": j.created_ms,
        "updated_ms": j.updated_ms,
    })
}

pub(crate) fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error.
    let _ = writeln!(stdout, "{text}");
}

fn fmt_metrics(j: &JobInfo) -> String {
    let mut keys: Vec<&String> = j.metrics.keys().collect();
    keys.sort();
    keys.iter()
        .map(|k| format!("  {k:<20} {:.4}", j.metrics[*k]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `halyard submit`: validate the spec here, submit it, and with `follow` show progress
/// until the job ends; fails unless the job succeeded.
pub async fn submit(client: &Client, spec: JobSpec, follow: bool, as_json: bool) -> Result<()> {
    let job = client.submit(&spec).await?;
    submitted(client, job, follow, as_json).await
}

/// Read and check a spec before any network call: its rules, and every local file and
/// column it names (all problems at once). `halyard validate` and `halyard submit` (for a
/// scheduler on this machine, which reads the same files) call it.
pub fn checked_spec(spec_path: &Path) -> Result<JobSpec> {
    let spec = JobSpec::from_file(spec_path)?;
    let problems = spec.local_problems();
    if problems.is_empty() {
        return Ok(spec);
    }
    for p in &problems {
        eprintln!("{}: {p}", spec_path.display());
    }
    Err(crate::CliError::Failed(format!(
        "{}: {} problem(s) with the data it names (above); fix them and run halyard validate {} again",
        spec_path.display(),
        problems.len(),
        spec_path.display()
    )))
}

/// `halyard validate SPEC`: check a spec locally — every broken rule with its line, then
/// its local files and columns — and say what it would run.
pub fn validate(spec_path: &Path) -> Result<()> {
    let origin = spec_path.display().to_string();
    let text = std::fs::read_to_string(spec_path).map_err(|source| crate::CliError::Io {
        path: origin.clone(),
        source,
    })?;
    let problems = JobSpec::problems_in(&text, &origin)?;
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        return Err(crate::CliError::Failed(format!(
            "{origin}: {} broken rule(s) (above)",
            problems.len()
        )));
    }
    let spec = checked_spec(spec_path)?;
    let stages: Vec<String> = spec.stages().iter().map(|s| s.to_string()).collect();
    let input = match &spec.features {
        Some(f) => format!(
            "[features] SQL over {}",
            f.sources
                .iter()
                .map(|s| format!("{} ({})", s.name, s.path))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => spec.data.source.clone(),
    };
    out(&format!(
        "{}: valid — job {} ({}): {}; reads {input}",
        spec_path.display(),
        spec.name,
        spec.kind(),
        stages.join(" → ")
    ));
    Ok(())
}

/// `halyard resume ID`: a new job that continues a cancelled or failed one.
pub async fn resume(client: &Client, id: &str, follow: bool, as_json: bool) -> Result<()> {
    let job = client.resume(id).await?;
    submitted(client, job, follow, as_json).await
}

/// Say what was submitted, or follow it to its end.
async fn submitted(client: &Client, job: JobInfo, follow: bool, as_json: bool) -> Result<()> {
    if !follow {
        if as_json {
            out(&job_json(&job).to_string());
        } else {
            out(&format!("submitted job {}", job.id));
        }
        return Ok(());
    }
    if !as_json {
        eprintln!("submitted job {} ({})", job.id, job.name);
    }
    let last = follow_job(client, &job.id, !as_json).await?;
    if as_json {
        out(&job_json(&last).to_string());
    } else if last.state == "succeeded" {
        out(&format!("job {} succeeded", last.id));
        out(&format!(
            "metrics (held-out rows unless train_):\n{}",
            fmt_metrics(&last)
        ));
        let what = if last.model_type == "score" {
            "audience"
        } else {
            "model"
        };
        out(&format!("{what}: {}", last.artifact));
    }
    finish(last)
}

fn finish(job: JobInfo) -> Result<()> {
    if job.state == "succeeded" {
        Ok(())
    } else {
        Err(CliError::JobFailed {
            id: job.id,
            state: job.state,
            error: job.error,
        })
    }
}

/// What a job's progress counts: gradient steps for a forecaster, epochs otherwise.
fn progress_unit(j: &JobInfo) -> &'static str {
    if j.model_type == "nbeats" {
        "step"
    } else {
        "epoch"
    }
}

/// Watch a job to its end, drawing a progress bar on a terminal; returns its last state.
pub async fn follow_job(client: &Client, id: &str, show: bool) -> Result<JobInfo> {
    let tty = show && std::io::stderr().is_terminal();
    let bar = if tty {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b.enable_steady_tick(std::time::Duration::from_millis(120));
        Some(b)
    } else {
        None
    };
    let mut stream = client.watch(id).await?;
    let mut last: Option<JobInfo> = None;
    let mut last_state = String::new();
    let mut last_epoch = 0;
    while let Some(event) = stream.message().await? {
        let Some(job) = event.job else { continue };
        if job.state != last_state || job.attempt != last.as_ref().map_or(0, |l| l.attempt) {
            let line = if job.executor.is_empty() {
                format!("{}: {}", job.id, job.state)
            } else {
                format!(
                    "{}: {} (attempt {} on {})",
                    job.id, job.state, job.attempt, job.executor
                )
            };
            match &bar {
                Some(b) => b.println(line),
                None if show => eprintln!("{line}"),
                None => {}
            }
            last_state = job.state.clone();
        }
        if let Some(b) = &bar {
            b.set_length(u64::from(job.epochs));
            b.set_position(u64::from(job.epoch));
            b.set_prefix(job.state.clone());
            if job.loss.is_finite() {
                b.set_message(format!("loss {:.4}", job.loss));
            }
        } else if show && job.epoch != last_epoch && job.loss.is_finite() {
            eprintln!(
                "{}: {} {}/{} loss {:.4}",
                job.id,
                progress_unit(&job),
                job.epoch,
                job.epochs,
                job.loss
            );
        }
        last_epoch = job.epoch;
        last = Some(job);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    last.ok_or_else(|| CliError::Failed(format!("no news of job {id}")))
}

/// `halyard jobs`.
pub async fn jobs(client: &Client, as_json: bool) -> Result<()> {
    let jobs = client.jobs().await?;
    if as_json {
        out(&serde_json::Value::Array(jobs.iter().map(job_json).collect()).to_string());
        return Ok(());
    }
    out(&format!(
        "{:<32} {:<10} {:>7} {:>9} {:>8}  {}",
        "ID", "STATE", "ATTEMPT", "EPOCH", "TEST AUC", "EXECUTOR"
    ));
    for j in jobs {
        let auc = j
            .metrics
            .get("test_auc")
            .map_or("-".to_string(), |a| format!("{a:.4}"));
        out(&format!(
            "{:<32} {:<10} {:>7} {:>9} {:>8}  {}",
            j.id,
            j.state,
            j.attempt,
            format!("{}/{}", j.epoch, j.epochs),
            auc,
            if j.executor.is_empty() {
                "-"
            } else {
                &j.executor
            }
        ));
    }
    Ok(())
}

/// `halyard job ID`.
pub async fn job(client: &Client, id: &str, as_json: bool) -> Result<()> {
    let j = client.job(id).await?;
    if as_json {
        out(&job_json(&j).to_string());
        return Ok(());
    }
    out(&format!("id:        {}", j.id));
    out(&format!("name:      {}", j.name));
    out(&format!("model:     {}", j.model_type));
    out(&format!(
        "state:     {}{}",
        j.state,
        if j.cancel_requested && j.state != "cancelled" {
            " (cancel requested)"
        } else {
            ""
        }
    ));
    out(&format!("attempt:   {}", j.attempt));
    out(&format!(
        "executor:  {}",
        if j.executor.is_empty() {
            "-"
        } else {
            &j.executor
        }
    ));
    out(&format!(
        "{:<10} {}/{}",
        format!("{}:", progress_unit(&j)),
        j.epoch,
        j.epochs
    ));
    if j.loss.is_finite() {
        out(&format!("loss:      {:.5}", j.loss));
    }
    if !j.artifact.is_empty() {
        out(&format!("artifact:  {}", j.artifact));
    }
    if !j.error.is_empty() {
        out(&format!("error:     {}", j.error));
    }
    if !j.schedule.is_empty() {
        out(&format!("schedule:  {} (a scheduled run)", j.schedule));
    }
    if !j.workers.is_empty() {
        out(&format!(
            "workers:   {} (rank 0 first)",
            j.workers.join(", ")
        ));
    }
    if !j.metrics.is_empty() {
        out(&format!("metrics:\n{}", fmt_metrics(&j)));
    }
    if !j.trials.is_empty() {
        out(&trials_table(&j.trials));
    }
    Ok(())
}

/// A search's trials: state, epochs, validation loss per rung, test AUC, parameters.
fn trials_table(trials: &[halyard_core::proto::TrialInfo]) -> String {
    let mut lines = vec![format!(
        "trials:\n  {:<5} {:<10} {:>6}  {:<26} {:>8}  params",
        "trial", "state", "epochs", "validation loss by rung", "test_auc"
    )];
    for t in trials {
        let losses: Vec<String> = t.losses.iter().map(|l| format!("{l:.4}")).collect();
        let auc = t
            .metrics
            .get("test_auc")
            .map_or("-".to_string(), |a| format!("{a:.4}"));
        lines.push(format!(
            "  {:<5} {:<10} {:>6}  {:<26} {:>8}  {}{}",
            format!("{}{}", t.index, if t.best { "*" } else { "" }),
            t.state,
            t.epochs,
            losses.join(" "),
            auc,
            t.params,
            if t.error.is_empty() {
                String::new()
            } else {
                format!("  error: {}", t.error)
            }
        ));
    }
    lines.join("\n")
}

/// `halyard logs ID`.
pub async fn logs(client: &Client, id: &str) -> Result<()> {
    for l in client.logs(id).await? {
        let t = chrono::DateTime::from_timestamp_millis(l.time_ms)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .unwrap_or_default();
        out(&format!("{t} {:<28} {}", l.source, l.message));
    }
    Ok(())
}

/// `halyard cancel ID`.
pub async fn cancel(client: &Client, id: &str, as_json: bool) -> Result<()> {
    let j = client.cancel(id).await?;
    if as_json {
        out(&job_json(&j).to_string());
    } else if j.state == "pending" || j.state == "running" {
        out(&format!("cancel requested for job {} ({})", j.id, j.state));
    } else {
        out(&format!("job {} already {}", j.id, j.state));
    }
    Ok(())
}

/// `halyard gc [--dry-run]`: the object store's garbage, deleted or listed.
pub async fn gc(client: &Client, dry_run: bool, as_json: bool) -> Result<()> {
    let g = client.collect_garbage(dry_run).await?;
    let bytes: u64 = g.folders.iter().map(|f| f.bytes).sum();
    let objects: u64 = g.folders.iter().map(|f| f.objects).sum();
    if as_json {
        let folders: Vec<_> = g
            .folders
            .iter()
            .map(|f| json!({"kind": f.kind, "folder": f.folder, "objects": f.objects, "bytes": f.bytes}))
            .collect();
        out(
            &json!({"store": g.store, "dry_run": g.dry_run, "folders": folders,
                    "objects": objects, "bytes": bytes})
            .to_string(),
        );
        return Ok(());
    }
    for f in &g.folders {
        out(&format!(
            "{:<30} {:>8} objects {:>12} bytes  {}",
            f.kind, f.objects, f.bytes, f.folder
        ));
    }
    let verb = if g.dry_run { "would delete" } else { "deleted" };
    out(&format!(
        "{verb} {} folders, {objects} objects, {bytes} bytes in {}",
        g.folders.len(),
        g.store
    ));
    Ok(())
}

/// `halyard cluster`.
pub async fn cluster(client: &Client, as_json: bool) -> Result<()> {
    let c = client.cluster().await?;
    if as_json {
        let execs: Vec<_> = c
            .executors
            .iter()
            .map(|e| {
                json!({"id": e.id, "address": e.address, "cpu_slots": e.cpu_slots,
                       "memory_mb": e.memory_mb, "gpus": e.gpus, "version": e.version,
                       "running_tasks": e.running_tasks})
            })
            .collect();
        out(
            &json!({"leader": c.leader, "sql_endpoint": c.sql_endpoint, "executors": execs})
                .to_string(),
        );
        return Ok(());
    }
    out(&format!(
        "leader: {}",
        if c.leader.is_empty() {
            "(none)"
        } else {
            &c.leader
        }
    ));
    if !c.sql_endpoint.is_empty() {
        out(&format!("sql scheduler: {}", c.sql_endpoint));
    }
    out(&format!(
        "{:<28} {:<22} {:>5} {:>8} {:>4} {:>7}",
        "EXECUTOR", "ADDRESS", "SLOTS", "MEM MiB", "GPUS", "RUNNING"
    ));
    for e in c.executors {
        out(&format!(
            "{:<28} {:<22} {:>5} {:>8} {:>4} {:>7}",
            e.id, e.address, e.cpu_slots, e.memory_mb, e.gpus, e.running_tasks
        ));
    }
    Ok(())
}
