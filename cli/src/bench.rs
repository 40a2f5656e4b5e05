//! `halyard bench scheduling`: scheduling latency and throughput of a running cluster,
//! measured from the client with trivial jobs (a 200-row data set, one epoch).
//! `halyard bench serving`: prediction throughput and latency of a deployed model, loaded
//! from this (second) process by [`crate::load`].

use std::time::{Duration, Instant};

use halyard_core::spec::JobSpec;

use halyard_client::Client;

use crate::{CliError, Result};

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

/// The median of unsorted durations.
pub(crate) fn median_of(mut v: Vec<Duration>) -> Duration {
    v.sort();
    median(&v)
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

/// A trivial job spec named `name` in `dir`: one epoch on 200 generated rows (the data's
/// path is absolute: a relative `dir` would be resolved again from the spec's folder).
pub(crate) fn trivial_spec(dir: &std::path::Path, name: &str) -> Result<JobSpec> {
    let data = crate::datagen::generate(dir, 200, 1)?;
    let data = std::path::absolute(&data.responses).map_err(|source| CliError::Io {
        path: data.responses.display().to_string(),
        source,
    })?;
    let spec_path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &spec_path,
        format!(
            "name = \"{name}\"\n[data]\nsource = \"{}\"\nlabel = \"responded\"\n\
             exclude = [\"customer_id\"]\n[train]\nepochs = 1\n",
            data.display()
        ),
    )
    .map_err(|source| CliError::Io {
        path: spec_path.display().to_string(),
        source,
    })?;
    Ok(JobSpec::from_file(&spec_path)?)
}

/// Wait until every job of `ids` has ended; an error names the first that did not succeed.
pub(crate) async fn all_succeed(client: &Client, ids: &[String]) -> Result<()> {
    for id in ids {
        let state = wait_state(client, id, true).await?;
        if state != "succeeded" {
            return Err(CliError::JobFailed {
                id: id.clone(),
                state,
                error: "benchmark job did not succeed".into(),
            });
        }
    }
    Ok(())
}

pub(crate) async fn wait_state(client: &Client, id: &str, done: bool) -> Result<String> {
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
    let spec = trivial_spec(work_dir, "bench-trivial")?;
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
    all_succeed(client, &ids).await?;
    Ok(SchedulingFigures {
        submit_to_running: latencies,
        jobs_per_second: batch as f64 / start.elapsed().as_secs_f64(),
        batch,
    })
}

/// What `halyard bench serving` does.
#[derive(Debug, Clone)]
pub struct ServingBench {
    /// `HOST:PORT` of the node to load (any scheduler or executor).
    pub addr: String,
    /// The deployed model.
    pub model: String,
    /// Job spec whose data supplies the records (the label and excluded columns dropped).
    pub spec: std::path::PathBuf,
    /// Concurrent connections.
    pub connections: usize,
    /// Seconds per phase.
    pub seconds: f64,
    /// Records per request in the batch phase (0: skip it).
    pub batch: usize,
    /// The API key sent with every request.
    pub key: Option<String>,
    /// TLS to `addr` (trusting its CA).
    pub tls: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
    /// A plaintext node serving the same model, loaded in the same invocation for a
    /// baseline (`HOST:PORT` and its key).
    pub baseline: Option<(String, Option<String>)>,
    /// Compare saturation with and without a Prometheus-like scrape of the target's
    /// `/metrics` once a second, in alternating rounds.
    pub scrape: bool,
}

impl ServingBench {
    /// A load phase on the target at `rate` (`None`: as fast as answers come).
    fn load(&self, rate: Option<f64>) -> crate::load::LoadConfig {
        crate::load::LoadConfig {
            addr: self.addr.clone(),
            model: self.model.clone(),
            call: "predict",
            connections: self.connections,
            duration: Duration::from_secs_f64(self.seconds),
            rate,
            check: false,
            key: self.key.clone(),
            tls: self.tls.clone(),
        }
    }
}

