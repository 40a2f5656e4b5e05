//! Boosted trees trained data-parallel, LightGBM's data-parallel algorithm on Halyard's
//! ring: every worker bins its rows with rank 0's bins, builds each leaf's gradient
//! histogram on its own rows, and the group sums the histograms exactly (fixed point, see
//! [`crate::gbdt::boost`]); every worker then grows the same tree, bit for bit, whatever
//! the group's size. Rows are bagged by their number in the whole data set, so a group of
//! 1, 2 or 3 workers grows the same trees as training alone.
//!
//! Rank 0 checkpoints every `every_steps` trees (or `every_secs` seconds): the finished
//! members' forests and the trees so far of the member in progress. A search's rung
//! (`stop_after_epoch`) counts trees: the group checkpoints and pauses after that many, and
//! a trial that ends (all its trees, or early stopping) checkpoints its end. A tree's state does
//! not depend on the group, so a group of any size resumes from it; the training scores are
//! rebuilt by walking the trees.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{
    CheckpointPolicy, Checkpoints, Collective, Done, DpEvent, LocalRows, Position, Run, WorkerData,
    every_row, final_checksum, given_or_shared_preprocessor, group_rows, rank_zero_checkpoint,
};
use crate::error::{ModelError, Result};
use crate::gbdt::{Best, Binnings, Boosted, Forest, GbdtConfig, Importance, TreeRows, boost};
use crate::mlp::InputLayout;
use crate::pipeline::{Finished, MemberReport, ResponseConfig};
use crate::preprocess::{Encoded, FeatureConfig, Role, row_roles};

/// A collective that adds up the time spent in its calls.
struct Timed<'a> {
    group: &'a mut dyn Collective,
    waited: Duration,
}

impl Timed<'_> {
    fn time<T>(&mut self, call: impl FnOnce(&mut dyn Collective) -> T) -> T {
        let started = Instant::now();
        let out = call(&mut *self.group);
        self.waited += started.elapsed();
        out
    }
}

impl Collective for Timed<'_> {
    fn rank(&self) -> usize {
        self.group.rank()
    }
    fn size(&self) -> usize {
        self.group.size()
    }
    fn all_reduce(&mut self, data: &mut [f32]) -> Result<()> {
        self.time(|g| g.all_reduce(data))
    }
    fn broadcast(&mut self, data: &mut Vec<u8>) -> Result<()> {
        self.time(|g| g.broadcast(data))
    }
}

/// Where member `member` stands after `trees` trees, as progress events say it.
fn position(member: usize, trees: usize) -> Position {
    Position {
        member,
        epoch: trees as u32,
        step_in_epoch: 0,
        step: trees as u64,
    }
}

