//! A load generator for the prediction endpoint (`halyard bench serving`, and the serving
//! tests): HTTP/1.1 keep-alive connections, each sending one request at a time, either as
//! fast as answers come (closed loop: throughput at saturation) or on a fixed schedule
//! (open loop: latency at a given rate; a request scheduled while the previous answer on
//! its connection was still out is timed from its scheduled send time, so that a slow
//! answer also counts against the requests queued behind it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpStream;

use crate::{CliError, Result};

/// An array's values as JSON, nulls as null.
fn column(a: &dyn Array, value: impl Fn(usize) -> Value) -> Vec<Value> {
    (0..a.len())
        .map(|i| if a.is_null(i) { Value::Null } else { value(i) })
        .collect()
}

/// Rows of Arrow batches as JSON records, with the values the training data had.
pub fn records(batches: &[RecordBatch], drop: &[&str]) -> Result<Vec<Map<String, Value>>> {
    let mut out = Vec::new();
    for b in batches {
        let mut rows = vec![Map::new(); b.num_rows()];
        for (field, col) in b.schema().fields().iter().zip(b.columns()) {
            if drop.contains(&field.name().as_str()) {
                continue;
            }
            let dt = field.data_type();
            let err = |e: arrow::error::ArrowError| CliError::Failed(e.to_string());
            let values: Vec<Value> = if dt.is_integer() {
                let a = cast(col, &DataType::Int64).map_err(err)?;
                let a = a.as_primitive::<Int64Type>();
                column(a, |i| json!(a.value(i)))
            } else if dt.is_numeric() {
                let a = cast(col, &DataType::Float64).map_err(err)?;
                let a = a.as_primitive::<Float64Type>();
                column(a, |i| json!(a.value(i)))
            } else if dt == &DataType::Boolean {
                let a = col.as_boolean();
                column(a, |i| json!(a.value(i)))
            } else {
                let a = cast(col, &DataType::Utf8).map_err(err)?;
                let a = a.as_string::<i32>();
                column(a, |i| json!(a.value(i)))
            };
            for (row, v) in rows.iter_mut().zip(values) {
                row.insert(field.name().clone(), v);
            }
        }
        out.extend(rows);
    }
    Ok(out)
}

/// Request bodies of `batch` records each, cycling through `records`, keyed by the row.
pub fn predict_bodies(records: &[Map<String, Value>], batch: usize, count: usize) -> Vec<Bytes> {
    (0..count)
        .map(|k| {
            let rows: Vec<&Map<String, Value>> = (0..batch)
                .map(|j| &records[(k * batch + j) % records.len()])
                .collect();
            let body = if batch == 1 {
                json!({"record": rows[0], "key": format!("customer-{k}")})
            } else {
                json!({"records": rows, "key": format!("customer-{k}")})
            };
            Bytes::from(body.to_string())
        })
        .collect()
}

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// `HOST:PORT` of any node.
    pub addr: String,
    /// The model.
    pub model: String,
    /// The call: `predict` or `feedback`.
    pub call: &'static str,
    /// Concurrent connections.
    pub connections: usize,
    /// How long to send.
    pub duration: Duration,
    /// Total requests per second on a schedule; `None`: as fast as answers come.
    pub rate: Option<f64>,
    /// Parse every answer and count the versions that served (costs client CPU).
    pub check: bool,
    /// The API key sent with every request (`authorization: Bearer …`).
    pub key: Option<String>,
    /// TLS to the node (trusting its CA), or plaintext.
    pub tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

/// What a load run saw.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Requests answered 200.
    pub ok: u64,
    /// Requests that failed (status or transport), with a sample of the reasons.
    pub failed: u64,
    /// Up to 5 failure reasons.
    pub failures: Vec<String>,
    /// Latencies of the answered requests, microseconds, sorted.
    pub latencies_us: Vec<u64>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Predictions per version (with `check`).
    pub versions: BTreeMap<u64, u64>,
    /// Answers that did not name a version for every prediction (with `check`).
    pub unnamed: u64,
}

impl LoadReport {
    /// Answered requests per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency quantile `q` in microseconds.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * q).round() as usize;
        self.latencies_us[i]
    }

    fn merge(&mut self, other: LoadReport) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.unnamed += other.unnamed;
        for f in other.failures {
            if self.failures.len() < 5 {
                self.failures.push(f);
            }
        }
        self.latencies_us.extend(other.latencies_us);
        for (v, n) in other.versions {
            *self.versions.entry(v).or_default() += n;
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// An HTTP/1.1 connection to `addr` (over TLS when `tls` is given).
pub(crate) async fn connect(
    addr: &str,
    tls: Option<&Arc<tokio_rustls::rustls::ClientConfig>>,
) -> std::result::Result<Sender, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        return Ok(sender);
    };
    let host = halyard_core::config::host_of(addr).to_string();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host)
        .map_err(|e| format!("{addr}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(
    sender: &mut Sender,
    cfg: &LoadConfig,
    auth: &hyper::header::HeaderValue,
    body: Bytes,
) -> std::result::Result<Bytes, String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let req = hyper::Request::post(format!("/v1/models/{}:{}", cfg.model, cfg.call))
        .header("host", &cfg.addr)
        .header("content-type", "application/json")
        .header(hyper::header::AUTHORIZATION, auth.clone())
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status.is_success() {
        Ok(bytes)
    } else {
        Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)))
    }
}

