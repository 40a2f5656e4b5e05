//! The SQL cluster against single-process DataFusion: same queries, same answers (float
//! aggregates rounded to 6 places: partial sums add up in a different order).
//! In-process Ballista scheduler and two executors (the real-process versions are in the
//! workspace's `tests/features.rs`), in plaintext and with TLS (and who its ports refuse).

use std::fmt::Write as _;
use std::path::Path;

use std::time::Duration;

use arrow_flight::Ticket;
use arrow_flight::flight_service_client::FlightServiceClient;
use ballista_core::serde::protobuf::PollWorkParams;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use datafusion::prelude::{CsvReadOptions, SessionContext};
use halyard_core::store::S3Config;
use halyard_core::tls::{Tls, TlsFiles};
use halyard_features::cluster::{SqlExecutor, SqlScheduler};
use halyard_features::session::{DataAccess, local_context, remote_context};
use tonic::Code;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Identity};

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

/// An in-process SQL scheduler on a free port (serving `tls`): it, its endpoint, the
/// data access and key its nodes share.
async fn scheduler(tls: Option<&Tls>) -> (SqlScheduler, String, DataAccess, String) {
    let access = DataAccess::unconfined(&S3Config::default());
    let (verifier, key) = halyard_core::auth::private_keys().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheduler = SqlScheduler::start(listener, &access, verifier, None, &key, tls)
        .await
        .unwrap();
    let endpoint = scheduler.addr.to_string();
    (scheduler, endpoint, access, key)
}

/// An executor `id` of two slots following the scheduler at `endpoint`, its work folder
/// capped at `budget` bytes, serving `tls`.
async fn executor(
    id: &str,
    endpoint: &str,
    access: &DataAccess,
    key: &str,
    budget: Option<u64>,
    tls: Option<&Tls>,
) -> SqlExecutor {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut e = SqlExecutor::start(id, "127.0.0.1", l, 2, access, key, budget, tls)
        .await
        .unwrap();
    e.follow(Some(endpoint));
    e
}

/// A context on the cluster at `endpoint` (over `tls`), with the data of `dir`
/// registered, after checking that it answers every query as single-process DataFusion.
async fn answers_as_datafusion_does(
    endpoint: &str,
    key: &str,
    tls: Option<ClientTlsConfig>,
    access: &DataAccess,
    dir: &Path,
) -> SessionContext {
    let cluster = remote_context(endpoint, Some(key), tls, access, 4)
        .await
        .unwrap();
    let local = local_context(access, 4).unwrap();
    register(&cluster, dir).await;
    register(&local, dir).await;
    for q in QUERIES {
        let want = rows(&local, q).await;
        assert!(!want.is_empty(), "{q}");
        assert_eq!(rows(&cluster, q).await, want, "{q}");
    }
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_answers_equal_single_process_datafusion() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let (scheduler, endpoint, access, key) = scheduler(None).await;
    let mut executors = Vec::new();
    for id in ["sql-exec-a", "sql-exec-b"] {
        executors.push(executor(id, &endpoint, &access, &key, None, None).await);
    }
    let cluster = answers_as_datafusion_does(&endpoint, &key, None, &access, dir.path()).await;
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
    let (scheduler, endpoint, access, key) = scheduler(None).await;
    // One byte: the folder's owner file alone is over it.
    let full = executor("sql-exec-full", &endpoint, &access, &key, Some(1), None).await;
    let cluster = remote_context(&endpoint, Some(&key), None, &access, 4)
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
    let roomy = executor(
        "sql-exec-roomy",
        &endpoint,
        &access,
        &key,
        Some(64 << 20),
        None,
    )
    .await;
    let cluster = remote_context(&endpoint, Some(&key), None, &access, 4)
        .await
        .unwrap();
    register(&cluster, dir.path()).await;
    assert!(!rows(&cluster, QUERIES[0]).await.is_empty());
    roomy.stop();
    scheduler.stop().await;
}

