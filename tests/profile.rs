//! `halyard profile`, the real binary, on committed fixtures: each column's type, missing
//! share, distinct count and encoding, and the warnings a user needs before training.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

fn profile(file: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_halyard"))
        .args(["profile", file, "--json"])
        .args(args)
        .output()
        .unwrap();
    serde_json::from_str(&common::succeeded(&out)).unwrap()
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Column name → (kind, missing, distinct, warnings joined).
fn columns(p: &serde_json::Value) -> BTreeMap<String, (String, u64, u64, String)> {
    p["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let warnings: Vec<&str> = c["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_str().unwrap())
                .collect();
            (
                c["name"].as_str().unwrap().to_string(),
                (
                    c["kind"].as_str().unwrap().to_string(),
                    c["missing"].as_u64().unwrap(),
                    c["distinct"].as_u64().unwrap(),
                    warnings.join(" | "),
                ),
            )
        })
        .collect()
}

#[test]
fn the_profile_flags_ids_constants_leaks_and_dates_read_as_text() {
    let p = profile(&fixture("profile_sample.csv"), &["--label", "Bought"]);
    assert_eq!(p["rows"], 200);
    let c = columns(&p);
    assert!(c["id"].3.contains("a likely id"), "{:?}", c["id"]);
    assert!(c["country"].3.contains("constant"), "{:?}", c["country"]);
    assert_eq!((c["spend"].0.as_str(), c["spend"].1), ("float", 20));
    assert!(c["spend"].3.is_empty(), "{:?}", c["spend"]);
    assert_eq!(c["channel"].2, 3);
    assert!(c["channel"].3.is_empty(), "{:?}", c["channel"]);
    assert!(
        c["joined"].3.contains("dates read as text")
            && c["joined"].3.contains("date_format = \"%d/%m/%Y\""),
        "{:?}",
        c["joined"]
    );
    assert!(c["refund"].3.contains("a likely leak"), "{:?}", c["refund"]);
    assert!(c["Bought"].3.is_empty());
    let encodings: Vec<&str> = p["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["encoding"].as_str().unwrap())
        .collect();
    assert_eq!(encodings[2], "standardised number");
    assert_eq!(encodings[3], "one-hot: 3 values and `other`");
    assert_eq!(encodings[6], "the label");
}

#[test]
fn missing_markers_count_as_missing_and_amounts_are_not_ids() {
    let p = profile(&fixture("markers_and_types.csv"), &["--label", "responded"]);
    let c = columns(&p);
    // Blank, NA and ? cells: 3 in every 40 rows.
    assert_eq!((c["income"].0.as_str(), c["income"].1), ("int", 30));
    assert!(c["income"].3.is_empty(), "{:?}", c["income"]);
    assert!(c["customer_id"].3.contains("a likely id"));
    assert_eq!(c["signup"].0, "date");
    let signup = p["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "signup")
        .unwrap();
    assert!(
        signup["encoding"]
            .as_str()
            .unwrap()
            .starts_with("days since 1970")
    );
    // A label that is not a column is named with the columns there are.
    let out = Command::new(env!("CARGO_BIN_EXE_halyard"))
        .args(["profile", &fixture("markers_and_types.csv"), "--label", "y"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("customer_id, age"),
        "{err}"
    );
}
