//! `halyard experiment analyze`: the analysis of a campaign that already ran, from a CSV or
//! Parquet table (local or S3) with one row per customer ([`halyard_models::experiment`]);
//! `halyard experiment plan`: the sample size a fixed-horizon test needs, before it starts.

use halyard_core::data::read_table;
use halyard_core::spec::{DataSpec, resolve_source};
use halyard_core::store::{S3Config, read_url};
use halyard_models::experiment::{Analysis, AnalysisSpec, MetricResult, Report, analyze};
use halyard_models::stats::SRM_P_VALUE;

use crate::commands::out;
use crate::{CliError, Result};

/// What `halyard experiment analyze` was given.
#[derive(Debug, Clone, clap::Args)]
pub struct AnalyzeArgs {
    /// The campaign's table: a CSV or Parquet file, a local path or an s3:// URL (S3
    /// credentials from the AWS_* environment)
    #[arg(long, required_unless_present = "events", conflicts_with = "events")]
    pub table: Option<String>,
    /// Instead of --table, a deployed model's event log in the store: its folder, such as
    /// halyard-data/store/events/offer/ (or s3://…/events/offer/). One row per request key:
    /// its variant is the version of its first exposure, each metric the sum of the values
    /// fed back for it (0 when none). Read by SQL on the cluster's Ballista (the
    /// scheduler from HALYARD_SCHEDULER and HALYARD_KEY, or the flags before `analyze`),
    /// or in this process with --local
    #[arg(long)]
    pub events: Option<String>,
    /// With --events: a table (CSV or Parquet) with a row per key, joined on
    /// --key-column, whose columns --covariate and --segment may name (keys without a row
    /// are left out and counted)
    #[arg(long, requires = "events")]
    pub keys: Option<String>,
    /// With --keys: its column holding the request keys
    #[arg(long, requires = "keys", default_value = "key")]
    pub key_column: String,
    /// With --events: run the SQL in this process instead of on the cluster
    #[arg(long, requires = "events")]
    pub local: bool,
    /// The column naming each row's variant (with --events: the version, always)
    #[arg(long, required_unless_present = "events")]
    pub variant: Option<String>,
    /// The control's value in the variant column
    #[arg(long)]
    pub control: String,
    /// A metric column (repeat for several; the first is the primary). A column holding
    /// only 0 and 1 is a rate (two-proportion test), any other a mean (Welch's t-test)
    #[arg(long = "metric", required = true)]
    pub metrics: Vec<String>,
    /// A ratio metric, NAME=NUMERATOR/DENOMINATOR (repeat for several), such as
    /// revenue_per_visit=revenue/visits: per variant the sum of one column over the sum of
    /// the other, compared by the delta method (after the --metric columns)
    #[arg(long = "ratio", value_parser = parse_ratio)]
    pub ratios: Vec<(String, String, String)>,
    /// A pre-experiment column (last year's spend, say) for CUPED variance reduction
    #[arg(long)]
    pub covariate: Option<String>,
    /// A column to break the results down by
    #[arg(long)]
    pub segment: Option<String>,
    /// The split the campaign was meant to have, one weight per variant in the order of
    /// their names sorted (e.g. 1,1,2) [default: equal]
    #[arg(long, value_delimiter = ',')]
    pub split: Option<Vec<f64>>,
    /// Confidence of the intervals
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// `NAME=NUMERATOR/DENOMINATOR`.
fn parse_ratio(text: &str) -> std::result::Result<(String, String, String), String> {
    let parts = text
        .split_once('=')
        .and_then(|(name, cols)| cols.split_once('/').map(|(n, d)| (name, n, d)))
        .map(|(name, n, d)| (name.trim(), n.trim(), d.trim()))
        .filter(|(name, n, d)| !name.is_empty() && !n.is_empty() && !d.is_empty());
    match parts {
        Some((name, n, d)) => Ok((name.into(), n.into(), d.into())),
        None => Err(format!(
            "{text:?} is not NAME=NUMERATOR/DENOMINATOR, such as revenue_per_visit=revenue/visits"
        )),
    }
}

/// Run the analysis and print it; `conn` reaches the cluster for `--events`.
pub async fn command(args: AnalyzeArgs, conn: &crate::keys::Connection) -> Result<()> {
    if !(0.5..1.0).contains(&args.confidence) {
        return Err(CliError::Failed(format!(
            "--confidence {} must lie in [0.5, 1), such as 0.95",
            args.confidence
        )));
    }
    let (batches, source, variant) = match (&args.table, &args.events) {
        (Some(table), _) => {
            let url = resolve_source(table, std::path::Path::new("."))?;
            let bytes = read_url(&url, &S3Config::default()).await?;
            let data = DataSpec {
                source: url.clone(),
                ..DataSpec::default()
            };
            let batches = read_table(&bytes, &data, &url)?.batches;
            (batches, url, args.variant.clone().unwrap_or_default())
        }
        (None, Some(events)) => (
            events_table(&args, conn).await?,
            events.clone(),
            EVENTS_VARIANT.to_string(),
        ),
        (None, None) => {
            return Err(CliError::Failed(
                "say what to analyse: --table FILE or --events FOLDER".into(),
            ));
        }
    };
    let spec = AnalysisSpec {
        variant,
        control: args.control,
        metrics: args.metrics,
        ratios: args.ratios,
        covariate: args.covariate,
        segment: args.segment,
        split: args.split,
        confidence: args.confidence,
        power: 0.8,
    };
    let report =
        analyze(&batches, &spec).map_err(|e| CliError::Failed(format!("{source}: {e}")))?;
    if args.json {
        out(&serde_json::to_string_pretty(&report).map_err(|e| CliError::Failed(e.to_string()))?);
    } else {
        out(&render(&report, &spec, &source));
    }
    Ok(())
}

/// The column of the per-key table of an event log that names each key's version.
const EVENTS_VARIANT: &str = "variant";

/// `name` double-quoted for SQL, refused when it holds a quote.
fn quoted(flag: &str, name: &str) -> Result<String> {
    if name.contains('"') || name.is_empty() {
        return Err(CliError::Failed(format!(
            "{flag} {name:?}: a column's name without double quotes"
        )));
    }
    Ok(format!("\"{name}\""))
}

/// The per-key table of `--events`: one row per request key, its variant (the version of
/// its first exposure, else of its first outcome), the sum of each metric the analysis
/// reads (0 when none was fed back), and with `--keys` the covariate and segment columns
/// of that table, joined on `--key-column`. Run as SQL on the cluster (or locally).
async fn events_table(
    args: &AnalyzeArgs,
    conn: &crate::keys::Connection,
) -> Result<Vec<arrow::array::RecordBatch>> {
    use crate::sql::{Target, context, run};
    let events = args.events.as_deref().unwrap_or_default();
    let mut metrics: Vec<&str> = args.metrics.iter().map(String::as_str).collect();
    for (_, n, d) in &args.ratios {
        metrics.extend([n.as_str(), d.as_str()]);
    }
    metrics.sort_unstable();
    metrics.dedup();
    let from_keys: Vec<&String> = args
        .covariate
        .iter()
        .chain(&args.segment)
        .filter(|c| !metrics.contains(&c.as_str()))
        .collect();
    if args.keys.is_none() && !from_keys.is_empty() {
        return Err(CliError::Failed(format!(
            "--covariate and --segment with --events name columns of --keys FILE (a row per key); {} is not a metric of the event log",
            from_keys[0]
        )));
    }
    let mut sums = Vec::new();
    for m in &metrics {
        halyard_core::registry::check_metric_name(m).map_err(CliError::Failed)?;
        if [EVENTS_VARIANT, "key"].contains(m) {
            return Err(CliError::Failed(format!(
                "--metric {m}: with --events the columns key and variant are the request key and its version"
            )));
        }
        sums.push(format!(
            "COALESCE(SUM(CASE WHEN kind = 'outcome' AND metric = '{m}' THEN value END), 0) AS \"{m}\""
        ));
    }
    let per_key = format!(
        "SELECT key, first_value(CAST(version AS VARCHAR) ORDER BY kind, time) AS {EVENTS_VARIANT}, {} FROM events WHERE key <> '' GROUP BY key",
        sums.join(", ")
    );
    let mut folder = halyard_core::spec::resolve_source(events, std::path::Path::new("."))?;
    if !folder.ends_with('/') {
        folder.push('/');
    }
    let mut tables = Vec::new();
    if let Some(keys) = &args.keys {
        tables.push(format!("keys={keys}"));
    }
    let client;
    let target = if args.local {
        Target::Local { keep_order: false }
    } else {
        client = crate::keys::connect(conn).await?;
        Target::Cluster(&client)
    };
    let ctx = context(target, &tables, b',', &S3Config::default()).await?;
    run(
        &ctx,
        &format!("CREATE EXTERNAL TABLE events STORED AS PARQUET LOCATION '{folder}'"),
    )
    .await
    .map_err(|e| {
        if e.to_string().contains("No files found") {
            CliError::Failed(format!(
                "no event files under {folder} yet: each node writes its events there every 2 s once it has any (check the store and the model's name)"
            ))
        } else {
            e
        }
    })?;
    let Some(_) = &args.keys else {
        return run(&ctx, &per_key).await;
    };
    let on = quoted("--key-column", &args.key_column)?;
    let mut extra = Vec::new();
    for c in &from_keys {
        extra.push(format!("k.{}", quoted("--covariate/--segment", c)?));
    }
    // One query: every key of the log, marked when the keys table has no row for it;
    // the marked ones are counted and left out here.
    let marked = run(
        &ctx,
        &format!(
            "SELECT e.*, {}k.{on} IS NULL AS unmatched FROM ({per_key}) e LEFT JOIN keys k ON e.key = CAST(k.{on} AS VARCHAR)",
            extra.iter().map(|c| format!("{c}, ")).collect::<String>()
        ),
    )
    .await?;
    let arrow_error = |e: arrow::error::ArrowError| CliError::Failed(format!("--keys: {e}"));
    let (mut all, mut left_out, mut joined) = (0, 0, Vec::with_capacity(marked.len()));
    for b in &marked {
        use arrow::array::AsArray;
        let last = b.num_columns() - 1;
        let unmatched = b.column(last).as_boolean();
        all += b.num_rows();
        left_out += unmatched.true_count();
        let keep = arrow::compute::not(unmatched).map_err(arrow_error)?;
        let kept = arrow::compute::filter_record_batch(b, &keep).map_err(arrow_error)?;
        joined.push(
            kept.project(&(0..last).collect::<Vec<_>>())
                .map_err(arrow_error)?,
        );
    }
    if left_out > 0 {
        eprintln!(
            "{left_out} of {all} keys of the event log have no row in {} (column {}): left out",
            args.keys.as_deref().unwrap_or_default(),
            args.key_column
        );
    }
    Ok(joined)
}

/// What `halyard experiment plan` was given.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// The control's conversion rate (0 to 1), or its mean with --sd
    #[arg(long)]
    pub baseline: f64,
    /// The smallest difference worth detecting: absolute (0.01), or relative to the
    /// baseline with a % sign (10%)
    #[arg(long)]
    pub effect: String,
    /// A mean metric's standard deviation (revenue, spend); without it the metric is a rate
    #[arg(long)]
    pub sd: Option<f64>,
    /// Groups in the test, the control included (each variant is compared with it)
    #[arg(long, default_value_t = 2)]
    pub groups: u32,
    /// Confidence level of the two-sided test
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    /// Power: the chance of detecting a difference of --effect
    #[arg(long, default_value_t = 0.8)]
    pub power: f64,
    /// Eligible customers per day: how many days the test takes
    #[arg(long)]
    pub daily: Option<f64>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// `halyard experiment plan`.
pub fn plan(args: &PlanArgs) -> Result<()> {
    let bad = |what: String| Err(CliError::Failed(what));
    if !(0.5..1.0).contains(&args.confidence) || !(0.5..1.0).contains(&args.power) {
        return bad("--confidence and --power lie in [0.5, 1), such as 0.95 and 0.8".into());
    }
    if args.groups < 2 {
        return bad(format!(
            "--groups {}: a test has at least 2 (control and a variant)",
            args.groups
        ));
    }
    let effect = match args.effect.trim().strip_suffix('%') {
        Some(rel) => rel.trim().parse::<f64>().map(|r| r / 100.0 * args.baseline),
        None => args.effect.trim().parse::<f64>(),
    }
    .map_err(|_| {
        CliError::Failed(format!(
            "--effect {:?}: a number (0.01) or a percentage (10%)",
            args.effect
        ))
    })?;
    let rate = args.sd.is_none();
    let within = |p: f64| (0.0..=1.0).contains(&p);
    if rate && !(within(args.baseline) && within(args.baseline + effect)) {
        return bad(format!(
            "--baseline {} with --effect {}: a rate and the rate it moves to lie between 0 and 1 (for a mean metric give --sd)",
            args.baseline, args.effect
        ));
    }
    if effect == 0.0 || !effect.is_finite() || args.sd.is_some_and(|s| s.is_nan() || s <= 0.0) {
        return bad("--effect must be non-zero and --sd positive".into());
    }
    let p =
        halyard_models::stats::plan(args.baseline, effect, args.sd, args.confidence, args.power);
    let per_group = p.per_group.ceil();
    let total = per_group * f64::from(args.groups);
    let days = args.daily.map(|d| (total / d).ceil());
    if args.json {
        out(&serde_json::json!({
            "baseline": args.baseline,
            "effect": effect,
            "sd": p.sd,
            "confidence": args.confidence,
            "power": args.power,
            "groups": args.groups,
            "per_group": per_group,
            "total": total,
            "days": days,
        })
        .to_string());
        return Ok(());
    }
    let what = if rate {
        format!(
            "a rate of {:.4} to {:.4}",
            args.baseline,
            args.baseline + effect
        )
    } else {
        format!("a mean of {} by {effect:+} (sd {})", args.baseline, p.sd)
    };
    out(&format!(
        "fixed-horizon test of {what}, {} two-sided, {:.0}% power: {per_group:.0} per group, {total:.0} in all ({} groups){}",
        pct(args.confidence),
        args.power * 100.0,
        args.groups,
        days.map_or(String::new(), |d| format!(
            ", about {d:.0} days at {} a day",
            args.daily.unwrap_or(0.0)
        ))
    ));
    out(
        "read it once, at that size; looking before then needs the always-valid figures (halyard experiment NAME), which are wider: plan for more (docs/experiments.md)",
    );
    Ok(())
}

fn pct(confidence: f64) -> String {
    format!("{:.0}%", confidence * 100.0)
}

/// The report as text: the SRM check before any result.
pub fn render(r: &Report, spec: &AnalysisSpec, source: &str) -> String {
    let mut s = format!(
        "{source}: {} rows; variants in column {:?}, control {:?}; {} intervals\n",
        r.overall.rows,
        spec.variant,
        r.control,
        pct(r.confidence)
    );
    block(&mut s, &r.overall, r, "");
    if let Some(column) = &spec.segment {
        for (value, a) in &r.segments {
            s.push_str(&format!("\n== {column} = {value}\n"));
            block(&mut s, a, r, "  ");
        }
    }
    s.push_str(
        "\nfixed: the test for one planned look (Wald or Welch interval). always-valid: a confidence sequence, true at every look, so it may be watched as data arrive. detectable: the smallest difference the fixed test finds 80% of the time at these sizes. See docs/experiments.md.\n",
    );
    s
}

fn block(s: &mut String, a: &Analysis, r: &Report, indent: &str) {
    let counts: Vec<String> = a.counts.iter().map(|(v, n)| format!("{v} {n}")).collect();
    match &a.srm {
        Some(srm) if srm.mismatch => s.push_str(&format!(
            "{indent}SAMPLE RATIO MISMATCH: {} against the split: chi-square {:.2} ({} df), p = {:.2e} < {SRM_P_VALUE}. The assignment is broken (a bug, bots, a filter after assignment): do not trust the results below.\n",
            counts.join(", "),
            srm.chi2,
            srm.df,
            srm.p_value
        )),
        Some(srm) => s.push_str(&format!(
            "{indent}sample ratio: {} against the split: chi-square {:.2} ({} df), p = {:.4}: no mismatch\n",
            counts.join(", "),
            srm.chi2,
            srm.df,
            srm.p_value
        )),
        None => s.push_str(&format!("{indent}sample ratio: {}\n", counts.join(", "))),
    }
    for (i, m) in a.metrics.iter().enumerate() {
        metric(s, m, i == 0, r, indent);
    }
}

fn metric(s: &mut String, m: &MetricResult, primary: bool, r: &Report, indent: &str) {
    let what = match m.kind.as_str() {
        "binary" => "rate",
        "ratio" => "ratio",
        _ => "mean",
    };
    s.push_str(&format!(
        "\n{indent}{} ({what}{}): control {what} {:.4} over {}\n",
        m.metric,
        if primary { ", primary" } else { "" },
        m.control_mean,
        m.control_n
    ));
    s.push_str(&format!(
        "{indent}  {:<16} {:>8} {:>10} {:>10} {:>24} {:>9} {:>24} {:>9} {:>10}\n",
        "VARIANT",
        "N",
        what.to_uppercase(),
        "DIFF",
        format!("{} FIXED", pct(r.confidence)),
        "P",
        "ALWAYS-VALID",
        "P",
        "DETECTABLE"
    ));
    for v in &m.variants {
        let (Some(f), Some(q), Some(d)) = (&v.fixed, &v.sequential, v.detectable) else {
            s.push_str(&format!(
                "{indent}  {:<16} {:>8} {:>10.4}  {}\n",
                v.variant,
                v.n,
                v.mean,
                v.note.as_deref().unwrap_or("no comparison")
            ));
            continue;
        };
        s.push_str(&format!(
            "{indent}  {:<16} {:>8} {:>10.4} {:>+10.4} {:>24} {:>9} {:>24} {:>9} {:>10.4}\n",
            v.variant,
            v.n,
            v.mean,
            f.difference,
            format!("[{:+.4}, {:+.4}]", f.ci_low, f.ci_high),
            p(f.p_value),
            format!("[{:+.4}, {:+.4}]", q.ci_low, q.ci_high),
            p(q.p_value),
            d
        ));
        if let (Some(c), Some(cov)) = (&v.cuped, &r.covariate) {
            s.push_str(&format!(
                "{indent}  {:<16} {:>8} {:>10} {:>+10.4} {:>24} {:>9}   CUPED on {cov}: variance {:+.1}%\n",
                "",
                "",
                "",
                c.comparison.difference,
                format!("[{:+.4}, {:+.4}]", c.comparison.ci_low, c.comparison.ci_high),
                p(c.comparison.p_value),
                -100.0 * c.variance_reduction
            ));
        }
    }
}

fn p(v: f64) -> String {
    if v < 1e-4 {
        format!("{v:.1e}")
    } else {
        format!("{v:.4}")
    }
}
