//! A blend trained data-parallel: the MLP part as `[train] workers` trains an MLP, then the
//! trees part as it trains boosted trees (on the MLP's input, the validation rows held
//! out), then rank 0, which reads every row, fits the trees' weight on the validation rows
//! as training alone does.
//!
//! Checkpoints: the MLP part writes its own, and one at the end of each member; the trees
//! part's each carry the MLP part's last ([`FRAME`]), so that a group resuming in the trees
//! part finds the MLP finished (it resumes from its end: no step to run) and the trees
//! where they stopped.

use std::ops::ControlFlow;

use super::{
    CheckpointPolicy, Checkpoints, Collective, Done, DpEvent, LocalRows, Outcome, Position, Run,
    WorkerData, mlp_parallel, shared_preprocessor, trees,
};
use crate::error::{ModelError, Result};
use crate::pipeline::{MLP_PART, ResponseConfig, ResponseKind, TREES_PART, finish_blend};
use crate::preprocess::{FeatureConfig, Role, row_roles};

/// The start of a checkpoint of the trees part: then the MLP part's checkpoint's length
/// (`u64`, little-endian), its bytes, and the trees' checkpoint.
const FRAME: &[u8; 16] = b"halyard-blend/1\0";

/// A trees-part checkpoint's MLP and trees bytes; `None` for an MLP checkpoint.
fn split(bytes: &[u8]) -> Result<Option<(&[u8], &[u8])>> {
    let Some(rest) = bytes.strip_prefix(FRAME) else {
        return Ok(None);
    };
    let bad = || ModelError::Artifact("blend checkpoint: shorter than its header".into());
    let len = rest
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or_else(bad)?;
    let mlp = rest.get(8..8 + len).ok_or_else(bad)?;
    Ok(Some((mlp, &rest[8 + len..])))
}

fn frame(mlp: &[u8], trees: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME.len() + 8 + mlp.len() + trees.len());
    out.extend_from_slice(FRAME);
    out.extend_from_slice(&(mlp.len() as u64).to_le_bytes());
    out.extend_from_slice(mlp);
    out.extend_from_slice(trees);
    out
}

/// The MLP part's view of the checkpoints: its own, or the one a trees checkpoint carries.
struct MlpPart<'a>(&'a mut dyn Checkpoints);

impl Checkpoints for MlpPart<'_> {
    fn load(&mut self) -> Result<Option<Vec<u8>>> {
        let Some(bytes) = self.0.load()? else {
            return Ok(None);
        };
        Ok(Some(match split(&bytes)? {
            Some((mlp, _)) => mlp.to_vec(),
            None => bytes,
        }))
    }

    fn save(&mut self, bytes: Vec<u8>, at: &Position) -> Result<()> {
        self.0.save(bytes, at)
    }
}

/// The trees part's view: its checkpoints framed with the MLP part's last (`mlp`).
struct TreesPart<'a> {
    inner: &'a mut dyn Checkpoints,
    mlp: Vec<u8>,
}

impl Checkpoints for TreesPart<'_> {
    fn load(&mut self) -> Result<Option<Vec<u8>>> {
        let Some(bytes) = self.inner.load()? else {
            return Ok(None);
        };
        Ok(split(&bytes)?.map(|(_, trees)| trees.to_vec()))
    }

    fn save(&mut self, bytes: Vec<u8>, at: &Position) -> Result<()> {
        self.inner.save(frame(&self.mlp, &bytes), at)
    }
}

/// Rank 0's finished part (`None` on the other ranks).
fn part(run: Run, name: &str) -> Result<Option<Box<Done>>> {
    match run {
        Run::Done(done) => Ok(done),
        Run::Paused { .. } => Err(ModelError::Internal(format!(
            "the blend's {name} paused: a blend's search trial trains to the end"
        ))),
    }
}

