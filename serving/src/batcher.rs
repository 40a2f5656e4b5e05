//! Micro-batching: one scoring thread per loaded response model. Requests queue their
//! encoded rows; the thread takes the first, then whatever else is queued (waiting at most
//! `max_wait` for more, up to `max_rows`), scores them as one matrix and answers each.
//! With `max_wait = 0` a lone request is scored at once and batches form only under load.
//!
//! The thread runs inside its own one-thread rayon pool (entered once, not per request),
//! so whatever candle hands to rayon runs inline on it and never competes with the
//! process-wide pool that training uses.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use halyard_core::metrics::{Histogram, IntGauge};
use halyard_models::preprocess::Encoded;
use halyard_models::runtime::LoadedModel;
use tokio::sync::oneshot;
use tracing::warn;

use crate::api::ApiError;

/// Micro-batching bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most rows scored together.
    pub max_rows: usize,
    /// Longest a batch waits for more requests once it has one.
    pub max_wait: Duration,
    /// Requests that may wait in the queue; more are refused with 503.
    pub queue: usize,
    /// Most rows scored on plain arrays instead of candle's matrix products.
    pub plain_rows: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: 256,
            max_wait: Duration::ZERO,
            queue: 4096,
            plain_rows: halyard_core::config::DEFAULT_PLAIN_ROWS,
        }
    }
}

/// Where a scoring thread reports its batches and queue (one model's series of the node's
/// [`halyard_core::metrics::Metrics`]).
#[derive(Debug, Clone)]
pub struct BatchMetrics {
    /// Rows per scored batch.
    pub rows: Histogram,
    /// Rows waiting in the queue.
    pub queued: IntGauge,
}

struct Job {
    x: Vec<f32>,
    rows: usize,
    reply: oneshot::Sender<Result<Vec<f32>, String>>,
}

/// The handle of a scoring thread; the thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct Batcher {
    tx: SyncSender<Job>,
    dim: usize,
    /// Values per row the model answers ([`halyard_models::runtime::Runtime::outputs`]).
    outputs: usize,
    /// The model's kind (`Architecture::kind`), which says what the values are.
    kind: &'static str,
    queued: IntGauge,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("dim", &self.dim).finish()
    }
}

impl Batcher {
    /// Start the scoring thread of `model` (named `label` in logs and thread names).
    pub fn start(
        model: Arc<LoadedModel>,
        dim: usize,
        cfg: BatchConfig,
        label: &str,
        metrics: BatchMetrics,
    ) -> Self {
        let queued = metrics.queued.clone();
        let (tx, rx) = sync_channel(cfg.queue);
        let outputs = model.runtime.outputs();
        let kind = model.runtime.architecture.kind();
        let name = format!("score-{label}");
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(move |_| name.clone())
                    .build();
                match pool {
                    Ok(pool) => pool.install(move || run(&model, dim, &rx, cfg, &metrics)),
                    Err(e) => {
                        warn!(error = %e, "no scoring pool; scoring on the global pool");
                        run(&model, dim, &rx, cfg, &metrics);
                    }
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start a scoring thread");
        }
        Batcher {
            tx,
            dim,
            outputs,
            kind,
            queued,
        }
    }

    /// Values per row of [`Batcher::score`]'s answer: 1, 3 for an uplift model (the
    /// uplift, the treated and the control arm's probabilities), 1 + k for k-means (the
    /// segment, then each centre's distance).
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// The model's kind: `uplift` answers the uplift and both arms, `kmeans` the segment
    /// and each centre's distance, the others one probability.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Score encoded rows (waiting for the thread's answer): [`Batcher::outputs`] values
    /// per row, row after row.
    pub async fn score(&self, data: Encoded) -> Result<Vec<f32>, ApiError> {
        debug_assert_eq!(data.dim, self.dim);
        let (reply, rx) = oneshot::channel();
        let rows = data.rows;
        let job = Job {
            x: data.x,
            rows,
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => self.queued.add(rows as i64),
            Err(TrySendError::Full(_)) => {
                return Err(ApiError::unavailable(
                    "the model's scoring queue is full: retry, or add executors",
                ));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ApiError::unavailable("the model was unloaded: retry"));
            }
        }
        rx.await
            .map_err(|_| ApiError::internal("the scoring thread stopped"))?
            .map_err(ApiError::internal)
    }
}

fn run(
    model: &LoadedModel,
    dim: usize,
    rx: &Receiver<Job>,
    cfg: BatchConfig,
    metrics: &BatchMetrics,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut rows = jobs[0].rows;
        let deadline = Instant::now() + cfg.max_wait;
        while rows < cfg.max_rows {
            let next = match rx.try_recv() {
                Ok(j) => Some(j),
                Err(_) if cfg.max_wait.is_zero() => None,
                Err(_) => rx
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .ok(),
            };
            let Some(j) = next else { break };
            rows += j.rows;
            jobs.push(j);
        }
        metrics.queued.sub(rows as i64);
        metrics.rows.observe(rows as f64);
        let result = if jobs.len() == 1 {
            let j = &mut jobs[0];
            score(model, std::mem::take(&mut j.x), j.rows, dim)
        } else {
            let mut x = Vec::with_capacity(rows * dim);
            for j in &jobs {
                x.extend_from_slice(&j.x);
            }
            score(model, x, rows, dim)
        };
        let k = model.runtime.outputs();
        let mut at = 0;
        for j in jobs {
            let out = match &result {
                Ok(scores) => Ok(scores[at * k..(at + j.rows) * k].to_vec()),
                Err(e) => Err(e.clone()),
            };
            at += j.rows;
            // The caller may have gone (timeout, disconnect): nothing to answer.
            let _ = j.reply.send(out);
        }
    }
}

fn score(model: &LoadedModel, x: Vec<f32>, rows: usize, dim: usize) -> Result<Vec<f32>, String> {
    let data = Encoded {
        x,
        y: Vec::new(),
        rows,
        dim,
    };
    model
        .runtime
        .predict_encoded(&data)
        .map_err(|e| e.to_string())
}