/// Train boosted trees (`cfg`) data-parallel as one worker of `group`: rank 0 returns what
/// it trained (not yet scored), the other ranks `Run::Done(None)`. Progress: `Epoch` every few trees (the epoch is the tree
/// count), `Checkpointed` and `Resumed` at a tree count, `Agreed` when every rank's trees
/// of a member have the same checksum. As a blend's part (`mlp_input`: this rank's rows as
/// the blend's preprocessor encoded them for its MLP, the same preprocessor on every rank)
/// the trees see the MLP's input and the validation rows are held out (the blend's weight
/// is fitted on them).
#[allow(clippy::too_many_arguments)]
pub(super) fn train_trees_parallel(
    data: WorkerData<'_>,
    features: &FeatureConfig,
    rc: &ResponseConfig,
    (cfg, mlp_input): (&GbdtConfig, Option<&LocalRows>),
    policy: CheckpointPolicy,
    group: &mut dyn Collective,
    checkpoints: &mut dyn Checkpoints,
    mut on_event: impl FnMut(DpEvent) -> ControlFlow<()>,
) -> Result<Run> {
    let rank = group.rank();
    let blend_part = mlp_input.is_some();
    let mut preprocessor = given_or_shared_preprocessor(mlp_input, group, data.all, features)?;
    // Trees alone see missing numbers as missing (sent to the better side of each split);
    // a blend's see the MLP's input, missing numbers imputed.
    preprocessor.keep_missing = !blend_part;
    let objective = rc.check_objective()?;
    preprocessor.numeric_label = !objective.is_binary();
    let layout = InputLayout::of(&preprocessor);
    // A search's rung ends after this many trees (`[train] stop_after_epoch`).
    let rung = policy.stop_after_epoch.map(|t| t as usize);
    // Validation rows are held out for early stopping, a search's rungs (their loss ranks
    // the trials) and a blend's weight, else trained on.
    let early = blend_part || cfg.early_stopping > 0 || rung.is_some();
    let fits = |r: Role| r == Role::Train || (!early && r == Role::Validation);
    // A blend's rows were encoded as here (missing numbers imputed, a 0/1 label): reused.
    let encoded = LocalRows::reuse_or_encode(mlp_input, &preprocessor, &data, features)?;
    debug_assert!(
        mlp_input.is_none() || matches!(encoded, std::borrow::Cow::Borrowed(_)),
        "a blend's trees part encoded its rows again"
    );
    let LocalRows {
        roles, rows: local, ..
    } = &*encoded;
    let train_set = local.partition(|i| !fits(roles[i])).0;
    let valid_set = if early {
        local.partition(|i| roles[i] != Role::Validation).0
    } else {
        Encoded::empty(local.dim)
    };
    let ids: Vec<u64> = (0..local.rows)
        .filter(|&i| fits(roles[i]))
        .map(|i| data.ids[i])
        .collect();
    let (rows, total, positives) = group_rows(
        group,
        &train_set,
        &valid_set,
        (&features.label, objective.is_binary()),
    )?;
    let mut tc = rc.train.clone();
    if rc.balance_classes {
        tc.positive_weight = (total - positives) as f64 / positives as f64;
    }
    // Rank 0 bins every training row (as training alone does) and shares the bins; it
    // keeps every row encoded for the scoring at the end.
    let mut encoded = None;
    let binnings = Binnings::shared(group, &layout, || {
        let all = every_row(data.all)?;
        let roles = row_roles(all, features)?;
        let every = preprocessor.transform(all, |_| true)?;
        let train_all = every.partition(|i| !fits(roles[i])).0;
        let binnings = Binnings::fit(&train_all, &layout, cfg.max_bins, tc.seed);
        encoded = Some(every);
        Ok(binnings)
    })?;
    if on_event(DpEvent::Formed {
        workers: group.size(),
        rows,
        steps_per_epoch: cfg.trees as u64,
    })
    .is_break()
    {
        return Err(ModelError::Cancelled);
    }
    let (mut finished, mut current) =
        shared_checkpoint(group, checkpoints, total, tc.seed, &layout)?;
    if !finished.is_empty() || current.is_some() {
        let trees = current.as_ref().map_or(0, |b| b.forest.trees());
        if on_event(DpEvent::Resumed(position(finished.len(), trees))).is_break() {
            return Err(ModelError::Cancelled);
        }
    }
    let members = rc.ensemble.max(1);
    let mut last_save = Instant::now();
    for member in finished.len()..members {
        let mut mtc = tc.clone();
        mtc.seed = tc.seed.wrapping_add(member as u64);
        let resume = current.take();
        let first_tree = resume.as_ref().map_or(0, |b| b.forest.trees());
        let (mut last_saved, mut grown_to) = (first_tree, first_tree);
        let mut paused: Option<Option<f64>> = None;
        let started = Instant::now();
        let mut timed = Timed {
            group: &mut *group,
            waited: Duration::ZERO,
        };
        let rows = TreeRows {
            train: &train_set,
            ids: &ids,
            valid: &valid_set,
        };
        let boosted = boost(
            rows,
            &binnings,
            &layout,
            cfg,
            &mtc,
            &mut timed,
            resume,
            |state, report| {
                let trees = state.forest.trees();
                grown_to = trees;
                if let Some(epoch) = report {
                    let report = MemberReport {
                        member,
                        members,
                        model: None,
                        epoch,
                    };
                    if on_event(DpEvent::Epoch(report)).is_break() {
                        return Ok(ControlFlow::Break(()));
                    }
                }
                let pause = rung.is_some_and(|r| trees >= r && trees < cfg.trees);
                let due = (policy.every_steps > 0
                    && (trees - last_saved) as u64 >= policy.every_steps)
                    || (policy.every_secs > 0.0
                        && last_save.elapsed().as_secs_f64() >= policy.every_secs);
                if rank == 0 && (due || pause) {
                    let bytes = encode(tc.seed, total, &finished, Some(state))?;
                    checkpoints.save(bytes, &position(member, trees))?;
                    (last_save, last_saved) = (Instant::now(), trees);
                    if on_event(DpEvent::Checkpointed(position(member, trees))).is_break() {
                        return Ok(ControlFlow::Break(()));
                    }
                }
                if pause {
                    paused = Some(state.best.map(|b| f64::from_bits(b.loss_bits)));
                    return Ok(ControlFlow::Break(()));
                }
                Ok(ControlFlow::Continue(()))
            },
        );
        let boosted = match (boosted, paused) {
            (Err(ModelError::Cancelled), Some(valid_loss)) => {
                return Ok(Run::Paused {
                    valid_loss,
                    epoch: grown_to as u32,
                });
            }
            (boosted, _) => boosted?,
        };
        let waited = timed.waited;
        let trees = boosted.forest.trees();
        let values: Vec<f32> = boosted
            .forest
            .tensors()
            .into_iter()
            .flat_map(|t| t.2)
            .collect();
        let checksum = final_checksum(group, &values, member)?;
        if on_event(DpEvent::Agreed {
            member,
            steps: trees as u64,
            checksum,
            samples: total * (grown_to - first_tree) as u64,
            seconds: started.elapsed().as_secs_f64(),
            all_reduce_seconds: waited.as_secs_f64(),
            compute_seconds: 0.0,
            update_seconds: 0.0,
        })
        .is_break()
        {
            return Err(ModelError::Cancelled);
        }
        finished.push(boosted);
        // A search's trial checkpoints its end too: the best trial's job publishes from it.
        if rung.is_some() && rank == 0 {
            let trees = finished.last().map_or(0, |b| b.forest.trees());
            checkpoints.save(
                encode(tc.seed, total, &finished, None)?,
                &position(member, trees),
            )?;
        }
    }
    if rank != 0 {
        return Ok(Run::Done(None));
    }
    let best_losses = finished
        .iter()
        .filter_map(|b| b.best.map(|b| f64::from_bits(b.loss_bits)))
        .collect();
    let forests = finished
        .into_iter()
        .map(|b| (b.forest, b.importance))
        .collect();
    Ok(Run::Done(Some(Box::new(Done {
        preprocessor,
        finished: Finished::Trees(cfg.clone(), forests),
        best_losses,
        every_row: encoded,
    }))))
}

