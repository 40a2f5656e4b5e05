//! A node's Prometheus metrics, served at `GET /metrics` on its API port.
//!
//! Every node (scheduler or executor) has one [`Metrics`]: its own registry, so the nodes
//! of one process (`halyard standalone`, the tests) each expose only what they did. Names
//! follow Prometheus's conventions: the `halyard_` prefix, base units (`_seconds`), `_total`
//! on counters, and labels of low cardinality only (a model's name appears only once the
//! model is known to the cluster; a job's id only while the job runs on this node).
//! `docs/monitoring.md` lists every family.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub use prometheus::{Histogram, IntGauge};

use crate::Result;
use crate::kv::{Compare, KvBackend, KvEntry, TxnOp, TxnOutcome};

/// The content type of [`Metrics::render`]: the text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Request latency buckets, in seconds: 0.5 ms to 10 s.
const LATENCY: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Task duration buckets, in seconds: 1 s to 6 h.
const TASK: &[f64] = &[
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 10800.0, 21600.0,
];
/// Batch size buckets, in rows.
const ROWS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// One node's metrics.
#[derive(Clone)]
pub struct Metrics(Arc<Families>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl std::ops::Deref for Metrics {
    type Target = Families;

    fn deref(&self) -> &Families {
        &self.0
    }
}

/// Every family a node exposes.
pub struct Families {
    registry: Registry,
    /// Prediction API calls (`predict`, `forecast`, `feedback`) answered by this node,
    /// by model, call and HTTP status code.
    pub prediction_requests: IntCounterVec,
    /// Their latency, by model and call.
    pub prediction_seconds: HistogramVec,
    /// Records scored on this node, by model and version.
    pub predicted_records: IntCounterVec,
    /// Rows per batch the model runtime scored, by model.
    pub batch_rows: HistogramVec,
    /// Records waiting for a batch, by model.
    pub queue_depth: IntGaugeVec,
    /// 1 while this scheduler leads the cluster.
    pub leader: IntGauge,
    /// Times this scheduler became leader.
    pub leader_changes: IntCounter,
    /// Jobs not ended, by state, as the leader last read them.
    pub jobs: IntGaugeVec,
    /// Live executors, as the leader last read them.
    pub executors: IntGauge,
    /// The cluster's CPU slots, `used` or `free`, as the leader last read them.
    pub cluster_slots: IntGaugeVec,
    /// This executor's CPU slots, `used` or `free`.
    pub executor_slots: IntGaugeVec,
    /// Tasks that ended on this executor, by outcome, with their duration.
    pub task_seconds: HistogramVec,
    /// Training loss of the last epoch, per job training on this executor.
    pub training_loss: GaugeVec,
    /// Training throughput in rows per second, per job training on this executor.
    pub training_rows_per_second: GaugeVec,
    /// Duration of one all-reduce of a data-parallel group.
    pub allreduce_seconds: Histogram,
    /// Rows written by feature stages run from this executor.
    pub feature_rows: IntCounter,
    /// Coordinator (etcd) operations, by operation, with their latency.
    pub coordinator_seconds: HistogramVec,
    /// Coordinator operations that failed, by operation.
    pub coordinator_errors: IntCounterVec,
    /// Drift score of a served model's input feature against its training data, by model,
    /// version, feature and method (`wasserstein`, `jensen_shannon`, `psi`).
    pub drift_score: GaugeVec,
    /// 1 when the feature's drift score is over the threshold.
    pub drift_flag: GaugeVec,
}

impl Families {
    /// Register the families `node` exposes.
    fn register(&self, node: Node) {
        let mut all: Vec<Box<dyn Collector>> = vec![
            Box::new(self.prediction_requests.clone()),
            Box::new(self.prediction_seconds.clone()),
            Box::new(self.coordinator_seconds.clone()),
            Box::new(self.coordinator_errors.clone()),
        ];
        match node {
            Node::Scheduler => all.extend([
                Box::new(self.leader.clone()) as Box<dyn Collector>,
                Box::new(self.leader_changes.clone()),
                Box::new(self.jobs.clone()),
                Box::new(self.executors.clone()),
                Box::new(self.cluster_slots.clone()),
            ]),
            Node::Executor => all.extend([
                Box::new(self.predicted_records.clone()) as Box<dyn Collector>,
                Box::new(self.batch_rows.clone()),
                Box::new(self.queue_depth.clone()),
                Box::new(self.executor_slots.clone()),
                Box::new(self.task_seconds.clone()),
                Box::new(self.training_loss.clone()),
                Box::new(self.training_rows_per_second.clone()),
                Box::new(self.allreduce_seconds.clone()),
                Box::new(self.feature_rows.clone()),
                Box::new(self.drift_score.clone()),
                Box::new(self.drift_flag.clone()),
            ]),
        }
        for c in all {
            self.registry
                .register(c)
                .expect("each family registered once");
        }
    }
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric")
}

fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    HistogramVec::new(opts, labels).expect("a valid metric")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).expect("a valid metric")
}

