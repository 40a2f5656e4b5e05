//! A data file's profile, before a job trains on it: per column the type it is read as,
//! the share of missing values, the distinct count, the range or the most frequent values,
//! how a model will encode it, and warnings (a constant column, a likely id, a likely leak
//! of the label, dates read as text, mostly missing). `halyard profile` prints it, and a
//! training job's log starts with it.

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::DataType;
use serde::Serialize;

use crate::data::{Table, column_list};
use crate::error::{Error, Result};
// A categorical column's one-hot vocabulary, as a spec without `max_categories` has it.
use crate::spec::DEFAULT_MAX_CATEGORIES as MAX_CATEGORIES;

/// Distinct values counted per column at most (memory stays bounded).
const DISTINCT_CAP: usize = 100_000;

/// One column's profile.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnProfile {
    /// Name.
    pub name: String,
    /// `int`, `float`, `bool`, `string`, `date`, `timestamp` or the Arrow type.
    pub kind: String,
    /// Missing values.
    pub missing: usize,
    /// Distinct non-missing values (at most [`DISTINCT_CAP`] counted).
    pub distinct: usize,
    /// Numbers: minimum and maximum; dates: the first and last.
    pub range: Option<(String, String)>,
    /// Text: the most frequent values with their counts.
    pub top: Vec<(String, usize)>,
    /// How a model encodes it.
    pub encoding: String,
    /// What to look at.
    pub warnings: Vec<String>,
}

/// A file's profile.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// The file.
    pub file: String,
    /// Rows.
    pub rows: usize,
    /// Columns, in file order.
    pub columns: Vec<ColumnProfile>,
}

fn kind_of(dt: &DataType) -> String {
    match dt {
        d if d.is_integer() => "int".into(),
        d if d.is_floating() => "float".into(),
        DataType::Boolean => "bool".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Timestamp(..) => "timestamp".into(),
        other => other.to_string(),
    }
}

/// A column's values as text (missing: `None`), through Arrow's cast.
fn texts(table: &Table, col: usize) -> Result<Vec<Option<String>>> {
    let mut out = Vec::with_capacity(table.rows);
    for b in &table.batches {
        let a: ArrayRef =
            arrow::compute::cast(b.column(col), &DataType::Utf8).map_err(|e| Error::Data {
                file: table_name(table),
                message: e.to_string(),
            })?;
        let s = a
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .expect("cast to Utf8 gives strings");
        out.extend((0..s.len()).map(|i| (!s.is_null(i)).then(|| s.value(i).to_string())));
    }
    Ok(out)
}

/// A column's values as numbers (missing or not numeric: `None`).
fn numbers(batches: &[RecordBatch], col: usize) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for b in batches {
        let Ok(a) = arrow::compute::cast(b.column(col), &DataType::Float64) else {
            return Vec::new();
        };
        let f = a
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .expect("cast to Float64 gives floats");
        out.extend((0..f.len()).map(|i| (!f.is_null(i)).then(|| f.value(i))));
    }
    out
}

