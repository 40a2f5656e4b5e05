//! The feature stage on the SQL cluster (embedded Ballista): results equal single-process
//! DataFusion's, on an in-process standalone cluster and on real processes over etcd; a
//! killed executor loses no rows; bad input fails the job with a message that says what
//! and where.

mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use bytes::Bytes;
use halyard_core::spec::JobSpec;
use halyard_core::store::S3Config;
use halyard_features::session::{DataAccess, local_context, remote_context};
use halyard_features::stage::{FeatureTable, collect_retrying, run_stage};

/// Rows as sorted text lines (floats in full; compare them with [`assert_same`]).
fn lines(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let cols: Vec<Vec<String>> = b
            .columns()
            .iter()
            .map(|c| {
                let s = cast(c, &DataType::Utf8).unwrap();
                let s = s.as_string::<i32>();
                (0..s.len()).map(|i| s.value(i).to_string()).collect()
            })
            .collect();
        for r in 0..b.num_rows() {
            out.push(
                cols.iter()
                    .map(|c| c[r].as_str())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    out.sort();
    out
}

/// Equal row sets, numbers to a relative 1e-9 (partial sums add up in another order on
/// the cluster); shows the first difference only.
fn assert_same(got: &[String], want: &[String], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: row counts differ");
    for (g, w) in got.iter().zip(want) {
        if g == w {
            continue;
        }
        let same = g.split('|').count() == w.split('|').count()
            && g.split('|').zip(w.split('|')).all(|(a, b)| {
                a == b
                    || matches!((a.parse::<f64>(), b.parse::<f64>()), (Ok(x), Ok(y)) if (x - y).abs() <= 1e-9 * y.abs().max(1.0))
            });
        assert!(same, "{what}: first difference\n got  {g}\n want {w}");
    }
}

fn parquet_rows(bytes: Bytes) -> Vec<RecordBatch> {
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Generated customers plus a campaign dimension table.
fn write_inputs(dir: &Path) {
    let g = halyard_cli::datagen::generate(&dir.join("gen"), 3000, 11).unwrap();
    std::fs::copy(&g.responses, dir.join("responses.csv")).unwrap();
    let mut c = String::from("campaign,tier,budget\n");
    for (i, name) in [
        "spring_sale",
        "winback",
        "loyalty",
        "new_product",
        "holiday",
    ]
    .iter()
    .enumerate()
    {
        writeln!(c, "{name},{},{}", ["a", "b"][i % 2], 1000 * (i + 1)).unwrap();
    }
    std::fs::write(dir.join("campaigns.csv"), c).unwrap();
}

/// A job whose feature steps join, aggregate, use window functions and the UDFs.
fn feature_spec(dir: &Path, name: &str) -> String {
    format!(
        r#"name = "{name}"
[[features.sources]]
name = "responses"
path = "{dir}/responses.csv"
[[features.sources]]
name = "campaigns"
path = "{dir}/campaigns.csv"
[[features.steps]]
name = "per_region"
sql = "SELECT region, avg(income) AS region_income, count(*) AS region_customers FROM responses GROUP BY region"
[[features.steps]]
name = "features"
sql = """
SELECT r.*, p.region_income, p.region_customers, c.tier, c.budget,
       bucketize(r.age, 30, 45, 60) AS age_band,
       hash_bucket(r.customer_id, 16) AS customer_bucket,
       rank() OVER (PARTITION BY r.region ORDER BY r.income, r.customer_id) AS income_rank
FROM responses r
JOIN per_region p ON r.region = p.region
LEFT JOIN campaigns c ON r.campaign = c.campaign
"""
[features]
shards = 3
[features.split]
method = "hash"
key = "customer_id"
test_percent = 20
validation_percent = 10
[data]
label = "responded"
exclude = ["customer_id"]
[train]
epochs = 2
"#,
        dir = dir.display()
    )
}

fn write_spec(dir: &Path, name: &str, text: &str) -> JobSpec {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    JobSpec::from_file(&path).unwrap()
}

/// The same stage on single-process DataFusion, into `out`.
async fn reference(spec: &JobSpec, out: &Path) -> (FeatureTable, Vec<Vec<String>>) {
    let ctx = local_context(&DataAccess::unconfined(&S3Config::default()), 4).unwrap();
    let url = format!("file://{}", out.display());
    let table = run_stage(
        &ctx,
        spec.features.as_ref().unwrap(),
        "responded",
        &url,
        true,
        &mut |_| {},
    )
    .await
    .unwrap();
    let shards = table
        .shards
        .iter()
        .map(|s| {
            lines(&parquet_rows(
                std::fs::read(out.join(&s.file)).unwrap().into(),
            ))
        })
        .collect();
    (table, shards)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standalone_feature_stage_equals_datafusion_and_trains() {
    let tmp = tempfile::tempdir().unwrap();
    write_inputs(tmp.path());
    let spec = write_spec(tmp.path(), "feat", &feature_spec(tmp.path(), "feat"));
    let (cluster, client) = common::standalone(tmp.path(), 2).await;
    let job = client.submit(&spec).await.unwrap();
    let done = common::wait_done(&client, &job.id, Duration::from_secs(180)).await;
    assert_eq!(done.state, "succeeded", "{done:?}");
    let logs = common::log_text(&client, &job.id).await;
    assert!(
        logs.contains("features: running the SQL on the cluster"),
        "{logs}"
    );

    let dir = tmp
        .path()
        .join("state/store/jobs")
        .join(&job.id)
        .join("features");
    let table: FeatureTable =
        serde_json::from_slice(&std::fs::read(dir.join("features.json")).unwrap()).unwrap();
    let (want, want_shards) = reference(&spec, &tmp.path().join("reference")).await;
    assert_eq!(table.rows, 3000);
    assert_eq!(table.shards, want.shards, "same rows in every shard");
    assert_eq!(table.split_rows, want.split_rows);
    for (shard, want_rows) in table.shards.iter().zip(&want_shards) {
        let got = lines(&parquet_rows(
            std::fs::read(dir.join(&shard.file)).unwrap().into(),
        ));
        assert_same(&got, want_rows, &shard.file);
    }
    // Statistics by SQL aggregates: counts and vocabularies exact, moments to rounding.
    assert_eq!(table.categorical, want.categorical);
    for (a, b) in table.numeric.iter().zip(&want.numeric) {
        assert_eq!(
            (a.column.as_str(), a.count, a.min, a.max),
            (b.column.as_str(), b.count, b.min, b.max)
        );
        assert!((a.mean.unwrap() - b.mean.unwrap()).abs() <= 1e-9 * b.mean.unwrap().abs().max(1.0));
    }
    let test = table.split_rows["test"] as f64 / 3000.0;
    assert!((0.16..0.24).contains(&test), "test share {test}");
    // The model trained on the stage's split: its test rows are the split's.
    let test_rows = done.metrics.get("test_rows").copied().unwrap_or_default();
    assert_eq!(
        test_rows as u64, table.split_rows["test"],
        "{:?}",
        done.metrics
    );

    cluster.stop().await;
}

/// Bad input: each job fails, naming what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_feature_input_fails_the_job_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    write_inputs(tmp.path());
    // A folder whose CSV files disagree on their columns.
    std::fs::create_dir_all(tmp.path().join("mixed")).unwrap();
    std::fs::write(
        tmp.path().join("mixed/a.csv"),
        "customer_id,spend\nc1,1.5\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("mixed/b.csv"),
        "customer_id,spend,extra\nc2,2.5,x\n",
    )
    .unwrap();
    let (cluster, client) = common::standalone(tmp.path(), 1).await;
    let base = feature_spec(tmp.path(), "bad");
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "syntax",
            base.replace(
                "FROM responses GROUP BY region",
                "FROM responses GROUP region",
            ),
            &["per_region", "Line: 1", "Column"],
        ),
        (
            "column",
            base.replace("avg(income)", "avg(salary)"),
            &["per_region", "salary"],
        ),
        (
            "source",
            base.replace("campaigns.csv", "no-such-file.csv"),
            &["campaigns", "no-such-file.csv", "does not exist"],
        ),
        (
            "label",
            base.replace("label = \"responded\"", "label = \"converted\""),
            &["converted", "label", "responded"],
        ),
        (
            "schema",
            base.replace(
                &format!("{}/campaigns.csv\"", tmp.path().display()),
                &format!("{}/mixed/\"", tmp.path().display()),
            ),
            &["campaigns", "a.csv", "b.csv", "extra", "one schema"],
        ),
    ];
    for (name, text, needles) in cases {
        let spec = write_spec(
            tmp.path(),
            &format!("bad-{name}"),
            &text.replace("name = \"bad\"", &format!("name = \"bad-{name}\"")),
        );
        let job = client.submit(&spec).await.unwrap();
        let done = common::wait_done(&client, &job.id, Duration::from_secs(120)).await;
        assert_eq!(done.state, "failed", "{name}: {done:?}");
        for n in needles {
            assert!(
                done.error.contains(n),
                "{name}: {:?} lacks {n:?}",
                done.error
            );
        }
    }
    // The cluster still works after all that.
    let spec = write_spec(tmp.path(), "good", &feature_spec(tmp.path(), "good"));
    let job = client.submit(&spec).await.unwrap();
    let done = common::wait_done(&client, &job.id, Duration::from_secs(120)).await;
    assert_eq!(done.state, "succeeded", "{done:?}");
    cluster.stop().await;
}

/// Customers and a big events table for the process tests.
fn write_events(dir: &Path, rows: usize) {
    let mut e = String::with_capacity(rows * 40);
    e.push_str("customer_id,campaign,day,amount,channel\n");
    let mut x: u64 = 3;
    for _ in 0..rows {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let channel = ["email", "sms", "push"][((x >> 13) % 3) as usize];
        writeln!(
            e,
            "{},c{},2024-03-{:02},{},{channel}",
            (x >> 33) % 5000,
            (x >> 50) % 4,
            1 + (x >> 20) % 28,
            ((x >> 40) % 10_000) as f64 / 100.0
        )
        .unwrap();
    }
    std::fs::write(dir.join("events.csv"), e).unwrap();
}

const PROCESS_QUERIES: &[&str] = &[
    "SELECT channel, count(*) AS n, sum(amount) AS total FROM events GROUP BY channel",
    "SELECT customer_id, count(*) AS n, avg(amount) AS mean, max(day) AS last_day, \
       bucketize(count(*), 10, 20, 40) AS activity FROM events GROUP BY customer_id",
    "SELECT e.customer_id, e.day, round(avg(e.amount) OVER (PARTITION BY e.customer_id ORDER BY e.day, e.amount \
       ROWS BETWEEN 3 PRECEDING AND CURRENT ROW), 6) AS roll, day_of_week(CAST(e.day AS DATE)) AS dow \
     FROM events e WHERE e.customer_id < 300",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processes_answer_like_datafusion_and_survive_a_killed_executor() {
    let tmp = tempfile::tempdir().unwrap();
    write_events(tmp.path(), 600_000);
    let etcd = common::EtcdCluster::new(tmp.path(), "features");
    let api = format!("127.0.0.1:{}", common::free_port());
    let scheduler = etcd.scheduler("sql-scheduler", &api);
    let (mut exec_a, _) = etcd.executor("sql-exec-a");
    let (_exec_b, _) = etcd.executor("sql-exec-b");
    let client = etcd.connect(&api).await;
    let endpoint = common::wait_for(
        "the sql endpoint and two executors",
        Duration::from_secs(30),
        || async {
            let c = client.cluster().await.ok()?;
            (!c.sql_endpoint.is_empty() && c.executors.len() == 2).then_some(c.sql_endpoint)
        },
    )
    .await;
    let access = DataAccess::unconfined(&S3Config::default());
    let events = tmp.path().join("events.csv");
    let key = etcd.admin_key().await;
    let cluster = remote_context(&endpoint, Some(&key), None, &access, 4)
        .await
        .unwrap();
    let local = local_context(&access, 4).unwrap();
    for ctx in [&cluster, &local] {
        ctx.register_csv("events", events.to_str().unwrap(), Default::default())
            .await
            .unwrap();
    }
    for q in PROCESS_QUERIES {
        let want = lines(&local.sql(q).await.unwrap().collect().await.unwrap());
        let got = lines(&cluster.sql(q).await.unwrap().collect().await.unwrap());
        assert_same(&got, &want, q);
    }

    // Kill -9 one executor while a query runs: the query (cancelled when the executor's
    // lease expires, then run again on the other) still returns every row exactly once.
    // A self-join (about 2.6 million joined rows, shuffled between the executors).
    let q = "SELECT a.customer_id, a.channel, count(*) AS n, sum(b.amount) AS total \
             FROM events a JOIN events b ON a.customer_id = b.customer_id AND a.day = b.day \
             GROUP BY a.customer_id, a.channel";
    let want = lines(&local.sql(q).await.unwrap().collect().await.unwrap());
    let started = std::time::Instant::now();
    let running = tokio::spawn({
        let cluster = cluster.clone();
        async move { collect_retrying(&cluster, q).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !running.is_finished(),
        "the query ended before the kill; make it bigger"
    );
    exec_a.kill();
    let got = tokio::time::timeout(Duration::from_secs(120), running)
        .await
        .expect("the query finishes after the kill")
        .unwrap()
        .expect("the query succeeds on the remaining executor");
    eprintln!("query with a killed executor took {:?}", started.elapsed());
    assert_same(&lines(&got), &want, "after the kill");
    let log = std::fs::read_to_string(&scheduler.log).unwrap();
    assert!(
        log.contains("executor lease expired") && log.contains("sql-exec-a"),
        "the leader told its sql scheduler about the lost executor"
    );
}
