//! `halyard bench features`: the feature stage of a campaign-events job on the SQL cluster
//! (an embedded Ballista scheduler and executors on loopback, as a cluster runs them) and
//! on single-process DataFusion, in the same invocation, over the same generated Parquet
//! tables (`events` of at least 10 million rows by default).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use halyard_core::spec::{FeaturesSpec, SourceFormat, SourceSpec, SplitSpec};
use halyard_core::store::S3Config;
use halyard_features::cluster::{SqlExecutor, SqlScheduler};
use halyard_features::session::{DataAccess, local_context, remote_context};
use halyard_features::stage::run_stage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{CliError, Result};

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct FeaturesBench {
    /// Folder for the generated tables and the outputs.
    pub dir: PathBuf,
    /// Rows of the events table.
    pub rows: usize,
    /// Customers (rows of the customers table and of the feature table).
    pub customers: usize,
    /// SQL executors of the cluster.
    pub executors: usize,
    /// Task slots per executor.
    pub slots: usize,
    /// Partitions per stage, both engines.
    pub partitions: usize,
    /// Runs of each engine (alternating); medians are reported.
    pub runs: usize,
    /// The Python that runs the query on DuckDB too (`benches/duckdb_features.py`).
    pub duckdb: Option<PathBuf>,
}

/// The DuckDB run, shipped in the binary so that the bench runs from any folder.
const DUCKDB_SCRIPT: &str = include_str!("../../benches/duckdb_features.py");

/// The feature query: per-customer aggregates over events joined to campaigns, daily
/// windows (7-day rolling revenue, previous day's touches), channel mix, joined to the
/// customers, with the feature functions.
pub const QUERY: &str = "
WITH touches AS (
  SELECT e.customer_id, e.day, e.event, e.amount, c.channel, c.cost_per_touch
  FROM events e JOIN campaigns c ON e.campaign_id = c.campaign_id
),
daily AS (
  SELECT customer_id, day, count(*) AS touches, sum(amount) AS revenue,
         sum(cost_per_touch) AS cost, sum(CASE WHEN event = 'click' THEN 1 ELSE 0 END) AS clicks
  FROM touches GROUP BY customer_id, day
),
windowed AS (
  SELECT customer_id, day, revenue, cost, clicks,
         avg(revenue) OVER (PARTITION BY customer_id ORDER BY day ROWS BETWEEN 6 PRECEDING AND CURRENT ROW) AS revenue_7d,
         lag(touches, 1) OVER (PARTITION BY customer_id ORDER BY day) AS prev_touches
  FROM daily
),
per_customer AS (
  SELECT customer_id, count(*) AS active_days, sum(revenue) AS revenue, sum(cost) AS cost,
         sum(clicks) AS clicks, max(revenue_7d) AS best_week, avg(prev_touches) AS mean_prev_touches,
         max(day) AS last_day
  FROM windowed GROUP BY customer_id
),
channels AS (
  SELECT customer_id,
         sum(CASE WHEN channel = 'email' THEN 1 ELSE 0 END) AS email_touches,
         sum(CASE WHEN channel = 'sms' THEN 1 ELSE 0 END) AS sms_touches,
         count(DISTINCT channel) AS channels
  FROM touches GROUP BY customer_id
)
SELECT cu.customer_id, cu.segment, cu.region, cu.age, bucketize(cu.age, 25, 35, 50, 65) AS age_band,
       day_of_week(cu.signup_day) AS signup_dow, week_of_year(p.last_day) AS last_week,
       p.active_days, p.cost, p.clicks, p.best_week, p.mean_prev_touches,
       ch.email_touches, ch.sms_touches, ch.channels,
       CASE WHEN p.revenue > 0 THEN 'yes' ELSE 'no' END AS converted
FROM customers cu
JOIN per_customer p ON cu.customer_id = p.customer_id
JOIN channels ch ON cu.customer_id = ch.customer_id";

