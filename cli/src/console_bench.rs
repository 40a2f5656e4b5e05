//! `halyard bench console`: how long each console page takes with many jobs and model
//! versions in the cluster. It fills a running (scratch) cluster with `versions` trained
//! versions of one model and cancelled jobs up to `jobs` in all, then fetches every page
//! `runs` times over loopback with the key and reports the median and the slowest.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use halyard_client::Client;
use halyard_core::spec::JobSpec;
use http_body_util::{BodyExt, Full};

use crate::bench::{all_succeed, median_of, trivial_spec, wait_state};
use crate::{CliError, Result};

/// What the console bench does.
#[derive(Debug, Clone)]
pub struct ConsoleBench {
    /// The scheduler whose console is measured.
    pub addr: String,
    /// Its API key.
    pub key: Option<String>,
    /// Jobs in the cluster at least (trained versions plus cancelled jobs).
    pub jobs: usize,
    /// Versions of the model `console-bench` at least.
    pub versions: usize,
    /// Fetches of each page.
    pub runs: usize,
    /// Folder of the generated data, under the cluster's data roots.
    pub dir: PathBuf,
}

const MODEL: &str = "console-bench";
/// Jobs submitted at once (the default per-key limit of unfinished jobs is 16).
const WAVE: usize = 8;

/// Bring the cluster to `versions` versions and `jobs` jobs; the id of a trained job.
async fn fill(client: &Client, b: &ConsoleBench, spec: &JobSpec) -> Result<String> {
    let have = client
        .model(MODEL)
        .await
        .map(|m| m.versions.len())
        .unwrap_or(0);
    // In waves under the per-key limit of unfinished jobs.
    let mut missing = b.versions.max(1).saturating_sub(have);
    while missing > 0 {
        let wave = missing.min(WAVE);
        let mut ids = Vec::with_capacity(wave);
        for _ in 0..wave {
            ids.push(client.submit(spec).await?.id);
        }
        all_succeed(client, &ids).await?;
        missing -= wave;
    }
    let mut missing = b.jobs.saturating_sub(client.jobs().await?.len());
    while missing > 0 {
        let wave = missing.min(WAVE);
        let mut ids = Vec::with_capacity(wave);
        for _ in 0..wave {
            let id = client.submit(spec).await?.id;
            client.cancel(&id).await?;
            ids.push(id);
        }
        for id in &ids {
            wait_state(client, id, true).await?;
        }
        missing -= wave;
    }
    let any = client
        .jobs()
        .await?
        .into_iter()
        .find(|j| j.name == MODEL && j.state == "succeeded")
        .map(|j| j.id)
        .ok_or_else(|| CliError::Failed("no trained job of the bench's model".into()))?;
    Ok(any)
}

/// GET `path` over one HTTP/1.1 connection: the status, the body and the time to the whole
/// body.
pub(crate) async fn get(addr: &str, key: &str, path: &str) -> Result<(u16, Bytes, Duration)> {
    let failed = |e: String| CliError::Failed(format!("GET {path}: {e}"));
    let mut sender = crate::load::connect(addr, None).await.map_err(failed)?;
    let req = hyper::Request::get(path)
        .header("host", addr)
        .header("accept", "text/html")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| failed(e.to_string()))?;
    let started = Instant::now();
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| failed(e.to_string()))?
        .to_bytes();
    Ok((status, body, started.elapsed()))
}

/// Run the bench; a table of pages with their median and slowest times.
pub async fn run(client: &Client, b: &ConsoleBench) -> Result<String> {
    std::fs::create_dir_all(&b.dir).map_err(|source| CliError::Io {
        path: b.dir.display().to_string(),
        source,
    })?;
    let spec = trivial_spec(&b.dir, MODEL)?;
    let job = fill(client, b, &spec).await?;
    let key: Arc<str> = b.key.clone().unwrap_or_default().into();
    let jobs = client.jobs().await?.len();
    let versions = client.model(MODEL).await?.versions.len();
    let pages = [
        "/".to_string(),
        "/jobs".into(),
        format!("/jobs/{job}"),
        format!("/live/jobs/{job}"),
        "/models".into(),
        format!("/models/{MODEL}"),
        format!("/live/models/{MODEL}"),
        "/serving".into(),
        "/v1/jobs".into(),
    ];
    let mut out = format!(
        "console pages of {} with {jobs} jobs and {versions} versions of {MODEL}, {} fetches each (loopback, one connection per fetch)\n{:<40} {:>11} {:>11}",
        b.addr, b.runs, "page", "median ms", "max ms"
    );
    for page in &pages {
        let mut times = Vec::with_capacity(b.runs);
        for _ in 0..b.runs.max(1) {
            let (status, _, t) = get(&b.addr, &key, page).await?;
            if status != 200 {
                return Err(CliError::Failed(format!("GET {page} answered {status}")));
            }
            times.push(t);
        }
        let max = times.iter().max().copied().unwrap_or_default();
        out.push_str(&format!(
            "\n{page:<40} {:>11.1} {:>11.1}",
            median_of(times).as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        ));
    }
    Ok(out)
}
