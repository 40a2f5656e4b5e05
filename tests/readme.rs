//! The README's "By hand" block and the tutorial work as written: their commands are read
//! from README.md and docs/tutorial.md themselves (so the texts and the tests cannot drift)
//! and run by bash against a standalone cluster, with only what a person does between them
//! filled in — the binary instead of `cargo build`, a free port instead of 7070, a job id
//! for `ID`, and a wait for a deployed model to load. The other documents' `curl` examples
//! run against a cluster serving the demo model, and the JSON a document shows under one
//! must have the shape of the real answer.

use std::path::Path;
use std::process::Command;

mod common;

/// The shell block under the README's `## By hand` heading.
fn by_hand_block(readme: &str) -> &str {
    let section = readme
        .split_once("## By hand")
        .expect("README.md has a `## By hand` section")
        .1;
    let body = section
        .split_once("```sh\n")
        .expect("the section has a ```sh block")
        .1;
    body.split_once("\n```").expect("the block ends").0
}

/// Every ```sh block of a document, in order.
fn sh_blocks(doc: &str) -> Vec<&str> {
    doc.split("```sh\n")
        .skip(1)
        .map(|b| b.split_once("\n```").expect("the block ends").0)
        .collect()
}

/// The blocks as one bash script (see the module's comment for what is filled in).
fn script(blocks: &[&str]) -> String {
    let mut s = String::from(
        "set -euo pipefail\nhalyard() { \"$HALYARD_BIN\" \"$@\"; }\n\
         trap 'kill $standalone 2>/dev/null || true' EXIT\n",
    );
    let mut have_id = false;
    for line in blocks.iter().flat_map(|b| b.lines()) {
        if line.starts_with("cargo build") {
            continue;
        }
        if line.starts_with("halyard standalone") {
            s.push_str(
                "\"$HALYARD_BIN\" standalone > standalone.log 2>&1 &\nstandalone=$!\n\
                 for _ in $(seq 1 150); do halyard cluster >/dev/null 2>&1 && break; sleep 0.2; done\n",
            );
            continue;
        }
        let mut line = line.replace("localhost:7070", "$HALYARD_SCHEDULER");
        if line.contains(" ID") {
            if !have_id {
                s.push_str(
                    "ID=$(halyard jobs --json | python3 -c 'import json, sys; print(json.load(sys.stdin)[0][\"id\"])')\n",
                );
                have_id = true;
            }
            line = line.replace(" ID", " \"$ID\"");
        }
        s.push_str(&line);
        s.push('\n');
        if line.starts_with("halyard deploy") {
            // A person reads the answer before calling the model; the test waits until an
            // executor has loaded it.
            s.push_str(
                "for _ in $(seq 1 150); do curl -sf -H \"authorization: Bearer $(cat halyard-data/admin.key)\" \
                 \"$HALYARD_SCHEDULER/v1/models/campaign-response\" >/dev/null && break; sleep 0.2; done\n",
            );
        }
    }
    s
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Run `script` in a fresh folder holding a copy of `examples/`; its standard output, or a
/// panic with the script, its output and the standalone's log.
fn run(script: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
        &dir.join("examples"),
    );
    let addr = format!("127.0.0.1:{}", common::free_port());
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("HALYARD_BIN", env!("CARGO_BIN_EXE_halyard"))
        .env("HALYARD_LISTEN", &addr)
        .env("HALYARD_SCHEDULER", &addr)
        .env_remove("HALYARD_KEY")
        .env_remove("HALYARD_KEY_FILE")
        .env_remove("HALYARD_DATA_DIR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = std::fs::read_to_string(dir.join("standalone.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    assert!(
        out.status.success(),
        "script:\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}\nstandalone log (last lines first):\n{}",
        tail.join("\n")
    );
    stdout
}

#[test]
fn the_readme_by_hand_block_runs_as_written() {
    let block = by_hand_block(include_str!("../README.md"));
    let out = run(&script(&[block]));
    // The job's metrics (submit --follow), its listing, the model's schema and a score.
    for want in [
        "test_auc",
        "campaign-response",
        "\"income\"",
        "\"predictions\"",
    ] {
        assert!(out.contains(want), "{want} not in:\n{out}");
    }
}

#[test]
fn the_tutorial_runs_as_written() {
    let blocks = sh_blocks(include_str!("../docs/tutorial.md"));
    assert!(blocks.len() >= 5, "{blocks:?}");
    let mut script = script(&blocks);
    // The leader rolls the canary back as soon as the evidence is in; a reader sees it in
    // the audit log a moment later.
    script.push_str(
        "for _ in $(seq 1 100); do halyard audit | grep -q ramp-rollback && break; sleep 0.2; done\n\
         echo '-- audit'; halyard audit\n",
    );
    let out = run(&script);
    for want in [
        "valid — job campaign-response",
        "succeeded",
        "\"predictions\"",
        "canary version 2",
        "control",
        "ramp-rollback campaign-response",
    ] {
        assert!(out.contains(want), "{want} not in:\n{out}");
    }
}

/// A document's `curl` example: the command (its quoted body may span lines) and the JSON
/// answer the document shows on the line under it, if any.
struct CurlExample {
    doc: String,
    command: String,
    shown: Option<String>,
}

/// Every `curl` command in the ```sh blocks of `doc`.
fn curl_examples(name: &str, doc: &str) -> Vec<CurlExample> {
    let mut found = Vec::new();
    for block in sh_blocks(doc) {
        let mut lines = block.lines().peekable();
        while let Some(line) = lines.next() {
            if !line.starts_with("curl ") {
                continue;
            }
            let mut command = line.to_string();
            while command.matches('\'').count() % 2 == 1 {
                command.push('\n');
                command.push_str(
                    lines
                        .next()
                        .expect("the quoted argument closes in its block"),
                );
            }
            let shown = lines.next_if(|l| l.starts_with('{')).map(str::to_string);
            found.push(CurlExample {
                doc: name.to_string(),
                command,
                shown,
            });
        }
    }
    found
}

/// A JSON value's shape: its objects' keys and its values' kinds (an array by its first
/// element), so a document's example answer is compared with a real one whose scores differ.
fn shape(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
        }
        Value::Array(items) => Value::Array(items.first().map(shape).into_iter().collect()),
        Value::Number(_) => "number".into(),
        Value::String(_) => "string".into(),
        Value::Bool(_) => "bool".into(),
        Value::Null => Value::Null,
    }
}

