//! The stage runner: one task runs its stages ([`Stage`]) in order, each a function here.
//! The executor's task loop, data-parallel groups and `halyard train` all call [`run`];
//! what differs between them (where SQL runs, how progress is told, where a model is
//! published, whether a group or a registry exists) is their [`Host`].
//!
//! **The stage contract.** `features` writes the feature table (Parquet shards and a
//! manifest) into the job's table folder, or finds it finished there by an earlier attempt;
//! it is the only stage that runs SQL. Every later stage reads only a finished table (or
//! the job's `[data] source`) and never the SQL cluster. `train` leaves the model in the
//! run's carry; `publish` writes it; `score` writes each shard's scores to object storage;
//! `audience` (rank 0) reads them all and writes the audience version. A stage that
//! returns [`Flow::Stop`] ends the task early, as a success (a paused search trial, a rank
//! other than 0).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::prelude::SessionContext;
use halyard_core::spec::{JobSpec, Stage};
use halyard_core::store::{Store, features_manifest_path};
use halyard_features::session::DataAccess;
use halyard_features::stage::run_stage;
use halyard_models::device::Placement;

use crate::error::{ExecutorError, Result};
use crate::input::{Input, read_feature_table, read_inputs, read_test_source};
use crate::training::{Progress, Trained, spawn_training};

/// Training progress is reported at most this often (each report is a write to etcd).
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// What a job's stages run on, where they differ.
#[async_trait]
pub trait Host: Send {
    /// A line for the job's log.
    fn log(&mut self, line: String);
    /// Tell the progress so far; `false`: the task must stop.
    async fn report(&mut self) -> bool;
    /// A training progress line (epoch or step, loss).
    fn progress(&mut self, _p: &Progress) {}
    /// A SQL context for the feature stage.
    async fn sql(&mut self) -> Result<SessionContext>;
    /// The feature stage wrote a table of `rows` rows.
    fn table_written(&mut self, _rows: u64) {}
    /// The flag that tells training to stop.
    fn cancel(&self) -> Arc<AtomicBool>;
    /// Where training runs.
    fn placement(&self, spec: &JobSpec) -> Placement;
    /// Train as a group (`[train] workers`); `None` where there is none (trains alone).
    async fn train_group(&mut self, _run: &Run<'_>) -> Option<Result<Grouped>> {
        None
    }
    /// Publish a trained model.
    async fn publish(&mut self, trained: Trained) -> Result<()>;
    /// A model trained and not published: its metrics are the task's result.
    fn unpublished(&mut self, metrics: BTreeMap<String, f64>);
    /// Score this task's shards of the table.
    async fn score(&mut self, _run: &Run<'_>) -> Result<Flow> {
        Err(ExecutorError::Invalid(
            "batch scoring runs on a cluster: submit the spec with halyard submit".into(),
        ))
    }
    /// Pick the audience from every shard's scores.
    async fn audience(&mut self, _run: &Run<'_>) -> Result<()> {
        Err(ExecutorError::Invalid(
            "audiences are written on a cluster: submit the spec with halyard submit".into(),
        ))
    }
}

/// What a group's worker ended with.
pub enum Grouped {
    /// Rank 0: the model and its lineage.
    Model(Box<Trained>),
    /// Paused after `[train] stop_after_epoch`.
    Paused {
        /// The best validation loss so far.
        valid_loss: Option<f64>,
        /// The epoch it paused after.
        epoch: u32,
    },
    /// A rank other than 0 finished.
    Done,
}

/// Whether the next stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on.
    Next,
    /// The task is done (successfully) without the remaining stages.
    Stop,
}

/// One run of a job's stages: the spec, its data and where its feature table lies.
pub struct Run<'a> {
    /// The spec.
    pub spec: &'a JobSpec,
    /// The store the feature table (and scores) are in.
    pub store: &'a Store,
    /// What the job may read, and how S3 is reached.
    pub data: &'a DataAccess,
    /// The feature table's folder in `store`.
    pub table_dir: String,
}

/// Run `stages` of `run` on `host`, in order.
pub async fn run(run: &Run<'_>, stages: &[Stage], host: &mut dyn Host) -> Result<()> {
    let mut trained: Option<Trained> = None;
    for &stage in stages {
        if host.cancel().load(Ordering::Relaxed) {
            return Err(halyard_models::ModelError::Cancelled.into());
        }
        let flow = match stage {
            Stage::Features => features(run, host).await?,
            Stage::Train => match train(run, host).await? {
                Some(t) => {
                    trained = Some(t);
                    Flow::Next
                }
                None => Flow::Stop,
            },
            Stage::Publish => {
                let t = trained.take().ok_or_else(|| {
                    ExecutorError::Panicked("publish without a trained model".into())
                })?;
                host.publish(t).await?;
                Flow::Next
            }
            Stage::Score => host.score(run).await?,
            Stage::Audience => {
                host.audience(run).await?;
                Flow::Next
            }
        };
        if flow == Flow::Stop {
            return Ok(());
        }
    }
    // Trained and not published ([train] publish = false).
    if let Some((model, _)) = trained {
        host.unpublished(model.metrics);
        host.log("trained; not published ([train] publish = false)".into());
    }
    Ok(())
}