/// The Flight call Ballista fetches results and shuffle partitions with, with a ticket no
/// query made; `key` in its `authorization`.
async fn fetch(channel: Channel, key: Option<&str>) -> tonic::Status {
    let mut request = tonic::Request::new(Ticket {
        ticket: vec![1, 2, 3].into(),
    });
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    match FlightServiceClient::new(channel).do_get(request).await {
        Ok(_) => panic!("a made-up ticket was answered"),
        Err(status) => status,
    }
}

/// Whether a call failed for its connection (TLS or transport), not by an answer.
fn failed_connection(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some_and(|e| e.is::<tonic::transport::Error>())
}

/// With TLS, the SQL cluster's ports speak nothing else: queries run over it (results
/// come through the scheduler, shuffles between executors go as nodes) and answer as
/// single-process DataFusion does; a plaintext client gets no answer; a result fetch at
/// the scheduler needs a key; the scheduler's node calls need a certificate of the
/// cluster's CA besides the node key; an executor's Flight port refuses a caller without
/// such a certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_tls_the_sql_ports_answer_only_keys_over_tls_and_nodes() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let certs = halyard_core::certs::init(&dir.path().join("certs"), &["node".into()]).unwrap();
    let (_, cert, cert_key) = &certs.nodes[0];
    let tls = TlsFiles {
        cert: cert.clone(),
        key: cert_key.clone(),
        ca: Some(certs.ca.clone()),
    }
    .load()
    .unwrap();
    let (scheduler, endpoint, access, key) = scheduler(Some(&tls)).await;
    let mut executors = Vec::new();
    for id in ["tls-exec-a", "tls-exec-b"] {
        executors.push(executor(id, &endpoint, &access, &key, None, Some(&tls)).await);
    }
    let trust = halyard_core::tls::client_trusting(&certs.ca).unwrap();
    answers_as_datafusion_does(&endpoint, &key, Some(trust.clone()), &access, dir.path()).await;

    // Plaintext to the TLS port: no answer.
    let plain = remote_context(&endpoint, Some(&key), None, &access, 4)
        .await
        .unwrap();
    register(&plain, dir.path()).await;
    let answer = tokio::time::timeout(Duration::from_secs(120), async {
        plain.sql(QUERIES[0]).await?.collect().await
    })
    .await
    .expect("a plaintext query neither failed nor ended");
    assert!(answer.is_err(), "a plaintext client was answered");

    // A result fetch at the scheduler: no key, 401; with the key it passes the door and
    // the proxy refuses the made-up ticket.
    let secure = |addr: &str, tls: ClientTlsConfig| {
        Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
    };
    let to_scheduler = secure(&endpoint, trust.clone()).connect().await.unwrap();
    let status = fetch(to_scheduler.clone(), None).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = fetch(to_scheduler.clone(), Some(&key)).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("ticket"), "{status:?}");

    // A node call with the node key but no certificate: refused, naming what is missing.
    let bearer = halyard_core::auth::BearerKey::new(Some(&key)).unwrap();
    let status = SchedulerGrpcClient::with_interceptor(to_scheduler, bearer)
        .poll_work(PollWorkParams::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("certificate"), "{status:?}");

    // An executor's Flight port: with a node certificate Ballista itself answers (the
    // ticket is made up); without one the TLS handshake ends before Ballista.
    let flight = executors[0].addr.to_string();
    let node = trust.clone().identity(Identity::from_pem(
        std::fs::read(cert).unwrap(),
        std::fs::read(cert_key).unwrap(),
    ));
    let status = fetch(secure(&flight, node).connect().await.unwrap(), None).await;
    assert!(!failed_connection(&status), "{status:?}");
    let refused = match secure(&flight, trust).connect().await {
        Err(_) => true,
        // The server's alert (`CertificateRequired`) or, when the client wrote first, the
        // connection it closed: a failed connection either way, not an answer.
        Ok(channel) => failed_connection(&fetch(channel, Some(&key)).await),
    };
    assert!(
        refused,
        "a caller without a certificate reached the flight service"
    );
    for e in executors {
        e.stop();
    }
    scheduler.stop().await;
}
