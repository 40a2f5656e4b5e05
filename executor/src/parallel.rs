//! One worker of a data-parallel group: read this rank's rows, join the ring, train with
//! the group on a dedicated thread, checkpoint (rank 0) to object storage.
//!
//! The feature table is finished before the group forms (the leader runs the features
//! stage as a step of its own). Rank 0 reads every row (it fits the preprocessor and
//! computes the test metrics), reports progress and publishes; the other ranks read only
//! their shards (shard `i` goes to rank `i % workers`) and report nothing: a failure
//! anywhere breaks the ring, rank 0 reports it as the group's, and the leader forms the
//! group again.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arrow::array::RecordBatch;
use bytes::Bytes;
use halyard_collective::{BlockingRing, Ring, RingConfig};
use halyard_core::frame::{Whole, open_whole, seal_whole};
use halyard_core::records::TaskProgress;
use halyard_core::spec::ModelKind;
use halyard_core::spec::SPLIT_COLUMN;
use halyard_core::store::{Store, checkpoint_path};
use halyard_models::ModelError;
use halyard_models::distributed::{
    CheckpointPolicy, Checkpoints, DpEvent, Outcome, Position, WorkerData, rows_of_rank,
    train_response_parallel, with_split_column,
};
use halyard_models::pipeline::{SegmentData, train_segments_group};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::error::{ExecutorError, Result};
use crate::input::{Input, read_feature_table, read_inputs};
use crate::pipeline::{Grouped, Run, table_manifest};
use crate::task::Task;
use crate::training::{cluster_line, epoch_line, lineage, model_configs, panic_message, placement};

/// This rank's rows and, on rank 0, every row.
struct Rows {
    all: Option<Vec<RecordBatch>>,
    local: Vec<RecordBatch>,
    /// Global ids of the local rows.
    ids: Vec<u64>,
    location: String,
    digest: String,
    total: usize,
}

