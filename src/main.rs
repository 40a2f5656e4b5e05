//! `halyard`: one binary, many roles. Parses flags, builds a config, calls a library.
//!
//! Exit codes: 0 success; 1 an error (or, for `submit --follow`, a job that did not
//! succeed); 2 bad usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use halyard_client::registry::{self, DeployAction};
use halyard_client::{Client, commands};
use halyard_core::config::{ExecutorConfig, SchedulerConfig, Settings};
use halyard_core::spec::DeviceKind;
use halyard_core::store::S3Config;

#[derive(Parser)]
#[command(
    name = "halyard",
    version,
    about = "Distributed training and serving of marketing-analytics models",
    long_about = "Distributed training and serving of marketing-analytics models.\n\n\
        Quick start: `halyard standalone` in one terminal; then `halyard datagen` and \
        `halyard submit examples/campaign-response.toml --follow` in another.\n\n\
        Exit codes: 0 success; 1 error, or a followed job that did not succeed; 2 bad usage."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scheduler and N executors in one process, with embedded coordination and a
    /// local folder as object store: the zero-setup cluster
    Standalone(ServerArgs),
    /// Run a scheduler: job API, leader election through etcd, placement
    Scheduler(ServerArgs),
    /// Run an executor: registers in etcd, trains assigned tasks, publishes models
    Executor(ServerArgs),
    /// Submit a job spec (TOML); with --follow, show progress until it ends
    Submit {
        /// The job spec file
        spec: PathBuf,
        /// Follow the job: progress bar, then metrics and the model's location; exit 0
        /// only if the job succeeded
        #[arg(short, long)]
        follow: bool,
        /// Print the job as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List jobs
    Jobs {
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one job: state, progress, metrics, artifact
    Job {
        /// Job id
        id: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a job's log: scheduler events and executor progress
    Logs {
        /// Job id
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Cancel a job
    Cancel {
        /// Job id
        id: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Continue a cancelled or failed data-parallel job from its last checkpoint, as a new job
    Resume {
        /// Job id
        id: String,
        /// Follow the new job to its end
        #[arg(short, long)]
        follow: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show the leader and the live executors
    Cluster {
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Measure a running cluster: `scheduling` gives submit-to-running latency and jobs/s;
    /// `serving` loads a deployed model's prediction endpoint from this process;
    /// `features` runs a campaign-events feature stage on an embedded SQL cluster and on
    /// single-process DataFusion, in this process, and compares their times
    Bench {
        /// What to measure
        #[arg(value_parser = ["scheduling", "serving", "features", "allreduce"])]
        what: String,
        /// allreduce: ranks of the ring (in this process, each with its own gRPC server)
        #[arg(long, default_value_t = 2)]
        ranks: usize,
        /// features: rows of the generated events table
        #[arg(long, default_value_t = 10_000_000)]
        rows: usize,
        /// features: customers (rows of the feature table)
        #[arg(long, default_value_t = 500_000)]
        customers: usize,
        /// features: SQL executors of the embedded cluster
        #[arg(long, default_value_t = 2)]
        executors: usize,
        /// features: runs of each engine; allreduce: runs of each size (medians are reported)
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// features: folder for the generated tables (reused) and outputs
        #[arg(long, default_value = "halyard-data/bench-features")]
        dir: PathBuf,
        /// scheduling: sequential jobs for the latency figure
        #[arg(long, default_value_t = 30)]
        jobs: usize,
        /// scheduling: jobs submitted at once for the throughput figure; serving: records
        /// per request of the batch phase (0 skips it)
        #[arg(long, default_value_t = 30)]
        batch: usize,
        /// serving: the deployed model [default: the spec's name]
        #[arg(long)]
        model: Option<String>,
        /// serving: job spec whose data supplies the records
        #[arg(long, default_value = "examples/bank-marketing.toml")]
        spec: PathBuf,
        /// serving: address to load, any scheduler or executor [default: --scheduler]
        #[arg(long)]
        target: Option<String>,
        /// serving: concurrent connections
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// serving: seconds per phase
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[command(flatten)]
        conn: Conn,
    },
    /// List registered models: versions, traffic split, aliases
    Models {
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a model: its versions (metrics, job, data lineage) and deployment
    Model {
        /// Model name (the job spec's `name`)
        name: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Serve a model version (all traffic, or a canary's share), or set a traffic split
    ///
    /// `deploy NAME --version 3` makes version 3 production with all traffic.
    /// `deploy NAME --version 4 --alias canary --percent 10` sends 10% to version 4.
    /// `deploy NAME --split 3=90,4=10` sets the split directly. A request's key (customer
    /// id) picks its variant by a stable hash, so a customer always sees the same one.
    Deploy {
        /// Model name
        name: String,
        /// Version to deploy
        #[arg(long, conflicts_with = "split", required_unless_present = "split")]
        version: Option<u64>,
        /// Alias to give the version
        #[arg(long, default_value = "production")]
        alias: String,
        /// Share of traffic (1-99) for a non-production alias, beside production
        #[arg(long, requires = "version")]
        percent: Option<u32>,
        /// Traffic split as VERSION=WEIGHT pairs, such as 3=90,4=10
        #[arg(long)]
        split: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Make the canary (or --alias) version production, with all traffic
    Promote {
        /// Model name
        name: String,
        /// Alias to promote
        #[arg(long, default_value = "canary")]
        alias: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Restore the deployment as it was before its last change
    Rollback {
        /// Model name
        name: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop serving a model (its versions stay registered)
    Undeploy {
        /// Model name
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// A/B analysis: each variant's conversion rate from the outcomes fed back, the
    /// difference with production, its 95% interval and p-value
    Experiment {
        /// Model name
        name: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Run SQL on the cluster (its embedded Ballista) or, with --local, in this process
    ///
    /// `halyard sql --table events=data/events.csv -e "SELECT channel, count(*) FROM events GROUP BY channel"`.
    /// Without -e, reads statements (each ending with ';') from standard input. Tables can
    /// also be declared in SQL: CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 's3://b/t/'.
    /// The feature functions (bucketize, hash_bucket, day_of_week, week_of_year,
    /// is_holiday) are available; docs/features.md shows each.
    Sql {
        /// A statement to run (repeat for several, run in order)
        #[arg(short = 'e', long = "execute")]
        execute: Vec<String>,
        /// A table to register first, NAME=PATH (file, folder ending in '/', file:// or
        /// s3:// URL; format from the extension)
        #[arg(long = "table")]
        tables: Vec<String>,
        /// CSV field separator of the --table files
        #[arg(long, default_value = ",")]
        delimiter: char,
        /// Write the last result to this .csv or .parquet file instead of printing it
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Run in this process on single-process DataFusion, without a cluster
        #[arg(long)]
        local: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Train a job spec here, without a cluster, and print its metrics
    ///
    /// Runs exactly the executor's training path in this process: useful to try a spec
    /// before submitting it, and the source of the figures in benches/RESULTS.md.
    Train {
        /// Job spec (TOML)
        spec: PathBuf,
        /// Override the spec's [train] device
        #[arg(long, value_parser = ["cpu", "gpu", "auto"])]
        device: Option<String>,
        /// GPUs `auto` may use here
        #[arg(long, default_value_t = 0, env = "HALYARD_GPUS")]
        gpus: u32,
        /// Folder to write the weights and a training summary to
        #[arg(long)]
        out: Option<PathBuf>,
        /// Forecasters: also score the M4 classical methods on the same split
        #[arg(long)]
        baselines: bool,
    },
    /// Write the synthetic marketing data set of the demo (campaign responses, daily KPIs)
    Datagen {
        /// Output folder; files go to OUT/campaign/
        #[arg(long, default_value = "data")]
        out: PathBuf,
        /// Customer rows
        #[arg(long, default_value_t = 20_000)]
        rows: usize,
        /// Random seed
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

#[derive(Args)]
struct Conn {
    /// Scheduler address, HOST:PORT
    #[arg(long, env = "HALYARD_SCHEDULER", default_value = halyard_client::DEFAULT_SCHEDULER)]
    scheduler: String,
}

/// Server settings. Each flag also reads the HALYARD_* variable shown; unset ones come from
/// --config, then defaults.
#[derive(Args)]
struct ServerArgs {
    /// Config file (TOML, same keys as the flags with '_' for '-')
    #[arg(long, env = "HALYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7070 scheduler and standalone, 127.0.0.1:7071 executor]
    #[arg(long, env = "HALYARD_LISTEN")]
    listen: Option<String>,
    /// Address others reach this node at [default: --listen]
    #[arg(long, env = "HALYARD_ADVERTISE")]
    advertise: Option<String>,
    /// Node id [default: ROLE-HOSTNAME-PORT]
    #[arg(long, env = "HALYARD_ID")]
    id: Option<String>,
    /// etcd endpoints, comma-separated (required for scheduler and executor; standalone
    /// uses its embedded coordinator without it)
    #[arg(long, env = "HALYARD_ETCD", value_delimiter = ',')]
    etcd: Option<Vec<String>>,
    /// Key prefix of this cluster in etcd [default: /halyard]
    #[arg(long, env = "HALYARD_ETCD_ROOT")]
    etcd_root: Option<String>,
    /// Object store URL, file:///dir or s3://bucket/prefix [default: DATA_DIR/store]
    #[arg(long, env = "HALYARD_STORE")]
    store: Option<String>,
    /// Folder for local state and the default object store [default: halyard-data]
    #[arg(long, env = "HALYARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Lease TTL in seconds: a dead node is noticed within this [default: 5]
    #[arg(long, env = "HALYARD_LEASE_TTL")]
    lease_ttl: Option<u64>,
    /// CPU slots offered by an executor [default: all cores; standalone: cores / executors]
    #[arg(long, env = "HALYARD_CPU_SLOTS")]
    cpu_slots: Option<u32>,
    /// Memory offered by an executor, MiB [default: 4096]
    #[arg(long, env = "HALYARD_MEMORY_MB")]
    memory_mb: Option<u64>,
    /// GPUs offered by an executor [default: 0]
    #[arg(long, env = "HALYARD_GPUS")]
    gpus: Option<u32>,
    /// Standalone: executors to run [default: 2]
    #[arg(long, env = "HALYARD_EXECUTORS")]
    executors: Option<u32>,
    /// Serving: most records an executor scores in one micro-batch [default: 256]
    #[arg(long, env = "HALYARD_MAX_BATCH")]
    max_batch: Option<usize>,
    /// Serving: longest a micro-batch waits for more requests, in microseconds; 0 scores a
    /// lone request at once and batches only what queues under load [default: 0]
    #[arg(long, env = "HALYARD_BATCH_WAIT_US")]
    batch_wait_us: Option<u64>,
    /// Address of the SQL (Ballista) service: the leader's scheduler, an executor's data
    /// service; advertised through the coordinator [default: the --listen host, any free port]
    #[arg(long, env = "HALYARD_SQL_LISTEN")]
    sql_listen: Option<String>,
    /// S3 endpoint URL [default: AWS_ENDPOINT_URL or AWS]
    #[arg(long, env = "HALYARD_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// S3 region [default: AWS_REGION or us-east-1]
    #[arg(long, env = "HALYARD_S3_REGION")]
    s3_region: Option<String>,
    /// S3 access key id [default: AWS_ACCESS_KEY_ID]
    #[arg(long, env = "HALYARD_S3_ACCESS_KEY_ID")]
    s3_access_key_id: Option<String>,
    /// S3 secret access key [default: AWS_SECRET_ACCESS_KEY]
    #[arg(long, env = "HALYARD_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    s3_secret_access_key: Option<String>,
}

impl ServerArgs {
    fn settings(self) -> halyard_core::Result<Settings> {
        let file = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        let flags = Settings {
            listen: self.listen,
            advertise: self.advertise,
            id: self.id,
            etcd: self.etcd,
            etcd_root: self.etcd_root,
            store: self.store,
            data_dir: self.data_dir,
            lease_ttl_secs: self.lease_ttl,
            cpu_slots: self.cpu_slots,
            memory_mb: self.memory_mb,
            gpus: self.gpus,
            executors: self.executors,
            max_batch: self.max_batch,
            batch_wait_us: self.batch_wait_us,
            sql_listen: self.sql_listen,
            s3: S3Config {
                endpoint: self.s3_endpoint,
                region: self.s3_region,
                access_key_id: self.s3_access_key_id,
                secret_access_key: self.s3_secret_access_key,
            },
        };
        Ok(flags.or(file))
    }
}

type AnyError = Box<dyn std::error::Error>;

/// Ballista logs every job and task at info: only its warnings by default.
const QUIET_BALLISTA: &str =
    ",ballista=warn,ballista_core=warn,ballista_scheduler=warn,ballista_executor=warn";

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HALYARD_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default}{QUIET_BALLISTA}"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn require_etcd(s: &Settings, role: &str) -> Result<(), AnyError> {
    if s.etcd.as_ref().is_none_or(|e| e.is_empty()) {
        return Err(format!(
            "halyard {role} needs etcd: pass --etcd HOST:PORT or set HALYARD_ETCD \
             (for a one-process cluster without etcd, run `halyard standalone`)"
        )
        .into());
    }
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn run(cli: Cli) -> Result<(), AnyError> {
    match cli.command {
        Command::Standalone(args) => {
            init_tracing("info");
            let cluster = halyard::start_standalone(args.settings()?).await?;
            eprintln!(
                "halyard standalone: API on {}, {} executors, models in {}; Ctrl-C stops",
                cluster.scheduler.addr,
                cluster.executors.len(),
                cluster.store_url
            );
            wait_for_signal().await;
            cluster.stop().await;
        }
        Command::Scheduler(args) => {
            init_tracing("info");
            let s = args.settings()?;
            require_etcd(&s, "scheduler")?;
            let cfg = SchedulerConfig::from_settings(&s)?;
            let coord = cfg.coordinator.connect().await?;
            let handle = halyard_scheduler::start_scheduler(cfg, coord).await?;
            wait_for_signal().await;
            handle.stop().await;
        }
        Command::Executor(args) => {
            init_tracing("info");
            let s = args.settings()?;
            require_etcd(&s, "executor")?;
            let cfg = ExecutorConfig::from_settings(&s)?;
            let coord = cfg.coordinator.connect().await?;
            let handle = halyard_executor::start_executor(cfg, coord).await?;
            wait_for_signal().await;
            handle.stop().await;
        }
        Command::Submit {
            spec,
            follow,
            json,
            conn,
        } => {
            init_tracing("warn");
            let client = Client::connect(&conn.scheduler).await?;
            commands::submit(&client, &spec, follow, json).await?;
        }
        Command::Jobs { json, conn } => {
            init_tracing("warn");
            commands::jobs(&Client::connect(&conn.scheduler).await?, json).await?;
        }
        Command::Job { id, json, conn } => {
            init_tracing("warn");
            commands::job(&Client::connect(&conn.scheduler).await?, &id, json).await?;
        }
        Command::Logs { id, conn } => {
            init_tracing("warn");
            commands::logs(&Client::connect(&conn.scheduler).await?, &id).await?;
        }
        Command::Cancel { id, json, conn } => {
            init_tracing("warn");
            commands::cancel(&Client::connect(&conn.scheduler).await?, &id, json).await?;
        }
        Command::Resume {
            id,
            follow,
            json,
            conn,
        } => {
            init_tracing("warn");
            let client = Client::connect(&conn.scheduler).await?;
            commands::resume(&client, &id, follow, json).await?;
        }
        Command::Cluster { json, conn } => {
            init_tracing("warn");
            commands::cluster(&Client::connect(&conn.scheduler).await?, json).await?;
        }
        Command::Bench {
            what,
            ranks,
            rows,
            customers,
            executors,
            runs,
            dir,
            jobs,
            batch,
            model,
            spec,
            target,
            connections,
            seconds,
            conn,
        } => {
            init_tracing("warn");
            if what == "allreduce" {
                let sizes = [100_000, 1_000_000, 10_000_000];
                let figures =
                    halyard_client::allreduce_bench::run(ranks.max(2), &sizes, runs.max(1)).await?;
                let copy = halyard_client::allreduce_bench::memcpy_bandwidth(10_000_000, 9);
                println!(
                    "ring all-reduce, {} ranks on loopback gRPC (median of {} runs); memory copy of 40 MB: {:.2} GB/s",
                    ranks.max(2),
                    runs.max(1),
                    copy / 1e9
                );
                for f in figures {
                    println!(
                        "  {:>10} floats: {:>9.2} ms  algorithm {:.3} GB/s  bus {:.3} GB/s  = {:.1} % of the copy",
                        f.floats,
                        f.median.as_secs_f64() * 1e3,
                        f.algo_bandwidth / 1e9,
                        f.bus_bandwidth / 1e9,
                        100.0 * f.bus_bandwidth / copy
                    );
                }
                return Ok(());
            }
            if what == "features" {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                let b = halyard_client::features_bench::FeaturesBench {
                    dir,
                    rows,
                    customers,
                    executors: executors.max(1),
                    // Together the executors have the cores the single process has.
                    slots: (cores / executors.max(1)).max(1),
                    partitions: cores,
                    runs: runs.max(1),
                };
                let (cluster, local) = halyard_client::features_bench::run(&b).await?;
                let (c, l) = (cluster.median(), local.median());
                let rate = |d: std::time::Duration| rows as f64 / d.as_secs_f64();
                println!(
                    "feature stage over {rows} events -> {} feature rows (median of {} runs each):\n  \
                     cluster ({} executors x {} slots): {:.2} s, {:.0} events/s\n  \
                     single-process DataFusion ({} partitions): {:.2} s, {:.0} events/s\n  \
                     cluster / single process: {:.2}x",
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
                return Ok(());
            }
            if what == "serving" {
                let model = match model {
                    Some(m) => m,
                    None => halyard_core::spec::JobSpec::from_file(&spec)?.name,
                };
                let summary =
                    halyard_client::bench::serving(&halyard_client::bench::ServingBench {
                        addr: target.unwrap_or(conn.scheduler),
                        model,
                        spec,
                        connections: connections.max(1),
                        seconds,
                        batch,
                    })
                    .await?;
                println!("{summary}");
                return Ok(());
            }
            let client = Client::connect(&conn.scheduler).await?;
            let dir = std::env::temp_dir().join(format!("halyard-bench-{}", std::process::id()));
            let figures =
                halyard_client::bench::scheduling(&client, &dir, jobs.max(1), batch.max(1)).await?;
            let _ = std::fs::remove_dir_all(&dir);
            println!("{}", figures.summary());
        }
        Command::Models { json, conn } => {
            init_tracing("warn");
            registry::models(&Client::connect(&conn.scheduler).await?, json).await?;
        }
        Command::Model { name, json, conn } => {
            init_tracing("warn");
            registry::model(&Client::connect(&conn.scheduler).await?, &name, json).await?;
        }
        Command::Deploy {
            name,
            version,
            alias,
            percent,
            split,
            json,
            conn,
        } => {
            init_tracing("warn");
            let action = match (version, split) {
                (Some(version), _) => DeployAction::Version {
                    version,
                    alias,
                    percent,
                },
                (None, Some(split)) => DeployAction::Split(split),
                (None, None) => unreachable!("clap requires --version or --split"),
            };
            let client = Client::connect(&conn.scheduler).await?;
            registry::deploy(&client, &name, action, json).await?;
        }
        Command::Promote {
            name,
            alias,
            json,
            conn,
        } => {
            init_tracing("warn");
            let client = Client::connect(&conn.scheduler).await?;
            registry::deploy(&client, &name, DeployAction::Promote(alias), json).await?;
        }
        Command::Rollback { name, json, conn } => {
            init_tracing("warn");
            let client = Client::connect(&conn.scheduler).await?;
            registry::deploy(&client, &name, DeployAction::Rollback, json).await?;
        }
        Command::Undeploy { name, conn } => {
            init_tracing("warn");
            let client = Client::connect(&conn.scheduler).await?;
            registry::deploy(&client, &name, DeployAction::Undeploy, false).await?;
        }
        Command::Experiment { name, json, conn } => {
            init_tracing("warn");
            registry::experiment(&Client::connect(&conn.scheduler).await?, &name, json).await?;
        }
        Command::Sql {
            execute,
            tables,
            delimiter,
            output,
            local,
            conn,
        } => {
            init_tracing("warn");
            if !delimiter.is_ascii() {
                return Err(
                    format!("--delimiter {delimiter:?}: must be one ASCII character").into(),
                );
            }
            // S3 credentials come from the AWS_* environment.
            let s3 = S3Config::default();
            let client;
            let target = if local {
                halyard_client::sql::Target::Local
            } else {
                client = Client::connect(&conn.scheduler).await?;
                halyard_client::sql::Target::Cluster(&client)
            };
            let ctx = halyard_client::sql::context(target, &tables, delimiter as u8, &s3).await?;
            if execute.is_empty() {
                halyard_client::sql::interactive(&ctx, output).await?;
            } else {
                let last = execute.len() - 1;
                for (i, q) in execute.iter().enumerate() {
                    let batches = halyard_client::sql::run(&ctx, q).await?;
                    let out = if i == last { output.as_deref() } else { None };
                    halyard_client::sql::emit(&batches, out)?;
                }
            }
        }
        Command::Train {
            spec,
            device,
            gpus,
            out,
            baselines,
        } => {
            init_tracing("warn");
            let device = device.map(|d| match d.as_str() {
                "cpu" => DeviceKind::Cpu,
                "gpu" => DeviceKind::Gpu,
                _ => DeviceKind::Auto,
            });
            halyard::train::train_local(&spec, device, gpus, out.as_deref(), baselines).await?;
        }
        Command::Datagen { out, rows, seed } => {
            init_tracing("warn");
            let g = halyard_client::datagen::generate(&out, rows, seed)?;
            println!(
                "wrote {} ({} rows, {:.1}% responded) and {}",
                g.responses.display(),
                g.rows,
                g.response_rate * 100.0,
                g.kpis.display()
            );
        }
    }
    Ok(())
}

/// candle, the serving runtime, asks for its thread count before every matrix product
/// and, unless `RAYON_NUM_THREADS` is set, recounts the physical cores from /proc each
/// time: a lone bank-marketing request took 1.45 ms instead of 0.6 ms (curl, connection
/// included; benches/RESULTS.md). Setting it to the cores rayon uses anyway changes
/// nothing else; a process cannot safely set its own environment once threads may run,
/// so the binary re-executes itself (same pid, same arguments) with it set.
#[cfg(unix)]
fn pin_thread_count() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("RAYON_NUM_THREADS", cores.to_string())
        .exec();
    // exec returns only when it failed: carry on, slower to serve.
    eprintln!(
        "warning: cannot re-execute with RAYON_NUM_THREADS set ({err}); set it to the core count for fast serving"
    );
}

#[cfg(not(unix))]
fn pin_thread_count() {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Only the roles that run candle pay for the re-execution.
    if matches!(
        cli.command,
        Command::Standalone(_) | Command::Executor(_) | Command::Train { .. }
    ) {
        pin_thread_count();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
