//! Synchronous data-parallel training of the response MLP across a group of workers.
//!
//! burn 0.22 has no cross-machine all-reduce, so Halyard keeps the parameters and the
//! AdamW state as flat `f32` vectors (in the module's visiting order): each step, every
//! worker computes the gradient of its own rows, flattens it, the group sums
//! `gradient · local_batch` and `local_batch` with one all-reduce ([`Collective`]), every
//! worker divides (the gradient weighted by batch size) and applies the same AdamW update to
//! the same vector, and loads it back into its module. The all-reduce leaves the same bits on
//! every rank, so the replicas stay bit for bit equal; each step carries every rank's
//! checksum of its weights and a mismatch fails the step.
//!
//! - The preprocessor is fitted by rank 0 (which reads every row) and broadcast; the other
//!   ranks read only their own rows. The split comes from the split column.
//! - The initial weights are rank 0's, broadcast. Each epoch a worker shuffles its own rows
//!   with a seed of (seed, member, epoch, rank) and takes `local_rows / steps` of them per step,
//!   so every worker runs the same number of steps.
//! - Early stopping watches the validation loss summed over every worker's validation rows.
//! - Rank 0 writes a [`Checkpoint`] every K steps or T seconds; a group that starts from one
//!   resumes at its step (same parameters, moments, epoch permutation and cursor): what is
//!   lost is at most one interval.
//!
//! Boosted trees train data-parallel in `distributed/trees.rs` (histograms summed exactly),
//! a blend as its MLP, then its trees, in `distributed/blend.rs`.

use std::borrow::Cow;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::adam::AdamW;
use crate::artifact::Architecture;
use crate::device::{cosine_lr, finite_loss, training_device, weighted_bce};
use crate::error::{ModelError, Result};
use crate::logistic::{EpochReport, TrainConfig};
use crate::metrics::log_loss;
use crate::mlp::{InputLayout, MlpConfig, ResponseMlp, mlp_tensors};
use crate::pipeline::{
    ClusterReport, Finished, MemberReport, ResponseConfig, ResponseKind, TrainedModel,
    finish_response, finished_model,
};
use crate::preprocess::{Encoded, FeatureConfig, Preprocessor, Role, row_roles};

mod blend;
mod trees;

/// A group of workers that can sum vectors and share bytes. Every rank makes the same calls
/// in the same order.
pub trait Collective {
    /// This worker's rank, `0..size`.
    fn rank(&self) -> usize;
    /// Workers in the group.
    fn size(&self) -> usize;
    /// Sum `data` element-wise over the group; every rank ends with the same bits.
    fn all_reduce(&mut self, data: &mut [f32]) -> Result<()>;
    /// Replace `data` on every rank with rank 0's.
    fn broadcast(&mut self, data: &mut Vec<u8>) -> Result<()>;
}

/// A group of one.
#[derive(Debug, Default, Clone, Copy)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce(&mut self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&mut self, _: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
}

/// Where rank 0 keeps checkpoints.
pub trait Checkpoints {
    /// The latest checkpoint, if any.
    fn load(&mut self) -> Result<Option<Vec<u8>>>;
    /// Keep `bytes` as the latest checkpoint.
    fn save(&mut self, bytes: Vec<u8>, at: &Position) -> Result<()>;
}

/// No checkpoints.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCheckpoints;

impl Checkpoints for NoCheckpoints {
    fn load(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
    fn save(&mut self, _: Vec<u8>, _: &Position) -> Result<()> {
        Ok(())
    }
}

/// How often rank 0 checkpoints: after `every_steps` steps or `every_secs` seconds, which
/// comes first (0: never by that rule).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckpointPolicy {
    /// Steps between checkpoints.
    pub every_steps: u64,
    /// Seconds between checkpoints.
    pub every_secs: f64,
    /// Stop after this epoch with a checkpoint ([`Outcome::Paused`]); then, when training
    /// ends, checkpoint its end too.
    pub stop_after_epoch: Option<u32>,
}

/// Where training stands: the next step to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Ensemble member (0-based).
    pub member: usize,
    /// Epoch (1-based).
    pub epoch: u32,
    /// Steps done in this epoch (`steps_per_epoch`: its validation is next).
    pub step_in_epoch: u64,
    /// Steps done by this member.
    pub step: u64,
}

/// What data-parallel training tells its caller.
#[derive(Debug, Clone, PartialEq)]
pub enum DpEvent {
    /// The group formed: ranks, rows per rank, steps per epoch.
    Formed {
        /// Workers.
        workers: usize,
        /// Training rows of each rank.
        rows: Vec<u64>,
        /// Steps per epoch.
        steps_per_epoch: u64,
    },
    /// Training resumes from a checkpoint at this position.
    Resumed(Position),
    /// A step finished (the caller may stop training by answering `Break`).
    Step(Position),
    /// An epoch finished.
    Epoch(MemberReport),
    /// A k-means fit finished (rank 0).
    Clustered(ClusterReport),
    /// Rank 0 wrote a checkpoint.
    Checkpointed(Position),
    /// A member finished: every rank's weights had the same checksum before each of its
    /// steps, and have `checksum` now.
    Agreed {
        /// Member (0-based).
        member: usize,
        /// Steps checked.
        steps: u64,
        /// The final weights' checksum, the same on every rank.
        checksum: u32,
        /// Rows the group trained on in this run (a resumed run counts from its resume).
        samples: u64,
        /// Seconds this run trained the member (steps, validation and checkpoints).
        seconds: f64,
        /// Of those, seconds in the steps' all-reduces (the transfer and the wait for the
        /// slowest rank).
        all_reduce_seconds: f64,
        /// Of those, seconds computing this rank's gradients (batch, forward, backward,
        /// flattening); 0 for trees.
        compute_seconds: f64,
        /// Of those, seconds checking and updating the weights after the all-reduce
        /// (checksums, AdamW, loading them into the model); 0 for trees.
        update_seconds: f64,
    },
}

