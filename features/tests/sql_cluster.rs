//! The SQL cluster against single-process DataFusion: same queries, same answers (float
//! aggregates rounded to 6 places: partial sums add up in a different order).
//! In-process Ballista scheduler and two executors (the real-process versions are in the
//! workspace's `tests/features.rs`).

use std::fmt::Write as _;
use std::path::Path;

use datafusion::prelude::{CsvReadOptions, SessionContext};
use halyard_core::store::S3Config;
use halyard_features::cluster::{SqlExecutor, SqlScheduler};
use halyard_features::session::{DataAccess, local_context, remote_context};

/// Customers and events, deterministic.
fn write_data(dir: &Path) {
    let mut c = String::from("customer_id,segment,age\n");
    for i in 0..200 {
        let seg = ["gold", "silver", "bronze"][i % 3];
        writeln!(c, "{i},{seg},{}", 20 + (i * 7) % 50).unwrap();
    }
    std::fs::write(dir.join("customers.csv"), c).unwrap();
    let mut e = String::from("customer_id,campaign,day,amount,channel\n");
    let mut x: u64 = 7;
    for _ in 0..5000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let cust = (x >> 33) % 220; // some events name unknown customers
        let day = 1 + (x >> 20) % 28;
        let amount = ((x >> 40) % 10_000) as f64 / 100.0;
        let channel = ["email", "sms", "push"][((x >> 13) % 3) as usize];
        writeln!(
            e,
            "{cust},c{},2024-03-{day:02},{amount},{channel}",
            (x >> 50) % 4
        )
        .unwrap();
    }
    std::fs::write(dir.join("events.csv"), e).unwrap();
}

const QUERIES: &[&str] = &[
    // join + aggregate
    "SELECT c.segment, count(*) AS n, round(sum(e.amount), 6) AS total, round(avg(e.amount), 6) AS mean \
     FROM events e JOIN customers c ON e.customer_id = c.customer_id GROUP BY c.segment",
    // left join keeps customers without events
    "SELECT c.customer_id, count(e.amount) AS n FROM customers c LEFT JOIN events e \
     ON e.customer_id = c.customer_id GROUP BY c.customer_id",
    // window functions: lag and rolling mean by series
    "SELECT customer_id, day, amount, \
       lag(amount, 1) OVER (PARTITION BY customer_id ORDER BY day, amount) AS prev, \
       round(avg(amount) OVER (PARTITION BY customer_id ORDER BY day, amount ROWS BETWEEN 2 PRECEDING AND CURRENT ROW), 6) AS roll3 \
     FROM events",
    // the UDFs
    "SELECT customer_id, bucketize(amount, 10, 50, 90) AS b, hash_bucket(channel, 7) AS h, \
       day_of_week(CAST(day AS DATE)) AS dow, week_of_year(CAST(day AS DATE)) AS wk, \
       is_holiday(CAST(day AS DATE), '2024-03-17', '2024-03-29') AS hol FROM events",
    // distinct, having
    "SELECT campaign, count(DISTINCT customer_id) AS reach FROM events GROUP BY campaign HAVING count(*) > 10",
];

/// A result as sorted lines, so that row order (which SQL leaves open) does not matter.
async fn rows(ctx: &SessionContext, sql: &str) -> Vec<String> {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

async fn register(ctx: &SessionContext, dir: &Path) {
    for t in ["customers", "events"] {
        ctx.register_csv(
            t,
            dir.join(format!("{t}.csv")).to_str().unwrap(),
            CsvReadOptions::new(),
        )
        .await
        .unwrap();
    }
}

/// An in-process SQL scheduler on a free port: it, its endpoint, the data access and key
/// its nodes share.
async fn scheduler() -> (SqlScheduler, String, DataAccess, String) {
    let access = DataAccess::unconfined(&S3Config::default());
    let (verifier, key) = halyard_core::auth::private_keys().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheduler = SqlScheduler::start(listener, &access, verifier, None, &key)
        .await
        .unwrap();
    let endpoint = scheduler.addr.to_string();
    (scheduler, endpoint, access, key)
}

/// An executor `id` of two slots following the scheduler at `endpoint`, its work folder
/// capped at `budget` bytes.
async fn executor(
    id: &str,
    endpoint: &str,
    access: &DataAccess,
    key: &str,
    budget: Option<u64>,
) -> SqlExecutor {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut e = SqlExecutor::start(id, "127.0.0.1", l, 2, access, key, budget)
        .await
        .unwrap();
    e.follow(Some(endpoint));
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_answers_equal_single_process_datafusion() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let (scheduler, endpoint, access, key) = scheduler().await;
    let mut executors = Vec::new();
    for id in ["sql-exec-a", "sql-exec-b"] {
        executors.push(executor(id, &endpoint, &access, &key, None).await);
    }
    let cluster = remote_context(&endpoint, Some(&key), &access, 4)
        .await
        .unwrap();
    let local = local_context(&access, 4).unwrap();
    register(&cluster, dir.path()).await;
    register(&local, dir.path()).await;
    for q in QUERIES {
        let want = rows(&local, q).await;
        assert!(!want.is_empty(), "{q}");
        let got = rows(&cluster, q).await;
        assert_eq!(got, want, "{q}");
    }
    // A syntax error names its position; an unknown column names the column.
    let e = cluster
        .sql("SELECT customer_id FROM events WHERE amount > 1 ORDER customer_id")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("Line: 1") || e.contains("line 1"), "{e}");
    let e = cluster
        .sql("SELECT spend FROM events")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("spend"), "{e}");
    for e in executors {
        e.stop();
    }
    scheduler.stop().await;
}

/// An executor whose work folder is at its disk budget takes no task: the query fails
/// with a message naming the folder and the budget, and an executor with room answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_executor_at_its_disk_budget_refuses_tasks_clearly() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let (scheduler, endpoint, access, key) = scheduler().await;
    // One byte: the folder's owner file alone is over it.
    let full = executor("sql-exec-full", &endpoint, &access, &key, Some(1)).await;
    let cluster = remote_context(&endpoint, Some(&key), &access, 4)
        .await
        .unwrap();
    register(&cluster, dir.path()).await;
    let err = cluster
        .sql(QUERIES[0])
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("disk budget")
            && err.contains("halyard-sql-")
            && err.contains("disk_budget_mb"),
        "{err}"
    );
    full.stop();
    let roomy = executor("sql-exec-roomy", &endpoint, &access, &key, Some(64 << 20)).await;
    let cluster = remote_context(&endpoint, Some(&key), &access, 4)
        .await
        .unwrap();
    register(&cluster, dir.path()).await;
    assert!(!rows(&cluster, QUERIES[0]).await.is_empty());
    roomy.stop();
    scheduler.stop().await;
}