/// Pearson's correlation of the rows where both are present.
fn correlation(x: &[Option<f64>], y: &[Option<f64>]) -> Option<f64> {
    let pairs: Vec<(f64, f64)> = x
        .iter()
        .zip(y)
        .filter_map(|(a, b)| Some(((*a)?, (*b)?)))
        .collect();
    let n = pairs.len() as f64;
    if n < 3.0 {
        return None;
    }
    let (mx, my) = (
        pairs.iter().map(|p| p.0).sum::<f64>() / n,
        pairs.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in &pairs {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// Whether a text looks like a date or a date and time (`2024-05-01`, `01/05/2024`,
/// `2024-05-01 10:00`).
fn looks_like_date(s: &str) -> bool {
    let date = s.trim().split([' ', 'T']).next().unwrap_or_default();
    let parts: Vec<&str> = date.split(['-', '/', '.']).collect();
    date.len() >= 8
        && parts.len() == 3
        && parts
            .iter()
            .all(|p| (1..=4).contains(&p.len()) && p.chars().all(|c| c.is_ascii_digit()))
}

/// Profile one table.
///
/// `label`: the column a job predicts (leaks are looked for against it); `excluded`:
/// columns the job leaves out (`[data] exclude`).
pub fn profile(
    table: &Table,
    file: &str,
    label: Option<&str>,
    excluded: &[String],
) -> Result<Profile> {
    let label_values = match label {
        Some(l) => {
            let i = table.schema.index_of(l).map_err(|_| Error::Data {
                file: file.to_string(),
                message: format!(
                    "the label {l:?} is no column of it; it has: {}",
                    column_list(&table.schema)
                ),
            })?;
            Some((i, texts(table, i)?, numbers(&table.batches, i)))
        }
        None => None,
    };
    let mut columns = Vec::new();
    for (col, field) in table.schema.fields().iter().enumerate() {
        let values = texts(table, col)?;
        let missing = values.iter().filter(|v| v.is_none()).count();
        let present = table.rows - missing;
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for v in values.iter().flatten() {
            if counts.len() < DISTINCT_CAP || counts.contains_key(v.as_str()) {
                *counts.entry(v.as_str()).or_default() += 1;
            }
        }
        let distinct = counts.len();
        let kind = kind_of(field.data_type());
        let numeric = matches!(kind.as_str(), "int" | "float" | "bool");
        let nums = if numeric {
            numbers(&table.batches, col)
        } else {
            Vec::new()
        };
        // A number column's smallest and largest value.
        let bounds = nums
            .iter()
            .flatten()
            .filter(|v| v.is_finite())
            .fold(None, |b: Option<(f64, f64)>, &v| {
                Some(b.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))))
            });
        let range = if numeric {
            bounds.map(|(lo, hi)| (format!("{lo}"), format!("{hi}")))
        } else if matches!(kind.as_str(), "date" | "timestamp") {
            let mut v: Vec<&String> = values.iter().flatten().collect();
            v.sort();
            v.first()
                .zip(v.last())
                .map(|(a, b)| (a.to_string(), b.to_string()))
        } else {
            None
        };
        let mut top: Vec<(String, usize)> = if numeric {
            Vec::new()
        } else {
            counts.iter().map(|(k, n)| (k.to_string(), *n)).collect()
        };
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top.truncate(3);
        let is_label = label == Some(field.name().as_str());
        let is_excluded = excluded.contains(field.name());
        let encoding = if is_label {
            "the label".to_string()
        } else if is_excluded {
            "left out ([data] exclude)".to_string()
        } else if numeric {
            "standardised number".to_string()
        } else if matches!(kind.as_str(), "date" | "timestamp") {
            "days since 1970 (standardised), weekday and month (one-hot)".to_string()
        } else if distinct <= MAX_CATEGORIES {
            format!("one-hot: {distinct} values and `other`")
        } else {
            format!(
                "one-hot: the {MAX_CATEGORIES} most frequent of {distinct}, the rest `other` ([model] max_categories)"
            )
        };
        let mut warnings = Vec::new();
        if distinct <= 1 && !is_label {
            warnings.push("constant: it tells the model nothing; exclude it".to_string());
        }
        // Every value differs: text, or whole numbers that run nearly one after another.
        let sequence =
            kind == "int" && bounds.is_some_and(|(lo, hi)| hi - lo < 2.0 * present as f64);
        if !is_label
            && !is_excluded
            && present >= 20
            && distinct == present
            && (kind == "string" || sequence)
        {
            warnings.push("a likely id: every value differs; exclude it".to_string());
        }
        if present * 2 < table.rows {
            warnings.push(format!(
                "mostly missing: {:.0} % of the rows",
                100.0 * missing as f64 / table.rows.max(1) as f64
            ));
        }
        if kind == "string" {
            let sample: Vec<&String> = values.iter().flatten().take(1000).collect();
            if !sample.is_empty()
                && sample.iter().filter(|s| looks_like_date(s)).count() * 10 >= sample.len() * 9
            {
                warnings.push(
                    "dates read as text (one-hot of each date): give their format ([data] date_format = \"%d/%m/%Y\" for day first) or write them as YYYY-MM-DD".to_string(),
                );
            }
        }
        if let Some((li, label_text, label_nums)) = &label_values
            && *li != col
        {
            let corr = if numeric {
                correlation(&nums, label_nums)
            } else {
                None
            };
            if let Some(r) = corr.filter(|r| r.abs() >= 0.95) {
                warnings.push(format!(
                    "a likely leak: correlation {r:.3} with the label; exclude it unless it is known before the prediction"
                ));
            } else if !numeric && distinct > 1 && distinct < present {
                // Each value always comes with the same label.
                let mut seen: HashMap<&str, &Option<String>> = HashMap::new();
                let determines = values.iter().zip(label_text).all(|(v, l)| match v {
                    Some(v) => *seen.entry(v.as_str()).or_insert(l) == l,
                    None => true,
                });
                if determines && distinct * 10 < present {
                    warnings.push(
                        "a likely leak: each value always comes with the same label; exclude it unless it is known before the prediction".to_string(),
                    );
                }
            }
        }
        columns.push(ColumnProfile {
            name: field.name().clone(),
            kind,
            missing,
            distinct,
            range,
            top,
            encoding,
            warnings,
        });
    }
    Ok(Profile {
        file: file.to_string(),
        rows: table.rows,
        columns,
    })
}

/// The profile as a table for a terminal.
pub fn render(p: &Profile) -> String {
    let mut out = format!(
        "{}: {} rows, {} columns\n{:<24} {:<9} {:>8} {:>9}  {:<36} {}\n",
        p.file,
        p.rows,
        p.columns.len(),
        "COLUMN",
        "TYPE",
        "MISSING",
        "DISTINCT",
        "RANGE / TOP VALUES",
        "ENCODED AS"
    );
    for c in &p.columns {
        let values = match &c.range {
            Some((a, b)) => format!("{a} … {b}"),
            None => c
                .top
                .iter()
                .map(|(v, n)| format!("{v:?} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let values: String = if values.chars().count() > 36 {
            values.chars().take(35).chain(['…']).collect()
        } else {
            values
        };
        out.push_str(&format!(
            "{:<24} {:<9} {:>7.1}% {:>9}  {:<36} {}\n",
            c.name,
            c.kind,
            100.0 * c.missing as f64 / p.rows.max(1) as f64,
            c.distinct,
            values,
            c.encoding
        ));
        for w in &c.warnings {
            out.push_str(&format!("  ! {}: {w}\n", c.name));
        }
    }
    out
}

/// Where a table came from, for an error (a table does not know its file).
fn table_name(table: &Table) -> String {
    format!("the table {}", table.digest)
}

/// The first `rows` rows of `table` (what a job's log profiles of a large input).
pub fn head(table: &Table, rows: usize) -> Table {
    let mut left = rows;
    let mut batches = Vec::new();
    for b in &table.batches {
        if left == 0 {
            break;
        }
        let n = b.num_rows().min(left);
        batches.push(b.slice(0, n));
        left -= n;
    }
    Table {
        schema: table.schema.clone(),
        batches,
        rows: rows.min(table.rows),
        digest: table.digest.clone(),
    }
}