/// One worker's data: its own rows and, on rank 0, every row (for fitting the preprocessor
/// and for the test metrics). The split column must be set.
#[derive(Debug, Clone, Copy)]
pub struct WorkerData<'a> {
    /// Every row (rank 0 only).
    pub all: Option<&'a [RecordBatch]>,
    /// This worker's rows.
    pub local: &'a [RecordBatch],
    /// Every local row's number in the whole data set: unique across the group and the same
    /// whatever the group's size (a shard's offset plus the row's place in it).
    pub ids: &'a [u64],
}

/// A checkpoint: everything needed to continue training where it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The next step.
    pub at: Position,
    /// Workers of the group that wrote it.
    pub workers: usize,
    /// Training rows of every rank and each rank's cursor in its epoch permutation.
    pub rows: Vec<u64>,
    /// Each rank's data cursor: rows of its epoch permutation consumed.
    pub cursors: Vec<u64>,
    /// Seed; every permutation comes from (seed, member, epoch, rank).
    pub seed: u64,
    /// AdamW's step count.
    pub adam_t: u64,
    /// Training loss summed over this epoch's steps so far.
    pub loss_sum: f64,
    /// Best validation loss so far and epochs since.
    pub best_loss: Option<f64>,
    /// Epochs since the best.
    pub since_best: u32,
    /// Parameters, AdamW moments, best parameters, finished members' parameters.
    #[serde(skip)]
    pub params: Vec<f32>,
    #[serde(skip)]
    m: Vec<f32>,
    #[serde(skip)]
    v: Vec<f32>,
    #[serde(skip)]
    best: Vec<f32>,
    #[serde(skip)]
    finished: Vec<Vec<f32>>,
}

#[derive(Serialize, Deserialize)]
struct Layout {
    header: Checkpoint,
    /// Lengths of the arrays that follow: params, m, v, best, finished…
    arrays: Vec<usize>,
}

impl Checkpoint {
    /// `u64` header length, JSON header, then the arrays as little-endian `f32`.
    pub fn encode(&self) -> Vec<u8> {
        let mut arrays = vec![&self.params, &self.m, &self.v, &self.best];
        arrays.extend(self.finished.iter());
        let layout = Layout {
            header: self.clone_header(),
            arrays: arrays.iter().map(|a| a.len()).collect(),
        };
        let json = serde_json::to_vec(&layout).expect("checkpoint header serialises");
        let mut out = Vec::with_capacity(8 + json.len() + 4 * layout.arrays.iter().sum::<usize>());
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        for a in arrays {
            out.extend(a.iter().flat_map(|v| v.to_le_bytes()));
        }
        out
    }

    fn clone_header(&self) -> Checkpoint {
        Checkpoint {
            params: Vec::new(),
            m: Vec::new(),
            v: Vec::new(),
            best: Vec::new(),
            finished: Vec::new(),
            ..self.clone()
        }
    }

    /// Read [`Checkpoint::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint> {
        let bad = |why: &str| ModelError::Artifact(format!("checkpoint: {why}"));
        let len = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
            .ok_or_else(|| bad("shorter than its header"))?;
        let json = bytes
            .get(8..8 + len)
            .ok_or_else(|| bad("shorter than its header"))?;
        let layout: Layout = serde_json::from_slice(json).map_err(|e| bad(&e.to_string()))?;
        let mut rest = &bytes[8 + len..];
        let mut arrays = Vec::with_capacity(layout.arrays.len());
        for n in layout.arrays {
            let b = rest
                .get(..4 * n)
                .ok_or_else(|| bad("shorter than its arrays"))?;
            arrays.push(floats(b));
            rest = &rest[4 * n..];
        }
        if arrays.len() < 4 || !rest.is_empty() {
            return Err(bad("wrong number of arrays"));
        }
        let mut it = arrays.into_iter();
        let mut c = layout.header;
        c.params = it.next().expect("checked");
        c.m = it.next().expect("checked");
        c.v = it.next().expect("checked");
        c.best = it.next().expect("checked");
        c.finished = it.collect();
        Ok(c)
    }
}

/// Little-endian `f32`s of `bytes` (whose length is a multiple of 4).
pub fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect()
}

/// Little-endian bytes of `values`.
pub fn float_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// FNV-1a over the bits of `values`: equal replicas have equal checksums.
pub fn checksum(values: &[f32]) -> u32 {
    let h = crate::preprocess::fnv1a_bytes(values.iter().flat_map(|v| v.to_le_bytes()));
    // Folded to 32 bits: it travels as two exact 16-bit halves of an f32 each.
    (h ^ (h >> 32)) as u32
}

/// The module's float parameters, flattened in visiting order.
pub fn flatten_params<M: Module>(module: &M) -> Vec<f32> {
    struct V(Vec<f32>);
    impl ModuleVisitor for V {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let data = param.val().into_data();
            self.0.extend(data.iter::<f32>());
        }
    }
    let mut v = V(Vec::new());
    module.visit(&mut v);
    v.0
}

/// The gradients of the module's parameters, flattened like [`flatten_params`] (zeros for a
/// parameter without a gradient).
pub fn flatten_grads<M: Module>(module: &M, grads: &GradientsParams) -> Vec<f32> {
    struct V<'a>(&'a GradientsParams, Vec<f32>);
    impl ModuleVisitor for V<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            match self.0.get::<D>(param.id) {
                Some(g) => self.1.extend(g.into_data().iter::<f32>()),
                None => {
                    let n = param.lazy_shape().num_elements();
                    self.1.extend(std::iter::repeat_n(0.0, n));
                }
            }
        }
    }
    let mut v = V(grads, Vec::new());
    module.visit(&mut v);
    v.1
}

