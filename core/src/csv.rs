//! Reading CSV text by the spec's rules: the columns' types inferred from a sample spread
//! across the file, or stated; missing-value markers; dates in a stated format; errors that
//! name the line, the column and the setting that fixes them. `[data]` sources and
//! `[[features.sources]]` share these rules ([`CsvRules`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Date32Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::csv::reader::Format;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::data::{column_list, toml_key};
use crate::spec::ColumnType;

/// A CSV file up to this size has its columns' types inferred from every row (integers
/// and decimals in one column widen to decimals); a larger one from [`SAMPLE_PARTS`]
/// stretches spread across it. A later value that does not fit is an error that names its
/// line and column.
pub const INFER_WHOLE_BYTES: usize = 64 << 20;
/// Stretches of a larger file read to infer its types: the first at its start, the
/// others evenly spread to its end.
pub const SAMPLE_PARTS: usize = 32;
/// Bytes of each stretch.
pub const SAMPLE_PART_BYTES: usize = 1 << 20;

/// What a spec says of how its CSV cells read.
#[derive(Debug, Clone)]
pub struct CsvRules<'a> {
    /// Where these settings are written (`[data]`, `[[features.sources]] orders`), for
    /// the errors' advice.
    pub section: String,
    /// Whether the first line holds the column names.
    pub has_header: bool,
    /// Field separator.
    pub delimiter: u8,
    /// Column types stated instead of inferred.
    pub types: &'a BTreeMap<String, ColumnType>,
    /// Cells read as missing besides empty and whitespace-only ones.
    pub missing: &'a [String],
    /// A `strftime` pattern dates are written in, when not ISO 8601.
    pub date_format: Option<&'a str>,
}

/// The characters around a cell's value that do not count: a cell of only these is
/// missing, and a marker may have them around it.
pub const BLANKS: &str = " \t\r\n";

/// What a cell holds, its [`BLANKS`] trimmed, when it is missing: nothing, or one of
/// `missing` (trimmed too).
pub fn missing_cells(missing: &[String]) -> impl Iterator<Item = &str> {
    std::iter::once("").chain(
        missing
            .iter()
            .map(|m| m.trim_matches(|c| BLANKS.contains(c))),
    )
}

/// The regular expression (as text) a cell matches when it is missing
/// ([`missing_cells`] with blanks around).
pub fn missing_pattern(missing: &[String]) -> String {
    let alternatives: Vec<String> = missing_cells(missing).map(regex::escape).collect();
    format!("^\\s*(?:{})\\s*$", alternatives.join("|"))
}

/// Whether `pattern` is a `strftime` pattern with a date in it (day, month and year).
pub fn is_date_format(pattern: &str) -> bool {
    use chrono::format::{Item, StrftimeItems};
    let items: Vec<Item<'_>> = StrftimeItems::new(pattern).collect();
    !items.iter().any(|i| matches!(i, Item::Error))
        && ["%d", "%e", "%m", "%b", "%B", "%Y", "%y", "%F", "%D"]
            .iter()
            .filter(|p| pattern.contains(*p))
            .count()
            >= 1
}

/// Whether a date pattern also holds a time of day (the column is then a timestamp).
pub fn has_time(pattern: &str) -> bool {
    ["%H", "%I", "%M", "%S", "%T", "%R", "%s"]
        .iter()
        .any(|p| pattern.contains(p))
}