/// Train as rank `a.rank` of the group.
pub(crate) async fn train(t: &Task, progress: &mut TaskProgress, run: &Run<'_>) -> Result<Grouped> {
    let (a, spec) = (&t.a, &t.a.value.spec);
    let (rank, workers) = (a.value.rank as usize, a.value.group.len().max(1));
    let placement = placement(spec, t.gpus);
    let (mut features, rc) = model_configs(spec, placement);
    let rows = read_rows(t, progress, &features, run).await?;
    features.split_column = Some(SPLIT_COLUMN.to_string());
    let peers = if a.value.group.is_empty() {
        vec![String::new()]
    } else {
        a.value.group.clone()
    };
    let ring = Ring::new(
        &a.value.group_id(),
        rank,
        &peers,
        t.boxes.clone(),
        RingConfig {
            deadline: Duration::from_secs_f64(spec.train.step_timeout_secs),
            ..RingConfig::default()
        },
    )
    .map_err(|e| ModelError::Collective(e.to_string()))?
    .with_tls(t.tls.as_ref().map(|tls| tls.client.clone()))
    .with_key(t.key.clone())
    .with_timer(t.metrics.allreduce_seconds.clone());
    progress.log(format!(
        "worker {rank} of {workers}: {} local rows; training {} on the {placement}",
        rows.local.iter().map(RecordBatch::num_rows).sum::<usize>(),
        spec.model.kind.as_str()
    ));
    t.report(progress).await;
    let runtime = Handle::current();
    let (tx, mut rx) = mpsc::unbounded_channel::<Told>();
    let mut checkpoints = StoreCheckpoints {
        store: t.store.clone(),
        own: checkpoint_path(&a.value.job_id),
        earlier: spec.train.resume_from.as_deref().map(checkpoint_path),
        runtime: runtime.clone(),
        notes: tx.clone(),
    };
    let policy = CheckpointPolicy {
        every_steps: spec.train.checkpoint_steps,
        every_secs: spec.train.checkpoint_secs,
        stop_after_epoch: spec.train.stop_after_epoch,
    };
    let mut trees = spec.model.kind == ModelKind::Gbdt;
    // A blend trains its MLP part, then its trees part: each forms the group once.
    let blend = spec.model.kind == ModelKind::Blend;
    let stop = t.cancel.clone();
    let thread_rows = (rows.all, rows.local, rows.ids);
    let threads = spec.resources.cpus.max(1) as usize;
    // A k-means job fits its centres data-parallel; every other kind trains the MLP or
    // the trees.
    let segments =
        (spec.model.kind == ModelKind::Kmeans).then(|| (spec.model.k.clone(), spec.train.seed));
    let handle = std::thread::Builder::new()
        .name(format!("train-{}-rank{rank}", a.value.job_id))
        .spawn(move || {
            let mut group = BlockingRing::new(ring, runtime);
            let (all, local, ids) = thread_rows;
            let data = WorkerData {
                all: all.as_deref(),
                local: &local,
                ids: &ids,
            };
            // The task's CPU slots, and no more: burn's kernels run on this pool (with one
            // thread their float sums are in one order, so a run repeats bit for bit).
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("train-pool-{i}"))
                .build()
                .map_err(|e| ModelError::Internal(e.to_string()))?;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let on_event = |e| {
                    let _ = tx.send(Told::Group(e));
                    if stop.load(Ordering::Relaxed) {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                };
                pool.install(|| match &segments {
                    Some((ks, seed)) => train_segments_group(
                        SegmentData {
                            all: data.all,
                            local: data.local,
                        },
                        &features,
                        ks,
                        *seed,
                        &mut group,
                        |r| on_event(DpEvent::Clustered(r.clone())),
                    )
                    .map(|m| Outcome::Trained(m.map(Box::new))),
                    None => train_response_parallel(
                        data,
                        &features,
                        &rc,
                        policy,
                        &mut group,
                        &mut checkpoints,
                        on_event,
                    ),
                })
            }))
            .unwrap_or_else(|p| {
                Err(ModelError::Internal(format!(
                    "training panicked: {}",
                    panic_message(p.as_ref())
                )))
            })
        })
        .map_err(|e| ExecutorError::Panicked(e.to_string()))?;
    let mut formed_parts = 0;
    while let Some(told) = rx.recv().await {
        let line = match told {
            Told::Note(line) => Some(line),
            Told::Group(event) => {
                if let DpEvent::Agreed {
                    samples, seconds, ..
                } = &event
                {
                    t.rate(*samples as f64 / seconds.max(1e-9));
                }
                if blend && matches!(event, DpEvent::Formed { .. }) {
                    formed_parts += 1;
                    trees = formed_parts > 1;
                }
                describe(&event, progress, trees)
            }
        };
        if let Some(line) = line {
            t.loss(progress);
            progress.log(line);
            if !t.report(progress).await {
                t.cancel.store(true, Ordering::Relaxed);
            }
        }
    }
    let trained = tokio::task::spawn_blocking(move || handle.join())
        .await
        .map_err(|e| ExecutorError::Panicked(e.to_string()))?
        .map_err(|_| ExecutorError::Panicked("training thread vanished".into()))??;
    if t.cancelled() {
        return Err(ModelError::Cancelled.into());
    }
    info!(job = %a.value.job_id, rank, "worker finished");
    Ok(match trained {
        Outcome::Trained(Some(t)) => {
            let l = lineage(&rows.location, rows.digest, rows.total, &t);
            Grouped::Model(Box::new((*t, l)))
        }
        Outcome::Trained(None) => Grouped::Done,
        Outcome::Paused { valid_loss, epoch } => Grouped::Paused { valid_loss, epoch },
    })
}

/// A line for the job's log (rank 0 reports them), keeping the epoch and loss current;
/// `trees`: positions and epochs count trees.
fn describe(event: &DpEvent, progress: &mut TaskProgress, trees: bool) -> Option<String> {
    let at = |p: &Position| {
        if trees {
            format!("member {} after {} trees", p.member + 1, p.step)
        } else {
            format!(
                "member {} epoch {} step {} ({} steps done by the member)",
                p.member + 1,
                p.epoch,
                p.step_in_epoch,
                p.step
            )
        }
    };
    match event {
        DpEvent::Formed {
            workers,
            rows,
            steps_per_epoch,
        } => Some(if trees {
            format!(
                "worker group formed: {workers} worker(s), training rows by rank {rows:?}, at most {steps_per_epoch} trees per member"
            )
        } else {
            format!(
                "worker group formed: {workers} worker(s), training rows by rank {rows:?}, {steps_per_epoch} steps per epoch"
            )
        }),
        DpEvent::Resumed(p) => Some(format!("resumed from the checkpoint at {}", at(p))),
        DpEvent::Checkpointed(p) => Some(format!("checkpoint written at {}", at(p))),
        DpEvent::Step(_) => None,
        DpEvent::Agreed {
            member,
            steps,
            checksum,
            samples,
            seconds,
            all_reduce_seconds,
            compute_seconds,
            update_seconds,
        } => {
            let (member, rate) = (member + 1, *samples as f64 / seconds.max(1e-9));
            Some(if trees {
                format!(
                    "member {member}: the workers' {steps} trees agreed bit for bit (checksum {checksum:08x}); {samples} rows × trees in {seconds:.2} s: {rate:.0} per second ({all_reduce_seconds:.2} s of it in the histograms' all-reduces)"
                )
            } else {
                format!(
                    "member {member}: the replicas' weights agreed bit for bit before every one of {steps} steps and after the last (checksum {checksum:08x}); trained {samples} samples in {seconds:.2} s: {rate:.0} samples/s ({all_reduce_seconds:.2} s of it in the steps' all-reduces, {compute_seconds:.2} s computing this rank's gradients, {update_seconds:.2} s checking and updating the weights)"
                )
            })
        }
        DpEvent::Clustered(r) => {
            progress.epoch += 1;
            progress.loss = Some(r.inertia);
            Some(cluster_line(r))
        }
        DpEvent::Epoch(r) => {
            progress.epoch = r.epoch.epoch;
            progress.loss = Some(r.epoch.loss);
            Some(epoch_line(r, if trees { "trees" } else { "epoch" }))
        }
    }
}