fn int_gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric")
}

fn int_gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("a valid metric")
}

/// Which node's families a registry exposes: the prediction API and the coordinator on
/// both, the cluster's gauges on schedulers, tasks, training and drift on executors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// A scheduler.
    Scheduler,
    /// An executor.
    Executor,
}

impl Metrics {
    /// The metrics of a `node`, every family at zero.
    pub fn new(node: Node) -> Self {
        let leader_changes = IntCounter::new(
            "halyard_leader_changes_total",
            "Times this scheduler became the cluster's leader.",
        )
        .expect("a valid metric");
        let feature_rows = IntCounter::new(
            "halyard_feature_rows_total",
            "Rows written by the feature stages this executor ran.",
        )
        .expect("a valid metric");
        let families = Families {
            prediction_requests: counter_vec(
                "halyard_prediction_requests_total",
                "Prediction API calls answered by this node, by model, call and HTTP status code.",
                &["model", "call", "code"],
            ),
            prediction_seconds: histogram_vec(
                "halyard_prediction_request_duration_seconds",
                "Latency of prediction API calls answered by this node, by model and call.",
                &["model", "call"],
                LATENCY,
            ),
            predicted_records: counter_vec(
                "halyard_predicted_records_total",
                "Records scored on this node, by model and version.",
                &["model", "version"],
            ),
            batch_rows: histogram_vec(
                "halyard_prediction_batch_rows",
                "Rows per batch the model runtime scored, by model.",
                &["model"],
                ROWS,
            ),
            queue_depth: int_gauge_vec(
                "halyard_prediction_queue_depth",
                "Records waiting to be batched, by model.",
                &["model"],
            ),
            leader: int_gauge(
                "halyard_leader",
                "1 while this scheduler leads the cluster.",
            ),
            leader_changes,
            jobs: int_gauge_vec(
                "halyard_jobs",
                "Jobs not yet ended, by state, as the leader last read them.",
                &["state"],
            ),
            executors: int_gauge(
                "halyard_executors",
                "Live executors, as the leader last read them.",
            ),
            cluster_slots: int_gauge_vec(
                "halyard_cluster_slots",
                "The cluster's CPU slots, used or free, as the leader last read them.",
                &["state"],
            ),
            executor_slots: int_gauge_vec(
                "halyard_executor_slots",
                "This executor's CPU slots, used or free.",
                &["state"],
            ),
            task_seconds: histogram_vec(
                "halyard_task_duration_seconds",
                "Duration of the tasks that ended on this executor, by outcome.",
                &["outcome"],
                TASK,
            ),
            training_loss: gauge_vec(
                "halyard_training_loss",
                "Training loss of the last epoch, per job training on this executor.",
                &["job"],
            ),
            training_rows_per_second: gauge_vec(
                "halyard_training_rows_per_second",
                "Training throughput in rows per second, per job training on this executor.",
                &["job"],
            ),
            allreduce_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "halyard_allreduce_duration_seconds",
                    "Duration of one all-reduce of a data-parallel group on this executor.",
                )
                .buckets(LATENCY.to_vec()),
            )
            .expect("a valid metric"),
            feature_rows,
            coordinator_seconds: histogram_vec(
                "halyard_coordinator_request_duration_seconds",
                "Latency of coordinator (etcd) operations, by operation.",
                &["op"],
                LATENCY,
            ),
            coordinator_errors: counter_vec(
                "halyard_coordinator_errors_total",
                "Coordinator (etcd) operations that failed, by operation.",
                &["op"],
            ),
            drift_score: gauge_vec(
                "halyard_drift_score",
                "Drift of a served model's input feature against its training data, by model, version, feature and method.",
                &["model", "version", "feature", "method"],
            ),
            drift_flag: gauge_vec(
                "halyard_drift_detected",
                "1 when a served model's input feature drifted past the threshold.",
                &["model", "version", "feature"],
            ),
            registry: Registry::new(),
        };
        families.register(node);
        Metrics(Arc::new(families))
    }

    /// Every family in the text exposition format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("the text encoder writes to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// Record one coordinator operation.
    fn coordinator_op<T>(&self, op: &str, started: Instant, r: &Result<T>) {
        self.coordinator_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        if r.is_err() {
            self.coordinator_errors.with_label_values(&[op]).inc();
        }
    }
}

