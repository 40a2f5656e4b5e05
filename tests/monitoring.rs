//! Monitoring with real components: every node's `GET /metrics` passes `promtool check
//! metrics`, and a real Prometheus, scraping a running cluster with a viewer's key, sees
//! the prediction counters, the job and executor gauges and the task durations that the
//! traffic and the job produced.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use halyard_core::proto::CreateKeyRequest;
use serde_json::{Value, json};

/// `promtool check metrics` on `text`: its complaints, empty when it passes.
fn promtool_check(text: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        String::new()
    } else {
        said
    }
}

/// A Prometheus server scraping `targets` every second with the key in `key_file`.
struct Prometheus {
    child: Child,
    addr: String,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[String], key_file: &Path) -> Prometheus {
        let addr = format!("127.0.0.1:{}", free_port());
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: halyard\n    authorization:\n      credentials_file: {}\n    \
                 static_configs:\n      - targets: [{}]\n",
                key_file.display(),
                targets.join(", ")
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("prometheus starts");
        Prometheus { child, addr }
    }

    /// Prometheus's answer to instant query `q` (`None` while it does not answer).
    async fn query(&self, q: &str) -> Option<Value> {
        let url = format!("http://{}/api/v1/query", self.addr);
        let resp = reqwest::Client::new()
            .get(url)
            .query(&[("query", q)])
            .send()
            .await
            .ok()?;
        serde_json::from_slice(&resp.bytes().await.ok()?).ok()
    }

    /// The value of instant query `q` (the sum over its series), once it has one.
    async fn value(&self, q: &str) -> Option<f64> {
        let v = self.query(q).await?;
        let series = v["data"]["result"].as_array()?;
        if series.is_empty() {
            return None;
        }
        series
            .iter()
            .map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
            .sum()
    }

    /// Query `q`: Prometheus's status (`success`, or why not) and the series it found.
    async fn run(&self, q: &str) -> (String, usize) {
        let v = self.query(q).await.unwrap_or_default();
        let status = match v["status"].as_str() {
            Some("success") => "success".to_string(),
            _ => format!("{}: {}", v["errorType"], v["error"]),
        };
        let series = v["data"]["result"].as_array().map_or(0, Vec::len);
        (status, series)
    }

    /// Wait until query `q` has the value `want`.
    async fn wait_for_value(&self, q: &str, want: f64) {
        let mut last = None;
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                last = self.value(q).await;
                if last == Some(want) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "Prometheus never saw {q} = {want}; last {last:?}"
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rows of a CSV file (without quoting) as JSON records, without the label
/// `responded`.
fn csv_records(csv: &Path) -> Vec<serde_json::Map<String, Value>> {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|line| {
            header
                .iter()
                .zip(line.split(','))
                .filter(|(h, _)| **h != "responded")
                .map(|(h, v)| {
                    let value = match v.parse::<f64>() {
                        Ok(x) => json!(x),
                        Err(_) => json!(v),
                    };
                    (h.to_string(), value)
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_predictions_jobs_and_tasks_from_every_node() {
    if missing(&["prometheus", "promtool"], "prometheus") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = halyard_cli::datagen::generate(dir, 2000, 3).unwrap();
    let (cluster, client) = standalone(dir, 1).await;
    let gw = cluster.scheduler.addr.to_string();
    let exec = cluster.executors[0].addr.to_string();
    let spec = spec(dir, "watched", &data.responses, 2, 256);
    train_and_deploy(&client, &spec, 1).await;

    // Traffic: 7 requests of 3 records through the scheduler (forwarded to the executor),
    // 5 of 1 record straight to the executor, 2 refused (a record without its columns) and
    // 1 for a model nobody serves.
    let http = http_client(&cluster.admin_key);
    let record = Value::Object(csv_records(&data.responses).swap_remove(0));
    let body = |n: usize| json!({ "records": vec![record.clone(); n] }).to_string();
    let predict = |addr: &str, model: &str, b: String| {
        http.post(format!("http://{addr}/v1/models/{model}:predict"))
            .header("content-type", "application/json")
            .body(b)
            .send()
    };
    // Each wait ends with one successful request of 1 record (the 503s before it are
    // counted as 503): 8 requests at the scheduler, 8 + 6 at the executor.
    for addr in [&exec, &gw] {
        wait_for(
            "the model to be served",
            Duration::from_secs(30),
            || async {
                let r = predict(addr, "watched", body(1)).await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await;
    }
    for _ in 0..7 {
        let r = predict(&gw, "watched", body(3)).await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    }
    for _ in 0..5 {
        let r = predict(&exec, "watched", body(1)).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    for _ in 0..2 {
        let r = predict(&exec, "watched", json!({"record": {}}).to_string())
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
    }
    let r = predict(&gw, "nobody-serves-this", body(1)).await.unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // Every node's exposition passes promtool.
    let mut texts = Vec::new();
    for addr in [&gw, &exec] {
        let resp = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let text = resp.text().await.unwrap();
        let complaints = promtool_check(&text);
        assert!(
            complaints.is_empty(),
            "promtool check metrics on {addr}:\n{complaints}\n{text}"
        );
        texts.push(text);
    }
    // An unserved model's name does not become a label value.
    assert!(
        !texts.iter().any(|t| t.contains("nobody-serves-this")),
        "{texts:?}"
    );
    assert!(texts[0].contains(
        "halyard_prediction_requests_total{call=\"predict\",code=\"404\",model=\"-\"} 1"
    ));

    // A real Prometheus scrapes both nodes with a viewer's key.
    let viewer = client
        .create_key(CreateKeyRequest {
            name: "prometheus".into(),
            role: "viewer".into(),
            models: String::new(),
            expires: String::new(),
        })
        .await
        .unwrap()
        .token;
    let key_file = dir.join("prometheus.key");
    std::fs::write(&key_file, &viewer).unwrap();
    let prom = Prometheus::start(dir, &[gw.clone(), exec.clone()], &key_file);
    // Both targets up: the viewer's key was accepted.
    prom.wait_for_value("sum(up{job=\"halyard\"})", 2.0).await;
    // Requests answered 200 by each node.
    let ok = |addr: &str| {
        format!(
            "halyard_prediction_requests_total{{instance=\"{addr}\",model=\"watched\",call=\"predict\",code=\"200\"}}"
        )
    };
    prom.wait_for_value(&ok(&gw), 8.0).await;
    prom.wait_for_value(&ok(&exec), 14.0).await;
    prom.wait_for_value(
        "halyard_prediction_requests_total{model=\"watched\",code=\"400\"}",
        2.0,
    )
    .await;
    // Records scored by version 1: 7 × 3 + 7 × 1.
    prom.wait_for_value(
        "halyard_predicted_records_total{model=\"watched\",version=\"1\"}",
        28.0,
    )
    .await;
    // The leader's gauges and the executor's task histogram.
    prom.wait_for_value("halyard_leader", 1.0).await;
    prom.wait_for_value("halyard_executors", 1.0).await;
    prom.wait_for_value("halyard_jobs{state=\"running\"}", 0.0)
        .await;
    prom.wait_for_value(
        "halyard_task_duration_seconds_count{outcome=\"succeeded\"}",
        1.0,
    )
    .await;
    prom.wait_for_value("halyard_leader_changes_total", 1.0)
        .await;
    assert!(
        prom.value("halyard_coordinator_request_duration_seconds_count{op=\"txn\"}")
            .await
            .unwrap_or(0.0)
            > 0.0
    );
    // Every query of the Grafana dashboard (deploy/grafana/halyard.json) is valid PromQL
    // over these metrics, and the request rate panel has data.
    let dashboard: Value =
        serde_json::from_str(include_str!("../deploy/grafana/halyard.json")).unwrap();
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    assert!(exprs.len() >= 16, "{exprs:?}");
    for q in &exprs {
        let (status, _) = prom.run(q).await;
        assert_eq!(status, "success", "dashboard query {q}");
    }
    // (A rate needs two scrapes of the series: one a second.)
    let rate = exprs[0];
    wait_for(
        &format!("data for {rate}"),
        Duration::from_secs(15),
        || async { (prom.run(rate).await.1 >= 1).then_some(()) },
    )
    .await;
    drop(prom);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shifted_feature_is_flagged_by_the_drift_monitor_and_the_others_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = halyard_cli::datagen::generate(dir, 12_000, 3).unwrap();
    let (cluster, client) = standalone(dir, 1).await;
    let exec = cluster.executors[0].addr.to_string();
    let spec = spec(dir, "drifting", &data.responses, 1, 512);
    train_and_deploy(&client, &spec, 1).await;
    let http = http_client(&cluster.admin_key);
    let predict = |records: &[serde_json::Map<String, Value>]| {
        http.post(format!("http://{exec}/v1/models/drifting:predict"))
            .header("content-type", "application/json")
            .body(json!({ "records": records }).to_string())
            .send()
    };
    let mut records = csv_records(&data.responses);
    records.truncate(10_000);
    // Nothing scored before a whole window.
    let report: Value = serde_json::from_str(&client.drift("drifting").await.unwrap()).unwrap();
    assert_eq!(report["versions"], json!([]), "{report}");
    // The training rows themselves, with every income doubled: one window of 10,000.
    for r in &mut records {
        let income = r["income"].as_f64().unwrap();
        r.insert("income".into(), json!(income * 2.0));
    }
    wait_for(
        "the model to be served",
        Duration::from_secs(30),
        || async {
            let r = predict(&records[..1]).await.ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;
    for chunk in records[1..].chunks(1000) {
        let r = predict(chunk).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let report: Value = wait_for("a drift window", Duration::from_secs(10), || async {
        let r: Value = serde_json::from_str(&client.drift("drifting").await.ok()?).ok()?;
        (!r["versions"].as_array()?.is_empty()).then_some(r)
    })
    .await;
    let v = &report["versions"][0];
    assert_eq!(v["version"], 1, "{report}");
    assert_eq!(v["rows"], 10_000, "{report}");
    let features = v["features"].as_array().unwrap();
    let drifted: Vec<&str> = features
        .iter()
        .filter(|f| f["drifted"] == json!(true))
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(drifted, ["income"], "{report}");
    let income = features.iter().find(|f| f["name"] == "income").unwrap();
    assert_eq!(income["method"], "wasserstein");
    assert!(
        features.iter().any(|f| f["method"] == "jensen_shannon"),
        "{report}"
    );
    // The executor's metrics say the same.
    let text = http
        .get(format!("http://{exec}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            "halyard_drift_detected{feature=\"income\",model=\"drifting\",version=\"1\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "halyard_drift_detected{feature=\"segment\",model=\"drifting\",version=\"1\"} 0"
        ),
        "{text}"
    );
    cluster.stop().await;
}
