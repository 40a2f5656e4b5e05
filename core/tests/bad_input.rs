//! Bad specs and bad data files get errors that name the field or the line and column.

use bytes::Bytes;
use halyard_core::data::read_table;
use halyard_core::spec::JobSpec;

const GOOD: &str = r#"
name = "resp"
[data]
source = "file:///tmp/x.csv"
label = "y"
[train]
epochs = 3
"#;

fn spec_error(text: &str) -> String {
    JobSpec::from_toml(text, "job.toml")
        .unwrap_err()
        .to_string()
}

#[test]
fn a_good_spec_parses_with_defaults() {
    let s = JobSpec::from_toml(GOOD, "job.toml").unwrap();
    assert_eq!(s.train.epochs, 3);
    assert_eq!(s.train.batch_size, 256);
    assert_eq!(s.resources.cpus, 1);
    // It survives the trip to the scheduler.
    assert_eq!(JobSpec::from_toml(&s.to_toml(), "wire").unwrap(), s);
}

#[test]
fn each_broken_rule_names_field_value_and_rule() {
    let cases = [
        (
            GOOD.replace("epochs = 3", "epochs = 0"),
            "job.toml [train] epochs = 0: must be at least 1",
        ),
        (
            GOOD.replace("epochs = 3", "learning_rate = -0.1"),
            "job.toml [train] learning_rate = -0.1: must be > 0",
        ),
        (
            GOOD.replace("epochs = 3", "holdout_every = 1"),
            "job.toml [train] holdout_every = 1",
        ),
        (
            GOOD.replace("name = \"resp\"", "name = \"bad name!\""),
            "job.toml name = \"bad name!\"",
        ),
        (
            GOOD.replace("label = \"y\"", "label = \"\""),
            "[data] label",
        ),
        (
            GOOD.replace("x.csv", "x.bin"),
            "set format = \"csv\" or \"parquet\"",
        ),
        (
            GOOD.replace("label = \"y\"", "label = \"y\"\nexclude = [\"y\"]"),
            "must not contain the label column",
        ),
        (
            format!("{GOOD}\n[resources]\ncpus = 0\n"),
            "[resources] cpus = 0: must be at least 1",
        ),
    ];
    for (text, expected) in cases {
        let err = spec_error(&text);
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    }
    // Tree arms for an uplift job, and trees fitting a number, are specs that hold.
    let arms = GOOD
        .replace("label = \"y\"", "label = \"y\"\ntreatment = \"t\"")
        .replace("[train]", "[model]\ntype = \"gbdt\"\n[train]");
    JobSpec::from_toml(&arms, "job.toml").unwrap();
    let numbers = GOOD.replace(
        "[train]",
        "[model]\ntype = \"gbdt\"\nobjective = \"l1\"\n[train]",
    );
    let s = JobSpec::from_toml(&numbers, "job.toml").unwrap();
    assert_eq!(s.model.objective, halyard_core::spec::Objective::L1);
    // ... and searched over: the trials rank by the objective's validation loss.
    let searched = format!(
        "{numbers}\n[search]\nstrategy = \"random\"\ntrials = 4\n[search.space]\nnum_leaves = {{ choice = [7, 15] }}\n"
    );
    JobSpec::from_toml(&searched, "job.toml").unwrap();
    // A blend is searched over both parts' parameters, each trial trained to the end...
    let blend = GOOD.replace("[train]", "[model]\ntype = \"blend\"\n[train]");
    let space =
        "[search.space]\nnum_leaves = { choice = [7, 15] }\nhidden = { choice = [[8], [16]] }\n";
    let s = JobSpec::from_toml(
        &format!("{blend}\n[search]\nstrategy = \"random\"\ntrials = 4\n{space}"),
        "job.toml",
    )
    .unwrap();
    assert_eq!(s.rung_budget(), (s.model.trees as u32, "trees"));
    // ... not rung by rung: a rung would end inside one of its parts.
    let err = spec_error(&format!(
        "{blend}\n[search]\nstrategy = \"asha\"\ntrials = 4\n{space}"
    ));
    assert!(
        err.contains("a blend's trial trains its mlp, then its trees, to the end"),
        "{err}"
    );
}