/// Train a blend (`rc.kind` is [`ResponseKind::Blend`]) data-parallel as one worker of
/// `group`. Rank 0 returns the trained blend; the other ranks `Outcome::Trained(None)`.
/// Progress reports name their part ([`MLP_PART`], [`TREES_PART`]).
pub(super) fn train_blend_parallel(
    data: WorkerData<'_>,
    features: &FeatureConfig,
    rc: &ResponseConfig,
    policy: CheckpointPolicy,
    group: &mut dyn Collective,
    checkpoints: &mut dyn Checkpoints,
    mut on_event: impl FnMut(DpEvent) -> ControlFlow<()>,
) -> Result<Outcome> {
    let ResponseKind::Blend {
        hidden,
        max_embedding,
        trees,
    } = &rc.kind
    else {
        return Err(ModelError::Internal("not a blend".into()));
    };
    // A search's trial trains to the end (`stop_after_epoch` at the trees' count: its
    // rung is the whole blend) and checkpoints it; a rung inside would span two parts.
    if policy
        .stop_after_epoch
        .is_some_and(|t| (t as usize) < trees.trees)
    {
        return Err(ModelError::Unsupported(
            "a blend's search trial trains to the end: use [search] strategy = \"random\" or \"grid\", not \"asha\"".into(),
        ));
    }
    let named = |part: &'static str| {
        move |mut e: DpEvent| {
            if let DpEvent::Epoch(r) = &mut e {
                r.model = Some(part);
            }
            e
        }
    };
    // Its validation rows held out (the blend's weight is fitted on them), and a
    // checkpoint at the end of each member: the trees part's checkpoints carry the last.
    let mlp_policy = CheckpointPolicy {
        stop_after_epoch: Some(rc.train.epochs),
        ..policy
    };
    // One preprocessor for both parts (the trees see the MLP's input), fitted by rank 0,
    // and this rank's rows encoded with it once.
    let local = LocalRows::encode(
        &data,
        features,
        shared_preprocessor(group, data.all, features)?,
    )?;
    let name = named(MLP_PART);
    let mlp = mlp_parallel(
        data,
        features,
        rc,
        (hidden, *max_embedding, Some(&local)),
        mlp_policy,
        group,
        &mut MlpPart(checkpoints),
        |e| on_event(name(e)),
    )?;
    let mlp = part(mlp, MLP_PART)?;
    let mlp_checkpoint = if group.rank() == 0 {
        MlpPart(checkpoints).load()?.unwrap_or_default()
    } else {
        Vec::new()
    };
    let trees_rc = ResponseConfig {
        kind: ResponseKind::Gbdt(trees.clone()),
        ensemble: 1,
        ..rc.clone()
    };
    let name = named(TREES_PART);
    let trees = trees::train_trees_parallel(
        data,
        features,
        &trees_rc,
        (trees, Some(&local)),
        policy,
        group,
        &mut TreesPart {
            inner: checkpoints,
            mlp: mlp_checkpoint,
        },
        |e| on_event(name(e)),
    )?;
    let trees = part(trees, TREES_PART)?;
    let (Some(mlp), Some(mut trees)) = (mlp, trees) else {
        return Ok(Outcome::Trained(None));
    };
    // Rank 0 reads every row: the validation, test and fitting rows as training alone
    // encodes them (the trees part's binning encoded them with the shared preprocessor).
    let all = super::every_row(data.all)?;
    let roles = row_roles(all, features)?;
    let encoded = trees.take_every_row(all)?;
    let (mlp, trees) = (mlp.model()?, trees.model()?);
    let (fit_rows, test_set) = encoded.partition(|i| roles[i] == Role::Test);
    let original: Vec<usize> = (0..roles.len())
        .filter(|&i| roles[i] != Role::Test)
        .collect();
    let (_, valid_set) = fit_rows.partition(|j| roles[original[j]] == Role::Validation);
    let blend = finish_blend(all, mlp, trees, (&valid_set, &test_set, &fit_rows))?;
    Ok(Outcome::Trained(Some(Box::new(blend))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trees_checkpoint_carries_the_mlps() {
        let framed = frame(b"mlp bytes", b"trees bytes");
        assert_eq!(
            split(&framed).unwrap(),
            Some((&b"mlp bytes"[..], &b"trees bytes"[..]))
        );
        // An MLP checkpoint is no frame; a cut frame is refused.
        assert_eq!(split(b"\x08\0\0\0\0\0\0\0{}").unwrap(), None);
        assert!(split(&framed[..FRAME.len() + 4]).is_err());
        assert!(split(&framed[..FRAME.len() + 8 + 3]).is_err());
    }
}
