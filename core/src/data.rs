//! Reading a data source (CSV or Parquet bytes) into Arrow record batches, with errors that
//! name the file, the line and the column.

use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::csv::reader::Format;
use arrow::datatypes::{DataType, SchemaRef};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::spec::{DataFormat, DataSpec};

/// A CSV file up to this size has its columns' types inferred from every row (integers
/// and decimals in one column widen to decimals); a larger one from its first
/// [`INFER_ROWS`] rows. A later value that does not fit is an error that names its line
/// and column.
const INFER_WHOLE_BYTES: usize = 64 << 20;
/// Rows read to infer the types of a CSV file over [`INFER_WHOLE_BYTES`].
const INFER_ROWS: usize = 100_000;

/// A data source read into memory.
#[derive(Debug, Clone)]
pub struct Table {
    /// Column names and types.
    pub schema: SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
    /// Number of rows.
    pub rows: usize,
    /// `sha256:<hex>` of the source bytes: the data's identity in a model's lineage.
    pub digest: String,
}

/// `sha256:<hex>` of some bytes.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Parse `bytes` read from `file` as the spec's format.
pub fn read_table(bytes: &Bytes, spec: &DataSpec, file: &str) -> Result<Table> {
    let err = |message: String| Error::Data {
        file: file.to_string(),
        message,
    };
    let (schema, batches) = match spec.resolved_format()? {
        DataFormat::Csv => read_csv(bytes, spec, file)?,
        DataFormat::Parquet => {
            let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                bytes.clone(),
            )
            .map_err(|e| err(format!("not a readable Parquet file: {e}")))?;
            let schema = builder.schema().clone();
            let reader = builder
                .with_batch_size(8192)
                .build()
                .map_err(|e| err(e.to_string()))?;
            let batches = reader
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| err(e.to_string()))?;
            cast_stated(schema, batches, spec).map_err(err)?
        }
    };
    let rows = batches.iter().map(|b| b.num_rows()).sum();
    Ok(Table {
        schema,
        batches,
        rows,
        digest: digest(bytes),
    })
}

/// A Parquet table's columns cast to the spec's stated `types`.
fn cast_stated(
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    spec: &DataSpec,
) -> std::result::Result<(SchemaRef, Vec<RecordBatch>), String> {
    if spec.types.is_empty() {
        return Ok((schema, batches));
    }
    let stated = Arc::new(with_stated_types(schema.as_ref().clone(), spec)?);
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        let mut columns = Vec::with_capacity(b.num_columns());
        for (i, field) in stated.fields().iter().enumerate() {
            let c = b.column(i);
            columns.push(if c.data_type() == field.data_type() {
                c.clone()
            } else {
                arrow::compute::cast(c, field.data_type()).map_err(|e| {
                    format!(
                        "column {:?} cannot be read as {} ([data] types): {e}",
                        field.name(),
                        field.data_type()
                    )
                })?
            });
        }
        out.push(RecordBatch::try_new(stated.clone(), columns).map_err(|e| e.to_string())?);
    }
    Ok((stated, out))
}

/// Read Parquet files (a feature table's shards) as one table; `origin` names them in
/// errors and `digest` is the table's identity.
pub fn read_parquet_parts(parts: &[Bytes], origin: &str, digest: String) -> Result<Table> {
    let mut schema = None;
    let mut batches = Vec::new();
    for (i, bytes) in parts.iter().enumerate() {
        let err = |message: String| Error::Data {
            file: format!("{origin} (shard {i})"),
            message,
        };
        let builder =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
                .map_err(|e| err(format!("not a readable Parquet file: {e}")))?;
        let s = builder.schema().clone();
        match &schema {
            None => schema = Some(s),
            Some(first) if first.fields() != s.fields() => {
                return Err(err("its columns differ from the first shard's".into()));
            }
            Some(_) => {}
        }
        for b in builder
            .with_batch_size(8192)
            .build()
            .map_err(|e| err(e.to_string()))?
        {
            batches.push(b.map_err(|e| err(e.to_string()))?);
        }
    }
    let schema = schema.ok_or_else(|| Error::Data {
        file: origin.to_string(),
        message: "the feature table has no shards".into(),
    })?;
    let rows = batches.iter().map(|b| b.num_rows()).sum();
    Ok(Table {
        schema,
        batches,
        rows,
        digest,
    })
}