/// The module with its parameters replaced by `flat` (in [`flatten_params`] order).
pub fn load_params<M: Module>(module: M, flat: &[f32]) -> M {
    struct L<'a>(&'a [f32]);
    impl ModuleMapper for L<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, tensor, mapper) = param.consume();
            let shape = tensor.shape();
            let n = shape.num_elements();
            let (mine, rest) = self.0.split_at(n);
            self.0 = rest;
            let mut t =
                Tensor::<D>::from_data(TensorData::new(mine.to_vec(), shape), &tensor.device());
            if tensor.is_require_grad() {
                t = t.require_grad();
            }
            Param::from_mapped_value(id, t, mapper)
        }
    }
    module.map(&mut L(flat))
}

/// The device seeds one random generator per process: seeding and drawing the initial
/// weights hold this lock, so that groups in one process (tests) draw the same weights.
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn seeded_model(cfg: &MlpConfig, tc: &TrainConfig, seed: u64) -> Result<(Device, ResponseMlp)> {
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    let device = training_device(tc.placement, seed)?;
    let model = ResponseMlp::new(cfg, &device);
    Ok((device, model))
}

/// Rows of each rank among the first `consumed` positions of `order`.
fn cursors(order: &[usize], owner: &[u32], consumed: u64, size: usize) -> Vec<u64> {
    let mut c = vec![0u64; size];
    for g in order.iter().take(consumed as usize) {
        c[owner[*g] as usize] += 1;
    }
    c
}

