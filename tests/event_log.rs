//! The event log under `kill -9`: a real scheduler process acknowledging `:feedback`
//! is killed mid-stream and restarted; every acknowledged outcome is counted, none
//! twice, and the Parquet files the SQL cluster (real Ballista) reads hold each once.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Outcomes per request.
const BATCH: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_outcomes_survive_kill_9_and_are_counted_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cl = EtcdCluster::new(dir, "events");
    let data = halyard_cli::datagen::generate(&dir.join("data"), 800, 5).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut sched = cl.scheduler("sched", &addr);
    let client = cl.connect(&addr).await;
    let _exec = cl.executor("exec").0;
    let job = client
        .submit(&spec(dir, "offer", &data.responses, 1, 256))
        .await
        .unwrap();
    let done = wait_done(&client, &job.id, Duration::from_secs(180)).await;
    assert_eq!(done.state, "succeeded", "{done:?}");

    // Four callers send batches of outcomes (each key once) until the node dies.
    let key = cl.admin_key().await;
    let http = http_client(&key);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let sent = Arc::new(Mutex::new(0usize));
    let url = format!("http://{addr}/v1/models/offer:feedback");
    let feeders: Vec<_> = (0..4)
        .map(|f| {
            let (http, url, acked, sent) = (http.clone(), url.clone(), acked.clone(), sent.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    let keys: Vec<String> = (0..BATCH).map(|i| format!("c{f}-{n}-{i}")).collect();
                    let body: Vec<_> = keys
                        .iter()
                        .enumerate()
                        .map(|(i, k)| serde_json::json!({"version": 1, "key": k, "converted": i % 4 == 0}))
                        .collect();
                    *sent.lock().unwrap() += BATCH;
                    let r = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(serde_json::Value::from(body).to_string())
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => acked.lock().unwrap().extend(keys),
                        _ => return,
                    }
                }
            })
        })
        .collect();
    wait_for(
        "2,000 acknowledged outcomes",
        Duration::from_secs(60),
        || async { (acked.lock().unwrap().len() >= 2_000).then_some(()) },
    )
    .await;
    sched.kill();
    for f in feeders {
        f.await.unwrap();
    }
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let sent = *sent.lock().unwrap();
    println!(
        "{} outcomes acknowledged of {sent} sent before kill -9",
        acked.len()
    );

    // Restarted, the node counts every acknowledged outcome (and perhaps those of the
    // requests cut off, written but not answered), never more than were sent.
    let _sched = cl.scheduler("sched", &addr);
    let client = cl.connect(&addr).await;
    let report = wait_for("the experiment report", Duration::from_secs(30), || async {
        client.experiment("offer").await.ok()
    })
    .await;
    let v1 = report.variants.iter().find(|v| v.version == 1).unwrap();
    let counted = v1.trials as usize;
    assert!(
        counted >= acked.len() && counted <= sent,
        "{counted} counted, {} acknowledged, {sent} sent",
        acked.len()
    );
    let converted = acked
        .iter()
        .filter(|k| k.rsplit('-').next().unwrap().parse::<usize>().unwrap() % 4 == 0)
        .count();
    assert!(v1.conversions as usize >= converted, "{v1:?}");

    // The Parquet files, read by the cluster's SQL: each outcome once, every
    // acknowledged one there (the segment cut by the kill is flushed after the restart).
    let location = format!("{}/events/offer/", cl.store_url);
    let out = dir.join("keys.csv");
    let keys = wait_for("the event files", Duration::from_secs(60), || async {
        let table = format!("CREATE EXTERNAL TABLE ev STORED AS PARQUET LOCATION '{location}'");
        let status = sql_command(
            &addr,
            &key,
            &[
                &table,
                "SELECT key FROM ev WHERE kind = 'outcome' AND model = 'offer' AND version = 1",
            ],
            &out,
        )
        .output()
        .unwrap();
        if !status.status.success() {
            println!("sql: {}", String::from_utf8_lossy(&status.stderr));
            return None;
        }
        let text = std::fs::read_to_string(&out).ok()?;
        let keys: Vec<String> = text.lines().skip(1).map(str::to_string).collect();
        (keys.len() >= counted).then_some(keys)
    })
    .await;
    let unique: BTreeSet<String> = keys.iter().cloned().collect();
    assert_eq!(unique.len(), keys.len(), "an outcome written twice");
    assert_eq!(keys.len(), counted, "the files hold what was counted");
    assert!(
        acked.is_subset(&unique),
        "an acknowledged outcome is missing from the files"
    );
}
