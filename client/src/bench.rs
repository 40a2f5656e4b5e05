//! `halyard bench scheduling`: scheduling latency and throughput of a running cluster,
//! measured from the client with trivial jobs (a 200-row data set, one epoch).

use std::time::{Duration, Instant};

use halyard_core::spec::JobSpec;

use crate::{Client, ClientError, Result};

/// Figures of one run.
#[derive(Debug, Clone)]
pub struct SchedulingFigures {
    /// Submit-to-running latencies, one per job, sorted.
    pub submit_to_running: Vec<Duration>,
    /// Jobs submitted at once and run to success per second.
    pub jobs_per_second: f64,
    /// Jobs in the throughput round.
    pub batch: usize,
}

fn median(v: &[Duration]) -> Duration {
    v[v.len() / 2]
}

impl SchedulingFigures {
    /// A one-paragraph summary.
    pub fn summary(&self) -> String {
        let v = &self.submit_to_running;
        format!(
            "submit to running: median {:.1} ms, min {:.1} ms, max {:.1} ms over {} jobs\n\
             throughput: {:.2} trivial jobs/s ({} submitted at once, run to success)",
            median(v).as_secs_f64() * 1e3,
            v[0].as_secs_f64() * 1e3,
            v[v.len() - 1].as_secs_f64() * 1e3,
            v.len(),
            self.jobs_per_second,
            self.batch
        )
    }
}

async fn wait_state(client: &Client, id: &str, done: bool) -> Result<String> {
    loop {
        let j = client.job(id).await?;
        let terminal = matches!(j.state.as_str(), "succeeded" | "failed" | "cancelled");
        if (done && terminal) || (!done && j.state != "pending") {
            return Ok(j.state);
        }
        tokio::time::sleep(Duration::from_millis(if done { 20 } else { 1 })).await;
    }
}

/// Measure `latency_jobs` sequential submissions, then `batch` jobs at once.
pub async fn scheduling(
    client: &Client,
    work_dir: &std::path::Path,
    latency_jobs: usize,
    batch: usize,
) -> Result<SchedulingFigures> {
    let data = crate::datagen::generate(work_dir, 200, 1)?;
    let spec_path = work_dir.join("bench.toml");
    std::fs::write(
        &spec_path,
        format!(
            "name = \"bench-trivial\"\n[data]\nsource = \"{}\"\nlabel = \"responded\"\n\
             exclude = [\"customer_id\"]\n[train]\nepochs = 1\n",
            data.responses.display()
        ),
    )
    .map_err(|source| ClientError::Io {
        path: spec_path.display().to_string(),
        source,
    })?;
    let spec = JobSpec::from_file(&spec_path)?;
    let mut latencies = Vec::with_capacity(latency_jobs);
    for _ in 0..latency_jobs {
        let start = Instant::now();
        let job = client.submit(&spec).await?;
        wait_state(client, &job.id, false).await?;
        latencies.push(start.elapsed());
        wait_state(client, &job.id, true).await?;
    }
    latencies.sort();
    let start = Instant::now();
    let mut ids = Vec::with_capacity(batch);
    for _ in 0..batch {
        ids.push(client.submit(&spec).await?.id);
    }
    for id in &ids {
        let state = wait_state(client, id, true).await?;
        if state != "succeeded" {
            return Err(ClientError::JobFailed {
                id: id.clone(),
                state,
                error: "benchmark job did not succeed".into(),
            });
        }
    }
    Ok(SchedulingFigures {
        submit_to_running: latencies,
        jobs_per_second: batch as f64 / start.elapsed().as_secs_f64(),
        batch,
    })
}