fn latency_line(r: &crate::load::LoadReport) -> String {
    format!(
        "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        r.quantile_us(0.5) as f64 / 1e3,
        r.quantile_us(0.99) as f64 / 1e3,
        r.quantile_us(1.0) as f64 / 1e3
    )
}

fn failures(r: &crate::load::LoadReport) -> String {
    if r.failed == 0 {
        "0 failed".into()
    } else {
        format!("{} failed (e.g. {})", r.failed, r.failures.join(" | "))
    }
}

/// Saturation throughput of single-record requests, latency at half that rate, and the
/// record throughput of batched requests. Prints as it goes; returns the summary.
pub async fn serving(b: &ServingBench) -> Result<String> {
    use crate::load::{LoadConfig, predict_bodies, records, run};
    let spec = JobSpec::from_file(&b.spec)?;
    let bytes = halyard_core::store::read_url(&spec.data.source, &Default::default()).await?;
    let table = halyard_core::data::read_table(&bytes, &spec.data, &spec.data.source)?;
    let mut drop: Vec<&str> = spec.data.exclude.iter().map(String::as_str).collect();
    drop.push(spec.data.label.as_str());
    let rows = records(&table.batches, &drop)?;
    let single = predict_bodies(&rows, 1, rows.len().min(10_000));
    if let Some((plain, plain_key)) = &b.baseline {
        return against_baseline(b, plain, plain_key, single).await;
    }
    if b.scrape {
        return against_scraping(b, single).await;
    }
    let cfg = |rate| b.load(rate);
    // Warm up (connections, the model's first calls); stop at once if nothing answers.
    let warm = run(
        LoadConfig {
            duration: Duration::from_secs(1),
            ..cfg(None)
        },
        single.clone(),
    )
    .await?;
    if warm.ok == 0 {
        return Err(CliError::Failed(format!(
            "no request to {} succeeded while warming up: {}",
            b.addr,
            warm.failures.first().map_or("(no answer)", String::as_str)
        )));
    }
    let sat = run(cfg(None), single.clone()).await?;
    let mut out = format!(
        "saturation, single records, {} connections: {:.0} predictions/s ({}), {}",
        b.connections,
        sat.throughput(),
        failures(&sat),
        latency_line(&sat)
    );
    eprintln!("{out}");
    let half = sat.throughput() / 2.0;
    let at_half = run(cfg(Some(half)), single).await?;
    let line = format!(
        "\nhalf load, {:.0} requests/s offered: {:.0} answered/s ({}), {}",
        half,
        at_half.throughput(),
        failures(&at_half),
        latency_line(&at_half)
    );
    eprintln!("{}", line.trim_start());
    out.push_str(&line);
    if b.batch > 1 {
        let batched = predict_bodies(&rows, b.batch, 1000);
        let r = run(cfg(None), batched).await?;
        let line = format!(
            "\nsaturation, {} records per request: {:.0} requests/s = {:.0} predictions/s ({}), {}",
            b.batch,
            r.throughput(),
            r.throughput() * b.batch as f64,
            failures(&r),
            latency_line(&r)
        );
        eprintln!("{}", line.trim_start());
        out.push_str(&line);
    }
    Ok(out)
}