#[test]
fn unknown_keys_are_errors() {
    let err = spec_error(&GOOD.replace("epochs = 3", "epochs = 3\nepoch = 4"));
    assert!(err.contains("unknown field `epoch`"), "{err}");
    let err = spec_error(&format!("{GOOD}\n[trian]\nepochs = 2\n"));
    assert!(err.contains("unknown field `trian`"), "{err}");
}

#[test]
fn malformed_toml_names_the_line() {
    let err = spec_error("name = \"x\"\n[data\nsource = 1\n");
    assert!(err.starts_with("job.toml:"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn wrong_types_are_errors() {
    let err = spec_error(&GOOD.replace("epochs = 3", "epochs = \"three\""));
    assert!(
        err.contains("epochs") || err.contains("invalid type"),
        "{err}"
    );
}

fn data_spec() -> halyard_core::spec::DataSpec {
    JobSpec::from_toml(GOOD, "t").unwrap().data
}

fn csv_error(text: &str) -> String {
    read_table(&Bytes::from(text.to_string()), &data_spec(), "f.csv")
        .unwrap_err()
        .to_string()
}

#[test]
fn a_ragged_row_names_its_line() {
    let err = csv_error("a,b,y\n1,2,0\n3,4,1\n5,1\n6,7,0\n");
    assert!(err.starts_with("data f.csv: line 4"), "{err}");
    assert!(err.contains("ragged"), "{err}");
    // Past the rows used to infer the schema, arrow's reader finds it.
    let mut text = String::from("a,b,y\n");
    for i in 0..1200 {
        text.push_str(&format!("{i},{i},{}\n", i % 2));
    }
    text.push_str("1,2\n");
    let err = csv_error(&text);
    assert!(err.contains("line 1202") && err.contains("ragged"), "{err}");
}

#[test]
fn a_column_whose_decimals_start_late_reads_as_decimals() {
    // Whole numbers for 6,000 rows, then decimals (an economic indicator such as 5228.1):
    // the types come from every row of a small file, so the column widens to Float64.
    let mut text = String::from("age,employed,y\n");
    for i in 0..6000 {
        text.push_str(&format!("{},{},{}\n", 20 + i % 50, 5000 + i % 300, i % 2));
    }
    text.push_str("33,5228.1,1\n");
    let t = read_table(&Bytes::from(text), &data_spec(), "f.csv").unwrap();
    assert_eq!(t.rows, 6001);
    let employed = t.schema.field_with_name("employed").unwrap();
    assert_eq!(employed.data_type(), &arrow::datatypes::DataType::Float64);
}

#[test]
fn a_non_numeric_value_in_a_numeric_column_names_line_and_column() {
    // Past the first rows: the column reads as text, and the mostly-numeric check names
    // the odd value.
    let mut text = String::from("age,income,y\n");
    for i in 0..1500 {
        text.push_str(&format!("{},{},{}\n", 20 + i % 50, 1000 + i, i % 2));
    }
    text.push_str("33,lots,1\n");
    let err = csv_error(&text);
    assert!(err.contains("line 1502, column 2 (\"income\")"), "{err}");
    assert!(err.contains("\"lots\""), "{err}");

    // Early in the file, the column reads as text; the mostly-numeric check finds it.
    let mut text = String::from("age,income,y\n1,abc,0\n");
    for i in 0..100 {
        text.push_str(&format!("{},{},{}\n", 20 + i % 50, 1000 + i, i % 2));
    }
    let err = csv_error(&text);
    assert!(err.contains("line 2, column 2 (\"income\")"), "{err}");
    assert!(err.contains("\"abc\" is not a number"), "{err}");
}

/// Read `text` with `[data]` lines `extra` added to the good spec.
fn read_with(text: &str, extra: &str) -> halyard_core::Result<halyard_core::data::Table> {
    let spec = JobSpec::from_toml(
        &GOOD.replace("label = \"y\"", &format!("label = \"y\"\n{extra}")),
        "t",
    )
    .unwrap()
    .data;
    read_table(&Bytes::from(text.to_string()), &spec, "f.csv")
}

#[test]
fn blank_cells_and_missing_markers_are_missing_values_in_a_numeric_column() {
    use arrow::array::Array;
    use arrow::datatypes::DataType;
    // Whitespace-only cells and NA/null/? leave a numeric column numeric, with nulls.
    let mut text = String::from("age,income,city,y\n");
    for i in 0..200 {
        let income = match i % 25 {
            3 => " ".to_string(),
            7 => "NA".to_string(),
            11 => "?".to_string(),
            19 => "null".to_string(),
            _ => format!("{}", 1000 + i),
        };
        text.push_str(&format!("{},{income},c{},{}\n", 20 + i % 50, i % 3, i % 2));
    }
    let t = read_with(&text, "").unwrap();
    let income = t.schema.index_of("income").unwrap();
    assert_eq!(t.schema.field(income).data_type(), &DataType::Int64);
    let nulls: usize = t
        .batches
        .iter()
        .map(|b| b.column(income).null_count())
        .sum();
    assert_eq!(nulls, 32, "4 of every 25 rows are missing");
    // Without the markers listed, "NA" is a value, and the column's odd cells are named.
    let err = read_with(&text, "missing = []").unwrap_err().to_string();
    assert!(
        err.contains("line 9, column 2 (\"income\")")
            && err.contains("(24 are not: \"NA\", \"?\", \"null\")")
            && err.contains("[data] missing = [\"NA\", \"?\", \"null\"]"),
        "{err}"
    );
    // Stated as text, it is text.
    let t = read_with(&text, "missing = []\ntypes = { income = \"string\" }").unwrap();
    assert_eq!(t.schema.field(income).data_type(), &DataType::Utf8);
}

#[test]
fn stated_types_replace_the_inferred_ones() {
    use arrow::datatypes::DataType;
    let text = "zip,signup,score,y\n01234,2024-05-01,3,1\n98765,2024-06-11,4,0\n";
    // Inferred: zip is a number (the leading zero lost), signup a date, score an integer.
    let t = read_with(text, "").unwrap();
    assert_eq!(t.schema.field(0).data_type(), &DataType::Int64);
    let t = read_with(
        text,
        "types = { zip = \"string\", score = \"float\", signup = \"date\" }",
    )
    .unwrap();
    let types: Vec<&DataType> = t.schema.fields().iter().map(|f| f.data_type()).collect();
    assert_eq!(
        types[..3],
        [&DataType::Utf8, &DataType::Date32, &DataType::Float64]
    );
    let zip = t.batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap();
    assert_eq!(zip.value(0), "01234");
    // A stated column the file lacks is named with the columns it has.
    let err = read_with(text, "types = { zap = \"string\" }")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"zap\"") && err.contains("zip, signup, score, y"),
        "{err}"
    );
    // A value the stated type cannot read names its line and column and the setting.
    let err = read_with(text, "types = { signup = \"int\" }")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 2, column 2 (\"signup\")") && err.contains("[data] types"),
        "{err}"
    );
    // An unknown type is a spec error.
    let err = JobSpec::from_toml(
        &GOOD.replace("label = \"y\"", "label = \"y\"\ntypes = { zip = \"text\" }"),
        "job.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("text") && err.contains("float"), "{err}");
}

#[test]
fn an_empty_file_is_refused() {
    assert!(csv_error("").contains("empty"));
}

#[test]
fn a_header_only_file_reads_as_zero_rows() {
    let t = read_table(&Bytes::from_static(b"a,b,y\n"), &data_spec(), "f.csv").unwrap();
    assert_eq!(t.rows, 0);
    assert!(t.digest.starts_with("sha256:"));
}

const FORECAST: &str = r#"
name = "kpi"
[data]
source = "file:///tmp/kpi.csv"
[model]
type = "nbeats"
[forecast]
horizon = 14
period = 7
layout = "long"
id_column = "campaign"
value_column = "conversions"
"#;

#[test]
fn model_and_forecast_rules_name_field_value_and_rule() {
    // A forecasting spec needs no label and survives the trip to the scheduler.
    let s = JobSpec::from_toml(FORECAST, "job.toml").unwrap();
    assert_eq!(s.forecast.as_ref().unwrap().lookbacks, vec![2, 3, 4]);
    assert_eq!(s.progress_total(), 1500 * 3);
    assert_eq!(JobSpec::from_toml(&s.to_toml(), "wire").unwrap(), s);
    let cases = [
        (
            FORECAST.replace("[forecast]\nhorizon = 14", "[forecast]\nhorizon = 0"),
            "[forecast] horizon = 0: must be between 1 and 10000",
        ),
        (
            FORECAST.replace("id_column = \"campaign\"\n", ""),
            "[forecast] layout = \"long\": needs id_column and value_column",
        ),
        (
            FORECAST.replace("period = 7", "period = 7\nlookbacks = []"),
            "[forecast] lookbacks = []: must list one or more",
        ),
        (
            FORECAST
                .replace("type = \"nbeats\"", "type = \"mlp\"")
                .replace("[data]\n", "[data]\nlabel = \"y\"\n"),
            "[forecast] only applies to [model] type = \"nbeats\"",
        ),
        (
            GOOD.replace("[train]", "[model]\ntype = \"nbeats\"\n[train]"),
            "a [forecast] section with at least `horizon` is needed",
        ),
        (
            GOOD.replace("[train]", "[model]\nhidden = []\n[train]"),
            "[model] hidden = []: must list one or more layer widths",
        ),
        (
            GOOD.replace("[train]", "[model]\nensemble = 0\n[train]"),
            "[model] ensemble = 0: must be between 1 and 64",
        ),
        (
            GOOD.replace("[train]", "[model]\nnumeric_buckets = 1\n[train]"),
            "[model] numeric_buckets = 1: must be 0 (off) or between 2 and 1024",
        ),
        (
            GOOD.replace(
                "[train]",
                "[model]\ntype = \"gbdt\"\nnum_leaves = 1\n[train]",
            ),
            "[model] num_leaves = 1: must be between 2 and 65536",
        ),
        (
            GOOD.replace(
                "[train]",
                "[model]\ntype = \"gbdt\"\nbagging_fraction = 0.0\n[train]",
            ),
            "[model] bagging_fraction = 0: must be in (0, 1]",
        ),
        (
            GOOD.replace("label = \"y\"", "label = \"y\"\ntreatment = \"t\"")
                .replace("[train]", "[model]\ntype = \"blend\"\n[train]"),
            "[model] type = \"blend\": boosted trees and blends train response models: no [forecast], and a blend no [data] treatment",
        ),
        (
            GOOD.replace("[train]", "[model]\nobjective = \"l2\"\n[train]"),
            "[model] objective = \"l2\": l2, l1 and poisson fit numbers with type = \"gbdt\" only",
        ),
        (
            GOOD.replace(
                "[train]",
                "[model]\ntype = \"gbdt\"\nobjective = \"poisson\"\n[train]\nclass_weight = \"balanced\"",
            ),
            "[model] objective = \"poisson\": l2, l1 and poisson fit numbers",
        ),
        (
            GOOD.replace(
                "[train]",
                "[model]\ntype = \"logistic_regression\"\n[train]\nworkers = 2",
            ),
            "data-parallel training trains [model] type = \"mlp\", \"gbdt\", \"blend\" or \"kmeans\", not \"logistic_regression\"",
        ),
        (
            GOOD.replace("label = \"y\"", "label = \"y\"\ncrosses = [[\"month\"]]"),
            "[data] crosses = [\"month\"]: each cross must list at least two columns",
        ),
    ];
    for (text, expected) in cases {
        let err = spec_error(&text);
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    }
}