/// The seed of one epoch's permutation of the training rows.
fn epoch_seed(seed: u64, member: usize, epoch: u32) -> u64 {
    seed ^ (member as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ u64::from(epoch).wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

/// The group's training rows in one global order, the same for any group size: every
/// rank's training-row ids gathered (one all-reduce), sorted.
struct GlobalRows {
    /// Row ids in global order.
    ids: Vec<u64>,
    /// The rank holding each of them.
    owner: Vec<u32>,
    /// Global position -> this rank's training-row index.
    mine: std::collections::HashMap<usize, usize>,
}

impl GlobalRows {
    fn gather(group: &mut dyn Collective, local_ids: &[u64], rows: &[u64]) -> Result<GlobalRows> {
        let rank = group.rank();
        let total: u64 = rows.iter().sum();
        let start: u64 = rows[..rank].iter().sum();
        // Two exact 16-bit halves per id (ids below 2^32).
        let mut buf = vec![0.0f32; 2 * total as usize];
        for (k, &id) in local_ids.iter().enumerate() {
            let id = u32::try_from(id).map_err(|_| {
                ModelError::Unsupported(format!(
                    "row id {id} is too large for data-parallel training (at most 2^32 rows)"
                ))
            })?;
            put_u32(&mut buf, start as usize + k, id);
        }
        group.all_reduce(&mut buf)?;
        let mut all: Vec<(u64, u32, usize)> = Vec::with_capacity(total as usize);
        let mut r = 0u32;
        let mut left = rows.first().copied().unwrap_or(0);
        let mut local = 0usize;
        for i in 0..total as usize {
            while left == 0 {
                r += 1;
                left = rows[r as usize];
                local = 0;
            }
            all.push((u64::from(get_u32(&buf, i)), r, local));
            left -= 1;
            local += 1;
        }
        all.sort_unstable();
        if all.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(ModelError::Internal(
                "two workers hold a row with the same id".into(),
            ));
        }
        let mine = all
            .iter()
            .enumerate()
            .filter(|(_, (_, o, _))| *o as usize == rank)
            .map(|(g, (_, _, l))| (g, *l))
            .collect();
        Ok(GlobalRows {
            ids: all.iter().map(|a| a.0).collect(),
            owner: all.iter().map(|a| a.1).collect(),
            mine,
        })
    }
}

fn collective_error(e: impl std::fmt::Display) -> ModelError {
    ModelError::Collective(e.to_string())
}

/// Train a response model data-parallel as one worker of `group`: the MLP, boosted trees
/// (`trees.rs`) or a blend of both (`blend.rs`). Rank 0 returns the trained model (test
/// metrics over every test row); the other ranks return `Outcome::Trained(None)`.
pub fn train_response_parallel(
    data: WorkerData<'_>,
    features: &FeatureConfig,
    rc: &ResponseConfig,
    policy: CheckpointPolicy,
    group: &mut dyn Collective,
    checkpoints: &mut dyn Checkpoints,
    on_event: impl FnMut(DpEvent) -> ControlFlow<()>,
) -> Result<Outcome> {
    if features.split_column.is_none() {
        return Err(ModelError::Internal(
            "data-parallel training needs the split column".into(),
        ));
    }
    let run = match &rc.kind {
        ResponseKind::Mlp {
            hidden,
            max_embedding,
        } => mlp_parallel(
            data,
            features,
            rc,
            (hidden, *max_embedding, None),
            policy,
            group,
            checkpoints,
            on_event,
        )?,
        ResponseKind::Gbdt(cfg) => trees::train_trees_parallel(
            data,
            features,
            rc,
            (cfg, None),
            policy,
            group,
            checkpoints,
            on_event,
        )?,
        ResponseKind::Blend { .. } => {
            return blend::train_blend_parallel(
                data,
                features,
                rc,
                policy,
                group,
                checkpoints,
                on_event,
            );
        }
        _ => {
            return Err(ModelError::Unsupported(
                "data-parallel training ([train] workers) trains mlp, gbdt and blend models only"
                    .into(),
            ));
        }
    };
    run.outcome(data.all, features)
}

/// The response MLP (`hidden` layers, embeddings up to `max_embedding` wide) trained
/// data-parallel as one worker of `group`, not yet scored; on a blend's `given` rows and the
/// preprocessor that encoded them, or on a preprocessor rank 0 fits and shares.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mlp_parallel(
    data: WorkerData<'_>,
    features: &FeatureConfig,
    rc: &ResponseConfig,
    (hidden, max_embedding, given): (&[usize], usize, Option<&LocalRows>),
    policy: CheckpointPolicy,
    group: &mut dyn Collective,
    checkpoints: &mut dyn Checkpoints,
    mut on_event: impl FnMut(DpEvent) -> ControlFlow<()>,
) -> Result<Run> {
    let (rank, size) = (group.rank(), group.size());
    let preprocessor = given_or_shared_preprocessor(given, group, data.all, features)?;
    let encoded = LocalRows::reuse_or_encode(given, &preprocessor, &data, features)?;
    let LocalRows {
        roles, rows: local, ..
    } = &*encoded;
    // Validation rows are held out for early stopping, and for a search's rungs (their
    // loss ranks the trials).
    let early_stopping = rc.train.patience > 0 || policy.stop_after_epoch.is_some();
    let select = |keep: &dyn Fn(Role) -> bool| local.partition(|i| !keep(roles[i])).0;
    let (train_set, valid_set) = if early_stopping {
        (
            select(&|r| r == Role::Train),
            select(&|r| r == Role::Validation),
        )
    } else {
        // Without early stopping the validation rows are trained on.
        (select(&|r| r != Role::Test), Encoded::empty(local.dim))
    };

    let (rows, total, positives) =
        group_rows(group, &train_set, &valid_set, (&features.label, true))?;
    let train_ids: Vec<u64> = (0..local.rows)
        .filter(|&i| roles[i] == Role::Train || (!early_stopping && roles[i] == Role::Validation))
        .map(|i| data.ids[i])
        .collect();
    let global = GlobalRows::gather(group, &train_ids, &rows)?;
    let mut tc = rc.train.clone();
    if rc.balance_classes {
        tc.positive_weight = (total - positives) as f64 / positives as f64;
    }
    let batch = (tc.batch_size as u64).clamp(1, total);
    let steps = total.div_ceil(batch);
    let epochs_total = steps * u64::from(tc.epochs);
    let warmup = (epochs_total / 50).max(1);
    if on_event(DpEvent::Formed {
        workers: size,
        rows: rows.clone(),
        steps_per_epoch: steps,
    })
    .is_break()
    {
        return Err(ModelError::Cancelled);
    }

    let cfg = MlpConfig::new(
        InputLayout::of(&preprocessor),
        hidden.to_vec(),
        max_embedding,
    );
    let adam = AdamW::new(tc.weight_decay as f32);

    let mut resume = shared_checkpoint(group, checkpoints, &rows, tc.seed)?;
    if let Some(c) = &resume
        && on_event(DpEvent::Resumed(c.at)).is_break()
    {
        return Err(ModelError::Cancelled);
    }
    let members = rc.ensemble.max(1);
    let mut best_losses = Vec::new();
    let mut finished: Vec<Vec<f32>> = resume
        .as_ref()
        .map(|c| c.finished.clone())
        .unwrap_or_default();
    let mut last_save = (Instant::now(), 0u64);
    for member in finished.len()..members {
        let seed = tc.seed.wrapping_add(member as u64);
        let (device, mut model) = seeded_model(&cfg, &tc, seed)?;
        let mut st = match resume.take().filter(|c| c.at.member == member) {
            Some(c) => MemberState {
                at: c.at,
                adam_t: c.adam_t,
                loss_sum: c.loss_sum,
                best: c.best_loss.map(|l| (l, c.best)),
                since_best: c.since_best,
                params: c.params,
                m: c.m,
                v: c.v,
            },
            None => {
                // Rank 0's initial weights for everyone.
                let mut init = float_bytes(&flatten_params(&model));
                group.broadcast(&mut init)?;
                MemberState::start(member, floats(&init))
            }
        };
        model = load_params(model, &st.params);
        let step = Step {
            cfg: &cfg,
            train: &train_set,
            tc: &tc,
            adam: &adam,
            device: &device,
            member,
            epochs_total,
            warmup,
        };
        let (started, mut samples, mut times) = (Instant::now(), 0u64, StepTimes::default());
        last_save.1 = st.at.step;
        let mut stopped_early = false;
        let checkpoint = |st: &MemberState, consumed: Vec<u64>, finished: &[Vec<f32>]| {
            st.checkpoint(size, &rows, consumed, tc.seed, finished)
        };
        while st.at.epoch <= tc.epochs && !stopped_early {
            // One permutation of the global order for the whole group; each step is the
            // next `batch` positions of it, and each rank trains on the rows it holds.
            let mut order: Vec<usize> = (0..global.ids.len()).collect();
            order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(epoch_seed(
                seed,
                member,
                st.at.epoch,
            )));
            while st.at.step_in_epoch < steps {
                let at = st.at;
                let lo = (at.step_in_epoch * batch) as usize;
                let hi = (lo + batch as usize).min(order.len());
                let chunk: Vec<usize> = order[lo..hi]
                    .iter()
                    .filter_map(|g| global.mine.get(g).copied())
                    .collect();
                let rows_in_step;
                (model, rows_in_step) = step.run(group, model, &mut st, &chunk, &mut times)?;
                samples += rows_in_step as u64;
                st.at.step_in_epoch += 1;
                st.at.step += 1;
                if on_event(DpEvent::Step(st.at)).is_break() {
                    return Err(ModelError::Cancelled);
                }
                let due = (policy.every_steps > 0
                    && st.at.step - last_save.1 >= policy.every_steps)
                    || (policy.every_secs > 0.0
                        && last_save.0.elapsed().as_secs_f64() >= policy.every_secs);
                if rank == 0 && due {
                    let consumed =
                        cursors(&order, &global.owner, st.at.step_in_epoch * batch, size);
                    checkpoints.save(checkpoint(&st, consumed, &finished).encode(), &st.at)?;
                    last_save = (Instant::now(), st.at.step);
                    if on_event(DpEvent::Checkpointed(st.at)).is_break() {
                        return Err(ModelError::Cancelled);
                    }
                }
            }
            let mut report = EpochReport {
                epoch: st.at.epoch,
                epochs: tc.epochs,
                loss: st.loss_sum / total as f64,
                valid_loss: None,
            };
            if early_stopping {
                report.valid_loss = group_valid_loss(group, &model, &cfg, &valid_set)?;
                if let Some(vl) = report.valid_loss {
                    st.track_best(vl);
                }
            }
            if on_event(DpEvent::Epoch(MemberReport {
                member,
                members,
                model: None,
                epoch: report,
            }))
            .is_break()
            {
                return Err(ModelError::Cancelled);
            }
            stopped_early = tc.patience > 0 && st.since_best >= tc.patience;
            let paused_at = st.at.epoch;
            st.at.epoch = if stopped_early {
                tc.epochs + 1
            } else {
                st.at.epoch + 1
            };
            st.at.step_in_epoch = 0;
            st.loss_sum = 0.0;
            // A search's rung ends here: checkpoint (also at the end, so that the best
            // trial's job can publish from it) and report.
            if let Some(stop) = policy.stop_after_epoch
                && (paused_at >= stop || st.at.epoch > tc.epochs)
            {
                if rank == 0 {
                    checkpoints.save(checkpoint(&st, vec![0; size], &finished).encode(), &st.at)?;
                }
                if st.at.epoch <= tc.epochs {
                    return Ok(Run::Paused {
                        valid_loss: st.best.as_ref().map(|b| b.0),
                        epoch: paused_at,
                    });
                }
            }
        }
        let sum = final_checksum(group, &st.params, member)?;
        if on_event(DpEvent::Agreed {
            member,
            steps: st.at.step,
            checksum: sum,
            samples,
            seconds: started.elapsed().as_secs_f64(),
            all_reduce_seconds: times.all_reduce.as_secs_f64(),
            compute_seconds: times.compute.as_secs_f64(),
            update_seconds: times.update.as_secs_f64(),
        })
        .is_break()
        {
            return Err(ModelError::Cancelled);
        }
        if let Some((l, _)) = &st.best {
            best_losses.push(*l);
        }
        finished.push(st.best.map(|(_, p)| p).unwrap_or(st.params));
    }
    if rank != 0 {
        return Ok(Run::Done(None));
    }
    let weights = export_members(&cfg, &tc, &finished)?;
    Ok(Run::Done(Some(Box::new(Done {
        preprocessor,
        finished: Finished::Mlp(cfg, weights),
        best_losses,
        every_row: None,
    }))))
}