/// `batches` (all of schema `schema`) as one Parquet file (zstd); `origin` names it in
/// errors.
pub fn write_parquet(
    schema: arrow::datatypes::SchemaRef,
    batches: &[arrow::array::RecordBatch],
    origin: &str,
) -> Result<Bytes> {
    let err = |e: parquet::errors::ParquetError| Error::Data {
        file: origin.to_string(),
        message: format!("writing Parquet: {e}"),
    };
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .build();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema, Some(props)).map_err(err)?;
    for b in batches {
        w.write(b).map_err(err)?;
    }
    w.close().map_err(err)?;
    Ok(Bytes::from(out))
}

/// A schema's column names, comma-separated, for error messages.
pub fn column_list(schema: &arrow::datatypes::Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table's rows ordered by the named columns (nulls first); an unknown column is an
/// error that lists the table's columns.
pub fn sort_table(table: Table, by: &[&str], origin: &str) -> Result<Table> {
    let err = |message: String| Error::Data {
        file: origin.to_string(),
        message,
    };
    let all = arrow::compute::concat_batches(&table.schema, &table.batches)
        .map_err(|e| err(e.to_string()))?;
    let mut keys = Vec::with_capacity(by.len());
    for name in by {
        let Ok(i) = table.schema.index_of(name) else {
            return Err(err(format!(
                "no column {name:?} to order the rows by; the table has: {}",
                column_list(&table.schema)
            )));
        };
        keys.push(arrow::compute::SortColumn {
            values: all.column(i).clone(),
            options: None,
        });
    }
    let order = arrow::compute::lexsort_to_indices(&keys, None).map_err(|e| err(e.to_string()))?;
    let sorted = arrow::compute::take_record_batch(&all, &order).map_err(|e| err(e.to_string()))?;
    Ok(Table {
        batches: vec![sorted],
        ..table
    })
}

/// The cells a CSV read takes as missing: empty and whitespace-only ones, and the spec's
/// `missing` values.
fn missing_values(spec: &DataSpec) -> std::result::Result<regex::Regex, String> {
    let mut alternatives = vec![r"\s*".to_string()];
    alternatives.extend(spec.missing.iter().map(|m| regex::escape(m.trim())));
    regex::Regex::new(&format!("^(?:{})$", alternatives.join("|")))
        .map_err(|e| format!("[data] missing: {e}"))
}

/// `schema` with the spec's stated `types` in place of the inferred ones; a stated column
/// the file lacks is an error naming the columns it has.
fn with_stated_types(
    schema: arrow::datatypes::Schema,
    spec: &DataSpec,
) -> std::result::Result<arrow::datatypes::Schema, String> {
    for name in spec.types.keys() {
        if schema.field_with_name(name).is_err() {
            return Err(format!(
                "[data] types names column {name:?}, which the file does not have; it has: {}",
                column_list(&schema)
            ));
        }
    }
    let fields: Vec<arrow::datatypes::Field> = schema
        .fields()
        .iter()
        .map(|f| match spec.types.get(f.name()) {
            Some(t) => f
                .as_ref()
                .clone()
                .with_data_type(t.arrow())
                .with_nullable(true),
            None => f.as_ref().clone(),
        })
        .collect();
    Ok(arrow::datatypes::Schema::new(fields))
}

fn read_csv(bytes: &Bytes, spec: &DataSpec, file: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let err = |message: String| Error::Data {
        file: file.to_string(),
        message,
    };
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(err("the file is empty".into()));
    }
    let missing = missing_values(spec).map_err(err)?;
    let format = Format::default()
        .with_header(spec.has_header)
        .with_delimiter(spec.delimiter_byte())
        .with_null_regex(missing.clone());
    let (schema, _) = format
        .infer_schema(
            Cursor::new(&bytes[..]),
            (bytes.len() > INFER_WHOLE_BYTES).then_some(INFER_ROWS),
        )
        .map_err(|e| err(describe_csv_error(&e.to_string(), None, spec.has_header)))?;
    let schema = Arc::new(with_stated_types(schema, spec).map_err(err)?);
    let reader = arrow::csv::ReaderBuilder::new(schema.clone())
        .with_header(spec.has_header)
        .with_delimiter(spec.delimiter_byte())
        .with_null_regex(missing)
        .with_batch_size(8192)
        .build(Cursor::new(&bytes[..]))
        .map_err(|e| err(e.to_string()))?;
    let mut batches = Vec::new();
    for batch in reader {
        batches.push(batch.map_err(|e| {
            err(describe_csv_error(
                &e.to_string(),
                Some(&schema),
                spec.has_header,
            ))
        })?);
    }
    check_mostly_numeric(&schema, &batches, spec).map_err(err)?;
    Ok((schema, batches))
}

