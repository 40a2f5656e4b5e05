//! `halyard experiment analyze`: the analysis of a campaign that already ran, from a CSV or
//! Parquet table (local or S3) with one row per customer ([`halyard_models::experiment`]).

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
    #[arg(long)]
    pub table: String,
    /// The column naming each row's variant
    #[arg(long)]
    pub variant: String,
    /// The control's value in the variant column
    #[arg(long)]
    pub control: String,
    /// A metric column (repeat for several; the first is the primary). A column holding
    /// only 0 and 1 is a rate (two-proportion test), any other a mean (Welch's t-test)
    #[arg(long = "metric", required = true)]
    pub metrics: Vec<String>,
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

/// Run the analysis and print it.
pub async fn command(args: AnalyzeArgs) -> Result<()> {
    if !(0.5..1.0).contains(&args.confidence) {
        return Err(CliError::Failed(format!(
            "--confidence {} must lie in [0.5, 1), such as 0.95",
            args.confidence
        )));
    }
    let url = resolve_source(&args.table, std::path::Path::new("."))?;
    let bytes = read_url(&url, &S3Config::default()).await?;
    let data = DataSpec {
        source: url.clone(),
        ..DataSpec::default()
    };
    let table = read_table(&bytes, &data, &url)?;
    let spec = AnalysisSpec {
        variant: args.variant,
        control: args.control,
        metrics: args.metrics,
        covariate: args.covariate,
        segment: args.segment,
        split: args.split,
        confidence: args.confidence,
        power: 0.8,
    };
    let report =
        analyze(&table.batches, &spec).map_err(|e| CliError::Failed(format!("{url}: {e}")))?;
    if args.json {
        out(&serde_json::to_string_pretty(&report).map_err(|e| CliError::Failed(e.to_string()))?);
    } else {
        out(&render(&report, &spec, &url));
    }
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
    let rate = m.kind == "binary";
    s.push_str(&format!(
        "\n{indent}{} ({}{}): control {} {:.4} over {}\n",
        m.metric,
        if rate { "rate" } else { "mean" },
        if primary { ", primary" } else { "" },
        if rate { "rate" } else { "mean" },
        m.control_mean,
        m.control_n
    ));
    s.push_str(&format!(
        "{indent}  {:<16} {:>8} {:>10} {:>10} {:>24} {:>9} {:>24} {:>9} {:>10}\n",
        "VARIANT",
        "N",
        if rate { "RATE" } else { "MEAN" },
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
