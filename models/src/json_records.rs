//! Scoring input as JSON records: raw feature values, exactly as in the training data,
//! encoded by the artifact's own preprocessor without building Arrow arrays (the serving
//! path's per-request cost).
//!
//! Rules (the same as [`Preprocessor::transform`] on Arrow data, which `tests` check):
//! - every feature the model was trained on must be present; `null` is a missing value
//!   (a numeric becomes its training mean, a categorical falls in the `other` slot);
//! - a numeric feature takes a JSON number (a boolean for a boolean column);
//! - a categorical feature takes a string, or a number when the training column was
//!   numeric (rendered as Arrow renders it, so `5` matches the training value `5`);
//! - a category never seen in training falls in the `other` slot (hashed columns hash it);
//! - fields the model does not use (ids, the label) are ignored.

use std::collections::HashMap;

use arrow::array::{AsArray, Float64Array};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{ModelError, Result};
use crate::preprocess::{ColumnEncoding, Encoded, FeatureColumn, Preprocessor, bucket_of, fnv1a};

/// A JSON record: feature name → raw value.
pub type Record = Map<String, Value>;

/// One input field of a model, for clients (`GET /v1/models/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputField {
    /// The field's name in a record.
    pub name: String,
    /// `number` or `string` (JSON type expected).
    pub kind: &'static str,
    /// The Arrow type of the training column.
    pub training_type: String,
    /// Known categories, for one-hot categoricals (others fall in `other`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
}

fn is_integer_type(t: &str) -> bool {
    t.starts_with("Int") || t.starts_with("UInt")
}

fn is_float_type(t: &str) -> bool {
    t.starts_with("Float") || t.starts_with("Decimal")
}

fn bad(row: usize, field: &str, message: impl Into<String>) -> ModelError {
    ModelError::BadRecord {
        row: row + 1,
        field: field.to_string(),
        message: message.into(),
    }
}

fn describe(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!("{}…", &s[..s.floor_char_boundary(40)])
    } else {
        s
    }
}

fn field<'r>(record: &'r Record, row: usize, name: &str) -> Result<&'r Value> {
    record.get(name).ok_or_else(|| {
        bad(
            row,
            name,
            "missing: send every feature the model was trained on (null for an unknown value; see GET /v1/models/{name})",
        )
    })
}

/// A numeric feature's value (NaN for null: the missing-value rule).
fn number(record: &Record, row: usize, name: &str) -> Result<f64> {
    match field(record, row, name)? {
        Value::Null => Ok(f64::NAN),
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| bad(row, name, "the number is out of range")),
        Value::Bool(b) => Ok(f64::from(u8::from(*b))),
        other => Err(bad(
            row,
            name,
            format!("expected a number, got {}", describe(other)),
        )),
    }
}

/// A date feature's value: days since 1970-01-01 of an ISO date or date and time (NaN
/// for null).
fn days(record: &Record, row: usize, name: &str) -> Result<f64> {
    match field(record, row, name)? {
        Value::Null => Ok(f64::NAN),
        Value::String(s) => crate::preprocess::parse_days(s).ok_or_else(|| {
            bad(
                row,
                name,
                format!("{s:?} is not a date: send YYYY-MM-DD (or an ISO 8601 date and time)"),
            )
        }),
        other => Err(bad(
            row,
            name,
            format!("expected a date (\"YYYY-MM-DD\"), got {}", describe(other)),
        )),
    }
}

/// A numeric feature's value: a number, or a date's days when the column was trained on
/// dates.
fn value_of(record: &Record, row: usize, col: &FeatureColumn) -> Result<f64> {
    if crate::preprocess::is_temporal_name(&col.source_type) {
        days(record, row, &col.name)
    } else {
        number(record, row, &col.name)
    }
}

/// A categorical value as the training data's string cast rendered it (`None`: missing).
fn category(
    record: &Record,
    row: usize,
    name: &str,
    training_type: &str,
) -> Result<Option<String>> {
    let v = field(record, row, name)?;
    let wrong = |what: &str| {
        bad(
            row,
            name,
            format!(
                "expected {what} (the training column was {training_type}), got {}",
                describe(v)
            ),
        )
    };
    let numeric_column = is_integer_type(training_type) || is_float_type(training_type);
    match v {
        Value::Null => Ok(None),
        Value::String(s) if !numeric_column => Ok(Some(s.clone())),
        Value::Bool(b) if training_type == "Boolean" => Ok(Some(b.to_string())),
        Value::Number(n) if is_integer_type(training_type) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Ok(Some(i.to_string())),
            (None, Some(u)) => Ok(Some(u.to_string())),
            _ => Err(wrong("a whole number")),
        },
        Value::Number(n) if numeric_column => {
            let x = n.as_f64().ok_or_else(|| wrong("a number"))?;
            let a = Float64Array::from(vec![x]);
            let s = cast(&a, &DataType::Utf8).map_err(|e| ModelError::Internal(e.to_string()))?;
            Ok(Some(s.as_string::<i32>().value(0).to_string()))
        }
        _ if numeric_column => Err(wrong("a number")),
        _ => Err(wrong("a string")),
    }
}

