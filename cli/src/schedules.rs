//! `halyard schedule`: create, list, pause, resume and delete scheduled runs, and show a
//! schedule's history.

use halyard_client::Client;
use halyard_client::proto::ScheduleInfo;
use halyard_core::spec::JobSpec;
use serde_json::{Value, json};

use crate::Result;
use crate::commands::out;

/// A time (ms since the epoch) as `2026-12-02 03:00:00 UTC`.
fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || "-".into(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

fn schedule_json(s: &ScheduleInfo) -> Value {
    json!({
        "name": s.name, "job_name": s.job_name, "timing": s.timing, "paused": s.paused,
        "next_ms": s.next_ms, "created_ms": s.created_ms, "owner": s.owner,
        "runs": s.runs.iter().map(|r| json!({
            "due_ms": r.due_ms, "job_id": r.job_id, "state": r.state, "skipped": r.skipped,
        })).collect::<Vec<_>>(),
    })
}

fn show(s: &ScheduleInfo, as_json: bool) {
    if as_json {
        out(&schedule_json(s).to_string());
    } else {
        out(&format!(
            "schedule {}: job {} {}, {}; next run {}",
            s.name,
            s.job_name,
            s.timing,
            if s.paused { "paused" } else { "active" },
            when(s.next_ms)
        ));
    }
}

/// `halyard schedule create NAME --spec FILE --every D | --cron "…"`.
pub async fn create(
    client: &Client,
    name: &str,
    spec: &std::path::Path,
    every: Option<&str>,
    cron: Option<&str>,
    as_json: bool,
) -> Result<()> {
    let spec = JobSpec::from_file(spec)?;
    let s = client.create_schedule(name, &spec, every, cron).await?;
    show(&s, as_json);
    Ok(())
}

/// `halyard schedule list`.
pub async fn list(client: &Client, as_json: bool) -> Result<()> {
    let all = client.schedules(None).await?;
    if as_json {
        out(&Value::Array(all.iter().map(schedule_json).collect()).to_string());
        return Ok(());
    }
    if all.is_empty() {
        out("no schedules: halyard schedule create NAME --spec FILE --every 24h makes one");
        return Ok(());
    }
    out(&format!(
        "{:<24} {:<24} {:<28} {:<7} {:>5} {:<24} LAST",
        "SCHEDULE", "JOB", "TIMING", "STATE", "RUNS", "NEXT"
    ));
    for s in &all {
        let last = s
            .runs
            .last()
            .map_or("-".to_string(), |r| format!("{} {}", r.job_id, r.state));
        out(&format!(
            "{:<24} {:<24} {:<28} {:<7} {:>5} {:<24} {last}",
            s.name,
            s.job_name,
            s.timing,
            if s.paused { "paused" } else { "active" },
            s.runs.len(),
            when(s.next_ms)
        ));
    }
    Ok(())
}

/// `halyard schedule history NAME`: every run kept, oldest first.
pub async fn history(client: &Client, name: &str, as_json: bool) -> Result<()> {
    let s = client
        .schedules(Some(name))
        .await?
        .pop()
        .expect("the scheduler answers one schedule or not found");
    if as_json {
        out(&schedule_json(&s).to_string());
        return Ok(());
    }
    show(&s, false);
    out(&format!("{:<24} {:<36} STATE", "DUE", "JOB"));
    for r in &s.runs {
        let state = if r.skipped.is_empty() {
            r.state.clone()
        } else {
            format!("skipped: {}", r.skipped)
        };
        out(&format!(
            "{:<24} {:<36} {state}",
            when(r.due_ms),
            if r.job_id.is_empty() { "-" } else { &r.job_id }
        ));
    }
    Ok(())
}

/// `halyard schedule pause|resume NAME`.
pub async fn pause(client: &Client, name: &str, paused: bool, as_json: bool) -> Result<()> {
    show(&client.pause_schedule(name, paused).await?, as_json);
    Ok(())
}

/// `halyard schedule delete NAME`.
pub async fn delete(client: &Client, name: &str, as_json: bool) -> Result<()> {
    let s = client.delete_schedule(name).await?;
    if as_json {
        out(&schedule_json(&s).to_string());
    } else {
        out(&format!(
            "deleted schedule {} ({} runs kept as jobs)",
            s.name,
            s.runs.iter().filter(|r| !r.job_id.is_empty()).count()
        ));
    }
    Ok(())
}