/// A trees checkpoint's header; the members' forests follow as weights files.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    /// Always [`TREES`]: another kind of checkpoint is refused by it.
    kind: String,
    seed: u64,
    /// The group's training rows.
    rows: u64,
    /// The finished members, then the one in progress.
    members: Vec<MemberHeader>,
}

const TREES: &str = "trees";

#[derive(Debug, Serialize, Deserialize)]
struct MemberHeader {
    finished: bool,
    /// Each input's gain (the bits of the f64) and splits.
    gains: Vec<u64>,
    splits: Vec<u64>,
    best: Option<Best>,
    /// Bytes of its forest's weights file.
    bytes: usize,
}

/// `u64` header length, the JSON header, then each member's forest as a weights file.
fn encode(
    seed: u64,
    rows: u64,
    finished: &[Boosted],
    current: Option<&Boosted>,
) -> Result<Vec<u8>> {
    let mut files = Vec::new();
    let members = finished
        .iter()
        .map(|b| (true, b))
        .chain(current.map(|b| (false, b)))
        .map(|(finished, b)| {
            let file = crate::artifact::f32_file(&b.forest.tensors())?;
            let header = MemberHeader {
                finished,
                gains: b.importance.iter().map(|i| i.gain.to_bits()).collect(),
                splits: b.importance.iter().map(|i| i.splits).collect(),
                best: b.best,
                bytes: file.len(),
            };
            files.push(file);
            Ok(header)
        })
        .collect::<Result<Vec<_>>>()?;
    let header = Header {
        kind: TREES.into(),
        seed,
        rows,
        members,
    };
    let json = serde_json::to_vec(&header).map_err(|e| ModelError::Internal(e.to_string()))?;
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    for f in files {
        out.extend_from_slice(&f);
    }
    Ok(out)
}

