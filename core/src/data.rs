//! Reading a data source (CSV or Parquet bytes) into Arrow record batches, with errors that
//! name the file, the line and the column.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::spec::{DataFormat, DataSpec};

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
    let stated = Arc::new(
        spec.csv_rules()
            .with_stated_types(schema.as_ref().clone())?,
    );
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

fn read_csv(bytes: &Bytes, spec: &DataSpec, file: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let err = |message: String| Error::Data {
        file: file.to_string(),
        message,
    };
    let rules = spec.csv_rules();
    let schema = rules.infer(bytes).map_err(err)?;
    rules.read(bytes, &schema).map_err(err)
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
