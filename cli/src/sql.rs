//! `halyard sql`: run SQL on the cluster's Ballista (or, with `--local`, in this process),
//! from `-e` or interactively, printing a table or writing CSV / Parquet.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use halyard_core::spec::SourceSpec;
use halyard_core::store::S3Config;
use halyard_features::sealed::Sealing;
use halyard_features::session::{DataAccess, local_context, remote_context};
use halyard_features::stage::{collect_retrying, register_source};

use halyard_client::Client;

use crate::{CliError, Result};

/// Where queries run.
pub enum Target<'a> {
    /// The cluster whose scheduler API is here.
    Cluster(&'a Client),
    /// Single-process DataFusion in this process; `keep_order`: one partition, so a query
    /// without ORDER BY returns the rows in the files' order (a file converted with
    /// `--output` keeps its row order, which a split by row index relies on).
    Local {
        /// Run with one partition.
        keep_order: bool,
    },
}

/// Partitions per stage.
const PARTITIONS: usize = 4;

/// Open a SQL context on the target, with `tables` (`NAME=PATH`) registered.
pub async fn context(
    target: Target<'_>,
    tables: &[String],
    delimiter: u8,
    s3: &S3Config,
) -> Result<SessionContext> {
    // With the nodes' encryption key in the environment, the store's feature tables and
    // event files (sealed) are read too.
    let mut access = DataAccess::unconfined(s3);
    if let Some((store, sealer)) = halyard_core::config::sealing_from_env()? {
        access.sealing = Some(Sealing::new(&store, sealer)?);
    }
    let ctx = match target {
        Target::Local { keep_order } => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let partitions = if keep_order { 1 } else { cores };
            local_context(&access, partitions)?
        }
        Target::Cluster(client) => {
            let status = client.cluster().await?;
            if status.sql_endpoint.is_empty() {
                return Err(CliError::Failed(
                    "the cluster advertises no SQL scheduler yet (its leader starts one); try again, or use --local".into(),
                ));
            }
            remote_context(
                &status.sql_endpoint,
                client.key(),
                client.tls().cloned(),
                &access,
                PARTITIONS,
            )
            .await?
        }
    };
    let mut sources = Vec::with_capacity(tables.len());
    for t in tables {
        let (name, path) = t.split_once('=').ok_or_else(|| {
            CliError::Failed(format!(
                "--table {t:?}: write NAME=PATH, such as events=data/events.csv"
            ))
        })?;
        let folder = path.ends_with('/');
        let mut url = halyard_core::spec::resolve_source(path, Path::new("."))?;
        if folder && !url.ends_with('/') {
            url.push('/');
        }
        sources.push(SourceSpec {
            delimiter: (delimiter as char).to_string(),
            ..SourceSpec::new(name, url)
        });
    }
    for src in &sources {
        register_source(&ctx, src).await?;
    }
    Ok(ctx)
}

/// Run one statement and collect its rows (again, when an executor is lost under it).
pub async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    Ok(collect_retrying(ctx, sql).await?)
}

/// Print rows as a table, or write them to `output` (`.csv` or `.parquet`).
pub fn emit(batches: &[RecordBatch], output: Option<&Path>) -> Result<()> {
    let io = |path: &Path, e: std::io::Error| CliError::Io {
        path: path.display().to_string(),
        source: e,
    };
    let Some(path) = output else {
        let text = arrow::util::pretty::pretty_format_batches(batches)
            .map_err(|e| CliError::Failed(e.to_string()))?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        println!("{text}\n{rows} row(s)");
        return Ok(());
    };
    let file = std::fs::File::create(path).map_err(|e| io(path, e))?;
    let lower = path.display().to_string().to_ascii_lowercase();
    if lower.ends_with(".parquet") {
        let schema = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| std::sync::Arc::new(arrow::datatypes::Schema::empty()));
        let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None)
            .map_err(|e| CliError::Failed(e.to_string()))?;
        for b in batches {
            w.write(b).map_err(|e| CliError::Failed(e.to_string()))?;
        }
        w.close().map_err(|e| CliError::Failed(e.to_string()))?;
    } else if lower.ends_with(".csv") {
        let mut w = arrow::csv::Writer::new(file);
        for b in batches {
            w.write(b).map_err(|e| CliError::Failed(e.to_string()))?;
        }
    } else {
        return Err(CliError::Failed(format!(
            "--output {}: the name must end in .csv or .parquet",
            path.display()
        )));
    }
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    eprintln!("wrote {rows} row(s) to {}", path.display());
    Ok(())
}