/// A column name as a TOML key: bare when it can be, else quoted.
pub fn toml_key(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

/// Reword arrow's CSV errors: 1-based column numbers with the column's name.
fn describe_csv_error(message: &str, schema: Option<&SchemaRef>, has_header: bool) -> String {
    // "Parser error: Error while parsing value 'x' as type 'Float64' for column 3 at line 7. Row data: '[..]'"
    if let Some(rest) = message.split("Error while parsing value '").nth(1)
        && let Some((value, rest)) = rest.split_once("' as type '")
        && let Some((ty, rest)) = rest.split_once("' for column ")
        && let Some((col, rest)) = rest.split_once(" at line ")
    {
        // arrow counts data rows from 1; the file's line adds the header.
        let line = rest
            .split('.')
            .next()
            .and_then(|l| l.trim().parse::<usize>().ok())
            .map_or_else(
                || rest.to_string(),
                |l| (l + usize::from(has_header)).to_string(),
            );
        let col: usize = col.trim().parse().unwrap_or(0);
        let name = schema
            .and_then(|s| s.fields().get(col))
            .map(|f| format!(" ({:?})", f.name()))
            .unwrap_or_default();
        return format!(
            "line {line}, column {}{name}: value {value:?} is not a valid {ty} (the type \
             stated in [data] types, or inferred from the file's rows: a file over {} MiB \
             is read from its first {INFER_ROWS} rows); fix the value, state the column's \
             type ([data] types = {{ {} = \"float\" }}, or \"string\"), or list the value in \
             [data] missing",
            col + 1,
            INFER_WHOLE_BYTES >> 20,
            schema
                .and_then(|s| s.fields().get(col))
                .map_or_else(|| "COLUMN".to_string(), |f| toml_key(f.name()))
        );
    }
    if let Some(rest) = message.split("incorrect number of fields for line ").nth(1) {
        return format!(
            "line {}: wrong number of fields (a ragged row); every row needs as many fields as the header",
            rest.replace(", expected ", ": expected ")
        );
    }
    // The csv crate, during schema inference: "... Expected 3 records, found 2 records at line 4"
    if let Some((head, line)) = message.split_once(" at line ")
        && head.contains("unequal lengths")
    {
        let detail = head.rsplit_once(". ").map_or("", |(_, d)| d);
        return format!(
            "line {}: wrong number of fields (a ragged row): {}; every row needs as many fields as the header",
            line.trim(),
            detail.replace(" records", " fields").to_lowercase()
        );
    }
    message.to_string()
}

/// A string column whose values are nearly all numbers holds a few bad cells (under 1 %
/// of them, or up to 3 distinct markers such as `-` or `n/a` in under a third): report
/// the first, with the counts and the markers, instead of silently treating a numeric
/// column as categorical. Columns whose type the spec states are left alone.
fn check_mostly_numeric(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    spec: &DataSpec,
) -> std::result::Result<(), String> {
    for (col, field) in schema.fields().iter().enumerate() {
        if field.data_type() != &DataType::Utf8 || spec.types.contains_key(field.name()) {
            continue;
        }
        let (mut numeric, mut other) = (0usize, 0usize);
        let mut first_bad: Option<usize> = None;
        let mut markers: Vec<String> = Vec::new();
        let mut row_base = 0usize;
        for batch in batches {
            let Some(arr) = batch.column(col).as_any().downcast_ref::<StringArray>() else {
                continue;
            };
            for i in 0..arr.len() {
                if arr.is_null(i) {
                    continue;
                }
                let v = arr.value(i).trim();
                if v.parse::<f64>().is_ok() {
                    numeric += 1;
                } else {
                    other += 1;
                    first_bad.get_or_insert(row_base + i);
                    if markers.len() <= 3 && !markers.iter().any(|m| m == v) {
                        markers.push(v.to_string());
                    }
                }
            }
            row_base += batch.num_rows();
        }
        let few = other * 100 <= numeric || (markers.len() <= 3 && other * 2 <= numeric);
        if numeric >= 20
            && few
            && let Some(row) = first_bad
        {
            let line = row + 1 + usize::from(spec.has_header);
            let list = markers
                .iter()
                .map(|m| format!("{m:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(format!(
                "line {line}, column {} ({:?}): value {:?} is not a number, but {numeric} \
                 other values of this column are ({other} are not: {list}{}); fix the values, \
                 leave the cells empty, list them as missing values ([data] missing = [{list}]) \
                 or state that the column is text ([data] types = {{ {} = \"string\" }})",
                col + 1,
                field.name(),
                markers[0],
                if markers.len() > 3 { ", …" } else { "" },
                toml_key(field.name())
            ));
        }
    }
    Ok(())
}