/// Rank 0's end of a data-parallel run: what it trained, not yet scored.
pub(crate) struct Done {
    preprocessor: Preprocessor,
    finished: Finished,
    /// Each member's best validation loss (early stopping).
    best_losses: Vec<f64>,
    /// Every row as `preprocessor` encodes them, where the run encoded them all (the
    /// trees bin every row on rank 0): the scoring takes them instead of encoding again.
    every_row: Option<Encoded>,
}

/// How a data-parallel run (or a blend's part) ended.
pub(crate) enum Run {
    /// Trained to the end: [`Done`] on rank 0, `None` on the others.
    Done(Option<Box<Done>>),
    /// See [`Outcome::Paused`].
    Paused { valid_loss: Option<f64>, epoch: u32 },
}

impl Done {
    /// The architecture and weights of what was trained.
    pub(crate) fn model(self) -> Result<(Architecture, Vec<u8>)> {
        finished_model(self.preprocessor, self.finished)
    }

    /// Every row of `all` as the run's preprocessor encodes them: the rows the run kept,
    /// else encoded now.
    pub(crate) fn take_every_row(&mut self, all: &[RecordBatch]) -> Result<Encoded> {
        match self.every_row.take() {
            Some(rows) => Ok(rows),
            None => self.preprocessor.transform(all, |_| true),
        }
    }
}

impl Run {
    /// The run's outcome: rank 0 scores the model on every test row (`all`), with
    /// `valid_loss` the members' mean best validation loss.
    fn outcome(self, all: Option<&[RecordBatch]>, features: &FeatureConfig) -> Result<Outcome> {
        let mut done = match self {
            Run::Paused { valid_loss, epoch } => return Ok(Outcome::Paused { valid_loss, epoch }),
            Run::Done(None) => return Ok(Outcome::Trained(None)),
            Run::Done(Some(done)) => done,
        };
        let all = every_row(all)?;
        let encoded = done.take_every_row(all)?;
        let best_losses = std::mem::take(&mut done.best_losses);
        let mut trained = finish_response(all, features, encoded, done.model()?)?;
        if !best_losses.is_empty() {
            let mean = best_losses.iter().sum::<f64>() / best_losses.len() as f64;
            trained.metrics.insert("valid_loss".into(), mean);
        }
        Ok(Outcome::Trained(Some(Box::new(trained))))
    }
}

/// This rank's rows as a preprocessor encodes them, and each one's role in the split.
#[derive(Clone)]
pub(crate) struct LocalRows {
    /// The preprocessor that encoded them.
    pub preprocessor: Preprocessor,
    pub roles: Vec<Role>,
    pub rows: Encoded,
}

impl LocalRows {
    /// The rows of `data` on this rank, encoded with `preprocessor`.
    pub(crate) fn encode(
        data: &WorkerData<'_>,
        features: &FeatureConfig,
        preprocessor: Preprocessor,
    ) -> Result<LocalRows> {
        Ok(LocalRows {
            roles: row_roles(data.local, features)?,
            rows: preprocessor.transform(data.local, |_| true)?,
            preprocessor,
        })
    }