/// Read this rank's rows (and rank 0's every row): the feature table's shards, or the
/// source file split by row index.
async fn read_rows(
    t: &Task,
    progress: &mut TaskProgress,
    features: &halyard_models::preprocess::FeatureConfig,
    run: &Run<'_>,
) -> Result<Rows> {
    let (a, spec, store) = (&t.a, &t.a.value.spec, &t.store);
    let (rank, workers) = (a.value.rank as usize, a.value.group.len().max(1));
    let mut log = |line: String| progress.log(line);
    if spec.features.is_none() {
        let input = read_inputs(spec, &t.data, &mut log).await?;
        let table = input.table(spec)?;
        let all = with_split_column(&table.batches, features, SPLIT_COLUMN)?;
        let (local, ids) = rows_of_rank(&all, rank, workers)?;
        return Ok(Rows {
            all: (rank == 0).then_some(all),
            local,
            ids,
            location: spec.data.source.clone(),
            digest: table.digest,
            total: table.rows,
        });
    }
    let manifest = table_manifest(run).await?;
    let only = (rank != 0).then_some((rank, workers));
    let input = read_feature_table(store, &run.table_dir, &manifest, only, &mut log).await?;
    // Rank 0 read every shard, the others only theirs: each shard is parsed once.
    let (mut all, mut local, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    for (shard, batches, shard_ids) in shard_tables(&input, spec)? {
        if shard % workers == rank {
            local.extend(batches.iter().cloned());
            ids.extend(shard_ids);
        }
        all.extend(batches);
    }
    let (location, digest) = input.features.clone().unwrap_or_default();
    Ok(Rows {
        all: (rank == 0).then_some(all),
        local,
        ids,
        location,
        digest,
        total: input.shard_rows.iter().sum::<u64>() as usize,
    })
}

/// A shard's number, its rows and their ids.
type ShardRows = (usize, Vec<RecordBatch>, Vec<u64>);

/// Every shard `input` holds, read and ordered on its own (so a row's place never depends
/// on which shards sit beside it): its number, its rows, and their ids (the shard's offset
/// in the whole table plus the row's place in it).
fn shard_tables(input: &Input, spec: &halyard_core::spec::JobSpec) -> Result<Vec<ShardRows>> {
    let offsets: Vec<u64> = input
        .shard_rows
        .iter()
        .scan(0u64, |at, rows| {
            let start = *at;
            *at += rows;
            Some(start)
        })
        .collect();
    input
        .parts
        .iter()
        .zip(&input.shards)
        .map(|(part, &shard)| {
            let table = Input {
                parts: vec![part.clone()],
                ..input.clone()
            }
            .table(spec)?;
            let start = offsets.get(shard).copied().unwrap_or(0);
            let ids = (start..start + table.rows as u64).collect();
            Ok((shard, table.batches, ids))
        })
        .collect()
}

/// Marks a checkpoint file: its length and CRC-32 follow ([`halyard_core::frame::seal_whole`]).
const CHECKPOINT_MAGIC: &[u8; 8] = b"HLYDCKP1";

/// What the training thread tells the task: the group's events, and notes of its own.
enum Told {
    Group(DpEvent),
    /// A line for the job's log (a damaged checkpoint passed over).
    Note(String),
}

/// Checkpoints in object storage: the job's own, or else the one of the job it resumes.
/// Each is written sealed with its length and CRC-32; one that no longer matches them (a
/// disk's or a person's change since) is passed over, said in the job's log, and training
/// goes on from the next one or from the beginning: a damaged checkpoint costs time, never
/// the job or its weights.
struct StoreCheckpoints {
    store: Store,
    own: String,
    earlier: Option<String>,
    runtime: Handle,
    notes: mpsc::UnboundedSender<Told>,
}

impl StoreCheckpoints {
    fn error(&self, path: &str, e: halyard_core::Error) -> ModelError {
        ModelError::Internal(format!("checkpoint {}: {e}", self.store.url_of(path)))
    }

    fn passed_over(&self, path: &str, why: &str) {
        let url = self.store.url_of(path);
        warn!(checkpoint = %url, why, "damaged checkpoint passed over");
        let _ = self.notes.send(Told::Note(format!(
            "checkpoint {url} is damaged ({why}): not resumed from"
        )));
    }
}

impl Checkpoints for StoreCheckpoints {
    fn load(&mut self) -> halyard_models::Result<Option<Vec<u8>>> {
        let mut damaged = false;
        for path in std::iter::once(&self.own).chain(self.earlier.iter()) {
            let why = match self.runtime.block_on(self.store.get(path)) {
                Ok(bytes) => match open_whole(CHECKPOINT_MAGIC, &bytes) {
                    Whole::Intact(payload) | Whole::Unsealed(payload) => {
                        return Ok(Some(payload.to_vec()));
                    }
                    Whole::Damaged(why) => why,
                },
                Err(halyard_core::Error::NotFound { .. }) => continue,
                // A sealed (encrypted) file that no longer opens.
                Err(e @ halyard_core::Error::Corrupt { .. }) => e.to_string(),
                Err(e) => return Err(self.error(path, e)),
            };
            self.passed_over(path, &why);
            damaged = true;
        }
        if damaged {
            let _ = self.notes.send(Told::Note(
                "no intact checkpoint to resume from: training starts from the beginning".into(),
            ));
        }
        Ok(None)
    }

    fn save(&mut self, bytes: Vec<u8>, _at: &Position) -> halyard_models::Result<()> {
        let sealed = seal_whole(CHECKPOINT_MAGIC, &bytes);
        self.runtime
            .block_on(self.store.put(&self.own, Bytes::from(sealed)))
            .map_err(|e| self.error(&self.own, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job's checkpoints on a `file://` store, and what they told the job's log.
    fn checkpoints(
        dir: &std::path::Path,
        runtime: &tokio::runtime::Runtime,
        earlier: Option<&str>,
    ) -> (StoreCheckpoints, mpsc::UnboundedReceiver<Told>) {
        let store = Store::open(
            &format!("file://{}", dir.display()),
            &halyard_core::store::S3Config::default(),
        )
        .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let c = StoreCheckpoints {
            store,
            own: checkpoint_path("job-2"),
            earlier: earlier.map(checkpoint_path),
            runtime: runtime.handle().clone(),
            notes: tx,
        };
        (c, rx)
    }

    fn notes(rx: &mut mpsc::UnboundedReceiver<Told>) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|t| match t {
                Told::Note(n) => Some(n),
                Told::Group(_) => None,
            })
            .collect()
    }

    #[test]
    fn a_damaged_checkpoint_is_passed_over_and_said_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let at = Position {
            member: 0,
            epoch: 1,
            step_in_epoch: 2,
            step: 2,
        };
        // The job it resumes from wrote one; this job wrote its own since.
        let (mut first, _) = checkpoints(dir.path(), &runtime, None);
        first.own = checkpoint_path("job-1");
        first
            .save(b"the first job's weights".to_vec(), &at)
            .unwrap();
        let (mut c, mut rx) = checkpoints(dir.path(), &runtime, Some("job-1"));
        c.save(b"the second job's weights".to_vec(), &at).unwrap();
        assert_eq!(
            c.load().unwrap().as_deref(),
            Some(&b"the second job's weights"[..])
        );
        assert!(notes(&mut rx).is_empty());

        // A byte of the job's own changes on the disk: the earlier job's is taken instead.
        let own = dir.path().join(checkpoint_path("job-2"));
        let mut bytes = std::fs::read(&own).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 1;
        std::fs::write(&own, &bytes).unwrap();
        assert_eq!(
            c.load().unwrap().as_deref(),
            Some(&b"the first job's weights"[..])
        );
        let said = notes(&mut rx);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("job-2/checkpoint/latest.ckpt is damaged")
                && said[0].contains("changed since")
                && said[0].contains("not resumed from"),
            "{said:?}"
        );

        // Both damaged (the earlier one cut short): none, and the log says training starts
        // over.
        let earlier = dir.path().join(checkpoint_path("job-1"));
        let len = std::fs::metadata(&earlier).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&earlier)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        assert_eq!(c.load().unwrap(), None);
        let said = notes(&mut rx);
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(said[1].contains("job-1/checkpoint/latest.ckpt is damaged"));
        assert!(said[2].contains("starts from the beginning"), "{said:?}");

        // A checkpoint written before checkpoints were sealed is read as it is.
        std::fs::write(&own, b"an older halyard's checkpoint").unwrap();
        assert_eq!(
            c.load().unwrap().as_deref(),
            Some(&b"an older halyard's checkpoint"[..])
        );
    }
}
