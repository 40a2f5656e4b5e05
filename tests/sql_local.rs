//! `halyard sql --local --output`, the real binary: converting a CSV file keeps its row
//! order (it once reordered rows past the first 8,192 on a machine with several cores,
//! which breaks any split by row index).

mod common;

use std::process::Command;

#[test]
fn converting_a_file_keeps_its_row_order() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    // Over DataFusion's 10 MB threshold for splitting one file's scan into ranges.
    let rows = 400_000;
    let mut csv = String::from("id,value,note\n");
    for i in 0..rows {
        csv.push_str(&format!("{i},{},customer-note-{i:08}\n", (i * 7919) % 1000));
    }
    std::fs::write(&input, csv).unwrap();
    let output = dir.path().join("out.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_halyard"))
        .args(["sql", "--local", "--table"])
        .arg(format!("t={}", input.display()))
        .args(["-e", "SELECT id, value FROM t WHERE value >= 0", "--output"])
        .arg(&output)
        .output()
        .unwrap();
    common::succeeded(&out);
    let text = std::fs::read_to_string(&output).unwrap();
    let ids: Vec<u64> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids.len(), rows);
    let first_out_of_order = ids.windows(2).position(|w| w[1] != w[0] + 1);
    assert_eq!(first_out_of_order, None, "rows reordered");
}