const SEGMENTS: [&str; 5] = ["premium", "young_family", "value", "retired", "student"];
const REGIONS: [&str; 8] = [
    "north", "south", "east", "west", "central", "coast", "mountain", "metro",
];
const CHANNELS: [&str; 4] = ["email", "sms", "push", "display"];
const EVENTS: [&str; 4] = ["send", "open", "click", "convert"];
/// Days since 1970-01-01 of 2025-01-01.
const DAY0: i32 = 20089;
const CAMPAIGNS: usize = 200;
const EVENT_FILES: usize = 8;

fn io(path: &Path, e: impl std::fmt::Display) -> CliError {
    CliError::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}

fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| io(path, e))?;
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)
        .map_err(|e| io(path, e))?;
    w.write(batch).map_err(|e| io(path, e))?;
    w.close().map_err(|e| io(path, e))?;
    Ok(())
}

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    RecordBatch::try_from_iter(columns).expect("columns of one length")
}

/// Write `customers.parquet`, `campaigns.parquet` and `events/part-N.parquet` under `dir`
/// (kept and reused when present with the same sizes).
pub fn generate(dir: &Path, rows: usize, customers: usize, seed: u64) -> Result<()> {
    let marker = dir.join(format!("generated-{rows}-{customers}-{seed}"));
    if marker.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir.join("events")).map_err(|e| io(dir, e))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let n = customers;
    write_parquet(
        &dir.join("customers.parquet"),
        &batch(vec![
            (
                "customer_id",
                Arc::new(Int64Array::from_iter_values(0..n as i64)),
            ),
            (
                "segment",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|_| SEGMENTS[rng.random_range(0..SEGMENTS.len())]),
                )),
            ),
            (
                "region",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|_| REGIONS[rng.random_range(0..REGIONS.len())]),
                )),
            ),
            (
                "age",
                Arc::new(Int32Array::from_iter_values(
                    (0..n).map(|_| rng.random_range(18..85)),
                )),
            ),
            (
                "signup_day",
                Arc::new(Date32Array::from_iter_values(
                    (0..n).map(|_| DAY0 - rng.random_range(0..1500)),
                )),
            ),
        ]),
    )?;
    write_parquet(
        &dir.join("campaigns.parquet"),
        &batch(vec![
            (
                "campaign_id",
                Arc::new(Int32Array::from_iter_values(0..CAMPAIGNS as i32)),
            ),
            (
                "channel",
                Arc::new(StringArray::from_iter_values(
                    (0..CAMPAIGNS).map(|i| CHANNELS[i % CHANNELS.len()]),
                )),
            ),
            (
                "cost_per_touch",
                Arc::new(Float64Array::from_iter_values(
                    (0..CAMPAIGNS).map(|_| rng.random_range(0.01..0.5)),
                )),
            ),
        ]),
    )?;
    let per_file = rows.div_ceil(EVENT_FILES);
    for f in 0..EVENT_FILES {
        let m = per_file.min(rows.saturating_sub(f * per_file));
        let mut cust = Vec::with_capacity(m);
        let mut camp = Vec::with_capacity(m);
        let mut day = Vec::with_capacity(m);
        let mut event = Vec::with_capacity(m);
        let mut amount = Vec::with_capacity(m);
        for _ in 0..m {
            // Active customers are few: a skewed draw.
            let u: f64 = rng.random();
            cust.push(((u * u) * n as f64) as i64);
            camp.push(rng.random_range(0..CAMPAIGNS as i32));
            day.push(DAY0 + rng.random_range(0..180));
            let e = match rng.random_range(0..100) {
                0..=59 => 0,
                60..=84 => 1,
                85..=97 => 2,
                _ => 3,
            };
            event.push(EVENTS[e]);
            amount.push(if e == 3 {
                rng.random_range(5.0..200.0)
            } else {
                0.0
            });
        }
        write_parquet(
            &dir.join(format!("events/part-{f}.parquet")),
            &batch(vec![
                ("customer_id", Arc::new(Int64Array::from(cust))),
                ("campaign_id", Arc::new(Int32Array::from(camp))),
                ("day", Arc::new(Date32Array::from(day))),
                ("event", Arc::new(StringArray::from(event))),
                ("amount", Arc::new(Float64Array::from(amount))),
            ]),
        )?;
    }
    std::fs::write(&marker, b"").map_err(|e| io(&marker, e))?;
    Ok(())
}

