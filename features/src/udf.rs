//! Marketing feature functions, registered as SQL UDFs on every node (client, scheduler and
//! executors: Ballista ships plans that name them, and each node resolves the name).
//! `docs/features.md` shows each with an example.
//!
//! | function | result |
//! |---|---|
//! | `bucketize(x, e1, e2, …)` | how many edges are `<= x` (0 … k), null for null |
//! | `hash_bucket(value, n)` | a stable bucket in `0 … n-1` of the value's text (FNV-1a) |
//! | `day_of_week(date)` | ISO day of the week, 1 = Monday … 7 = Sunday |
//! | `week_of_year(date)` | ISO week number, 1 … 53 |
//! | `is_holiday(date, 'YYYY-MM-DD', …)` | whether the date is one of the listed days |
//! | `rfm_segment(r, f, m)` | the named RFM segment of quintile scores 1 … 5 ([`rfm_name`]) |

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Int32Array, Int64Array, StringArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Date32Type, Float64Type, Int64Type};
use chrono::{Datelike, NaiveDate};
use datafusion::common::{exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use halyard_core::registry::fnv1a;

/// Every Halyard UDF.
pub fn all() -> Vec<Arc<ScalarUDF>> {
    vec![
        Arc::new(ScalarUDF::from(Udf::new(Kind::Bucketize))),
        Arc::new(ScalarUDF::from(Udf::new(Kind::HashBucket))),
        Arc::new(ScalarUDF::from(Udf::new(Kind::DayOfWeek))),
        Arc::new(ScalarUDF::from(Udf::new(Kind::WeekOfYear))),
        Arc::new(ScalarUDF::from(Udf::new(Kind::IsHoliday))),
        Arc::new(ScalarUDF::from(Udf::new(Kind::RfmSegment))),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Bucketize,
    HashBucket,
    DayOfWeek,
    WeekOfYear,
    IsHoliday,
    RfmSegment,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Udf {
    kind: Kind,
    signature: Signature,
}

impl Udf {
    fn new(kind: Kind) -> Self {
        Udf {
            kind,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Udf {
    fn name(&self) -> &str {
        match self.kind {
            Kind::Bucketize => "bucketize",
            Kind::HashBucket => "hash_bucket",
            Kind::DayOfWeek => "day_of_week",
            Kind::WeekOfYear => "week_of_year",
            Kind::IsHoliday => "is_holiday",
            Kind::RfmSegment => "rfm_segment",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        let name = self.name();
        match self.kind {
            Kind::Bucketize if args.len() >= 2 => Ok(vec![DataType::Float64; args.len()]),
            Kind::Bucketize => {
                plan_err!("{name}(x, edge1, edge2, …) needs a value and at least one edge")
            }
            Kind::HashBucket if args.len() == 2 => Ok(vec![DataType::Utf8, DataType::Int64]),
            Kind::HashBucket => plan_err!("{name}(value, buckets) takes two arguments"),
            Kind::DayOfWeek | Kind::WeekOfYear if args.len() == 1 => Ok(vec![DataType::Date32]),
            Kind::DayOfWeek | Kind::WeekOfYear => plan_err!("{name}(date) takes one argument"),
            Kind::IsHoliday if args.len() >= 2 => {
                let mut out = vec![DataType::Date32];
                out.resize(args.len(), DataType::Utf8);
                Ok(out)
            }
            Kind::IsHoliday => {
                plan_err!("{name}(date, 'YYYY-MM-DD', …) needs a date and at least one holiday")
            }
            Kind::RfmSegment if args.len() == 3 => Ok(vec![DataType::Int64; 3]),
            Kind::RfmSegment => plan_err!(
                "{name}(r, f, m) takes the three quintile scores, 1 … 5 (ntile(5) OVER (ORDER BY …))"
            ),
        }
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(match self.kind {
            Kind::Bucketize | Kind::DayOfWeek | Kind::WeekOfYear => DataType::Int32,
            Kind::HashBucket => DataType::Int64,
            Kind::IsHoliday => DataType::Boolean,
            Kind::RfmSegment => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let out: ArrayRef = match self.kind {
            Kind::Bucketize => bucketize(&arrays)?,
            Kind::HashBucket => hash_bucket(&arrays)?,
            Kind::DayOfWeek => calendar(&arrays[0], |d| d.weekday().number_from_monday() as i32)?,
            Kind::WeekOfYear => calendar(&arrays[0], |d| d.iso_week().week() as i32)?,
            Kind::IsHoliday => is_holiday(&arrays)?,
            Kind::RfmSegment => rfm_segment(&arrays)?,
        };
        if scalar {
            Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::try_from_array(&out, 0)?,
            ))
        } else {
            Ok(ColumnarValue::Array(out))
        }
    }
}

fn bucketize(arrays: &[ArrayRef]) -> Result<ArrayRef> {
    let x = arrays[0].as_primitive::<Float64Type>();
    let edges: Vec<_> = arrays[1..]
        .iter()
        .map(|a| a.as_primitive::<Float64Type>())
        .collect();
    let out: Int32Array = (0..x.len())
        .map(|i| {
            (!x.is_null(i)).then(|| {
                let v = x.value(i);
                edges
                    .iter()
                    .filter(|e| !e.is_null(i) && e.value(i) <= v)
                    .count() as i32
            })
        })
        .collect();
    Ok(Arc::new(out))
}

fn hash_bucket(arrays: &[ArrayRef]) -> Result<ArrayRef> {
    let s = arrays[0].as_string::<i32>();
    let n = arrays[1].as_primitive::<Int64Type>();
    let mut out = Vec::with_capacity(s.len());
    for i in 0..s.len() {
        if s.is_null(i) || n.is_null(i) {
            out.push(None);
            continue;
        }
        let buckets = n.value(i);
        if buckets < 1 {
            return exec_err!("hash_bucket: the bucket count must be at least 1, not {buckets}");
        }
        out.push(Some((fnv1a(s.value(i).as_bytes()) % buckets as u64) as i64));
    }
    Ok(Arc::new(Int64Array::from(out)))
}

fn dates(a: &ArrayRef) -> Result<Date32Array> {
    Ok(cast(a, &DataType::Date32)?
        .as_primitive::<Date32Type>()
        .clone())
}

fn calendar(a: &ArrayRef, part: impl Fn(NaiveDate) -> i32) -> Result<ArrayRef> {
    let d = dates(a)?;
    let out: Int32Array = (0..d.len())
        .map(|i| d.value_as_date(i).filter(|_| !d.is_null(i)).map(&part))
        .collect();
    Ok(Arc::new(out))
}

fn is_holiday(arrays: &[ArrayRef]) -> Result<ArrayRef> {
    let d = dates(&arrays[0])?;
    // The holidays are literals: read them once, from the first row.
    let mut holidays = HashSet::new();
    if !d.is_empty() {
        for list in &arrays[1..] {
            let list = list.as_string::<i32>();
            if list.is_null(0) {
                continue;
            }
            let text = list.value(0);
            let day = NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").map_err(|_| {
                datafusion::error::DataFusionError::Execution(format!(
                    "is_holiday: {text:?} is not a date; write holidays as 'YYYY-MM-DD'"
                ))
            })?;
            holidays.insert(day);
        }
    }
    let out: BooleanArray = (0..d.len())
        .map(|i| {
            d.value_as_date(i)
                .filter(|_| !d.is_null(i))
                .map(|day| holidays.contains(&day))
        })
        .collect();
    Ok(Arc::new(out))
}

/// The classic RFM segment of recency, frequency and monetary quintile scores (1 … 5, 5
/// the most recent, most frequent, highest spending), by the recency score and the mean of
/// the other two rounded up (`fm`); `None` for a score outside 1 … 5. Every one of the 125
/// cells has one name:
///
/// | r \ fm | 1 | 2 | 3 | 4 | 5 |
/// |---|---|---|---|---|---|
/// | 5, 4 | new_customers | potential_loyalists | loyal | champions | champions |
/// | 3 | promising | need_attention | loyal | loyal | loyal |
/// | 2 | hibernating | about_to_sleep | at_risk | at_risk | at_risk |
/// | 1 | lost | hibernating | at_risk | cant_lose_them | cant_lose_them |
pub fn rfm_name(r: i64, f: i64, m: i64) -> Option<&'static str> {
    if ![r, f, m].iter().all(|s| (1..=5).contains(s)) {
        return None;
    }
    let fm = (f + m + 1) / 2;
    Some(match (r, fm) {
        (4..=5, 4..=5) => "champions",
        (4..=5, 3) | (3, 3..=5) => "loyal",
        (4..=5, 2) => "potential_loyalists",
        (4..=5, _) => "new_customers",
        (3, 2) => "need_attention",
        (3, _) => "promising",
        (1, 4..=5) => "cant_lose_them",
        (_, 3..=5) => "at_risk",
        (2, 2) => "about_to_sleep",
        (1, 1) => "lost",
        _ => "hibernating",
    })
}

fn rfm_segment(arrays: &[ArrayRef]) -> Result<ArrayRef> {
    let [r, f, m] = [0, 1, 2].map(|k| arrays[k].as_primitive::<Int64Type>());
    let mut out = Vec::with_capacity(r.len());
    for i in 0..r.len() {
        if r.is_null(i) || f.is_null(i) || m.is_null(i) {
            out.push(None);
            continue;
        }
        let (a, b, c) = (r.value(i), f.value(i), m.value(i));
        match rfm_name(a, b, c) {
            Some(n) => out.push(Some(n)),
            None => {
                return exec_err!(
                    "rfm_segment({a}, {b}, {c}): scores run from 1 to 5; compute them with ntile(5) OVER (ORDER BY …)"
                );
            }
        }
    }
    Ok(Arc::new(StringArray::from(out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn one(sql: &str) -> String {
        let ctx = SessionContext::new();
        for f in all() {
            ctx.register_udf(f.as_ref().clone());
        }
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn functions_compute_what_their_docs_say() {
        let t = one(
            "SELECT bucketize(v, 10, 100) AS b FROM (VALUES (5.0), (10.0), (99.0), (1000.0), (NULL)) t(v)",
        )
        .await;
        let got: Vec<&str> = t
            .lines()
            .skip(3)
            .filter(|l| l.starts_with('|'))
            .map(|l| l.trim_matches(|c| c == '|' || c == ' '))
            .collect();
        assert_eq!(got, ["0", "1", "1", "2", ""]);
        // 2024-01-01 was a Monday in ISO week 1; 2024-12-29 a Sunday in week 52.
        let t = one(
            "SELECT day_of_week(DATE '2024-01-01') AS a, week_of_year(DATE '2024-01-01') AS b, \
             day_of_week(DATE '2024-12-29') AS c, week_of_year('2024-12-29') AS d, \
             is_holiday(DATE '2024-12-25', '2024-12-25', '2025-01-01') AS e, \
             is_holiday(DATE '2024-12-24', '2024-12-25') AS f",
        )
        .await;
        assert!(t.contains("| 1 | 1 | 7 | 52 | true | false |"), "{t}");
        let t =
            one("SELECT hash_bucket('customer-17', 1000) AS h, hash_bucket(17, 1000) AS i").await;
        let want = fnv1a(b"customer-17") % 1000;
        let want_int = fnv1a(b"17") % 1000;
        assert!(t.contains(&format!("| {want} ")), "{t}");
        assert!(t.contains(&format!("| {want_int} ")), "{t}");
    }

    #[test]
    fn every_rfm_cell_has_one_segment_as_the_grid_says() {
        let mut count = std::collections::BTreeMap::new();
        for r in 1..=5 {
            for f in 1..=5 {
                for m in 1..=5 {
                    *count.entry(rfm_name(r, f, m).unwrap()).or_insert(0) += 1;
                }
            }
        }
        assert_eq!(count.values().sum::<i32>(), 125);
        assert_eq!(count.len(), 11, "{count:?}");
        for (cell, want) in [
            ((5, 5, 5), "champions"),
            ((4, 4, 3), "champions"),
            ((1, 5, 5), "cant_lose_them"),
            ((2, 5, 5), "at_risk"),
            ((1, 1, 1), "lost"),
            ((5, 1, 1), "new_customers"),
            ((4, 1, 1), "new_customers"),
            ((5, 2, 1), "potential_loyalists"),
            ((5, 2, 2), "potential_loyalists"),
            ((3, 1, 1), "promising"),
            ((3, 2, 2), "need_attention"),
            ((3, 5, 5), "loyal"),
            ((2, 2, 2), "about_to_sleep"),
            ((2, 1, 1), "hibernating"),
            ((1, 2, 2), "hibernating"),
        ] {
            assert_eq!(rfm_name(cell.0, cell.1, cell.2), Some(want), "{cell:?}");
        }
        assert_eq!(rfm_name(0, 3, 3), None);
        assert_eq!(rfm_name(3, 6, 3), None);
    }

    #[tokio::test]
    async fn rfm_quintiles_in_sql_name_each_customer() {
        let t = one(
            "WITH c AS (SELECT * FROM (VALUES ('a', 1, 50, 900.0), ('b', 30, 2, 20.0), ('c', 400, 1, 5.0),              ('d', 2, 40, 700.0), ('e', 200, 9, 300.0)) t(id, days_since, orders, spend)),              s AS (SELECT id, ntile(5) OVER (ORDER BY days_since DESC) AS r, ntile(5) OVER (ORDER BY orders) AS f,              ntile(5) OVER (ORDER BY spend) AS m FROM c)              SELECT id, rfm_segment(r, f, m) AS segment FROM s ORDER BY id",
        )
        .await;
        assert!(t.contains("| a  | champions "), "{t}");
        assert!(t.contains("| c  | lost "), "{t}");
        let ctx = SessionContext::new();
        for f in all() {
            ctx.register_udf(f.as_ref().clone());
        }
        let e = match ctx.sql("SELECT rfm_segment(7, 1, 1)").await {
            Ok(df) => df.collect().await.unwrap_err().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("from 1 to 5"), "{e}");
    }

    #[tokio::test]
    async fn bad_calls_say_how_to_call() {
        let ctx = SessionContext::new();
        for f in all() {
            ctx.register_udf(f.as_ref().clone());
        }
        let e = ctx
            .sql("SELECT bucketize(1.0)")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least one edge"), "{e}");
        let e = match ctx
            .sql("SELECT is_holiday(DATE '2024-01-01', '01/01/2024')")
            .await
        {
            Ok(df) => df.collect().await.unwrap_err().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("YYYY-MM-DD"), "{e}");
    }
}