/// The feature stage: write the table unless an earlier attempt finished it.
async fn features(run: &Run<'_>, host: &mut dyn Host) -> Result<Flow> {
    let Some(features) = &run.spec.features else {
        return Ok(Flow::Next);
    };
    let (store, dir) = (run.store, &run.table_dir);
    let manifest_path = features_manifest_path(dir);
    match store.get(&manifest_path).await {
        Ok(_) => host.log(format!(
            "features: the table in {} is finished already",
            store.url_of(dir)
        )),
        Err(halyard_core::Error::NotFound { .. }) => {
            let ctx = host.sql().await?;
            host.report().await;
            let mut lines = Vec::new();
            let table = run_stage(
                &ctx,
                features,
                &run.spec.data.label,
                &store.url_of(dir),
                // (A scoring job needs no column statistics.)
                run.spec.score.is_none(),
                &mut |l| lines.push(l),
            )
            .await;
            for l in lines {
                host.log(l);
            }
            let table = table?;
            host.table_written(table.rows);
            let bytes =
                Bytes::from(serde_json::to_vec_pretty(&table).expect("feature table serialises"));
            store.put(&manifest_path, bytes).await?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Flow::Next)
}

/// The finished feature table's manifest (the feature stage wrote it).
pub(crate) async fn table_manifest(run: &Run<'_>) -> Result<Bytes> {
    let path = features_manifest_path(&run.table_dir);
    match run.store.get(&path).await {
        Ok(b) => Ok(b),
        Err(halyard_core::Error::NotFound { .. }) => Err(ExecutorError::Sql(format!(
            "the feature table {} is not finished: its features stage has not run",
            run.store.url_of(&run.table_dir)
        ))),
        Err(e) => Err(e.into()),
    }
}

/// What a stage after `features` reads: the finished table's shards (all, or with
/// `only = Some((rank, workers))` this rank's), else the `[data] source`.
pub async fn input(
    run: &Run<'_>,
    only: Option<(usize, usize)>,
    log: &mut (dyn FnMut(String) + Send),
) -> Result<Input> {
    if run.spec.features.is_none() {
        return read_inputs(run.spec, run.data, log).await;
    }
    let manifest = table_manifest(run).await?;
    let mut input = read_feature_table(run.store, &run.table_dir, &manifest, only, log).await?;
    input.test = read_test_source(run.spec, run.data, log).await?;
    Ok(input)
}

/// The train stage: alone on a dedicated thread, or as the host's group. `None`: the task
/// ends here (a paused trial, a rank other than 0).
async fn train(run: &Run<'_>, host: &mut dyn Host) -> Result<Option<Trained>> {
    if run.spec.train.workers.is_some()
        && let Some(grouped) = host.train_group(run).await
    {
        return Ok(match grouped? {
            Grouped::Model(m) => Some(*m),
            Grouped::Done => None,
            Grouped::Paused { valid_loss, epoch } => {
                let mut metrics = BTreeMap::from([("epochs_trained".into(), f64::from(epoch))]);
                if let Some(l) = valid_loss {
                    metrics.insert("valid_loss".into(), l);
                }
                host.unpublished(metrics);
                host.log(format!("paused after epoch {epoch}, checkpointed"));
                None
            }
        });
    }
    let spec = run.spec;
    let mut lines = Vec::new();
    let input = input(run, None, &mut |l| lines.push(l)).await;
    for l in lines {
        host.log(l);
    }
    let input = input?;
    let placement = host.placement(spec);
    host.log(format!(
        "training {} on the {placement}",
        spec.model.kind.as_str()
    ));
    let cancel = host.cancel();
    let (mut rx, done_rx) =
        spawn_training(&spec.name, input, spec.clone(), placement, cancel.clone())?;
    // Lines that come in a burst (the line above, a data profile, short epochs) are told
    // together: at most one report per `REPORT_EVERY` after the task's start was told, each
    // as soon as it is due.
    let mut told = std::time::Instant::now();
    let mut untold = true;
    loop {
        let next = if untold {
            let due = tokio::time::Instant::from_std(told + REPORT_EVERY);
            tokio::time::timeout_at(due, rx.recv()).await.ok()
        } else {
            Some(rx.recv().await)
        };
        match next {
            Some(Some(p)) => {
                if !p.note {
                    host.progress(&p);
                }
                host.log(p.line);
                untold = true;
            }
            Some(None) => break,
            None => {}
        }
        if untold && told.elapsed() >= REPORT_EVERY {
            untold = false;
            told = std::time::Instant::now();
            if !host.report().await {
                cancel.store(true, Ordering::Relaxed);
            }
        }
    }
    // Lines still untold go out with the next report: the task's last, right after the
    // publish (a write fewer for every short job).
    let trained = done_rx
        .await
        .map_err(|_| ExecutorError::Panicked("training thread vanished".into()))??;
    if cancel.load(Ordering::Relaxed) {
        return Err(halyard_models::ModelError::Cancelled.into());
    }
    if let Some(line) = randomisation_check(&trained.0.metrics) {
        host.log(line);
    }
    Ok(Some(trained))
}

/// An uplift job's randomisation check for its log: the treated share, and a warning when
/// the features predict who was treated (the effect estimates are then confounded).
fn randomisation_check(metrics: &BTreeMap<String, f64>) -> Option<String> {
    let share = metrics.get("treatment_share")?;
    let auc = metrics.get("treatment_auc").copied().unwrap_or(f64::NAN);
    let limit = halyard_models::pipeline::TREATMENT_AUC_WARNING;
    Some(if auc > limit {
        format!(
            "warning: the features predict treatment (AUC {auc:.3} > {limit}): this does not look like a randomised experiment, and the uplift estimates may be confounded; treated share {share:.3}"
        )
    } else {
        format!(
            "randomisation check: treated share {share:.3}; the features predict treatment with AUC {auc:.3} (about 0.5 when treatment was random)"
        )
    })
}