fn count_versions(report: &mut LoadReport, answer: &[u8]) {
    let v: Value = serde_json::from_slice(answer).unwrap_or(Value::Null);
    let preds = v["predictions"].as_array().cloned().unwrap_or_default();
    if preds.is_empty() {
        report.unnamed += 1;
    }
    for p in preds {
        match p["version"].as_u64() {
            Some(version) => *report.versions.entry(version).or_default() += 1,
            None => report.unnamed += 1,
        }
    }
}

async fn connection(
    cfg: Arc<LoadConfig>,
    bodies: Arc<Vec<Bytes>>,
    index: usize,
    start: Instant,
) -> LoadReport {
    let mut report = LoadReport::default();
    let mut sender: Option<Sender> = None;
    // Made once: every request of the connection sends the same key.
    let mut auth = hyper::header::HeaderValue::from_str(&format!(
        "Bearer {}",
        cfg.key.as_deref().unwrap_or("")
    ))
    .unwrap_or_else(|_| hyper::header::HeaderValue::from_static(""));
    auth.set_sensitive(true);
    let interval = cfg
        .rate
        .map(|r| Duration::from_secs_f64(cfg.connections as f64 / r.max(1e-9)));
    let mut k: u64 = 0;
    let mut prev_done = start;
    loop {
        let scheduled = match interval {
            // Stagger the connections over one interval.
            Some(i) => start + i.mul_f64(k as f64 + index as f64 / cfg.connections as f64),
            None => Instant::now(),
        };
        if scheduled.duration_since(start) >= cfg.duration {
            break;
        }
        // tokio's timer ticks every millisecond: a sleep may wake up to 1 ms late, and a
        // sleep until now still waits for the next tick. So the closed loop never sleeps,
        // and when this connection was idle at the scheduled time the clock starts at the
        // actual send (the timer's lateness is the generator's, not the server's); when
        // the previous answer was still out, it starts at the scheduled time (the wait
        // behind the slow answer is the server's).
        let idle = prev_done <= scheduled;
        if interval.is_some() && scheduled > Instant::now() {
            tokio::time::sleep_until(scheduled.into()).await;
        }
        let clock = if idle { Instant::now() } else { scheduled };
        let body = bodies[(index + k as usize * cfg.connections) % bodies.len()].clone();
        k += 1;
        let result = match &mut sender {
            Some(s) => send(s, &cfg, &auth, body).await,
            None => match connect(&cfg.addr, cfg.tls.as_ref()).await {
                Ok(mut s) => {
                    let r = send(&mut s, &cfg, &auth, body).await;
                    sender = Some(s);
                    r
                }
                Err(e) => Err(e),
            },
        };
        prev_done = Instant::now();
        match result {
            Ok(answer) => {
                report.ok += 1;
                report
                    .latencies_us
                    .push(prev_done.duration_since(clock).as_micros() as u64);
                if cfg.check {
                    count_versions(&mut report, &answer);
                }
            }
            Err(e) => {
                report.failed += 1;
                if report.failures.len() < 5 {
                    report.failures.push(e);
                }
                // Start afresh: the connection may be broken.
                sender = None;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    report
}

/// Run the load and gather every connection's report.
pub async fn run(cfg: LoadConfig, bodies: Vec<Bytes>) -> Result<LoadReport> {
    if bodies.is_empty() || cfg.connections == 0 {
        return Err(CliError::Failed(
            "a load needs bodies and connections".into(),
        ));
    }
    let cfg = Arc::new(cfg);
    let bodies = Arc::new(bodies);
    let start = Instant::now();
    let tasks: Vec<_> = (0..cfg.connections)
        .map(|i| tokio::spawn(connection(cfg.clone(), bodies.clone(), i, start)))
        .collect();
    let mut report = LoadReport::default();
    for t in tasks {
        let r = t
            .await
            .map_err(|e| CliError::Failed(format!("a load connection panicked: {e}")))?;
        report.merge(r);
    }
    report.elapsed = start.elapsed();
    report.latencies_us.sort_unstable();
    Ok(report)
}