    /// This rank's rows as `preprocessor` encodes them: `given` (a blend's, encoded once for
    /// both parts) where that preprocessor encoded them, else encoded now.
    pub(crate) fn reuse_or_encode<'a>(
        given: Option<&'a LocalRows>,
        preprocessor: &Preprocessor,
        data: &WorkerData<'_>,
        features: &FeatureConfig,
    ) -> Result<Cow<'a, LocalRows>> {
        match given {
            Some(rows) if rows.preprocessor == *preprocessor => Ok(Cow::Borrowed(rows)),
            _ => LocalRows::encode(data, features, preprocessor.clone()).map(Cow::Owned),
        }
    }
}

/// The preprocessor of a run: the one that encoded a blend's `given` rows, else
/// [`shared_preprocessor`].
fn given_or_shared_preprocessor(
    given: Option<&LocalRows>,
    group: &mut dyn Collective,
    all: Option<&[RecordBatch]>,
    features: &FeatureConfig,
) -> Result<Preprocessor> {
    match given {
        Some(rows) => Ok(rows.preprocessor.clone()),
        None => shared_preprocessor(group, all, features),
    }
}

/// The preprocessor: fitted by rank 0 on every row (`all`), broadcast, the same on every
/// rank (a group of one fits it and broadcasts nothing).
pub(crate) fn shared_preprocessor(
    group: &mut dyn Collective,
    all: Option<&[RecordBatch]>,
    features: &FeatureConfig,
) -> Result<Preprocessor> {
    if group.size() == 1 {
        return Preprocessor::fit(every_row(all)?, features);
    }
    let bytes = from_rank_zero(group, || {
        serde_json::to_vec(&Preprocessor::fit(every_row(all)?, features)?)
            .map_err(|e| ModelError::Internal(e.to_string()))
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| collective_error(format!("the broadcast preprocessor: {e}")))
}

/// Every rank's training rows, and the group's rows and positives in all; refuses a group
/// with no rows or, for a model of classes (`binary`), one class.
fn group_rows(
    group: &mut dyn Collective,
    train_set: &Encoded,
    valid_set: &Encoded,
    (label, binary): (&str, bool),
) -> Result<(Vec<u64>, u64, u64)> {
    let (rank, size) = (group.rank(), group.size());
    // Rows, positives and validation rows of every rank.
    let mut counts = vec![0.0f32; 3 * size];
    counts[3 * rank] = train_set.rows as f32;
    counts[3 * rank + 1] = train_set.y.iter().filter(|&&y| y > 0.5).count() as f32;
    counts[3 * rank + 2] = valid_set.rows as f32;
    group.all_reduce(&mut counts)?;
    let rows: Vec<u64> = (0..size).map(|r| counts[3 * r] as u64).collect();
    let total: u64 = rows.iter().sum();
    let positives: u64 = (0..size).map(|r| counts[3 * r + 1] as u64).sum();
    if total == 0 {
        return Err(ModelError::NoRows {
            purpose: "train on",
            rows: 0,
        });
    }
    if binary && (positives == 0 || positives == total) {
        return Err(ModelError::SingleClass {
            label: label.to_string(),
            class: u8::from(positives > 0),
        });
    }
    Ok((rows, total, positives))
}

/// Rank 0's checkpoint, shared with the group; refused when another group (size, rows,
/// seed) wrote it.
fn shared_checkpoint(
    group: &mut dyn Collective,
    checkpoints: &mut dyn Checkpoints,
    rows: &[u64],
    seed: u64,
) -> Result<Option<Checkpoint>> {
    let size = group.size();
    let bytes = rank_zero_checkpoint(group, checkpoints)?;
    if bytes.is_empty() {
        return Ok(None);
    }
    let c = Checkpoint::decode(&bytes)?;
    if c.workers != size || c.rows != rows || c.seed != seed {
        return Err(ModelError::Unsupported(format!(
            "the checkpoint was written by {} workers with rows {:?} (seed {}); this group has {size} with {rows:?} (seed {seed}): it cannot resume from it",
            c.workers, c.rows, c.seed
        )));
    }
    Ok(Some(c))
}

/// Every row, which rank 0 holds.
pub(crate) fn every_row(all: Option<&[RecordBatch]>) -> Result<&[RecordBatch]> {
    all.ok_or_else(|| ModelError::Internal("rank 0 needs every row".into()))
}

/// The bytes `make` gives on rank 0 (where alone it runs), on every rank.
pub(crate) fn from_rank_zero(
    group: &mut dyn Collective,
    make: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<Vec<u8>> {
    let mut bytes = if group.rank() == 0 {
        make()?
    } else {
        Vec::new()
    };
    group.broadcast(&mut bytes)?;
    Ok(bytes)
}

/// Rank 0's latest checkpoint's bytes on every rank (empty: none).
fn rank_zero_checkpoint(
    group: &mut dyn Collective,
    checkpoints: &mut dyn Checkpoints,
) -> Result<Vec<u8>> {
    from_rank_zero(group, || Ok(checkpoints.load()?.unwrap_or_default()))
}

/// The replicas' checksum of their final weights of `member`, compared across the group.
fn final_checksum(group: &mut dyn Collective, params: &[f32], member: usize) -> Result<u32> {
    let (rank, size) = (group.rank(), group.size());
    let mut sums = vec![0.0f32; 2 * size];
    let sum = checksum(params);
    put_u32(&mut sums, rank, sum);
    group.all_reduce(&mut sums)?;
    if disagreement(&sums, size).is_some() {
        return Err(collective_error(format!(
            "the replicas' final weights of member {member} differ"
        )));
    }
    Ok(sum)
}

/// Each finished member's flat weights as the artifact's safetensors bytes.
fn export_members(
    cfg: &MlpConfig,
    tc: &TrainConfig,
    finished: &[Vec<f32>],
) -> Result<Vec<Vec<u8>>> {
    let (device, _) = seeded_model(cfg, tc, tc.seed)?;
    finished
        .iter()
        .map(|p| {
            crate::artifact::export_module(&load_params(ResponseMlp::new(cfg, &device), p).valid())
        })
        .collect()
}

/// What every step of a member reads.
struct Step<'a> {
    cfg: &'a MlpConfig,
    train: &'a Encoded,
    tc: &'a TrainConfig,
    adam: &'a AdamW,
    device: &'a Device,
    member: usize,
    epochs_total: u64,
    warmup: u64,
}

/// Where a member's steps spent their time on this rank.
#[derive(Debug, Default)]
struct StepTimes {
    /// This rank's gradients: batch, forward, backward, flattening.
    compute: Duration,
    /// The all-reduce: the transfer and the wait for the slowest rank.
    all_reduce: Duration,
    /// Checksums, AdamW and loading the weights back.
    update: Duration,
}

impl Step<'_> {
    /// One step of the group at `st.at`, this rank training on its rows `chunk` of the
    /// step: the gradients of every rank summed by one all-reduce (with every rank's
    /// weights checksum: replicas that differ fail the step), divided by the group's rows,
    /// and the same AdamW update applied on every rank. Returns the model and the group's
    /// rows in the step; `times` gathers where the step's time went.
    fn run(
        &self,
        group: &mut dyn Collective,
        mut model: ResponseMlp,
        st: &mut MemberState,
        chunk: &[usize],
        times: &mut StepTimes,
    ) -> Result<(ResponseMlp, f32)> {
        let started = Instant::now();
        let (rank, size, at, n) = (group.rank(), group.size(), st.at, st.params.len());
        let member = self.member;
        // [gradient · b, loss · b, b, checksums of every rank (two 16-bit halves)]
        let mut buf = vec![0.0f32; n + 2 + 2 * size];
        if !chunk.is_empty() {
            let (num, cat) = mlp_tensors(&self.cfg.layout, self.train, chunk, self.device);
            let loss = weighted_bce(
                model.forward(num, cat),
                self.train.labels(chunk),
                self.tc.positive_weight,
                self.device,
            );
            let b = chunk.len() as f32;
            let l = finite_loss(
                &loss,
                format_args!(
                    "member {member} epoch {} step {}",
                    at.epoch, at.step_in_epoch
                ),
            )?;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            for (o, g) in buf.iter_mut().zip(flatten_grads(&model, &grads)) {
                *o = g * b;
            }
            buf[n] = l as f32 * b;
            buf[n + 1] = b;
        }
        let computed = Instant::now();
        times.compute += computed - started;
        put_u32(&mut buf[n + 2..], rank, checksum(&st.params));
        let waited = Instant::now();
        group.all_reduce(&mut buf)?;
        let reduced = Instant::now();
        times.all_reduce += reduced - waited;
        times.update += waited - computed;
        if let Some(sums) = disagreement(&buf[n + 2..], size) {
            return Err(collective_error(format!(
                "the replicas' weights differ before step {} of member {member} (checksums by rank {sums:08x?})",
                at.step
            )));
        }
        let rows_in_step = buf[n + 1];
        st.loss_sum += f64::from(buf[n]);
        if rows_in_step > 0.0 {
            let g = &mut buf[..n];
            for x in g.iter_mut() {
                *x /= rows_in_step;
            }
            let lr = cosine_lr(
                self.tc.learning_rate,
                at.step as usize,
                self.epochs_total as usize,
                self.warmup as usize,
                0.05,
            );
            st.adam_t += 1;
            self.adam
                .step(st.adam_t, lr, &mut st.params, g, &mut st.m, &mut st.v);
            model = load_params(model, &st.params);
        }
        times.update += reduced.elapsed();
        Ok((model, rows_in_step))
    }
}

