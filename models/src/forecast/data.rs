//! Reading series.
//!
//! - The M4 wide layout: a header line, then one line per series, `"id","v1","v2",…` with
//!   empty trailing cells (series have different lengths).
//! - A long table (Arrow batches): one row per observation with a series-id column, a value
//!   column and optional covariate columns, rows of a series in time order.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;

use super::Series;
use crate::error::{ModelError, Result};
use crate::preprocess::{concat_column, numeric_values, string_values};

/// Parse the M4 wide CSV layout. Empty cells end a series; a cell that is not a number is
/// an error naming its line and column.
pub fn read_wide_csv(text: &str, origin: &str) -> Result<Vec<Series>> {
    let mut out = Vec::new();
    for (line_no, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let mut cells = line.split(',').map(|c| c.trim().trim_matches('"'));
        let id = cells.next().unwrap_or_default().to_string();
        let mut values = Vec::new();
        for (col, cell) in cells.enumerate() {
            if cell.is_empty() {
                continue;
            }
            let v: f64 = cell.parse().map_err(|_| ModelError::BadData {
                origin: origin.to_string(),
                line: line_no + 1,
                column: col + 2,
                message: format!("{cell:?} is not a number"),
            })?;
            values.push(v);
        }
        out.push(Series::new(id, values));
    }
    Ok(out)
}

/// Series from a long table: rows grouped by `id_column` (series in id order), values from
/// `value_column`, covariates from `covariate_columns`; a missing value is NaN (refused
/// later by [`super::check_series`]), a missing id is the empty id.
pub fn from_long_table(
    batches: &[RecordBatch],
    id_column: &str,
    value_column: &str,
    covariate_columns: &[String],
) -> Result<Vec<Series>> {
    let ids = string_values(&concat_column(batches, id_column)?)?;
    let values = numeric_values(&concat_column(batches, value_column)?)?;
    let covs: Vec<Vec<f64>> = covariate_columns
        .iter()
        .map(|c| numeric_values(&concat_column(batches, c)?))
        .collect::<Result<_>>()?;
    let mut by_id: BTreeMap<String, Series> = BTreeMap::new();
    for (r, (id, value)) in ids.into_iter().zip(values).enumerate() {
        let id = id.unwrap_or_default();
        let s = by_id
            .entry(id.clone())
            .or_insert_with(|| Series::new(id, Vec::new()));
        s.values.push(value);
        if !covs.is_empty() {
            s.covariates.push(covs.iter().map(|c| c[r]).collect());
        }
    }
    Ok(by_id.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_csv_with_ragged_rows() {
        let text =
            "\"V1\",\"V2\",\"V3\",\"V4\"\n\"H1\",\"1\",\"2\",\"3\"\n\"H2\",\"4\",\"5\",\"\"\n";
        let s = read_wide_csv(text, "t.csv").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].values, vec![1.0, 2.0, 3.0]);
        assert_eq!(s[1].id, "H2");
        assert_eq!(s[1].values, vec![4.0, 5.0]);
        let err = read_wide_csv("h\n\"H1\",\"1\",\"x\"\n", "t.csv").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(err.to_string().contains("column 3"), "{err}");
    }
}