/// Read [`encode`]'s bytes: the header, the finished members and the one in progress.
fn decode(bytes: &[u8], layout: &InputLayout) -> Result<(Header, Vec<Boosted>, Option<Boosted>)> {
    let bad = |why: String| ModelError::Artifact(format!("trees checkpoint: {why}"));
    let len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or_else(|| bad("shorter than its header".into()))?;
    let json = bytes
        .get(8..8 + len)
        .ok_or_else(|| bad("shorter than its header".into()))?;
    let header: Header =
        serde_json::from_slice(json).map_err(|e| bad(format!("not a trees checkpoint ({e})")))?;
    if header.kind != TREES {
        return Err(bad(format!("a {:?} checkpoint", header.kind)));
    }
    let mut rest = &bytes[8 + len..];
    let (mut finished, mut current) = (Vec::new(), None);
    for m in &header.members {
        let file = rest
            .get(..m.bytes)
            .ok_or_else(|| bad("shorter than its forests".into()))?;
        rest = &rest[m.bytes..];
        let boosted = Boosted {
            forest: Forest::from_file(file, layout)?,
            importance: m
                .gains
                .iter()
                .zip(&m.splits)
                .map(|(&g, &splits)| Importance {
                    gain: f64::from_bits(g),
                    splits,
                })
                .collect(),
            best: m.best,
        };
        match (m.finished, &current) {
            (true, None) => finished.push(boosted),
            (false, None) => current = Some(boosted),
            (_, Some(_)) => return Err(bad("a member after the one in progress".into())),
        }
    }
    if !rest.is_empty() {
        return Err(bad("longer than its forests".into()));
    }
    Ok((header, finished, current))
}

/// Rank 0's checkpoint shared with the group (finished members, the member in progress);
/// refused when written for other rows or another seed.
fn shared_checkpoint(
    group: &mut dyn Collective,
    checkpoints: &mut dyn Checkpoints,
    rows: u64,
    seed: u64,
    layout: &InputLayout,
) -> Result<(Vec<Boosted>, Option<Boosted>)> {
    let bytes = rank_zero_checkpoint(group, checkpoints)?;
    if bytes.is_empty() {
        return Ok((Vec::new(), None));
    }
    let (header, finished, current) = decode(&bytes, layout)?;
    if header.rows != rows || header.seed != seed {
        return Err(ModelError::Unsupported(format!(
            "the checkpoint was written for {} training rows (seed {}); this group has {rows} (seed {seed}): it cannot resume from it",
            header.rows, header.seed
        )));
    }
    Ok((finished, current))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::Solo;
    use crate::gbdt::train_gbdt;
    use crate::logistic::TrainConfig;

    #[test]
    fn a_checkpoint_reads_back_as_written() {
        let layout = InputLayout {
            numeric: vec![0],
            categorical: vec![],
        };
        let mut e = Encoded {
            dim: 1,
            ..Encoded::default()
        };
        for i in 0..400 {
            e.x.push((i % 40) as f32);
            e.y.push(f32::from(u8::from(i % 40 > 25)));
            e.rows += 1;
        }
        let cfg = GbdtConfig::new(5, 0.1);
        let tc = TrainConfig::default();
        let (forest, importance) = train_gbdt(&e, &Encoded::empty(1), &layout, &cfg, &tc, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        let done = Boosted {
            forest,
            importance,
            best: None,
        };
        let bytes = encode(7, 400, std::slice::from_ref(&done), Some(&done)).unwrap();
        let (header, finished, current) = decode(&bytes, &layout).unwrap();
        assert_eq!((header.seed, header.rows), (7, 400));
        assert_eq!(finished, vec![done.clone()]);
        assert_eq!(current, Some(done));
        // Another seed's or another data set's checkpoint is refused.
        let mut mem = Saved(Some(bytes));
        let err = shared_checkpoint(&mut Solo, &mut mem, 401, 7, &layout).unwrap_err();
        assert!(err.to_string().contains("cannot resume"), "{err}");
        assert!(decode(&[0; 4], &layout).is_err());
    }

    struct Saved(Option<Vec<u8>>);

    impl Checkpoints for Saved {
        fn load(&mut self) -> Result<Option<Vec<u8>>> {
            Ok(self.0.clone())
        }
        fn save(&mut self, bytes: Vec<u8>, _: &Position) -> Result<()> {
            self.0 = Some(bytes);
            Ok(())
        }
    }
}