/// The validation loss of `model` over every rank's validation rows, `None` when the group
/// has none.
fn group_valid_loss(
    group: &mut dyn Collective,
    model: &ResponseMlp,
    cfg: &MlpConfig,
    valid_set: &Encoded,
) -> Result<Option<f64>> {
    let mut lv = [0.0f32; 2];
    if valid_set.rows > 0 {
        let inner = model.valid();
        let p = inner.predict(&cfg.layout, valid_set, &inner.devices()[0])?;
        lv = [
            (log_loss(&p, &valid_set.y) * valid_set.rows as f64) as f32,
            valid_set.rows as f32,
        ];
    }
    group.all_reduce(&mut lv)?;
    Ok((lv[1] > 0.0).then(|| f64::from(lv[0] / lv[1])))
}

/// What data-parallel training ended with.
#[derive(Debug)]
pub enum Outcome {
    /// Trained to the end: rank 0 has the model (with `valid_loss`, the members' mean
    /// best validation loss, among its metrics); the other ranks have `None`.
    Trained(Option<Box<TrainedModel>>),
    /// Stopped after `[train] stop_after_epoch` (a search's rung), checkpointed.
    Paused {
        /// Best validation loss so far.
        valid_loss: Option<f64>,
        /// The epoch it stopped after.
        epoch: u32,
    },
}