impl Preprocessor {
    /// The fields a scoring record must carry, in the manifest's order (a crossed column's
    /// sources appear as their own fields).
    pub fn input_fields(&self) -> Vec<InputField> {
        let mut out: Vec<InputField> = Vec::new();
        for c in &self.columns {
            if !c.sources.is_empty() || out.iter().any(|f| f.name == c.name) {
                continue;
            }
            let numeric = matches!(
                c.encoding,
                ColumnEncoding::Numeric { .. } | ColumnEncoding::Buckets { .. }
            ) || is_integer_type(&c.source_type)
                || is_float_type(&c.source_type);
            let kind = if crate::preprocess::is_temporal_name(&c.source_type) {
                "date"
            } else if numeric {
                "number"
            } else {
                "string"
            };
            out.push(InputField {
                name: c.name.clone(),
                kind,
                training_type: c.source_type.clone(),
                categories: match &c.encoding {
                    ColumnEncoding::OneHot { vocabulary } => Some(vocabulary.clone()),
                    _ => None,
                },
            });
        }
        for c in &self.columns {
            for s in &c.sources {
                if !out.iter().any(|f| &f.name == s) {
                    out.push(InputField {
                        name: s.clone(),
                        kind: "string",
                        training_type: "Utf8".into(),
                        categories: None,
                    });
                }
            }
        }
        out
    }

    /// The training type of a raw column, as recorded by any feature built from it.
    fn training_type(&self, name: &str) -> &str {
        self.columns
            .iter()
            .find(|c| c.name == name && c.sources.is_empty())
            .map_or("Utf8", |c| c.source_type.as_str())
    }

    fn category_of(
        &self,
        record: &Record,
        row: usize,
        col: &FeatureColumn,
    ) -> Result<Option<String>> {
        if col.sources.is_empty() {
            return category(record, row, &col.name, &col.source_type);
        }
        let mut parts = Vec::with_capacity(col.sources.len());
        for s in &col.sources {
            // Every source is read, so a missing one is reported even after a null.
            parts.push(category(record, row, s, self.training_type(s))?);
        }
        Ok(parts
            .into_iter()
            .collect::<Option<Vec<String>>>()
            .map(|p| p.join("|")))
    }
}

/// A preprocessor with its one-hot vocabularies indexed once, for encoding many requests.
#[derive(Debug, Clone)]
pub struct RecordEncoder {
    pre: Preprocessor,
    /// Per column: value → slot, for one-hot columns.
    index: Vec<Option<HashMap<String, usize>>>,
}

