//! `halyard profile FILE`: the profile (`halyard_core::profile`) of a data file before a
//! job trains on it.

use halyard_core::data::read_table;
use halyard_core::profile::{profile, render};
use halyard_core::spec::DataSpec;
use halyard_core::store::{S3Config, read_url};

use crate::Result;

/// What `halyard profile` was given.
#[derive(Debug, Clone, clap::Args)]
pub struct ProfileArgs {
    /// A CSV or Parquet file, a local path or an s3:// URL
    pub file: String,
    /// The column a job would predict: leaks are looked for against it
    #[arg(long)]
    pub label: Option<String>,
    /// CSV field separator
    #[arg(long, default_value = ",")]
    pub delimiter: char,
    /// How dates are written when not ISO 8601 (`[data] date_format`), such as %d/%m/%Y
    #[arg(long)]
    pub date_format: Option<String>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// `halyard profile`.
pub async fn command(args: ProfileArgs) -> Result<()> {
    if let Some(f) = &args.date_format
        && !halyard_core::csv::is_date_format(f)
    {
        return Err(crate::CliError::Failed(format!(
            "--date-format {f:?}: not a strftime pattern with a date in it; write one such as %d/%m/%Y"
        )));
    }
    let url = halyard_core::spec::resolve_source(&args.file, std::path::Path::new("."))?;
    let bytes = read_url(&url, &S3Config::default()).await?;
    let data = DataSpec {
        source: url.clone(),
        delimiter: args.delimiter.to_string(),
        date_format: args.date_format.clone(),
        ..DataSpec::default()
    };
    let table = read_table(&bytes, &data, &url)?;
    let p = profile(&table, &args.file, args.label.as_deref(), &[])?;
    if args.json {
        crate::commands::out(&serde_json::to_string(&p).expect("a profile serialises"));
    } else {
        crate::commands::out(render(&p).trim_end());
    }
    Ok(())
}
