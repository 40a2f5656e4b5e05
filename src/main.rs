//! `halyard`: one binary, many roles. Parses flags, builds a config, calls a library.
//!
//! Exit codes: 0 success; 1 an error (or, for `submit --follow`, a job that did not
//! succeed); 2 bad usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use halyard_cli::bench::BenchCommand;
use halyard_cli::keys::Connection;
use halyard_cli::registry::{self, DeployAction, Guardrail};
use halyard_cli::sql::SqlArgs;
use halyard_cli::{commands, datagen};
use halyard_core::config::{SETTINGS, Settings};
use halyard_core::spec::DeviceKind;

/// mimalloc rather than glibc's malloc: a training step frees and allocates tensor buffers
/// of hundreds of kilobytes, which glibc returns to the kernel and faults in again each step
/// (the MLP step took 1.6–2× as long; benches/RESULTS.md "Training speed").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "halyard",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("HALYARD_COMMIT"), ")"),
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
    /// Rotate the encryption key: seal again with the first key of --encryption-key-file
    /// every object of --store sealed with another (run with the nodes' settings, the new
    /// key first and the old ones after it, while no job runs; then drop the old keys)
    Reseal(ServerArgs),
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
        conn: Connection,
    },
    /// Check what goes wrong on first contact: the scheduler reachable (and which address
    /// was tried, from which flag or variable; on this machine, whether its port is free or
    /// taken), the key found and accepted, etcd and the object store (when given), the data
    /// directory writable and its free space, GPU support; one line per check with the fix
    Doctor {
        #[command(flatten)]
        conn: Connection,
        #[command(flatten)]
        services: halyard_cli::doctor::Services,
    },
    /// Check a job spec without submitting it: its rules, and that the local files it
    /// names exist and have the columns it names (every problem at once)
    Validate {
        /// The job spec file
        spec: PathBuf,
    },
    /// List jobs
    Jobs {
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Show one job: state, progress, metrics, artifact
    Job {
        /// Job id
        id: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Show a job's log: scheduler events and executor progress
    Logs {
        /// Job id
        id: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Cancel a job
    Cancel {
        /// Job id
        id: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
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
        conn: Connection,
    },
    /// Make TLS certificates for a cluster: a CA and one certificate per node; see
    /// docs/security.md
    Certs {
        #[command(subcommand)]
        what: CertsCommand,
    },
    /// The audit log: every mutating call and refused attempt, with key, role, node,
    /// target and outcome (admin and operator)
    Audit {
        /// Only calls within this long ago, such as 90m, 12h or 7d [default: all kept]
        #[arg(long)]
        since: Option<String>,
        /// Print JSON lines
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Run a job spec on a schedule: nightly retraining, rescoring, audience refresh
    ///
    /// The leader submits each due run as an ordinary job (`<schedule>-<due ms>`, linked
    /// to the schedule) exactly once, also across a leader failover; a run still going
    /// when the next is due is not started twice (that due time is recorded as skipped).
    /// Cron patterns have five fields (minute hour day-of-month month day-of-week) and
    /// are read in UTC. See docs/targeting.md.
    Schedule {
        #[command(subcommand)]
        what: ScheduleCommand,
        /// Print JSON
        #[arg(long, global = true)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Make, list and revoke API keys (admin only); see docs/security.md
    Keys {
        #[command(subcommand)]
        what: KeysCommand,
        /// Print JSON
        #[arg(long, global = true)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Delete what the object store holds and no record needs any more: version folders
    /// never registered, checkpoints of ended jobs nothing can resume, feature tables of
    /// jobs ended more than `keep_feature_days` ago (admin and operator)
    ///
    /// The leader also runs this every `gc_hours`. Nothing written within `gc_grace_mins`
    /// is touched, nor anything the coordinator has no record of; the rules are in
    /// docs/guarantees.md.
    Gc {
        /// Only list what would be deleted
        #[arg(long)]
        dry_run: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Show the leader and the live executors
    Cluster {
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Measure: a running cluster's scheduling and serving, or, in this process, the
    /// feature stage and the ring all-reduce (`halyard bench WHAT --help` for each)
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// List registered models: versions, traffic split, aliases
    Models {
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// List audiences: the versions scoring jobs wrote, with size and churn
    ///
    /// Each run of a job with a `[score]` section writes a new immutable version of the
    /// audience named by the job's `name`: `audience.parquet` (the keys, score, rank,
    /// model version and scoring time), and `added.parquet` / `removed.parquet` with only
    /// the keys that entered or left since the version before (what to send downstream).
    Audiences {
        /// One audience's versions (default: every audience's)
        name: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Show a model: its versions (metrics, job, data lineage) and deployment
    Model {
        /// Model name (the job spec's `name`)
        name: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Write a model version's report: plots of its held-out evaluation, as one HTML file
    ///
    /// Response models: ROC and precision–recall curves, calibration, cumulative gains and
    /// lift by decile, training curves, metrics. Uplift models: the Qini curve against the
    /// response model's ranking and random targeting. Forecasters: a sample of series
    /// against actuals and Naive2, the error per step ahead. The page is self-contained
    /// (inline SVG, no script): open it offline or mail it. The console shows the same page
    /// (a model's page, *report* beside each version).
    Report {
        /// `NAME@VERSION`, `NAME` (its newest version) or the id of the job that trained it
        target: String,
        /// The HTML file to write (default: `NAME-vVERSION.html` in this folder)
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        conn: Connection,
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
        #[arg(
            long,
            conflicts_with_all = ["split", "bandit", "replicas", "metrics"],
            required_unless_present_any = ["split", "bandit", "replicas", "metrics"]
        )]
        version: Option<u64>,
        /// Alias to give the version
        #[arg(long, default_value = "production")]
        alias: String,
        /// Share of traffic (1-99) for a non-production alias, beside production
        #[arg(long, requires = "version", conflicts_with = "ramp")]
        percent: Option<u32>,
        /// Ramp --version up as the canary beside production through these shares in
        /// percent (such as 1,10,50), one step every --step; the leader promotes it after
        /// the last step, or rolls it back if --guardrail breaks (docs/experiments.md)
        #[arg(long, value_delimiter = ',', requires = "version")]
        ramp: Option<Vec<u32>>,
        /// With --ramp: least time at each step (30s, 10m, 1h)
        #[arg(long, default_value = "1h", requires = "ramp")]
        step: String,
        /// With --ramp: what rolls the canary back when it is worse than production by
        /// an always-valid interval, one or more of conversion, errors, latency, metrics
        /// (those --metrics declares guardrails), such as --guardrail errors,latency
        #[arg(long, value_enum, value_delimiter = ',', requires = "ramp")]
        guardrail: Vec<Guardrail>,
        /// Traffic split as VERSION=WEIGHT pairs, such as 3=90,4=10
        #[arg(long, conflicts_with_all = ["bandit", "replicas"])]
        split: Option<String>,
        /// Thompson-sampling allocation between these versions (such as 3,4,5): the
        /// leader re-weighs them every --every by the posterior probability that each
        /// converts best (from the outcomes fed back); any later deploy, split or promote
        /// ends it (docs/experiments.md)
        #[arg(long, value_delimiter = ',')]
        bandit: Option<Vec<u64>>,
        /// With --bandit: the share each version keeps at least, in percent
        #[arg(long, default_value = "1%", requires = "bandit")]
        floor: String,
        /// With --bandit: time between reallocations (30s, 5m, 1h)
        #[arg(long, default_value = "60s", requires = "bandit")]
        every: String,
        /// Serve the model on this many executors, chosen by the leader among those with
        /// memory for it (--memory-mb), and moved when one dies; 0: on every executor it
        /// fits on (the default). The traffic split stays as it is
        #[arg(long, conflicts_with = "bandit")]
        replicas: Option<u32>,
        /// Declare the experiment's metrics as NAME:KIND[:ROLE][:inverse] (KIND binary or
        /// continuous; ROLE primary, secondary or guardrail; the first is primary unless
        /// another is; inverse: lower is better), such as
        /// visit:binary,spend:continuous,unsubscribe:binary:guardrail:inverse.
        /// Feedback under any other metric is then refused; `none` takes any again
        #[arg(long, value_delimiter = ',', conflicts_with_all = ["split", "bandit", "replicas"])]
        metrics: Option<Vec<String>>,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
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
        conn: Connection,
    },
    /// Restore the deployment as it was before its last change
    Rollback {
        /// Model name
        name: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Stop serving a model (its versions stay registered)
    Undeploy {
        /// Model name
        name: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// A/B analysis: the sample-ratio check, each variant's conversion rate from the
    /// outcomes fed back, the difference with production, fixed-horizon and always-valid
    /// 95% intervals and p-values; `halyard experiment analyze` analyses a past campaign's
    /// table
    ///
    /// `halyard experiment NAME` reads the cluster's live counts. `halyard experiment
    /// analyze --table campaign.csv --variant segment --control "No E-Mail" --metric visit
    /// --metric spend --covariate history` reads a table with one row per customer and
    /// reports the sample-ratio check, fixed-horizon and always-valid intervals, CUPED and
    /// the detectable effect per variant and metric (docs/experiments.md).
    #[command(args_conflicts_with_subcommands = true)]
    Experiment {
        #[command(subcommand)]
        what: Option<ExperimentCommand>,
        /// Model name
        name: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Drift of a served model's inputs against its training data, per version and feature
    ///
    /// Every executor counts the records it scores into the training data's quantile bins
    /// and top categories and scores each window of 10,000 records: the Wasserstein
    /// distance over the training standard deviation for numbers, the Jensen-Shannon
    /// distance for categories, drift at 0.1 (Evidently's defaults), and the PSI. This
    /// merges every executor's last window (docs/monitoring.md).
    Monitor {
        /// Model name
        name: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Run SQL on the cluster (its embedded Ballista) or, with --local, in this process
    ///
    /// `halyard sql --table events=data/events.csv -e "SELECT channel, count(*) FROM events GROUP BY channel"`.
    /// Without -e, reads statements (each ending with ';') from standard input. Tables can
    /// also be declared in SQL: CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 's3://b/t/'.
    /// The feature functions (bucketize, hash_bucket, day_of_week, week_of_year,
    /// is_holiday) are available; docs/features.md shows each.
    Sql {
        #[command(flatten)]
        args: SqlArgs,
        #[command(flatten)]
        conn: Connection,
    },
    /// Train a job spec here, without a cluster, and print its metrics
    ///
    /// Runs exactly the executor's training path in this process: useful to try a spec
    /// before submitting it, and the source of the figures in benches/RESULTS.md.
    Train {
        /// Job spec (TOML)
        spec: PathBuf,
        /// Override the spec's [train] device
        #[arg(long, value_enum)]
        device: Option<Device>,
        /// GPUs `auto` may use here
        #[arg(long, default_value_t = 0, env = "HALYARD_GPUS")]
        gpus: u32,
        /// Folder to write the weights, a training summary and the test rows' predictions
        /// (predictions.csv: row, the excluded id columns, label, score) or a forecaster's
        /// held-out points (forecasts.csv: series, step, actual, forecast) to
        #[arg(long)]
        out: Option<PathBuf>,
        /// Forecasters: also score the M4 classical methods on the same split
        #[arg(long)]
        baselines: bool,
    },
    /// Profile a data file before training on it: per column the type it is read as,
    /// missing values, distinct values, range or most frequent values, how a model encodes
    /// it, and warnings (constant, a likely id, a likely leak of --label, dates read as
    /// text, mostly missing)
    Profile(halyard_cli::profile::ProfileArgs),
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
    /// Print a shell completion script: `halyard completions bash > /etc/bash_completion.d/halyard`,
    /// `halyard completions zsh > "${fpath[1]}/_halyard"`, `halyard completions fish >
    /// ~/.config/fish/completions/halyard.fish`
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `halyard man > halyard.1 && man ./halyard.1`
    Man,
}

/// `--device`: where `halyard train` trains.
#[derive(Clone, Copy, ValueEnum)]
enum Device {
    /// The CPU
    Cpu,
    /// A GPU; fails if there is none or the build lacks GPU support
    Gpu,
    /// A GPU if one is there, else the CPU
    Auto,
}

impl From<Device> for DeviceKind {
    fn from(d: Device) -> DeviceKind {
        match d {
            Device::Cpu => DeviceKind::Cpu,
            Device::Gpu => DeviceKind::Gpu,
            Device::Auto => DeviceKind::Auto,
        }
    }
}

/// `halyard certs`' subcommands.
#[derive(Subcommand)]
enum CertsCommand {
    /// Write ca.pem and ca.key, and NODE.pem and NODE.key for each node, into a folder;
    /// start each node with --tls-cert NODE.pem --tls-key NODE.key --tls-ca ca.pem, and
    /// give clients --tls-ca ca.pem
    Init {
        /// Folder to write to (existing files are never replaced)
        #[arg(long, default_value = "halyard-certs")]
        out: PathBuf,
        /// The nodes' host names or IP addresses, comma-separated (each certificate also
        /// names localhost and 127.0.0.1)
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
}

/// `halyard experiment`'s subcommands.
#[derive(Subcommand)]
enum ExperimentCommand {
    /// Analyse a campaign that already ran, from its table (CSV or Parquet, local or S3),
    /// or a deployed model's experiment from its event log in the store (--events)
    Analyze(halyard_cli::experiment::AnalyzeArgs),
    /// Before a test: the customers per group a fixed-horizon test needs to detect an
    /// effect (a rate's, or a mean's with --sd), and the days it takes at --daily
    Plan(halyard_cli::experiment::PlanArgs),
}

/// `halyard schedule`'s subcommands.
#[derive(Subcommand)]
enum ScheduleCommand {
    /// Create a schedule
    ///
    /// `halyard schedule create nightly-audience --spec audience.toml --cron "0 3 * * *"`
    /// scores and refreshes an audience every night at 03:00 UTC;
    /// `--every 24h` runs every 24 hours from now.
    Create {
        /// The schedule's name (runs are jobs NAME-<due ms>)
        name: String,
        /// The job spec each run submits
        #[arg(long)]
        spec: PathBuf,
        /// Interval between runs: 24h, 90m, 30s
        #[arg(long, conflicts_with = "cron", required_unless_present = "cron")]
        every: Option<String>,
        /// Cron pattern, five fields, UTC: "0 3 * * *"
        #[arg(long)]
        cron: Option<String>,
    },
    /// List schedules: timing, state, next run, last run
    List,
    /// A schedule's runs, oldest first, with their jobs' states
    History {
        /// Schedule name
        name: String,
    },
    /// Stop firing runs (the due times pass)
    Pause {
        /// Schedule name
        name: String,
    },
    /// Fire runs again, from the next due time after now
    Resume {
        /// Schedule name
        name: String,
    },
    /// Delete a schedule; its runs stay as jobs
    Delete {
        /// Schedule name
        name: String,
    },
}

/// `halyard keys`' subcommands.
#[derive(Subcommand)]
enum KeysCommand {
    /// Make a key and print its secret, once
    Create {
        /// What it may do: admin, operator, submitter, predictor or viewer
        #[arg(long)]
        role: String,
        /// A name people recognise it by [default: the role]
        #[arg(long, default_value = "")]
        name: String,
        /// Predictor keys: the models it may score, `*` matching any text (campaign-*)
        #[arg(long, default_value = "")]
        models: String,
        /// Lifetime, such as 30d, 12h, 45m or 90s [default: none]
        #[arg(long, default_value = "")]
        expires: String,
    },
    /// List the keys (never their secrets)
    List,
    /// Revoke a key: every node refuses it within seconds
    Revoke {
        /// The key's id (12 hex digits)
        id: String,
    },
}

/// Server settings: `--config FILE` and one flag per setting of
/// [`halyard_core::config::SETTINGS`], each also read from its `HALYARD_*` variable; what
/// neither sets comes from the file, then the role's defaults.
struct ServerArgs {
    config: Option<PathBuf>,
    flags: Settings,
}

impl ServerArgs {
    fn settings(self) -> halyard_core::Result<Settings> {
        let file = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        Ok(self.flags.or(file))
    }
}

impl clap::FromArgMatches for ServerArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Settings::default();
        for def in SETTINGS {
            if let Some(value) = m.get_one::<String>(def.key) {
                flags.set(def.key, value).map_err(|e| {
                    clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n"))
                })?;
            }
        }
        Ok(ServerArgs {
            config: m.get_one::<PathBuf>("config").cloned(),
            flags,
        })
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for ServerArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let config = clap::Arg::new("config")
            .long("config")
            .env("HALYARD_CONFIG")
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help("Config file: TOML with the settings' keys (docs/configuration.md)");
        SETTINGS.iter().fold(cmd.arg(config), |cmd, def| {
            cmd.arg(
                clap::Arg::new(def.key)
                    .long(def.flag())
                    .env(def.env())
                    .value_name(def.key.to_uppercase())
                    .hide_env_values(def.secret)
                    .help(format!("{} [default: {}]", def.help(), (def.default)())),
            )
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
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

async fn run(cli: Cli) -> Result<(), AnyError> {
    let quiet = !matches!(
        cli.command,
        Command::Standalone(_) | Command::Scheduler(_) | Command::Executor(_)
    );
    init_tracing(if quiet { "warn" } else { "info" });
    let client = |conn: Connection| async move { halyard_cli::keys::connect(&conn).await };
    match cli.command {
        Command::Standalone(args) => halyard::run_standalone(args.settings()?).await?,
        Command::Scheduler(args) => halyard::run_scheduler(args.settings()?).await?,
        Command::Executor(args) => halyard::run_executor(args.settings()?).await?,
        Command::Reseal(args) => println!("{}", halyard::reseal(args.settings()?).await?),
        Command::Submit {
            spec,
            follow,
            json,
            conn,
        } => {
            // The spec is read and checked before any network call; its local files too
            // when the scheduler is on this machine (it reads the same files).
            let spec = if halyard_core::auth::is_loopback(&conn.scheduler) {
                commands::checked_spec(&spec)?
            } else {
                halyard_core::spec::JobSpec::from_file(&spec)?
            };
            commands::submit(&client(conn).await?, spec, follow, json).await?
        }
        Command::Validate { spec } => commands::validate(&spec)?,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            // Into a buffer first: clap_complete panics on a closed pipe, a write error
            // here is an error like any other.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "halyard", &mut script);
            std::io::stdout().write_all(&script)?;
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
        }
        Command::Doctor { conn, services } => halyard_cli::doctor::run(&conn, &services).await?,
        Command::Jobs { json, conn } => commands::jobs(&client(conn).await?, json).await?,
        Command::Job { id, json, conn } => commands::job(&client(conn).await?, &id, json).await?,
        Command::Logs { id, conn } => commands::logs(&client(conn).await?, &id).await?,
        Command::Cancel { id, json, conn } => {
            commands::cancel(&client(conn).await?, &id, json).await?
        }
        Command::Resume {
            id,
            follow,
            json,
            conn,
        } => commands::resume(&client(conn).await?, &id, follow, json).await?,
        Command::Cluster { json, conn } => commands::cluster(&client(conn).await?, json).await?,
        Command::Gc {
            dry_run,
            json,
            conn,
        } => commands::gc(&client(conn).await?, dry_run, json).await?,
        Command::Bench { what, conn } => {
            println!("{}", halyard_cli::bench::run(what, &conn).await?)
        }
        Command::Certs {
            what: CertsCommand::Init { out, nodes },
        } => {
            let w = halyard_core::certs::init(&out, &nodes)?;
            println!("CA: {} (its key: ca.key, keep it offline)", w.ca.display());
            for (name, cert, key) in &w.nodes {
                println!(
                    "{name}: --tls-cert {} --tls-key {}",
                    cert.display(),
                    key.display()
                );
            }
        }
        Command::Audit { since, json, conn } => {
            halyard_cli::keys::audit(&client(conn).await?, since.as_deref(), json).await?
        }
        Command::Schedule { what, json, conn } => {
            use halyard_cli::schedules;
            let c = client(conn).await?;
            match what {
                ScheduleCommand::Create {
                    name,
                    spec,
                    every,
                    cron,
                } => {
                    schedules::create(&c, &name, &spec, every.as_deref(), cron.as_deref(), json)
                        .await?
                }
                ScheduleCommand::List => schedules::list(&c, json).await?,
                ScheduleCommand::History { name } => schedules::history(&c, &name, json).await?,
                ScheduleCommand::Pause { name } => schedules::pause(&c, &name, true, json).await?,
                ScheduleCommand::Resume { name } => {
                    schedules::pause(&c, &name, false, json).await?
                }
                ScheduleCommand::Delete { name } => schedules::delete(&c, &name, json).await?,
            }
        }
        Command::Keys { what, json, conn } => {
            let c = client(conn).await?;
            match what {
                KeysCommand::Create {
                    role,
                    name,
                    models,
                    expires,
                } => {
                    let request = halyard_client::proto::CreateKeyRequest {
                        name,
                        role,
                        models,
                        expires,
                    };
                    halyard_cli::keys::create(&c, request, json).await?
                }
                KeysCommand::List => halyard_cli::keys::list(&c, json).await?,
                KeysCommand::Revoke { id } => halyard_cli::keys::revoke(&c, &id, json).await?,
            }
        }
        Command::Models { json, conn } => registry::models(&client(conn).await?, json).await?,
        Command::Audiences { name, json, conn } => {
            registry::audiences(&client(conn).await?, name.as_deref(), json).await?
        }
        Command::Model { name, json, conn } => {
            registry::model(&client(conn).await?, &name, json).await?
        }
        Command::Report { target, out, conn } => {
            registry::report(&client(conn).await?, &target, out.as_deref()).await?
        }
        Command::Deploy {
            name,
            version,
            alias,
            percent,
            ramp,
            step,
            guardrail,
            split,
            bandit,
            floor,
            every,
            replicas,
            metrics,
            json,
            conn,
        } => {
            let action = match (replicas, bandit, ramp, version) {
                _ if metrics.is_some() => DeployAction::Metrics(
                    metrics
                        .into_iter()
                        .flatten()
                        .filter(|m| !m.trim().is_empty() && m.trim() != "none")
                        .collect(),
                ),
                (Some(count), ..) => DeployAction::Replicas(count),
                (None, Some(versions), _, _) => DeployAction::bandit(versions, &floor, &every)?,
                (None, None, Some(steps), Some(version)) => {
                    DeployAction::ramp(version, steps, &step, &guardrail)?
                }
                _ => DeployAction::from_flags(version, alias, percent, split)?,
            };
            registry::deploy(&client(conn).await?, &name, action, json).await?
        }
        Command::Promote {
            name,
            alias,
            json,
            conn,
        } => {
            let action = DeployAction::Promote(alias);
            registry::deploy(&client(conn).await?, &name, action, json).await?
        }
        Command::Rollback { name, json, conn } => {
            registry::deploy(&client(conn).await?, &name, DeployAction::Rollback, json).await?
        }
        Command::Undeploy { name, conn } => {
            registry::deploy(&client(conn).await?, &name, DeployAction::Undeploy, false).await?
        }
        Command::Experiment {
            what: Some(ExperimentCommand::Analyze(args)),
            conn,
            ..
        } => halyard_cli::experiment::command(args, &conn).await?,
        Command::Experiment {
            what: Some(ExperimentCommand::Plan(args)),
            ..
        } => halyard_cli::experiment::plan(&args)?,
        Command::Experiment {
            what: None,
            name,
            json,
            conn,
        } => {
            let name = name.ok_or_else(|| {
                halyard_cli::CliError::Failed(
                    "name the model (halyard experiment NAME), or analyse a table (halyard experiment analyze --help)".into(),
                )
            })?;
            registry::experiment(&client(conn).await?, &name, json).await?
        }
        Command::Monitor { name, json, conn } => {
            registry::monitor(&client(conn).await?, &name, json).await?
        }
        Command::Sql { args, conn } => halyard_cli::sql::command(args, &conn).await?,
        Command::Train {
            spec,
            device,
            gpus,
            out,
            baselines,
        } => {
            let device = device.map(DeviceKind::from);
            halyard::train::train_local(&spec, device, gpus, out.as_deref(), baselines).await?
        }
        Command::Profile(args) => halyard_cli::profile::command(args).await?,
        Command::Datagen { out, rows, seed } => {
            println!("{}", datagen::generate(&out, rows, seed)?)
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