/// Scrape `addr`'s `/metrics` once a second until `stop`; the scrapes and bytes read.
async fn scrape_every_second(
    addr: String,
    key: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<(usize, usize)> {
    let (mut scrapes, mut bytes) = (0, 0);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let (status, body, _) = crate::console_bench::get(&addr, &key, "/metrics").await?;
        let size = body.len();
        if status != 200 {
            return Err(CliError::Failed(format!(
                "GET {addr}/metrics answered {status}"
            )));
        }
        scrapes += 1;
        bytes += size;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok((scrapes, bytes))
}

/// Saturation throughput with and without a scrape of the target's metrics once a
/// second: three rounds of each, alternating, and the ratio of the medians.
async fn against_scraping(b: &ServingBench, bodies: Vec<bytes::Bytes>) -> Result<String> {
    use crate::load::{LoadConfig, run};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    if b.tls.is_some() {
        return Err(CliError::Failed(
            "--scrape measures a plaintext target: drop --tls-ca".into(),
        ));
    }
    let key = b.key.clone().unwrap_or_default();
    run(
        LoadConfig {
            duration: Duration::from_secs(1),
            ..b.load(None)
        },
        bodies.clone(),
    )
    .await?;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let (mut scrapes, mut bytes) = (0, 0);
    for _ in 0..3 {
        without.push(run(b.load(None), bodies.clone()).await?.throughput());
        let stop = Arc::new(AtomicBool::new(false));
        let scraper = tokio::spawn(scrape_every_second(
            b.addr.clone(),
            key.clone(),
            stop.clone(),
        ));
        with.push(run(b.load(None), bodies.clone()).await?.throughput());
        stop.store(true, Ordering::Relaxed);
        let (n, size) = scraper
            .await
            .map_err(|e| CliError::Failed(e.to_string()))??;
        scrapes += n;
        bytes += size;
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (w, wo) = (median(with.clone()), median(without.clone()));
    let out = format!(
        "saturation, {} connections, 3 rounds each: without scraping {wo:.0} predictions/s {without:.0?}, \
         scraping /metrics once a second {w:.0}/s {with:.0?} ({scrapes} scrapes, {:.1} KiB each): ratio {:.3}",
        b.connections,
        bytes as f64 / scrapes.max(1) as f64 / 1024.0,
        w / wo.max(1e-9)
    );
    eprintln!("{out}");
    Ok(out)
}

/// The target (over TLS, say) against a plaintext baseline serving the same model, phase
/// by phase in turn: saturation of each, then each at half the baseline's saturation rate.
async fn against_baseline(
    b: &ServingBench,
    plain: &str,
    plain_key: &Option<String>,
    bodies: Vec<bytes::Bytes>,
) -> Result<String> {
    use crate::load::{LoadConfig, run};
    let target = |rate| b.load(rate);
    let baseline = |rate| LoadConfig {
        addr: plain.to_string(),
        key: plain_key.clone(),
        tls: None,
        ..target(rate)
    };
    for warm in [target(None), baseline(None)] {
        let addr = warm.addr.clone();
        let r = run(
            LoadConfig {
                duration: Duration::from_secs(1),
                ..warm
            },
            bodies.clone(),
        )
        .await?;
        if r.ok == 0 {
            return Err(CliError::Failed(format!(
                "no request to {addr} succeeded while warming up: {}",
                r.failures.first().map_or("(no answer)", String::as_str)
            )));
        }
    }
    let sat_t = run(target(None), bodies.clone()).await?;
    let sat_b = run(baseline(None), bodies.clone()).await?;
    let half = sat_b.throughput() / 2.0;
    let half_t = run(target(Some(half)), bodies.clone()).await?;
    let half_b = run(baseline(Some(half)), bodies).await?;
    let p99 = |r: &crate::load::LoadReport| r.quantile_us(0.99) as f64 / 1e3;
    let out = format!(
        "saturation, {c} connections: target {:.0}/s ({}), baseline {:.0}/s ({}): ratio {:.3}\n\
         half load, {half:.0} requests/s offered to each: target {}; baseline {}: p99 ratio {:.3}",
        sat_t.throughput(),
        failures(&sat_t),
        sat_b.throughput(),
        failures(&sat_b),
        sat_t.throughput() / sat_b.throughput().max(1e-9),
        latency_line(&half_t),
        latency_line(&half_b),
        p99(&half_t) / p99(&half_b).max(1e-9),
        c = b.connections,
    );
    eprintln!("{out}");
    Ok(out)
}

/// What `halyard bench` measures, with each benchmark's own flags.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// Submit-to-running latency and jobs/s of a running cluster, with trivial jobs
    Scheduling {
        /// Sequential jobs for the latency figure
        #[arg(long, default_value_t = 30)]
        jobs: usize,
        /// Jobs submitted at once for the throughput figure
        #[arg(long, default_value_t = 30)]
        batch: usize,
    },
    /// Load a deployed model's prediction endpoint from this process: saturation
    /// throughput, latency at half load, batched throughput
    Serving {
        /// The deployed model [default: the spec's name]
        #[arg(long)]
        model: Option<String>,
        /// Job spec whose data supplies the records
        #[arg(long, default_value = "examples/bank-marketing.toml")]
        spec: std::path::PathBuf,
        /// Address to load, any scheduler or executor [default: --scheduler]
        #[arg(long)]
        target: Option<String>,
        /// Concurrent connections
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Seconds per phase
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Records per request of the batch phase (0 skips it)
        #[arg(long, default_value_t = 30)]
        batch: usize,
        /// Also load this plaintext node serving the same model, phase by phase in the
        /// same run, and report the target's throughput and half-load p99 as ratios of
        /// it (TLS against plaintext: --tls-ca for the target)
        #[arg(long)]
        baseline: Option<String>,
        /// The baseline's API key [default: as for the target]
        #[arg(long, hide_env_values = true)]
        baseline_key: Option<String>,
        /// Instead of the phases: saturation with and without a scrape of the target's
        /// `/metrics` once a second (as Prometheus would), three alternating rounds each,
        /// and the ratio of their medians (plaintext targets only)
        #[arg(long)]
        scrape: bool,
    },
    /// Time each web console page with many jobs and model versions in the cluster (a
    /// scratch cluster: the bench adds trained versions and cancelled jobs to it)
    Console {
        /// Jobs in the cluster at least
        #[arg(long, default_value_t = 1000)]
        jobs: usize,
        /// Versions of the bench's model at least
        #[arg(long, default_value_t = 100)]
        versions: usize,
        /// Fetches of each page (the median and the slowest are reported)
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Folder for the generated data; it must lie under the cluster's data roots
        #[arg(long, default_value = "halyard-data/bench-console")]
        dir: std::path::PathBuf,
    },
    /// Outcomes per second one node's event log acknowledges (`:feedback` in batches,
    /// from this process), the time until another node's experiment report shows them,
    /// and (with --etcd) the rate of one compare-and-swap per outcome on one etcd key
    Events {
        /// The node to load, a scheduler or executor [default: --scheduler]
        #[arg(long)]
        target: Option<String>,
        /// Concurrent connections
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Outcomes per request (1 to 10000)
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Seconds of load
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// An etcd endpoint (HOST:PORT) for the compare-and-swap baseline
        #[arg(long)]
        etcd: Option<String>,
        /// Folder for the bench model's data; it must lie under the cluster's data roots
        #[arg(long, default_value = "halyard-data/bench-events")]
        dir: std::path::PathBuf,
    },
    /// A campaign-events feature stage on an embedded SQL cluster and on single-process
    /// DataFusion, in this process, and the ratio of their times
    Features {
        /// Rows of the generated events table
        #[arg(long, default_value_t = 10_000_000)]
        rows: usize,
        /// Customers (rows of the feature table)
        #[arg(long, default_value_t = 500_000)]
        customers: usize,
        /// SQL executors of the embedded cluster
        #[arg(long, default_value_t = 2)]
        executors: usize,
        /// Runs of each engine (medians are reported)
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Folder for the generated tables (reused) and outputs
        #[arg(long, default_value = "halyard-data/bench-features")]
        dir: std::path::PathBuf,
        /// Also run the query on DuckDB, the single-node reference, alternating with the
        /// two engines (`benches/duckdb_features.py` with this Python, which needs the
        /// `duckdb` package), and compare the query phases
        #[arg(long, value_name = "PYTHON")]
        duckdb: Option<std::path::PathBuf>,
    },
    /// Batch scoring on a running cluster (a [score] job, Parquet in, scores Parquet out)
    /// against a single-process loop over the same runtime and artifact, in this process
    Scoring {
        /// Rows to score (the demo data's columns, generated once into --dir)
        #[arg(long, default_value_t = 10_000_000)]
        rows: usize,
        /// The registered model that scores (trained on halyard datagen's columns)
        #[arg(long, default_value = "campaign-response")]
        model: String,
        /// The cluster's object store folder, where the single-process loop reads the
        /// model's latest version
        #[arg(long, default_value = "halyard-data/store")]
        store: std::path::PathBuf,
        /// Scoring workers of the cluster's job
        #[arg(long, default_value_t = 2)]
        workers: u32,
        /// Runs of each (alternating; medians are reported)
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Folder for the generated table (reused) and the single-process scores; it must
        /// lie under the cluster's data roots
        #[arg(long, default_value = "halyard-data/bench-scoring")]
        dir: std::path::PathBuf,
    },
    /// k-means on generated points: a data-parallel group of ranks in this process (the
    /// real ring on loopback gRPC) against one process, same points and seed
    Kmeans {
        /// Points
        #[arg(long, default_value_t = 10_000_000)]
        rows: usize,
        /// Coordinates per point
        #[arg(long, default_value_t = 12)]
        dim: usize,
        /// Clusters (also the blobs the points are drawn around)
        #[arg(long, default_value_t = 100)]
        k: usize,
        /// Half-width of the uniform noise around each blob's centre (centres lie in
        /// [-10, 10] on each axis): larger overlaps the blobs more
        #[arg(long, default_value_t = 5.0)]
        spread: f32,
        /// Ranks of the group
        #[arg(long, default_value_t = 2)]
        ranks: usize,
        /// Fits of each (alternating; medians are reported)
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// The ring all-reduce on loopback (each rank with its own server in this process,
    /// linked as executors are) against plain TCP between threads (one stream, then two at
    /// once, one each way, moving whole vectors as a two-rank ring's links) and a memory copy
    Allreduce {
        /// Ranks of the ring
        #[arg(long, default_value_t = 2)]
        ranks: usize,
        /// Runs of each size (medians are reported)
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Also run each size over mutual TLS (a throwaway CA) and report it against
        /// plaintext
        #[arg(long)]
        mtls: bool,
    },
}

/// Run one benchmark; `scheduler` is the cluster's address for those that need one, `key`
/// the API key (`--key`). Returns the report to print.
pub async fn run(what: BenchCommand, conn: &crate::keys::Connection) -> Result<String> {
    match what {
        BenchCommand::Scheduling { jobs, batch } => {
            let client = crate::keys::connect(conn).await?;
            let dir = std::env::temp_dir().join(format!("halyard-bench-{}", std::process::id()));
            let figures = scheduling(&client, &dir, jobs.max(1), batch.max(1)).await;
            let _ = std::fs::remove_dir_all(&dir);
            Ok(figures?.summary())
        }
        BenchCommand::Serving {
            model,
            spec,
            target,
            connections,
            seconds,
            batch,
            baseline,
            baseline_key,
            scrape,
        } => {
            let model = match model {
                Some(m) => m,
                None => JobSpec::from_file(&spec)?.name,
            };
            let addr = target.unwrap_or_else(|| conn.scheduler.clone());
            let tls = match &conn.tls_ca {
                Some(ca) => Some(halyard_core::tls::http1_client_trusting(ca)?),
                None => None,
            };
            serving(&ServingBench {
                key: crate::keys::discover(&addr, conn.key.clone()),
                baseline: baseline.map(|plain| {
                    let key = crate::keys::discover(&plain, baseline_key.or(conn.key.clone()));
                    (plain, key)
                }),
                addr,
                model,
                spec,
                connections: connections.max(1),
                seconds,
                batch,
                tls,
                scrape,
            })
            .await
        }
        BenchCommand::Console {
            jobs,
            versions,
            runs,
            dir,
        } => {
            let client = crate::keys::connect(conn).await?;
            let b = crate::console_bench::ConsoleBench {
                key: crate::keys::discover(&conn.scheduler, conn.key.clone()),
                addr: conn.scheduler.clone(),
                jobs,
                versions,
                runs,
                dir,
            };
            crate::console_bench::run(&client, &b).await
        }
        BenchCommand::Events {
            target,
            connections,
            batch,
            seconds,
            etcd,
            dir,
        } => {
            let client = crate::keys::connect(conn).await?;
            let b = crate::events_bench::EventsBench {
                key: crate::keys::discover(&conn.scheduler, conn.key.clone()),
                addr: target.unwrap_or_else(|| conn.scheduler.clone()),
                connections,
                batch,
                seconds,
                etcd,
                dir,
            };
            crate::events_bench::run(&client, &b).await
        }
        BenchCommand::Features {
            rows,
            customers,
            executors,
            runs,
            dir,
            duckdb,
        } => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let b = crate::features_bench::FeaturesBench {
                dir,
                rows,
                customers,
                executors: executors.max(1),
                // Together the executors have the cores the single process has.
                slots: (cores / executors.max(1)).max(1),
                partitions: cores,
                runs: runs.max(1),
                duckdb,
            };
            let timings = crate::features_bench::run(&b).await?;
            Ok(crate::features_bench::summary(&b, &timings))
        }
        BenchCommand::Scoring {
            rows,
            model,
            store,
            workers,
            runs,
            dir,
        } => {
            let client = crate::keys::connect(conn).await?;
            let b = crate::scoring_bench::ScoringBench {
                dir,
                rows,
                model,
                store,
                workers,
                runs,
            };
            let figures = crate::scoring_bench::run(&client, &b).await?;
            Ok(crate::scoring_bench::summary(&b, &figures))
        }
        BenchCommand::Kmeans {
            rows,
            dim,
            k,
            spread,
            ranks,
            runs,
        } => {
            crate::kmeans_bench::run(crate::kmeans_bench::KMeansBench {
                rows,
                dim,
                k,
                spread,
                ranks: ranks.max(1),
                runs,
            })
            .await
        }
        BenchCommand::Allreduce { ranks, runs, mtls } => {
            let (ranks, runs) = (ranks.max(2), runs.max(1));
            let sizes = [100_000, 1_000_000, 10_000_000];
            if mtls {
                let tls = crate::allreduce_bench::bench_tls()?;
                let (mut plain, mut secure) = (Vec::new(), Vec::new());
                for size in sizes {
                    plain.extend(crate::allreduce_bench::run(ranks, &[size], runs, None).await?);
                    secure.extend(
                        crate::allreduce_bench::run(ranks, &[size], runs, Some(&tls)).await?,
                    );
                }
                return Ok(crate::allreduce_bench::tls_summary(
                    ranks, runs, &plain, &secure,
                ));
            }
            let (mut figures, mut tcp) = (Vec::new(), Vec::new());
            for size in sizes {
                figures.extend(crate::allreduce_bench::run(ranks, &[size], runs, None).await?);
                let bytes = 4 * size;
                tcp.push(
                    tokio::task::spawn_blocking(move || {
                        Ok::<_, CliError>((
                            crate::allreduce_bench::tcp_bandwidth(bytes, runs, false)?,
                            crate::allreduce_bench::tcp_bandwidth(bytes, runs, true)?,
                        ))
                    })
                    .await
                    .map_err(|e| CliError::Failed(format!("tcp baseline: {e}")))??,
                );
            }
            let copy = crate::allreduce_bench::memcpy_bandwidth(10_000_000, 9);
            Ok(crate::allreduce_bench::summary(
                ranks, runs, copy, &figures, &tcp,
            ))
        }
    }
}
