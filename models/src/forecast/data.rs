//! Reading series.
//!
//! - The M4 wide layout: a header line, then one line per series, `"id","v1","v2",…` with
//!   empty trailing cells (series have different lengths).
//! - A long table (Arrow batches): one row per observation with a series-id column, a value
//!   column and optional covariate columns, rows of a series in time order.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};

use super::Series;
use crate::error::{ModelError, Result};

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

fn f64_column(batch: &RecordBatch, name: &str) -> Result<Vec<f64>> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| ModelError::MissingColumn {
            column: name.to_string(),
            available: batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let f = cast(col, &DataType::Float64).map_err(|e| ModelError::UnsupportedType {
        column: name.to_string(),
        data_type: format!("{} ({e})", col.data_type()),
    })?;
    let f = f.as_primitive::<Float64Type>();
    Ok((0..f.len())
        .map(|i| if f.is_null(i) { f64::NAN } else { f.value(i) })
        .collect())
}

/// Series from a long table: rows grouped by `id_column` (in order of first appearance
/// kept by id), values from `value_column`, covariates from `covariate_columns`.
pub fn from_long_table(
    batches: &[RecordBatch],
    id_column: &str,
    value_column: &str,
    covariate_columns: &[String],
) -> Result<Vec<Series>> {
    let mut by_id: BTreeMap<String, Series> = BTreeMap::new();
    for batch in batches {
        let ids = batch
            .column_by_name(id_column)
            .ok_or_else(|| ModelError::MissingColumn {
                column: id_column.to_string(),
                available: batch
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let ids = cast(ids, &DataType::Utf8).map_err(|e| ModelError::Internal(e.to_string()))?;
        let ids = ids.as_string::<i32>();
        let values = f64_column(batch, value_column)?;
        let covs: Vec<Vec<f64>> = covariate_columns
            .iter()
            .map(|c| f64_column(batch, c))
            .collect::<Result<_>>()?;
        for (r, value) in values.iter().enumerate() {
            let id = if ids.is_null(r) { "" } else { ids.value(r) };
            let s = by_id
                .entry(id.to_string())
                .or_insert_with(|| Series::new(id, Vec::new()));
            s.values.push(*value);
            if !covs.is_empty() {
                s.covariates.push(covs.iter().map(|c| c[r]).collect());
            }
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