/// Read statements from standard input (each ends with `;`), run each, print its result;
/// an error is printed and the session goes on.
pub async fn interactive(ctx: &SessionContext, output: Option<PathBuf>) -> Result<()> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let mut buf = String::new();
    let prompt = |continuing: bool| {
        if tty {
            print!("{}", if continuing { "     -> " } else { "halyard> " });
            let _ = std::io::stdout().flush();
        }
    };
    prompt(false);
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| CliError::Io {
            path: "stdin".into(),
            source: e,
        })?;
        buf.push_str(&line);
        buf.push('\n');
        let (statements, rest) = split_statements(&buf);
        buf = rest;
        for sql in statements {
            match run(ctx, &sql).await {
                Ok(batches) => emit(&batches, output.as_deref())?,
                Err(e) => eprintln!("error: {e}"),
            }
        }
        prompt(!buf.trim().is_empty());
    }
    if !buf.trim().is_empty() {
        let batches = run(ctx, buf.trim()).await?;
        emit(&batches, output.as_deref())?;
    }
    Ok(())
}

/// Complete statements (ended by a `;` outside quotes and comments) and the unfinished
/// rest of `text`.
fn split_statements(text: &str) -> (Vec<String>, String) {
    let mut out = Vec::new();
    let mut start = 0;
    let (mut quote, mut comment) = (None::<char>, false);
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for (k, &(i, c)) in chars.iter().enumerate() {
        if comment {
            comment = c != '\n';
            continue;
        }
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '-' && chars.get(k + 1).is_some_and(|&(_, n)| n == '-') => comment = true,
            None if c == ';' => {
                let stmt = text[start..i].trim();
                if !stmt.is_empty() {
                    out.push(stmt.to_string());
                }
                start = i + 1;
            }
            None => {}
        }
    }
    (out, text[start..].to_string())
}

#[cfg(test)]
mod tests {
    use super::split_statements;

    #[test]
    fn statements_split_on_semicolons_outside_quotes_and_comments() {
        let (s, rest) =
            split_statements("SELECT 'a;b'; -- one; two\nSELECT \"x;\" FROM t;\nSELECT 3");
        assert_eq!(s, ["SELECT 'a;b'", "-- one; two\nSELECT \"x;\" FROM t"]);
        assert_eq!(rest.trim(), "SELECT 3");
    }
}

/// `halyard sql`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SqlArgs {
    /// A statement to run (repeat for several, run in order)
    #[arg(short = 'e', long = "execute")]
    pub execute: Vec<String>,
    /// A table to register first, NAME=PATH (file, folder ending in '/', file:// or
    /// s3:// URL; format from the extension)
    #[arg(long = "table")]
    pub tables: Vec<String>,
    /// CSV field separator of the --table files
    #[arg(long, default_value = ",")]
    pub delimiter: char,
    /// Write the last result to this .csv or .parquet file instead of printing it (with
    /// --local, in one partition: rows keep the files' order unless the query sorts them)
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Run in this process on single-process DataFusion, without a cluster
    #[arg(long)]
    pub local: bool,
}

/// `halyard sql`: run the statements of `args` (or, without any, read them from standard
/// input) on the cluster whose scheduler is at `scheduler`, or locally.
pub async fn command(args: SqlArgs, conn: &crate::keys::Connection) -> Result<()> {
    if !args.delimiter.is_ascii() {
        return Err(CliError::Failed(format!(
            "--delimiter {:?}: must be one ASCII character",
            args.delimiter
        )));
    }
    // S3 credentials come from the AWS_* environment.
    let s3 = S3Config::default();
    let client;
    let target = if args.local {
        Target::Local {
            keep_order: args.output.is_some(),
        }
    } else {
        client = crate::keys::connect(conn).await?;
        Target::Cluster(&client)
    };
    let ctx = context(target, &args.tables, args.delimiter as u8, &s3).await?;
    if args.execute.is_empty() {
        return interactive(&ctx, args.output).await;
    }
    let last = args.execute.len() - 1;
    for (i, q) in args.execute.iter().enumerate() {
        let batches = run(&ctx, q).await?;
        emit(
            &batches,
            if i == last {
                args.output.as_deref()
            } else {
                None
            },
        )?;
    }
    Ok(())
}