/// A coordination store whose operations are timed into a node's [`Metrics`].
pub struct Timed {
    inner: Arc<dyn KvBackend>,
    metrics: Metrics,
}

impl Timed {
    /// `inner`, timed into `metrics`.
    pub fn new(inner: Arc<dyn KvBackend>, metrics: Metrics) -> Self {
        Timed { inner, metrics }
    }
}

#[async_trait]
impl KvBackend for Timed {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn get(&self, key: &str) -> Result<Option<KvEntry>> {
        let t = Instant::now();
        let r = self.inner.get(key).await;
        self.metrics.coordinator_op("get", t, &r);
        r
    }

    async fn range(&self, prefix: &str) -> Result<Vec<KvEntry>> {
        let t = Instant::now();
        let r = self.inner.range(prefix).await;
        self.metrics.coordinator_op("range", t, &r);
        r
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KvEntry>>> {
        let t = Instant::now();
        let r = self.inner.get_many(keys).await;
        self.metrics.coordinator_op("get_many", t, &r);
        r
    }

    async fn ranges(&self, prefixes: &[String]) -> Result<Vec<Vec<KvEntry>>> {
        let t = Instant::now();
        let r = self.inner.ranges(prefixes).await;
        self.metrics.coordinator_op("ranges", t, &r);
        r
    }

    async fn txn(&self, when: Vec<Compare>, then: Vec<TxnOp>) -> Result<TxnOutcome> {
        let t = Instant::now();
        let r = self.inner.txn(when, then).await;
        self.metrics.coordinator_op("txn", t, &r);
        r
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<i64> {
        let t = Instant::now();
        let r = self.inner.grant_lease(ttl).await;
        self.metrics.coordinator_op("grant_lease", t, &r);
        r
    }

    async fn keep_alive(&self, lease: i64) -> Result<()> {
        let t = Instant::now();
        let r = self.inner.keep_alive(lease).await;
        self.metrics.coordinator_op("keep_alive", t, &r);
        r
    }

    async fn revoke(&self, lease: i64) -> Result<()> {
        let t = Instant::now();
        let r = self.inner.revoke(lease).await;
        self.metrics.coordinator_op("revoke", t, &r);
        r
    }

    async fn watch(&self, prefix: &str) -> Result<crate::kv::Changes> {
        let t = Instant::now();
        let r = self.inner.watch(prefix).await;
        self.metrics.coordinator_op("watch", t, &r);
        r
    }
}

/// One sample of the text exposition format: a metric name, its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' name (`halyard_prediction_requests_total`, `…_bucket`).
    pub name: String,
    /// Its labels, in order.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of a text exposition (what [`Metrics::render`] writes, or any node's
/// `/metrics`); comments and lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, mut rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break i,
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        };
        rest = &inner[end + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::EmbeddedKv;

    #[tokio::test]
    async fn coordinator_operations_are_counted_by_operation() {
        let m = Metrics::new(Node::Executor);
        let kv = Timed::new(Arc::new(EmbeddedKv::new()), m.clone());
        kv.get("a").await.unwrap();
        kv.get("b").await.unwrap();
        assert!(kv.keep_alive(12345).await.is_err());
        let text = m.render();
        assert!(
            text.contains("halyard_coordinator_request_duration_seconds_count{op=\"get\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("halyard_coordinator_errors_total{op=\"keep_alive\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn the_exposition_parses_back_into_its_samples() {
        let m = Metrics::new(Node::Executor);
        m.predicted_records
            .with_label_values(&["a \"quoted\" \\ name", "3"])
            .inc_by(5);
        m.prediction_seconds
            .with_label_values(&["a", "predict"])
            .observe(0.003);
        let samples = parse(&m.render());
        let records = samples
            .iter()
            .find(|s| s.name == "halyard_predicted_records_total")
            .unwrap();
        assert_eq!(records.label("model"), Some("a \"quoted\" \\ name"));
        assert_eq!((records.label("version"), records.value), (Some("3"), 5.0));
        let inf = samples
            .iter()
            .find(|s| {
                s.name == "halyard_prediction_request_duration_seconds_bucket"
                    && s.label("le") == Some("+Inf")
            })
            .unwrap();
        assert_eq!(inf.value, 1.0);
    }

    #[test]
    fn two_nodes_keep_separate_counts() {
        let (a, b) = (Metrics::new(Node::Scheduler), Metrics::new(Node::Scheduler));
        a.leader_changes.inc();
        assert!(a.render().contains("halyard_leader_changes_total 1"));
        assert!(b.render().contains("halyard_leader_changes_total 0"));
    }
}
