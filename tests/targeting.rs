//! Campaign targeting on a standalone cluster (real Ballista, two executors): a `[score]`
//! job scores the feature table's shards on two workers and its scores equal scoring the
//! same rows in this process with the same artifact; its audience follows the rule and
//! the exclusion; a second run after a new model version writes version 2 with the churn
//! (entered, left, and the files of added and removed keys) equal to the set difference;
//! rows that cannot be scored land in the rejects files, counted; a missing model fails at
//! submit and a table without the model's columns fails naming them.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use bytes::Bytes;
use halyard_core::data::{read_parquet_parts, read_table};
use halyard_core::spec::JobSpec;
use halyard_models::runtime::LoadedModel;

use common::*;

fn read_parquet(path: &Path) -> RecordBatch {
    let bytes = Bytes::from(std::fs::read(path).unwrap());
    let t = read_parquet_parts(&[bytes], &path.display().to_string(), String::new()).unwrap();
    arrow::compute::concat_batches(&t.schema, &t.batches).unwrap()
}

/// A column as text, row by row.
fn texts(b: &RecordBatch, name: &str) -> Vec<String> {
    let c = cast(b.column_by_name(name).unwrap(), &DataType::Utf8).unwrap();
    let c = c.as_string::<i32>();
    (0..c.len()).map(|i| c.value(i).to_string()).collect()
}

fn floats(b: &RecordBatch, name: &str) -> Vec<f64> {
    let c = cast(b.column_by_name(name).unwrap(), &DataType::Float64).unwrap();
    c.as_primitive::<Float64Type>().values().to_vec()
}

/// Every scores file of a job, as key → (score, excluded).
fn scores_of(store: &Path, job: &str) -> BTreeMap<String, (f64, bool)> {
    let dir = store.join("jobs").join(job).join("scores");
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("part-") {
            continue;
        }
        let b = read_parquet(&p);
        let excluded = b.column_by_name("excluded").unwrap().as_boolean().clone();
        for (i, (k, s)) in texts(&b, "customer_id")
            .into_iter()
            .zip(floats(&b, "score"))
            .enumerate()
        {
            assert!(
                out.insert(k, (s, excluded.value(i))).is_none(),
                "a key scored twice"
            );
        }
    }
    out
}

fn write_spec(dir: &Path, name: &str, text: &str) -> JobSpec {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    JobSpec::from_file(&path).unwrap()
}

fn score_spec(dir: &Path, data: &Path, sql: &str, key: &str, model: &str) -> JobSpec {
    write_spec(
        dir,
        "nightly",
        &format!(
            r#"name = "nightly"
[[features.sources]]
name = "customers"
path = "{}"
[features]
sql = "{sql}"
shards = 4
shard_key = "customer_id"
[score]
model = "{model}"
key = ["{key}"]
workers = 2
exclude = "days_since_last_contact < 14"
[score.audience]
top_fraction = 0.2
"#,
            data.display()
        ),
    )
}