impl RecordEncoder {
    /// Index `pre`'s vocabularies.
    pub fn new(pre: Preprocessor) -> Self {
        let index = pre
            .columns
            .iter()
            .map(|col| match &col.encoding {
                ColumnEncoding::OneHot { vocabulary } => Some(
                    vocabulary
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (v.clone(), i))
                        .collect(),
                ),
                _ => None,
            })
            .collect();
        RecordEncoder { pre, index }
    }

    /// Encode JSON records as [`Preprocessor::transform`] encodes Arrow rows.
    pub fn encode(&self, records: &[&Record]) -> Result<Encoded> {
        let pre = &self.pre;
        let rows = records.len();
        let mut x = vec![0f32; rows * pre.dim];
        for (r, record) in records.iter().enumerate() {
            let out = &mut x[r * pre.dim..(r + 1) * pre.dim];
            for (k, col) in pre.columns.iter().enumerate() {
                match &col.encoding {
                    ColumnEncoding::Numeric { mean, std } => {
                        out[col.offset] = pre.standardised(value_of(record, r, col)?, *mean, *std);
                    }
                    ColumnEncoding::Buckets { edges } => {
                        let v = value_of(record, r, col)?;
                        out[col.offset + bucket_of(v, edges)] = 1.0;
                    }
                    ColumnEncoding::DatePart { part } => {
                        if let Some(slot) = part.slot(days(record, r, &col.name)?) {
                            out[col.offset + slot] = 1.0;
                        }
                    }
                    ColumnEncoding::OneHot { vocabulary } => {
                        let v = pre.category_of(record, r, col)?;
                        let slot = v
                            .as_deref()
                            .and_then(|v| self.index[k].as_ref().and_then(|i| i.get(v)).copied())
                            .unwrap_or(vocabulary.len());
                        out[col.offset + slot] = 1.0;
                    }
                    ColumnEncoding::Hashed { buckets } => {
                        let v = pre.category_of(record, r, col)?;
                        let slot = (fnv1a(v.as_deref().unwrap_or("")) % *buckets as u64) as usize;
                        out[col.offset + slot] = 1.0;
                    }
                }
            }
        }
        Ok(Encoded {
            x,
            y: Vec::new(),
            rows,
            dim: pre.dim,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{BooleanArray, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{Field, Schema};
    use serde_json::json;

    use super::*;
    use crate::preprocess::{Encoding, FeatureConfig};

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("age", DataType::Int64, true),
            Field::new("balance", DataType::Float64, true),
            Field::new("job", DataType::Utf8, true),
            Field::new("day", DataType::Int64, true),
            Field::new("loan", DataType::Boolean, true),
            Field::new("y", DataType::Utf8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![
                    Some(30),
                    Some(41),
                    None,
                    Some(58),
                    Some(23),
                    Some(35),
                ])),
                Arc::new(Float64Array::from(vec![
                    Some(1.5),
                    None,
                    Some(-20.25),
                    Some(3e5),
                    Some(0.0),
                    Some(7.0),
                ])),
                Arc::new(StringArray::from(vec![
                    Some("admin"),
                    Some("admin"),
                    Some("cook"),
                    None,
                    Some("pilot"),
                    Some("cook"),
                ])),
                Arc::new(Int64Array::from(vec![
                    Some(5),
                    Some(6),
                    Some(5),
                    Some(7),
                    Some(5),
                    None,
                ])),
                Arc::new(BooleanArray::from(vec![
                    Some(true),
                    Some(false),
                    None,
                    Some(true),
                    Some(false),
                    Some(true),
                ])),
                Arc::new(StringArray::from(vec![
                    "yes", "no", "no", "yes", "no", "no",
                ])),
            ],
        )
        .unwrap()
    }

    fn config(encoding: Encoding) -> FeatureConfig {
        FeatureConfig {
            label: "y".into(),
            positive: None,
            exclude: vec![],
            categorical: vec!["day".into()],
            encoding,
            max_categories: 2,
            hash_buckets: 8,
            holdout_every: 100,
            split_column: None,
            numeric_buckets: 3,
            crosses: vec![vec!["job".into(), "day".into()]],
        }
    }

    fn records() -> Vec<Record> {
        [
            json!({"age": 30, "balance": 1.5, "job": "admin", "day": 5, "loan": true, "id": "c1"}),
            json!({"age": 41, "balance": null, "job": "admin", "day": 6, "loan": false}),
            json!({"age": null, "balance": -20.25, "job": "cook", "day": 5, "loan": null}),
            json!({"age": 58, "balance": 3e5, "job": null, "day": 7, "loan": true}),
            json!({"age": 23, "balance": 0.0, "job": "pilot", "day": 5, "loan": false}),
            json!({"age": 35, "balance": 7, "job": "cook", "day": null, "loan": true}),
        ]
        .into_iter()
        .map(|v| v.as_object().unwrap().clone())
        .collect()
    }

    #[test]
    fn json_records_encode_exactly_as_arrow_rows() {
        // Missing numbers imputed (every model but trees) or kept as NaN (trees).
        for (encoding, keep_missing) in [
            (Encoding::OneHot, false),
            (Encoding::Hashed, false),
            (Encoding::OneHot, true),
        ] {
            let b = batch();
            let mut pre = Preprocessor::fit(std::slice::from_ref(&b), &config(encoding)).unwrap();
            pre.keep_missing = keep_missing;
            let arrow = pre.transform(&[b], |_| true).unwrap();
            let recs = records();
            let refs: Vec<&Record> = recs.iter().collect();
            let json = RecordEncoder::new(pre).encode(&refs).unwrap();
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&json.x), bits(&arrow.x), "{encoding:?}");
            assert_eq!(
                arrow.x.iter().filter(|v| v.is_nan()).count(),
                if keep_missing { 3 } else { 0 },
                "the missing age, balance and day"
            );
            assert_eq!(json.rows, 6);
        }
    }

    #[test]
    fn bad_records_name_the_record_and_field() {
        let b = batch();
        let pre = RecordEncoder::new(Preprocessor::fit(&[b], &config(Encoding::OneHot)).unwrap());
        let mut recs = records();
        recs[1].remove("balance");
        let e = pre.encode(&[&recs[0], &recs[1]]).unwrap_err().to_string();
        assert!(e.contains("record 2 field \"balance\": missing"), "{e}");
        let mut recs = records();
        recs[0].insert("age".into(), json!("thirty"));
        let e = pre.encode(&[&recs[0]]).unwrap_err().to_string();
        assert!(e.contains("field \"age\": expected a number"), "{e}");
        let mut recs = records();
        recs[0].insert("day".into(), json!(5.5));
        let e = pre.encode(&[&recs[0]]).unwrap_err().to_string();
        assert!(e.contains("expected a whole number"), "{e}");
        let mut recs = records();
        recs[0].insert("job".into(), json!(3));
        let e = pre.encode(&[&recs[0]]).unwrap_err().to_string();
        assert!(e.contains("expected a string"), "{e}");
    }

    #[test]
    fn input_fields_list_every_raw_column_once() {
        let pre = Preprocessor::fit(&[batch()], &config(Encoding::OneHot)).unwrap();
        let names: Vec<String> = pre.input_fields().into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["age", "balance", "job", "day", "loan"]);
    }

    #[test]
    fn dates_become_days_weekday_and_month_alike_from_arrow_and_json() {
        use arrow::array::Date32Array;
        // 2024-05-01 (a Wednesday), 2024-12-29 (a Sunday), missing, 1970-01-01 (a Thursday).
        let day = |y: i32, m: u32, d: u32| {
            (chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap()
                - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap())
            .num_days() as i32
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("signup", DataType::Date32, true),
            Field::new("y", DataType::Utf8, false),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Date32Array::from(vec![
                    Some(day(2024, 5, 1)),
                    Some(day(2024, 12, 29)),
                    None,
                    Some(0),
                ])),
                Arc::new(StringArray::from(vec!["yes", "no", "no", "yes"])),
            ],
        )
        .unwrap();
        let cfg = FeatureConfig {
            categorical: vec![],
            crosses: vec![],
            numeric_buckets: 0,
            ..config(Encoding::OneHot)
        };
        let pre = Preprocessor::fit(std::slice::from_ref(&b), &cfg).unwrap();
        let kinds: Vec<&ColumnEncoding> = pre.columns.iter().map(|c| &c.encoding).collect();
        assert!(
            matches!(kinds[0], ColumnEncoding::Numeric { .. }),
            "{kinds:?}"
        );
        assert_eq!(pre.dim, 1 + 7 + 12, "days, weekday, month");
        let arrow = pre.transform(&[b], |_| true).unwrap();
        let hot = |row: usize| -> Vec<usize> {
            (1..pre.dim).filter(|&k| arrow.row(row)[k] > 0.5).collect()
        };
        // Weekday slots 1..=7 (Monday first), month slots 8..=19.
        assert_eq!(hot(0), vec![1 + 2, 8 + 4], "Wednesday, May");
        assert_eq!(hot(1), vec![1 + 6, 8 + 11], "Sunday, December");
        assert!(hot(2).is_empty(), "a missing date sets no part");
        assert_eq!(hot(3), vec![1 + 3, 8], "Thursday, January");
        // The days are the numeric feature: 1970-01-01 is the earliest.
        assert!(arrow.row(3)[0] < arrow.row(0)[0] && arrow.row(0)[0] < arrow.row(1)[0]);
        // A request sends the dates as text (a date and time is a fraction of a day on).
        let recs: Vec<Record> = [
            json!({"signup": "2024-05-01"}),
            json!({"signup": "2024-12-29T00:00:00Z"}),
            json!({"signup": null}),
            json!({"signup": "1970-01-01 00:00"}),
        ]
        .into_iter()
        .map(|v| v.as_object().unwrap().clone())
        .collect();
        let refs: Vec<&Record> = recs.iter().collect();
        let enc = RecordEncoder::new(pre.clone());
        assert_eq!(enc.encode(&refs).unwrap().x, arrow.x);
        let e = enc
            .encode(&[&json!({"signup": "01/05/2024"}).as_object().unwrap().clone()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a date: send YYYY-MM-DD"), "{e}");
        assert_eq!(pre.input_fields()[0].kind, "date");
    }
}