/// The feature stage's spec over the generated tables.
pub fn spec(dir: &Path, shards: usize) -> FeaturesSpec {
    let source = |name: &str, path: String| SourceSpec {
        format: Some(SourceFormat::Parquet),
        ..SourceSpec::new(name, path)
    };
    let url = |p: &str| format!("file://{}/{p}", dir.display());
    FeaturesSpec {
        sources: vec![
            source("events", url("events/")),
            source("customers", url("customers.parquet")),
            source("campaigns", url("campaigns.parquet")),
        ],
        sql: Some(QUERY.into()),
        steps: Vec::new(),
        split: Some(SplitSpec::Hash {
            key: "customer_id".into(),
            test_percent: 20.0,
            validation_percent: 10.0,
        }),
        shards,
        shard_key: None,
        table_of: None,
    }
}

/// One engine's timings.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Whole stage: sources, query, shards, statistics.
    pub runs: Vec<Duration>,
    /// The query and the shards it writes (the phase DuckDB runs too).
    pub query: Vec<Duration>,
    /// Rows of the feature table.
    pub rows: u64,
}

impl Timings {
    /// The median run.
    pub fn median(&self) -> Duration {
        crate::bench::median_of(self.runs.clone())
    }

    /// The median query phase.
    pub fn median_query(&self) -> Duration {
        crate::bench::median_of(self.query.clone())
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// The SQL cluster.
    pub cluster: Timings,
    /// Single-process DataFusion.
    pub local: Timings,
    /// DuckDB's query phase, when asked for.
    pub duckdb: Option<Timings>,
}

/// Where the DuckDB script and the query it reads lie in the bench's folder.
fn duckdb_files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("duckdb_features.py"), dir.join("query.sql"))
}

/// Write the DuckDB script and the query into the bench's folder, once per bench.
fn write_duckdb_files(dir: &Path) -> Result<()> {
    let (script, query) = duckdb_files(dir);
    std::fs::write(&script, DUCKDB_SCRIPT).map_err(|e| io(&script, e))?;
    std::fs::write(&query, QUERY).map_err(|e| io(&query, e))
}

/// One run of the query phase on DuckDB with `python`: its seconds and rows.
fn duckdb_run(
    python: &Path,
    b: &FeaturesBench,
    data: &Path,
    run: usize,
) -> Result<(Duration, u64)> {
    let (script, query) = duckdb_files(&b.dir);
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(data)
        .arg(b.dir.join(format!("out-duckdb-{run}")))
        .arg(&query)
        .args(["--threads", &b.partitions.to_string()])
        .output()
        .map_err(|e| io(python, e))?;
    let failed = |why: String| {
        CliError::Failed(format!(
            "the DuckDB run ({} {}) failed: {why} (it needs `pip install duckdb`)",
            python.display(),
            script.display()
        ))
    };
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| failed(format!("its answer is not JSON: {e}")))?;
    match (answer["seconds"].as_f64(), answer["rows"].as_u64()) {
        (Some(s), Some(rows)) => Ok((Duration::from_secs_f64(s), rows)),
        _ => Err(failed(format!("no seconds and rows in {answer}"))),
    }
}