async fn train(client: &halyard_client::Client, dir: &Path, data: &Path, seed: u32) -> u64 {
    let spec = write_spec(
        dir,
        "resp",
        &format!(
            "name = \"resp\"\n[data]\nsource = \"{}\"\nlabel = \"responded\"\nexclude = [\"customer_id\"]\n\
             [train]\nepochs = 2\nbatch_size = 256\nlearning_rate = 0.01\nseed = {seed}\n",
            data.display()
        ),
    );
    let job = client.submit(&spec).await.unwrap();
    let done = wait_done(client, &job.id, Duration::from_secs(300)).await;
    assert_eq!(
        done.state,
        "succeeded",
        "{}",
        log_text(client, &job.id).await
    );
    client
        .model("resp")
        .await
        .unwrap()
        .versions
        .last()
        .unwrap()
        .version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_score_like_one_process_and_audiences_keep_their_churn() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let g = halyard_cli::datagen::generate(&dir.join("data"), 4000, 5).unwrap();
    let (_cluster, client) = standalone(dir, 2).await;
    let store = dir.join("state").join("store");
    assert_eq!(train(&client, dir, &g.responses, 1).await, 1);

    let spec = score_spec(
        dir,
        &g.responses,
        "SELECT * FROM customers",
        "customer_id",
        "resp",
    );
    let job = client.submit(&spec).await.unwrap();
    let done = wait_done(&client, &job.id, Duration::from_secs(300)).await;
    let log = log_text(&client, &job.id).await;
    assert_eq!(done.state, "succeeded", "{log}");
    // The leader ran the feature stage as a step of its own, then scored on two workers.
    assert!(log.contains("features: attempt 1 placed"), "{log}");
    assert!(
        log.contains("score → audience: attempt 2 placed on 2 worker(s)"),
        "{log}"
    );

    // Every row scored once, as this process scores it with the same artifact.
    let scored = scores_of(&store, &job.id);
    let source = halyard_core::spec::DataSpec {
        source: g.responses.display().to_string(),
        ..Default::default()
    };
    let table = read_table(
        &Bytes::from(std::fs::read(&g.responses).unwrap()),
        &source,
        "responses",
    )
    .unwrap();
    let all = arrow::compute::concat_batches(&table.schema, &table.batches).unwrap();
    let model_dir = store.join("models/resp/1");
    let model = LoadedModel::from_bytes(
        &std::fs::read(model_dir.join("model.safetensors")).unwrap(),
        &std::fs::read(model_dir.join("manifest.json")).unwrap(),
    )
    .unwrap();
    let want = model.score(std::slice::from_ref(&all)).unwrap();
    let ids = texts(&all, "customer_id");
    let recent = floats(&all, "days_since_last_contact");
    assert_eq!(scored.len(), ids.len());
    for ((id, w), r) in ids.iter().zip(&want).zip(&recent) {
        let (s, excluded) = scored[id];
        assert!(
            (s - f64::from(*w)).abs() < 1e-6,
            "customer {id}: cluster {s}, one process {w}"
        );
        assert_eq!(excluded, *r < 14.0, "customer {id}");
    }

    // The audience: the top 20 % of the rows not excluded, by score.
    let v1 = client.audiences(Some("nightly")).await.unwrap();
    assert_eq!(v1.len(), 1);
    let eligible: Vec<f64> = scored
        .values()
        .filter(|(_, e)| !e)
        .map(|(s, _)| *s)
        .collect();
    let size = (eligible.len() as f64 * 0.2).round() as usize;
    assert_eq!(v1[0].size as usize, size);
    assert_eq!(v1[0].scored as usize, ids.len());
    assert_eq!(v1[0].excluded as usize, ids.len() - eligible.len());
    assert_eq!((v1[0].entered as usize, v1[0].left), (size, 0));
    let a1_dir = store.join("audiences/nightly/1");
    let a1 = read_parquet(&a1_dir.join("audience.parquet"));
    let picked: BTreeSet<String> = texts(&a1, "customer_id").into_iter().collect();
    let lowest_in = floats(&a1, "score")
        .into_iter()
        .fold(f64::INFINITY, f64::min);
    for (k, (s, e)) in &scored {
        if picked.contains(k) {
            assert!(!e, "excluded customer {k} in the audience");
        } else if !e {
            assert!(
                *s <= lowest_in,
                "customer {k} scored {s} above the audience's lowest {lowest_in}"
            );
        }
    }
    assert_eq!(texts(&a1, "rank")[0], "1");

    // A new model version, a second run: version 2 and its churn.
    assert_eq!(train(&client, dir, &g.responses, 7).await, 2);
    let job2 = client.submit(&spec).await.unwrap();
    let done2 = wait_done(&client, &job2.id, Duration::from_secs(300)).await;
    assert_eq!(
        done2.state,
        "succeeded",
        "{}",
        log_text(&client, &job2.id).await
    );
    let v = client.audiences(Some("nightly")).await.unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[1].model_version, 2);
    let a2_dir = store.join("audiences/nightly/2");
    let now: BTreeSet<String> = texts(
        &read_parquet(&a2_dir.join("audience.parquet")),
        "customer_id",
    )
    .into_iter()
    .collect();
    let entered: BTreeSet<String> = now.difference(&picked).cloned().collect();
    let left: BTreeSet<String> = picked.difference(&now).cloned().collect();
    assert!(!entered.is_empty(), "a retrained model moved no customer");
    assert_eq!(v[1].entered as usize, entered.len());
    assert_eq!(v[1].left as usize, left.len());
    let file_keys = |f: &str| -> BTreeSet<String> {
        texts(&read_parquet(&a2_dir.join(f)), "customer_id")
            .into_iter()
            .collect()
    };
    assert_eq!(file_keys("added.parquet"), entered);
    assert_eq!(file_keys("removed.parquet"), left);
    // Version 1 is immutable: its file is what it was.
    let again: BTreeSet<String> = texts(
        &read_parquet(&a1_dir.join("audience.parquet")),
        "customer_id",
    )
    .into_iter()
    .collect();
    assert_eq!(again, picked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_scoring_input_fails_clearly_and_unscorable_rows_are_kept_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let g = halyard_cli::datagen::generate(&dir.join("data"), 1500, 8).unwrap();
    let (_cluster, client) = standalone(dir, 2).await;
    let store = dir.join("state").join("store");

    // No such model: refused at submit, naming it.
    let spec = score_spec(
        dir,
        &g.responses,
        "SELECT * FROM customers",
        "customer_id",
        "nope",
    );
    let err = client.submit(&spec).await.unwrap_err().to_string();
    assert!(
        err.contains("nope") && err.contains("no such model"),
        "{err}"
    );

    train(&client, dir, &g.responses, 1).await;

    // A table without the model's columns: the job fails naming them, before any score.
    let spec = score_spec(
        dir,
        &g.responses,
        "SELECT customer_id, age, days_since_last_contact FROM customers",
        "customer_id",
        "resp",
    );
    let job = client.submit(&spec).await.unwrap();
    let done = wait_done(&client, &job.id, Duration::from_secs(300)).await;
    assert_eq!(done.state, "failed");
    let log = log_text(&client, &job.id).await;
    for column in ["income", "region", "missing column"] {
        assert!(done.error.contains(column), "{}\n{log}", done.error);
    }
    assert!(!store.join("audiences/nightly").exists());

    // Rows with a null key are not scored: counted and written to the rejects files.
    let spec = score_spec(
        dir,
        &g.responses,
        "SELECT CASE WHEN right(customer_id, 2) = '07' THEN NULL ELSE customer_id END AS cid, * FROM customers",
        "cid",
        "resp",
    );
    let job = client.submit(&spec).await.unwrap();
    let done = wait_done(&client, &job.id, Duration::from_secs(300)).await;
    assert_eq!(
        done.state,
        "succeeded",
        "{}",
        log_text(&client, &job.id).await
    );
    let expected = (1..=1500).filter(|i| i % 100 == 7).count() as u64;
    let a = client.audiences(Some("nightly")).await.unwrap();
    assert_eq!(a.last().unwrap().rejected, expected);
    assert_eq!(a.last().unwrap().scored, 1500 - expected);
    let mut rejected = 0;
    for e in std::fs::read_dir(store.join("jobs").join(&job.id).join("scores")).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("rejects-")
        {
            let b = read_parquet(&p);
            assert!(
                texts(&b, "reason")
                    .iter()
                    .all(|r| r.contains("\"cid\" is null"))
            );
            rejected += b.num_rows() as u64;
        }
    }
    assert_eq!(rejected, expected);
}