#[test]
fn the_docs_curl_examples_run_as_written() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut examples = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&docs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".md") && n != "tutorial.md")
        .collect();
    names.sort();
    for name in names {
        examples.extend(curl_examples(
            &name,
            &std::fs::read_to_string(docs.join(&name)).unwrap(),
        ));
    }
    assert!(
        examples.iter().any(|e| e.doc == "serving.md")
            && examples.iter().any(|e| e.doc == "monitoring.md"),
        "the curl examples of serving.md and monitoring.md were not found"
    );
    if examples.iter().any(|e| e.command.contains("| promtool"))
        && common::missing(&["promtool"], "prometheus")
    {
        examples.retain(|e| !e.command.contains("| promtool"));
    }
    // What the documents assume: a standalone cluster serving the demo model, and `$KEY`.
    let setup = "halyard standalone\nhalyard datagen\n\
                 halyard submit examples/campaign-response.toml --follow\n\
                 halyard deploy campaign-response --version 1";
    let mut script = script(&[setup]);
    script.push_str("KEY=$(cat halyard-data/admin.key)\n");
    for (i, example) in examples.iter().enumerate() {
        // An answer of 4xx or 5xx fails the script (and so the test) with its body.
        let command = example
            .command
            .replacen("curl -s ", "curl -sS --fail-with-body ", 1)
            .replace("http://127.0.0.1:7070", "http://$HALYARD_SCHEDULER")
            .replace("localhost:7070", "$HALYARD_SCHEDULER");
        script.push_str(&format!("echo '-- example {i}'\n{command}\necho\n"));
    }
    let out = run(&script);
    for (i, example) in examples.iter().enumerate() {
        let answer = out
            .split(&format!("-- example {i}\n"))
            .nth(1)
            .and_then(|rest| rest.split("-- example ").next())
            .unwrap_or_else(|| panic!("no output of {}'s example:\n{out}", example.doc));
        let Some(shown) = &example.shown else {
            continue;
        };
        let shown: serde_json::Value = serde_json::from_str(shown).unwrap_or_else(|e| {
            panic!(
                "{}: the answer shown is not JSON ({e}): {shown}",
                example.doc
            )
        });
        let real: serde_json::Value = serde_json::from_str(answer.trim())
            .unwrap_or_else(|e| panic!("{}: the answer is not JSON ({e}): {answer}", example.doc));
        assert_eq!(
            shape(&shown),
            shape(&real),
            "{}: the answer shown under `{}` is not shaped like the real one: {answer}",
            example.doc,
            example.command
        );
    }
}
