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
    succeed(client, &spec).await;
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
    let (done, log) = succeed(&client, &spec).await;
    // The leader ran the feature stage as a step of its own, then scored on two workers.
    assert!(log.contains("features: attempt 1 placed"), "{log}");
    assert!(
        log.contains("score → audience: attempt 2 placed on 2 worker(s)"),
        "{log}"
    );

    // Every row scored once, as this process scores it with the same artifact.
    let scored = scores_of(&store, &done.id);
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
    succeed(&client, &spec).await;
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
    let (done, _) = succeed(&client, &spec).await;
    let expected = (1..=1500).filter(|i| i % 100 == 7).count() as u64;
    let a = client.audiences(Some("nightly")).await.unwrap();
    assert_eq!(a.last().unwrap().rejected, expected);
    assert_eq!(a.last().unwrap().scored, 1500 - expected);
    let mut rejected = 0;
    for e in std::fs::read_dir(store.join("jobs").join(&done.id).join("scores")).unwrap() {
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

/// A randomised campaign where the treatment works in region `a` (+25 points), does
/// nothing in `b` and hurts a little in `c` (−5), while age and region `c` drive the
/// response itself.
fn uplift_csv(path: &Path, rows: usize) {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut csv = String::from("id,age,region,treated,responded\n");
    for i in 0..rows {
        let age = 20.0 + (next() * 50.0).floor();
        let region = ["a", "b", "c"][(next() * 3.0) as usize % 3];
        let treated = u8::from(next() < 0.5);
        // Region c responds most on its own: ranking by response picks it first.
        let base = 0.05 + 0.004 * (age - 20.0) + if region == "c" { 0.3 } else { 0.0 };
        let effect = match region {
            "a" => 0.25,
            "b" => 0.0,
            _ => -0.05,
        };
        let p = base + f64::from(treated) * effect;
        let responded = u8::from(next() < p);
        csv.push_str(&format!("c{i},{age},{region},{treated},{responded}\n"));
    }
    std::fs::write(path, csv).unwrap();
}

/// Submit `spec`, wait for its job to end, and insist that it succeeded (its log says
/// why not): the job and its log.
async fn succeed(
    client: &halyard_client::Client,
    spec: &JobSpec,
) -> (halyard_client::proto::JobInfo, String) {
    let job = client.submit(spec).await.unwrap();
    let done = wait_done(client, &job.id, Duration::from_secs(300)).await;
    let log = log_text(client, &job.id).await;
    assert_eq!(done.state, "succeeded", "{log}");
    (done, log)
}

/// The Qini coefficient of ranking the test rows (every fifth) by their true effect.
fn oracle_qini(data: &Path) -> f64 {
    let text = std::fs::read_to_string(data).unwrap();
    let (mut y, mut t, mut effect) = (Vec::new(), Vec::new(), Vec::new());
    for (i, line) in text.lines().skip(1).enumerate() {
        if i % 5 != 4 {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let region_effect = match f[2] {
            "a" => 0.25,
            "b" => 0.0,
            _ => -0.05,
        };
        // (A tiny term by row keeps the ranking free of ties.)
        effect.push(region_effect + i as f64 * 1e-12);
        t.push(f[3].parse::<f64>().unwrap());
        y.push(f[4].parse::<f64>().unwrap());
    }
    halyard_models::uplift::qini_auc(&y, &effect, &t).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_uplift_model_finds_whom_the_campaign_changes_and_serves_both_arms() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("campaign.csv");
    uplift_csv(&data, 8000);
    let (cluster, client) = standalone(dir, 2).await;
    let spec = write_spec(
        dir,
        "who",
        &format!(
            "name = \"who\"\n[data]\nsource = \"{}\"\nlabel = \"responded\"\ntreatment = \"treated\"\nexclude = [\"id\"]\n\
             [train]\nepochs = 8\nbatch_size = 128\nlearning_rate = 0.05\n",
            data.display()
        ),
    );
    let (done, log) = succeed(&client, &spec).await;
    assert!(log.contains("randomisation check: treated share"), "{log}");
    let m = &done.metrics;
    let (qini, response) = (m["test_qini"], m["test_response_ranking_qini"]);
    // The true effects' Qini on the same test rows (every fifth row) bounds what a model
    // can reach: the uplift ranking comes close; ranking by response (age) does not.
    let oracle = oracle_qini(&data);
    assert!(
        qini > 0.6 * oracle,
        "qini {qini}, true effects' {oracle}: {m:?}"
    );
    assert!(
        qini > response + 0.5 * oracle,
        "uplift {qini} against response ranking {response}"
    );
    assert!(m["test_random_ranking_qini"].abs() < 0.1, "{m:?}");
    assert!(
        m["test_qini_low"] < qini && qini < m["test_qini_high"],
        "{m:?}"
    );
    assert!(m["treatment_auc"] < 0.6, "{m:?}");
    assert!(m["test_uplift_at_10"] > 0.1, "{m:?}");
    let model = client.model("who").await.unwrap();
    assert_eq!(model.versions[0].model_type, "uplift");
    // Its report draws the Qini curve against the response ranking's and random targeting.
    let report = client.report("who").await.unwrap();
    assert_eq!((report.name.as_str(), report.version), ("who", 1));
    assert!(
        report.html.contains("<figure id=\"qini\"><svg")
            && report.html.contains("ranked by the response model")
            && report
                .html
                .contains(&format!("Qini curve (Qini {qini:.4})")),
        "{}",
        report.html
    );

    // The X-learner on the same data finds the same customers.
    let x_spec = write_spec(
        dir,
        "who-x",
        &format!(
            "name = \"who-x\"\n[data]\nsource = \"{}\"\nlabel = \"responded\"\ntreatment = \"treated\"\nexclude = [\"id\"]\n\
             [model]\nuplift = \"x_learner\"\n[train]\nepochs = 8\nbatch_size = 128\nlearning_rate = 0.05\n",
            data.display()
        ),
    );
    let (done, _) = succeed(&client, &x_spec).await;
    let x_qini = done.metrics["test_qini"];
    eprintln!("T-learner qini {qini}, X-learner {x_qini}, true effects' {oracle}");
    assert!(
        x_qini > 0.6 * oracle,
        "X-learner qini {x_qini}, true effects' {oracle}"
    );
    assert!(x_qini > response + 0.5 * oracle, "{:?}", done.metrics);

    // Served: the uplift and both arms' probabilities.
    deploy(&client, "who", 1, "production", None).await;
    let v = common::predict_when_served(
        &cluster,
        "who",
        serde_json::json!({"records": [
            {"age": 40, "region": "a"}, {"age": 40, "region": "c"}
        ]}),
    )
    .await;
    let p = &v["predictions"];
    for i in 0..2 {
        let (s, t, c) = (
            p[i]["score"].as_f64().unwrap(),
            p[i]["treated"].as_f64().unwrap(),
            p[i]["control"].as_f64().unwrap(),
        );
        assert!((s - (t - c)).abs() < 1e-6, "{v}");
    }
    assert!(
        p[0]["score"].as_f64().unwrap() > p[1]["score"].as_f64().unwrap() + 0.1,
        "region a's uplift above region c's: {v}"
    );

    // An audience by uplift: the top 30 % are nearly all from region a.
    let score = write_spec(
        dir,
        "by-uplift",
        &format!(
            "name = \"by-uplift\"\n[data]\nsource = \"{}\"\n[score]\nmodel = \"who\"\nkey = [\"id\"]\n[score.audience]\ntop_fraction = 0.3\n",
            data.display()
        ),
    );
    succeed(&client, &score).await;
    let audience = read_parquet(&dir.join("state/store/audiences/by-uplift/1/audience.parquet"));
    let ids: BTreeSet<String> = texts(&audience, "id").into_iter().collect();
    let text = std::fs::read_to_string(&data).unwrap();
    let in_a = text
        .lines()
        .skip(1)
        .filter(|l| ids.contains(l.split(',').next().unwrap()) && l.split(',').nth(2) == Some("a"))
        .count();
    assert!(
        in_a as f64 > 0.9 * ids.len() as f64,
        "{in_a} of {} audience members in region a",
        ids.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kmeans_job_segments_customers_and_serves_the_segment_and_distances() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let g = halyard_cli::datagen::generate(&dir.join("data"), 3000, 9).unwrap();
    let (cluster, client) = standalone(dir, 2).await;
    let spec = write_spec(
        dir,
        "segments",
        &format!(
            "name = \"segments\"\n[data]\nsource = \"{}\"\nlabel = \"responded\"\nexclude = [\"customer_id\"]\n\
             [model]\ntype = \"kmeans\"\nk = [3, 5]\n",
            g.responses.display()
        ),
    );
    let (done, log) = succeed(&client, &spec).await;
    assert!(
        log.contains("k-means k = 3") && log.contains("k-means k = 5"),
        "{log}"
    );
    let m = &done.metrics;
    let k = m["k"] as usize;
    assert!(k == 3 || k == 5, "{m:?}");
    // The kept k is the one with the better held-out silhouette.
    let other = if k == 3 { 5 } else { 3 };
    assert!(
        m["silhouette"] >= m[&format!("silhouette_k{other}")],
        "{m:?}"
    );
    assert!(m["silhouette"] > 0.0, "{m:?}");

    // The profile: every row in one segment, shares summing to one, response rates.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("state/store/models/segments/1/manifest.json")).unwrap(),
    )
    .unwrap();
    let profile = manifest["architecture"]["profile"].as_array().unwrap();
    assert_eq!(profile.len(), k);
    let rows: u64 = profile.iter().map(|p| p["rows"].as_u64().unwrap()).sum();
    assert_eq!(rows, 3000);
    for p in profile {
        let rate = p["response_rate"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&rate), "{p}");
        assert!(p["means"]["age"].as_f64().is_some(), "{p}");
        assert!(p["top"]["region"][0].as_str().is_some(), "{p}");
    }

    // The registry carries the profile too (halyard model NAME prints it).
    let registered = client.model("segments").await.unwrap();
    let carried: serde_json::Value =
        serde_json::from_str(&registered.versions[0].profile_json).unwrap();
    assert_eq!(&carried, &manifest["architecture"]["profile"]);

    // Served: the segment, and the distance to every centre (the nearest is the segment).
    deploy(&client, "segments", 1, "production", None).await;
    let v = common::predict_when_served(
        &cluster,
        "segments",
        serde_json::json!({"records": [
        {"age": 30, "income": 40000, "tenure_months": 6, "region": "north", "segment": "value",
         "channel": "email", "campaign": "loyalty", "offer": "none", "previous_responses": 0,
         "days_since_last_contact": 10, "emails_opened_30d": 1},
        {"age": 70, "income": 150000, "tenure_months": 120, "region": "west", "segment": "premium",
         "channel": "direct_mail", "campaign": "winback", "offer": "20_percent", "previous_responses": 5,
         "days_since_last_contact": 300, "emails_opened_30d": 9}
    ]}),
    )
    .await;
    for p in v["predictions"].as_array().unwrap() {
        let segment = p["score"].as_f64().unwrap() as usize;
        let d: Vec<f64> = p["distances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(d.len(), k, "{v}");
        let nearest = (0..k).min_by(|a, b| d[*a].total_cmp(&d[*b])).unwrap();
        assert_eq!(segment, nearest, "{v}");
    }
}

/// Four well-separated blobs in four numeric columns (750 rows each, row `i` in blob
/// `i % 4`), and their true centres.
fn blobs_csv(path: &Path) -> Vec<[f64; 4]> {
    let centres = vec![
        [0.0, 0.0, 0.0, 0.0],
        [20.0, 0.0, 5.0, 0.0],
        [0.0, 20.0, 0.0, 5.0],
        [20.0, 20.0, 5.0, 5.0],
    ];
    let mut csv = String::from("id,x1,x2,x3,x4\n");
    for i in 0..3000 {
        let c = centres[i % 4];
        // Noise in [-1, 1) that varies by row and column without a generator.
        let x: Vec<String> = c
            .iter()
            .enumerate()
            .map(|(j, m)| {
                let noise = ((i * 7919 + j * 104_729) % 2000) as f64 / 1000.0 - 1.0;
                format!("{:.4}", m + noise)
            })
            .collect();
        csv.push_str(&format!("c{i},{}\n", x.join(",")));
    }
    std::fs::write(path, csv).unwrap();
    centres
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kmeans_job_on_two_workers_recovers_the_centres_like_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("blobs.csv");
    let centres = blobs_csv(&data);
    let (_cluster, client) = standalone(dir, 2).await;
    let spec_of = |name: &str, workers: &str| {
        write_spec(
            dir,
            name,
            &format!(
                "name = \"{name}\"\n[data]\nsource = \"{}\"\nexclude = [\"id\"]\n\
                 [model]\ntype = \"kmeans\"\nk = [4]\n[train]\n{workers}",
                data.display()
            ),
        )
    };
    let (two, log) = succeed(&client, &spec_of("blobs2", "workers = 2\n")).await;
    // Rank 0 holds every other row of the 3,000 and fits with rank 1 through the ring.
    assert!(log.contains("worker 0 of 2: 1500 local rows"), "{log}");
    assert!(log.contains("k-means k = 4"), "{log}");
    let (one, _) = succeed(&client, &spec_of("blobs1", "")).await;
    let (a, b) = (two.metrics["inertia"], one.metrics["inertia"]);
    assert!(
        (a - b).abs() <= 1e-4 * b,
        "two workers' inertia {a} against one process's {b}"
    );
    // Each true centre is one segment's mean (the profile holds raw means), 750 rows each.
    let registered = client.model("blobs2").await.unwrap();
    let profile: serde_json::Value =
        serde_json::from_str(&registered.versions[0].profile_json).unwrap();
    for c in centres {
        let found = profile.as_array().unwrap().iter().any(|p| {
            p["rows"].as_u64() == Some(750)
                && (1..=4)
                    .all(|j| (p["means"][format!("x{j}")].as_f64().unwrap() - c[j - 1]).abs() < 0.2)
        });
        assert!(found, "no segment at {c:?}: {profile}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_segment_quotas_take_the_top_of_each_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let g = halyard_cli::datagen::generate(&dir.join("data"), 2000, 12).unwrap();
    let (_cluster, client) = standalone(dir, 2).await;
    let store = dir.join("state").join("store");
    train(&client, dir, &g.responses, 1).await;
    let spec = write_spec(
        dir,
        "quota",
        &format!(
            "name = \"quota\"\n[data]\nsource = \"{}\"\n[score]\nmodel = \"resp\"\nkey = [\"customer_id\"]\n\
             segment = \"region\"\n[score.audience]\nper_segment = 25\n",
            g.responses.display()
        ),
    );
    let (done, _) = succeed(&client, &spec).await;
    // Every region's 25 highest scores, and nothing else.
    let scores = read_parquet(
        &store
            .join("jobs")
            .join(&done.id)
            .join("scores/part-00000.parquet"),
    );
    let mut by_region: BTreeMap<String, Vec<(f64, String)>> = BTreeMap::new();
    for ((r, s), k) in texts(&scores, "region")
        .into_iter()
        .zip(floats(&scores, "score"))
        .zip(texts(&scores, "customer_id"))
    {
        by_region.entry(r).or_default().push((s, k));
    }
    let mut want = BTreeSet::new();
    for rows in by_region.values_mut() {
        rows.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        want.extend(rows.iter().take(25).map(|(_, k)| k.clone()));
    }
    let audience = read_parquet(&store.join("audiences/quota/1/audience.parquet"));
    let got: BTreeSet<String> = texts(&audience, "customer_id").into_iter().collect();
    assert_eq!(by_region.len(), 5);
    assert_eq!(got.len(), 125);
    assert_eq!(got, want);
    assert_eq!(
        texts(&audience, "region").len(),
        125,
        "the segment column is carried"
    );
    // A quota without a segment column is refused when the spec is read.
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "name = \"bad\"\n[data]\nsource = \"x.csv\"\n[score]\nmodel = \"resp\"\nkey = [\"id\"]\n[score.audience]\nper_segment = 5\n",
    )
    .unwrap();
    let err = JobSpec::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("per_segment needs segment"), "{err}");
}
