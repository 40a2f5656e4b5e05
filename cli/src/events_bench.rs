//! `halyard bench events`: how many outcomes one node's event log takes per second, and
//! how long an acknowledged outcome takes to show in another node's experiment report;
//! beside them, in the same invocation (with `--etcd`), the rate of the design it
//! replaced: one compare-and-swap on one etcd key per outcome.
//!
//! The load generator runs in this process on the same machine as the node (the issue's
//! setting): `connections` HTTP/1.1 connections post `batch` outcomes per request to
//! `:feedback` as fast as answers come; an outcome counts once the node acknowledged it
//! (on disk).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use halyard_client::Client;

use crate::bench::{all_succeed, trivial_spec};
use crate::{CliError, Result};

const MODEL: &str = "events-bench";
/// Distinct request bodies the connections cycle through.
const BODIES: usize = 64;

/// What the events bench does.
#[derive(Debug, Clone)]
pub struct EventsBench {
    /// The node whose event log takes the load (a scheduler or executor address).
    pub addr: String,
    /// Its API key.
    pub key: Option<String>,
    /// Concurrent connections.
    pub connections: usize,
    /// Outcomes per request.
    pub batch: usize,
    /// How long the load runs.
    pub seconds: f64,
    /// An etcd endpoint for the compare-and-swap baseline (none: no baseline).
    pub etcd: Option<String>,
    /// Folder for the bench model's data; under the cluster's data roots.
    pub dir: PathBuf,
}