/// Run the benchmark.
pub async fn run(b: &FeaturesBench) -> Result<Measured> {
    let data = b.dir.join("data");
    let started = Instant::now();
    generate(&data, b.rows, b.customers, 7)?;
    eprintln!(
        "tables ready in {:.1} s ({} events, {} customers)",
        started.elapsed().as_secs_f64(),
        b.rows,
        b.customers
    );
    let access = DataAccess::unconfined(&S3Config::default());
    let (verifier, key) = halyard_core::auth::private_keys().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| io(&b.dir, e))?;
    let scheduler = SqlScheduler::start(listener, &access, verifier, None, &key, None).await?;
    let endpoint = scheduler.addr.to_string();
    let mut executors = Vec::new();
    for i in 0..b.executors {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| io(&b.dir, e))?;
        let id = format!("bench-executor-{i}");
        let mut e =
            SqlExecutor::start(&id, "127.0.0.1", l, b.slots, &access, &key, None, None).await?;
        e.follow(Some(&endpoint));
        executors.push(e);
    }
    let spec = spec(&data, 2);
    let (mut cluster, mut local) = (Timings::default(), Timings::default());
    let mut duckdb = b.duckdb.as_ref().map(|_| Timings::default());
    if duckdb.is_some() {
        write_duckdb_files(&b.dir)?;
    }
    for run in 0..b.runs {
        for on_cluster in [true, false] {
            let ctx = if on_cluster {
                remote_context(&endpoint, Some(&key), None, &access, b.partitions).await?
            } else {
                local_context(&access, b.partitions)?
            };
            let out = b.dir.join(format!(
                "out-{}-{run}",
                if on_cluster { "cluster" } else { "local" }
            ));
            let _ = std::fs::remove_dir_all(&out);
            let url = format!("file://{}", out.display());
            let t = Instant::now();
            // When each phase ended: the progress lines mark them.
            let mut marks: Vec<(Duration, String)> = Vec::new();
            let table = run_stage(&ctx, &spec, "converted", &url, true, &mut |line| {
                marks.push((t.elapsed(), line));
            })
            .await?;
            let took = t.elapsed();
            let phase = |word: &str| {
                marks
                    .iter()
                    .find(|(_, l)| l.contains(word))
                    .map_or(0.0, |(d, _)| d.as_secs_f64())
            };
            let (planned, written) = (phase("writing"), phase("rows written"));
            let timings = if on_cluster { &mut cluster } else { &mut local };
            timings.runs.push(took);
            timings
                .query
                .push(Duration::from_secs_f64(written - planned));
            timings.rows = table.rows;
            eprintln!(
                "run {}: {} {:.2} s (sources and plan {planned:.2} s, query and shards {:.2} s, statistics {:.2} s), {} feature rows",
                run + 1,
                if on_cluster {
                    "cluster"
                } else {
                    "single process"
                },
                took.as_secs_f64(),
                written - planned,
                took.as_secs_f64() - written,
                table.rows
            );
        }
        if let (Some(python), Some(timings)) = (&b.duckdb, duckdb.as_mut()) {
            let (took, rows) = duckdb_run(python, b, &data, run)?;
            eprintln!(
                "run {}: DuckDB query and shards {:.2} s, {rows} feature rows",
                run + 1,
                took.as_secs_f64()
            );
            timings.query.push(took);
            timings.rows = rows;
        }
    }
    for e in executors {
        e.stop();
    }
    scheduler.stop().await;
    Ok(Measured {
        cluster,
        local,
        duckdb,
    })
}

/// The report of one `halyard bench features` run: both engines' medians and their ratio,
/// and the query phase against DuckDB's when it ran.
pub fn summary(b: &FeaturesBench, m: &Measured) -> String {
    let (cluster, local) = (&m.cluster, &m.local);
    let (c, l) = (cluster.median(), local.median());
    let rate = |d: Duration| b.rows as f64 / d.as_secs_f64();
    let mut text = format!(
        "feature stage over {} events -> {} feature rows (median of {} runs each):\n  \
         cluster ({} executors x {} slots): {:.2} s, {:.0} events/s\n  \
         single-process DataFusion ({} partitions): {:.2} s, {:.0} events/s\n  \
         cluster / single process: {:.2}x",
        b.rows,
        cluster.rows,
        b.runs,
        b.executors,
        b.slots,
        c.as_secs_f64(),
        rate(c),
        b.partitions,
        l.as_secs_f64(),
        rate(l),
        c.as_secs_f64() / l.as_secs_f64()
    );
    if let Some(duck) = &m.duckdb {
        let (cq, lq, dq) = (
            cluster.median_query().as_secs_f64(),
            local.median_query().as_secs_f64(),
            duck.median_query().as_secs_f64(),
        );
        text.push_str(&format!(
            "\n  the query and its shards alone (median): cluster {cq:.2} s, single process \
             {lq:.2} s, DuckDB {dq:.2} s ({} threads, {} feature rows)\n  \
             cluster / DuckDB: {:.2}x; single process / DuckDB: {:.2}x",
            b.partitions,
            duck.rows,
            cq / dq,
            lq / dq
        ));
    }
    text
}