impl CsvRules<'_> {
    /// The missing-value markers as Arrow's null regex.
    pub fn missing_regex(&self) -> std::result::Result<regex::Regex, String> {
        regex::Regex::new(&missing_pattern(self.missing))
            .map_err(|e| format!("{} missing: {e}", self.section))
    }

    fn format(&self) -> std::result::Result<Format, String> {
        Ok(Format::default()
            .with_header(self.has_header)
            .with_delimiter(self.delimiter)
            .with_null_regex(self.missing_regex()?))
    }

    /// The type a column is read as: the stated one, else `inferred`; with a date format,
    /// dates are read as text and converted after ([`CsvRules::convert_dates`]).
    fn stated(&self, name: &str) -> Option<DataType> {
        self.types.get(name).map(|t| t.arrow())
    }

    /// Infer the columns' types from `bytes` (a whole file, or the sample
    /// [`spread_sample`] made of a larger one), then put the stated types in; a file of
    /// nothing but blanks is an error.
    pub fn infer(&self, bytes: &[u8]) -> std::result::Result<Schema, String> {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Err("the file is empty".into());
        }
        let sample = if bytes.len() > INFER_WHOLE_BYTES {
            let parts = sample_offsets(bytes.len())
                .into_iter()
                .map(|o| &bytes[o..(o + SAMPLE_PART_BYTES).min(bytes.len())])
                .collect::<Vec<_>>();
            Cow::Owned(spread_sample(&parts))
        } else {
            Cow::Borrowed(bytes)
        };
        let (schema, _) = self
            .format()?
            .infer_schema(Cursor::new(&sample[..]), None)
            .map_err(|e| describe_csv_error(&e.to_string(), None, self))?;
        self.with_stated_types(schema)
    }

    /// `schema` with the stated `types` in place of the inferred ones; a stated column the
    /// file lacks is an error naming the columns it has.
    pub fn with_stated_types(&self, schema: Schema) -> std::result::Result<Schema, String> {
        for name in self.types.keys() {
            if schema.field_with_name(name).is_err() {
                return Err(format!(
                    "{} types names column {name:?}, which the file does not have; it has: {}",
                    self.section,
                    column_list(&schema)
                ));
            }
        }
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| match self.stated(f.name()) {
                Some(t) => f.as_ref().clone().with_data_type(t).with_nullable(true),
                None => f.as_ref().clone(),
            })
            .collect();
        Ok(Schema::new(fields))
    }

    /// The schema Arrow's reader reads with: `schema`, with stated dates read as text when
    /// a date format is set (Arrow reads ISO dates only; inferred ones are ISO).
    fn reading_schema(&self, schema: &Schema) -> Schema {
        if self.date_format.is_none() {
            return schema.clone();
        }
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| {
                if matches!(
                    self.types.get(f.name()),
                    Some(ColumnType::Date | ColumnType::Timestamp)
                ) {
                    f.as_ref().clone().with_data_type(DataType::Utf8)
                } else {
                    f.as_ref().clone()
                }
            })
            .collect();
        Schema::new(fields)
    }

    /// Read every row of `bytes` with `schema` (from [`CsvRules::infer`]): the first value
    /// that does not fit its column is an error naming its line, column and the fix.
    pub fn read(
        &self,
        bytes: &[u8],
        schema: &Schema,
    ) -> std::result::Result<(SchemaRef, Vec<RecordBatch>), String> {
        let reading = Arc::new(self.reading_schema(schema));
        let reader = arrow::csv::ReaderBuilder::new(reading.clone())
            .with_header(self.has_header)
            .with_delimiter(self.delimiter)
            .with_null_regex(self.missing_regex()?)
            .with_batch_size(8192)
            .build(Cursor::new(bytes))
            .map_err(|e| e.to_string())?;
        let mut batches = Vec::new();
        for batch in reader {
            batches
                .push(batch.map_err(|e| describe_csv_error(&e.to_string(), Some(&reading), self))?);
        }
        check_mostly_numeric(&reading, &batches, self)?;
        self.convert_dates(reading, batches)
    }

    /// With a date format: columns stated as dates, and text columns whose every value
    /// reads as one, become dates (or timestamps when the format has a time of day).
    pub fn convert_dates(
        &self,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> std::result::Result<(SchemaRef, Vec<RecordBatch>), String> {
        let Some(pattern) = self.date_format else {
            return Ok((schema, batches));
        };
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut columns: Vec<Vec<ArrayRef>> =
            batches.iter().map(|b| b.columns().to_vec()).collect();
        for (col, field) in schema.fields().iter().enumerate() {
            let stated = self.types.get(field.name());
            let wanted = match stated {
                Some(ColumnType::Date | ColumnType::Timestamp) => true,
                Some(_) => false,
                None => field.data_type() == &DataType::Utf8,
            };
            if !wanted || field.data_type() != &DataType::Utf8 {
                continue;
            }
            let timestamp = match stated {
                Some(ColumnType::Timestamp) => true,
                Some(_) => false,
                None => has_time(pattern),
            };
            let mut converted = Vec::with_capacity(batches.len());
            let mut row_base = 0usize;
            let mut any = false;
            let mut failed = None;
            for batch in &batches {
                let arr = batch
                    .column(col)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| format!("column {:?} is not text", field.name()))?;
                match parse_dates(arr, pattern, timestamp) {
                    Ok(a) => {
                        any |= a.null_count() < a.len();
                        converted.push(a);
                    }
                    Err(i) => {
                        failed = Some((row_base + i, arr.value(i).to_string()));
                        break;
                    }
                }
                row_base += batch.num_rows();
            }
            match failed {
                Some((row, value)) if stated.is_some() => {
                    return Err(format!(
                        "line {}, column {} ({:?}): value {value:?} is not a date in the format \
                         {pattern:?} ({} date_format); fix the value, leave the cell empty, or \
                         change date_format",
                        row + 1 + usize::from(self.has_header),
                        col + 1,
                        field.name(),
                        self.section
                    ));
                }
                // An unstated text column that does not read as dates stays text.
                Some(_) => continue,
                None if !any && stated.is_none() => continue,
                None => {}
            }
            fields[col] = field
                .as_ref()
                .clone()
                .with_data_type(converted[0].data_type().clone())
                .with_nullable(true);
            for (b, a) in converted.into_iter().enumerate() {
                columns[b][col] = a;
            }
        }
        let schema = Arc::new(Schema::new(fields));
        let batches = columns
            .into_iter()
            .map(|c| RecordBatch::try_new(schema.clone(), c).map_err(|e| e.to_string()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok((schema, batches))
    }
}

/// ISO 8601 patterns a column stated as a date also reads besides its `date_format`.
pub const ISO_DATE: &str = "%Y-%m-%d";
/// The same for a timestamp.
pub const ISO_TIMESTAMPS: [&str; 2] = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"];

/// `arr`'s values read with `pattern` or ISO 8601 (nulls stay null); `Err(i)`: the first
/// index that does not read.
fn parse_dates(
    arr: &StringArray,
    pattern: &str,
    timestamp: bool,
) -> std::result::Result<ArrayRef, usize> {
    /// Each value read by `read` (nulls stay null), or the first index it cannot read.
    fn each<T>(
        arr: &StringArray,
        read: impl Fn(&str) -> Option<T>,
    ) -> std::result::Result<Vec<Option<T>>, usize> {
        (0..arr.len())
            .map(|i| match arr.is_null(i) {
                true => Ok(None),
                false => read(arr.value(i).trim()).map(Some).ok_or(i),
            })
            .collect()
    }
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date");
    Ok(if timestamp {
        Arc::new(TimestampMillisecondArray::from(each(arr, |v| {
            std::iter::once(pattern)
                .chain(ISO_TIMESTAMPS)
                .find_map(|p| chrono::NaiveDateTime::parse_from_str(v, p).ok())
                .map(|t| t.and_utc().timestamp_millis())
        })?))
    } else {
        Arc::new(Date32Array::from(each(arr, |v| {
            [pattern, ISO_DATE]
                .iter()
                .find_map(|p| chrono::NaiveDate::parse_from_str(v, p).ok())
                .map(|d| (d - epoch).num_days() as i32)
        })?))
    })
}

/// Where the stretches of a file of `len` bytes start when it is sampled: the first at 0,
/// the rest spread evenly so that the last ends at the file's end.
pub fn sample_offsets(len: usize) -> Vec<usize> {
    if len <= INFER_WHOLE_BYTES {
        return vec![0];
    }
    let last = len.saturating_sub(SAMPLE_PART_BYTES);
    (0..SAMPLE_PARTS)
        .map(|k| last * k / (SAMPLE_PARTS - 1))
        .collect()
}

/// One CSV text of stretches of a file (`parts[0]` its start, with the header): every
/// later stretch loses its cut first and last lines, and a line with an odd number of
/// quotes (likely inside a quoted value that spans lines) is left out.
pub fn spread_sample(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, part) in parts.iter().enumerate() {
        let mut lines: Vec<&[u8]> = part.split(|&b| b == b'\n').collect();
        // The last line of a stretch is cut (unless the stretch ends the file with '\n').
        lines.pop();
        let skip = usize::from(k > 0);
        for line in lines.into_iter().skip(skip) {
            if k > 0 && line.iter().filter(|&&b| b == b'"').count() % 2 == 1 {
                continue;
            }
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out
}

/// Reword Arrow's CSV errors: the file's line, 1-based column numbers with the column's
/// name, and the setting that fixes them.
pub fn describe_csv_error(
    message: &str,
    schema: Option<&SchemaRef>,
    rules: &CsvRules<'_>,
) -> String {
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
                |l| (l + usize::from(rules.has_header)).to_string(),
            );
        let col: usize = col.trim().parse().unwrap_or(0);
        let name = schema
            .and_then(|s| s.fields().get(col))
            .map(|f| format!(" ({:?})", f.name()))
            .unwrap_or_default();
        return format!(
            "line {line}, column {}{name}: value {value:?} is not a valid {ty} (the type \
             stated in {section} types, or inferred from the file's rows: a file over {} MiB \
             is sampled in {SAMPLE_PARTS} stretches across it); fix the value, state the \
             column's type ({section} types = {{ {} = \"float\" }}, or \"string\"), or list \
             the value in {section} missing",
            col + 1,
            INFER_WHOLE_BYTES >> 20,
            schema
                .and_then(|s| s.fields().get(col))
                .map_or_else(|| "COLUMN".to_string(), |f| toml_key(f.name())),
            section = rules.section,
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
    rules: &CsvRules<'_>,
) -> std::result::Result<(), String> {
    for (col, field) in schema.fields().iter().enumerate() {
        if field.data_type() != &DataType::Utf8 || rules.types.contains_key(field.name()) {
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
            let line = row + 1 + usize::from(rules.has_header);
            let list = markers
                .iter()
                .map(|m| format!("{m:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(format!(
                "line {line}, column {} ({:?}): value {:?} is not a number, but {numeric} \
                 other values of this column are ({other} are not: {list}{}); fix the values, \
                 leave the cells empty, list them as missing values ({section} missing = \
                 [{list}]) or state that the column is text ({section} types = {{ {} = \
                 \"string\" }})",
                col + 1,
                field.name(),
                markers[0],
                if markers.len() > 3 { ", …" } else { "" },
                toml_key(field.name()),
                section = rules.section,
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::TimeUnit;

    fn rules<'a>(
        types: &'a BTreeMap<String, ColumnType>,
        missing: &'a [String],
        date_format: Option<&'a str>,
    ) -> CsvRules<'a> {
        CsvRules {
            section: "[data]".into(),
            has_header: true,
            delimiter: b',',
            types,
            missing,
            date_format,
        }
    }

    #[test]
    fn a_sample_spreads_across_a_large_file_and_finds_late_decimals() {
        // Whole numbers for the first 70 MiB, decimals only near the end: the head alone
        // would read the column as integers.
        let mut text = String::from("id,amount\n");
        let mut i = 0u64;
        while text.len() < 70 << 20 {
            text.push_str(&format!("{i},{}\n", i % 1000));
            i += 1;
        }
        let end = text.len();
        for j in 0..2_000 {
            text.push_str(&format!("{},{}.5\n", i + j, j));
        }
        let types = BTreeMap::new();
        let schema = rules(&types, &[], None).infer(text.as_bytes()).unwrap();
        assert_eq!(schema.field(1).data_type(), &DataType::Float64);
        assert_eq!(schema.field(0).data_type(), &DataType::Int64);
        // The head alone says otherwise.
        let head = spread_sample(&[&text.as_bytes()[..1 << 20]]);
        let head = rules(&types, &[], None).infer(&head).unwrap();
        assert_eq!(head.field(1).data_type(), &DataType::Int64);
        assert!(end > INFER_WHOLE_BYTES);
    }

    #[test]
    fn a_sample_drops_cut_lines_and_lines_inside_quoted_values() {
        let head: &[u8] = b"a,b\n1,x\n2,y\n3,z";
        let later: &[u8] = b"7,zz\n8,\"two\nlines\"\n9,w\n10,";
        let s = String::from_utf8(spread_sample(&[head, later])).unwrap();
        assert_eq!(s, "a,b\n1,x\n2,y\n9,w\n");
    }

    #[test]
    fn dates_in_a_stated_format_read_as_dates_and_a_bad_one_is_named() {
        let text = "day,when,n,iso\n01/05/2024,03/02/2024 10:30,1,2024-01-02\n31/12/2023,,2,2024-01-03\n,04/02/2024 00:00,3,\n";
        let types = BTreeMap::new();
        let r = rules(&types, &[], Some("%d/%m/%Y"));
        let schema = r.infer(text.as_bytes()).unwrap();
        let (schema, batches) = r.read(text.as_bytes(), &schema).unwrap();
        assert_eq!(schema.field(0).data_type(), &DataType::Date32);
        // Not in the format: stays text; ISO dates stay dates.
        assert_eq!(schema.field(1).data_type(), &DataType::Utf8);
        assert_eq!(schema.field(3).data_type(), &DataType::Date32);
        let days = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Date32Array>()
            .unwrap();
        assert_eq!(days.value(0), 19_844); // 2024-05-01
        assert_eq!(days.value(1), 19_722); // 2023-12-31
        assert!(days.is_null(2));
        let with_time = rules(&types, &[], Some("%d/%m/%Y %H:%M"));
        let schema = with_time.infer(text.as_bytes()).unwrap();
        let (schema, _) = with_time.read(text.as_bytes(), &schema).unwrap();
        assert!(matches!(
            schema.field(1).data_type(),
            DataType::Timestamp(TimeUnit::Millisecond, None)
        ));
        // Stated as a date, a value that does not read is named with its line.
        let stated = BTreeMap::from([("day".to_string(), ColumnType::Date)]);
        let bad = "day,n\n01/05/2024,1\n2024-05-02,2\n2024/05/03,3\n";
        let r = rules(&stated, &[], Some("%d/%m/%Y"));
        let schema = r.infer(bad.as_bytes()).unwrap();
        let e = r.read(bad.as_bytes(), &schema).unwrap_err();
        assert!(e.contains("line 4, column 1 (\"day\")"), "{e}");
        assert!(e.contains("\"%d/%m/%Y\""), "{e}");
    }

    #[test]
    fn date_formats_are_checked() {
        assert!(is_date_format("%d/%m/%Y"));
        assert!(is_date_format("%m/%d/%Y %H:%M"));
        assert!(!is_date_format("%Q"));
        assert!(!is_date_format("day"));
        assert!(has_time("%d/%m/%Y %H:%M"));
        assert!(!has_time("%d.%m.%Y"));
    }

    #[test]
    fn markers_with_blanks_around_them_are_missing() {
        let re = regex::Regex::new(&missing_pattern(&["NA".into(), "?".into()])).unwrap();
        for cell in ["", "  ", "NA", " NA ", "?"] {
            assert!(re.is_match(cell), "{cell:?}");
        }
        for cell in ["NAN", "x", "0"] {
            assert!(!re.is_match(cell), "{cell:?}");
        }
    }
}