/// A version of the bench's model, trained when there is none.
async fn version(client: &Client, dir: &std::path::Path) -> Result<u64> {
    if let Ok(m) = client.model(MODEL).await
        && let Some(v) = m.versions.iter().map(|v| v.version).max()
    {
        return Ok(v);
    }
    std::fs::create_dir_all(dir).map_err(|source| CliError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let id = client.submit(&trivial_spec(dir, MODEL)?).await?.id;
    all_succeed(client, &[id]).await?;
    let m = client.model(MODEL).await?;
    m.versions
        .iter()
        .map(|v| v.version)
        .max()
        .ok_or_else(|| CliError::Failed(format!("{MODEL} has no version after training")))
}

fn bodies(version: u64, batch: usize) -> Vec<Bytes> {
    (0..BODIES)
        .map(|b| {
            let outcomes: Vec<serde_json::Value> = (0..batch)
                .map(|i| {
                    serde_json::json!({
                        "version": version,
                        "key": format!("bench-{b}-{i}"),
                        "converted": (b + i) % 3 == 0,
                    })
                })
                .collect();
            Bytes::from(serde_json::Value::from(outcomes).to_string())
        })
        .collect()
}

/// The outcomes of `version` in the experiment report of `node` (HTTP, with `key`).
async fn trials(node: &str, key: &str, version: u64) -> Result<u64> {
    let path = format!("/v1/experiments/{MODEL}");
    let (status, body, _) = crate::console_bench::get(node, key, &path).await?;
    if status == 404 {
        return Ok(0);
    }
    let failed = |e: String| CliError::Failed(format!("GET {node}{path}: {e}"));
    if status != 200 {
        return Err(failed(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| failed(e.to_string()))?;
    Ok(v["variants"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["version"].as_u64() == Some(version))
        .and_then(|s| s["trials"].as_u64())
        .unwrap_or(0))
}

/// Outcomes per second through compare-and-swap increments of one etcd key from
/// `connections` tasks for `seconds`.
async fn etcd_counter(endpoint: &str, connections: usize, seconds: f64) -> Result<f64> {
    use halyard_core::kv::{Compare, EtcdAccess, EtcdKv, KvBackend, TxnOp};
    let kv = Arc::new(EtcdKv::connect(&[endpoint.to_string()], &EtcdAccess::default()).await?);
    let key = format!("/halyard-bench/outcomes/{}", std::process::id());
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (kv, key, done) = (kv.clone(), key.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    let current = kv.get(&key).await?;
                    let (n, revision) = current.map_or((0u64, 0), |e| {
                        let n = std::str::from_utf8(&e.value)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        (n, e.mod_revision)
                    });
                    let put = TxnOp::Put {
                        key: key.clone(),
                        value: (n + 1).to_string().into_bytes(),
                        lease: None,
                    };
                    let when = vec![Compare::ModRevision {
                        key: key.clone(),
                        revision,
                    }];
                    if kv.txn(when, vec![put]).await?.succeeded {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok::<_, halyard_core::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await
            .map_err(|e| CliError::Failed(format!("a baseline task panicked: {e}")))??;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let _ = kv.txn(Vec::new(), vec![TxnOp::Delete { key }]).await;
    Ok(rate)
}

/// Run the bench; its figures as text.
pub async fn run(client: &Client, b: &EventsBench) -> Result<String> {
    let version = version(client, &b.dir).await?;
    let key = b.key.clone().unwrap_or_default();
    let cfg = crate::load::LoadConfig {
        addr: b.addr.clone(),
        model: MODEL.into(),
        call: "feedback",
        connections: b.connections,
        duration: Duration::from_secs_f64(b.seconds),
        rate: None,
        check: false,
        key: b.key.clone(),
        tls: None,
    };
    let load = crate::load::run(cfg.clone(), bodies(version, b.batch)).await?;
    if load.ok == 0 {
        return Err(CliError::Failed(format!(
            "no outcome was acknowledged: {:?}",
            load.failures
        )));
    }
    let events = load.ok as f64 * b.batch as f64;
    let mut out = format!(
        "event log of {} ({} connections, {} outcomes per request, {:.0} s, load generator on this machine)\n\
         acknowledged: {:.0} outcomes/s ({:.0} requests/s; p50 {:.1} ms, p99 {:.1} ms per request; {} failed)",
        b.addr,
        b.connections,
        b.batch,
        load.elapsed.as_secs_f64(),
        events / load.elapsed.as_secs_f64(),
        load.throughput(),
        load.quantile_us(0.5) as f64 / 1e3,
        load.quantile_us(0.99) as f64 / 1e3,
        load.failed,
    );

    // One more request, then the time until another node's report includes it.
    let others: Vec<String> = client
        .cluster()
        .await?
        .executors
        .into_iter()
        .map(|e| e.address)
        .filter(|a| *a != b.addr)
        .collect();
    if let Some(other) = others.first() {
        let mut samples = Vec::new();
        for _ in 0..5 {
            let before = trials(&b.addr, &key, version).await?;
            let one = crate::load::LoadConfig {
                connections: 1,
                duration: Duration::from_millis(1),
                ..cfg.clone()
            };
            let r = crate::load::run(one, bodies(version, b.batch)).await?;
            let acked = Instant::now();
            let want = before + r.ok * b.batch as u64;
            loop {
                if trials(other, &key, version).await? >= want {
                    break;
                }
                if acked.elapsed() > Duration::from_secs(30) {
                    return Err(CliError::Failed(format!(
                        "{other} did not show the outcomes within 30 s"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            samples.push(acked.elapsed());
        }
        let median = crate::bench::median_of(samples.clone());
        let max = samples.iter().max().copied().unwrap_or_default();
        out.push_str(&format!(
            "\nacknowledged → visible in {other}'s experiment report: median {:.0} ms, max {:.0} ms (5 samples; the acknowledging node shows them at once)",
            median.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        ));
    }
    if let Some(etcd) = &b.etcd {
        let rate = etcd_counter(etcd, b.connections, b.seconds).await?;
        out.push_str(&format!(
            "\nthe replaced design, one compare-and-swap per outcome on one etcd key ({etcd}, {} tasks): {rate:.0} outcomes/s; the event log: {:.1}×",
            b.connections,
            events / load.elapsed.as_secs_f64() / rate.max(1e-9)
        ));
    }
    Ok(out)
}