/// One member's training state: what a checkpoint keeps.
struct MemberState {
    at: Position,
    adam_t: u64,
    loss_sum: f64,
    best: Option<(f64, Vec<f32>)>,
    since_best: u32,
    params: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl MemberState {
    fn start(member: usize, params: Vec<f32>) -> MemberState {
        let n = params.len();
        MemberState {
            at: Position {
                member,
                epoch: 1,
                step_in_epoch: 0,
                step: 0,
            },
            adam_t: 0,
            loss_sum: 0.0,
            best: None,
            since_best: 0,
            params,
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    /// Keep `valid_loss`'s weights when they are the best so far; count the epochs since.
    fn track_best(&mut self, valid_loss: f64) {
        if self.best.as_ref().is_none_or(|(b, _)| valid_loss < *b) {
            self.best = Some((valid_loss, self.params.clone()));
            self.since_best = 0;
        } else {
            self.since_best += 1;
        }
    }

    fn checkpoint(
        &self,
        workers: usize,
        rows: &[u64],
        cursors: Vec<u64>,
        seed: u64,
        finished: &[Vec<f32>],
    ) -> Checkpoint {
        Checkpoint {
            at: self.at,
            workers,
            rows: rows.to_vec(),
            cursors,
            seed,
            adam_t: self.adam_t,
            loss_sum: self.loss_sum,
            best_loss: self.best.as_ref().map(|b| b.0),
            since_best: self.since_best,
            params: self.params.clone(),
            m: self.m.clone(),
            v: self.v.clone(),
            best: self.best.as_ref().map(|b| b.1.clone()).unwrap_or_default(),
            finished: finished.to_vec(),
        }
    }
}

/// The most workers whose sums [`sum_i64`] keeps exact.
const MAX_EXACT_GROUP: usize = 256;

/// Bits per limb of [`sum_i64`] for a group of `size`: each limb's sum over the group stays
/// below 2^24, and so exact in an f32 (23 bits for 2 ranks, 22 for 3 or 4, 16 for 256).
fn limb_bits(size: usize) -> u32 {
    24 - (size.max(1) as u32).next_power_of_two().trailing_zeros()
}

/// Sum `values` over the group exactly (wrapping, as two's complement): each travels as
/// limbs of [`limb_bits`] bits (three for up to 4 ranks, else four), whose sums over up to
/// [`MAX_EXACT_GROUP`] ranks stay below 2^24 and so exact in an f32 all-reduce.
pub fn sum_i64(group: &mut dyn Collective, values: &mut [i64]) -> Result<()> {
    if group.size() == 1 {
        return Ok(());
    }
    if group.size() > MAX_EXACT_GROUP {
        return Err(ModelError::Unsupported(format!(
            "exact sums over {} workers: at most {MAX_EXACT_GROUP}",
            group.size()
        )));
    }
    let bits = limb_bits(group.size());
    let per = 64_u32.div_ceil(bits) as usize;
    let mask = (1u64 << bits) - 1;
    let mut limbs = vec![0.0f32; per * values.len()];
    for (v, l) in values.iter().zip(limbs.chunks_exact_mut(per)) {
        let u = *v as u64;
        for (k, l) in l.iter_mut().enumerate() {
            *l = ((u >> (bits * k as u32)) & mask) as f32;
        }
    }
    group.all_reduce(&mut limbs)?;
    for (v, l) in values.iter_mut().zip(limbs.chunks_exact(per)) {
        *v = l.iter().enumerate().fold(0u64, |acc, (k, &l)| {
            acc.wrapping_add((l as u64).wrapping_shl(bits * k as u32))
        }) as i64;
    }
    Ok(())
}

/// Put `v` in slot pair `i` as two 16-bit halves, each exact in an f32 and exact in a sum
/// where the other ranks put zeros.
fn put_u32(slots: &mut [f32], i: usize, v: u32) {
    slots[2 * i] = (v >> 16) as f32;
    slots[2 * i + 1] = (v & 0xffff) as f32;
}

/// The value in slot pair `i`.
fn get_u32(slots: &[f32], i: usize) -> u32 {
    ((slots[2 * i] as u32) << 16) | slots[2 * i + 1] as u32
}

/// Every rank's checksum, when they differ.
fn disagreement(slots: &[f32], size: usize) -> Option<Vec<u32>> {
    let sums: Vec<u32> = (0..size).map(|r| get_u32(slots, r)).collect();
    sums.iter().any(|s| *s != sums[0]).then_some(sums)
}

/// The batches with a split column named `column` (`train`, `validation`, `test` by the
/// row-index rule of `cfg`), for data read without a feature stage.
pub fn with_split_column(
    batches: &[RecordBatch],
    cfg: &FeatureConfig,
    column: &str,
) -> Result<Vec<RecordBatch>> {
    let roles = row_roles(batches, cfg)?;
    let mut offset = 0;
    batches
        .iter()
        .map(|b| {
            let names: Vec<&str> = roles[offset..offset + b.num_rows()]
                .iter()
                .map(|r| match r {
                    Role::Train => "train",
                    Role::Validation => "validation",
                    Role::Test => "test",
                })
                .collect();
            offset += b.num_rows();
            let mut fields: Vec<arrow::datatypes::FieldRef> = b.schema().fields().to_vec();
            fields.push(std::sync::Arc::new(arrow::datatypes::Field::new(
                column,
                arrow::datatypes::DataType::Utf8,
                false,
            )));
            let mut columns = b.columns().to_vec();
            columns.push(std::sync::Arc::new(arrow::array::StringArray::from(names)));
            RecordBatch::try_new(
                std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
                columns,
            )
            .map_err(|e| ModelError::Internal(e.to_string()))
        })
        .collect()
}

/// Rank `rank`'s rows of `size` and their ids: the rows whose index (across the batches) is
/// `rank` modulo `size`; the id is that index.
pub fn rows_of_rank(
    batches: &[RecordBatch],
    rank: usize,
    size: usize,
) -> Result<(Vec<RecordBatch>, Vec<u64>)> {
    let mut offset = 0;
    let mut ids = Vec::new();
    let parts = batches
        .iter()
        .map(|b| {
            let first = (rank + size - offset % size) % size;
            let idx: Vec<u32> = (first..b.num_rows())
                .step_by(size)
                .map(|i| i as u32)
                .collect();
            ids.extend(idx.iter().map(|&i| (offset + i as usize) as u64));
            offset += b.num_rows();
            arrow::compute::take_record_batch(b, &arrow::array::UInt32Array::from(idx))
                .map_err(|e| ModelError::Internal(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((parts, ids))
}
