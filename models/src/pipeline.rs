//! Whole recipes: data in, weights + architecture + metrics out.
//!
//! - [`train_response_model`]: split, fit preprocessing on the training rows, train one or
//!   several members (logistic regression or MLP), score the held-out rows **with the
//!   serving runtime** so that the recorded metrics are those of the artifact served.
//! - [`train_forecaster`]: N-BEATS on the histories, scored on the held-out futures with
//!   sMAPE / MASE / OWA against Naive2.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::artifact::{Architecture, export_module, merge_members};
use crate::distributed::{Collective, Solo, shared_preprocessor};
use crate::drift::Reference;
use crate::error::{ModelError, Result};
use crate::evaluation::Evaluation;
use crate::forecast::Series;
use crate::forecast::classical::{Method, forecast};
use crate::forecast::metrics::score;
use crate::forecast::nbeats::{NBeatsTrainConfig, StepReport, train_nbeats};
use crate::gbdt::{Binnings, Forest, GbdtConfig, Importance, Objective, TreeRows, train_gbdt_rows};
use crate::logistic::{EpochReport, TrainConfig, train};
use crate::metrics::{classification, regression};
use crate::mlp::{InputLayout, MlpConfig, train_mlp};
use crate::preprocess::{Encoded, FeatureConfig, Preprocessor, Role, row_roles};
use crate::runtime::Runtime;

/// Which response model, and its shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseKind {
    /// Logistic regression.
    LogisticRegression,
    /// MLP with embeddings.
    Mlp {
        /// Hidden layer widths.
        hidden: Vec<usize>,
        /// Widest embedding.
        max_embedding: usize,
    },
    /// Gradient-boosted trees.
    Gbdt(GbdtConfig),
    /// An MLP (of `ensemble` members) and boosted trees trained on the same rows, their
    /// probabilities averaged with the weight that minimises the validation rows' log loss.
    Blend {
        /// The MLP's hidden layer widths.
        hidden: Vec<usize>,
        /// The MLP's widest embedding.
        max_embedding: usize,
        /// The trees.
        trees: GbdtConfig,
    },
}

/// A response recipe's learner, fitted to its preprocessor's inputs.
#[derive(Debug, Clone)]
enum Learner {
    Linear,
    Mlp(MlpConfig),
    Gbdt(GbdtConfig, InputLayout),
}

/// Members trained and merged: their weights file, and for trees each member's tree count
/// and the inputs' importance summed over the members.
struct Members {
    weights: Vec<u8>,
    trees: Vec<usize>,
    importance: Vec<Importance>,
}

/// A response model recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseConfig {
    /// Model.
    pub kind: ResponseKind,
    /// Training.
    pub train: TrainConfig,
    /// Members trained with seeds `seed, seed + 1, …` and averaged.
    pub ensemble: usize,
    /// Weigh positives by `negatives / positives` (overrides `train.positive_weight`).
    pub balance_classes: bool,
}

impl ResponseConfig {
    /// What the model fits: the trees' objective; binary log loss for every other recipe.
    pub fn objective(&self) -> Objective {
        match &self.kind {
            ResponseKind::Gbdt(cfg) => cfg.objective,
            ResponseKind::Blend { trees, .. } => trees.objective,
            _ => Objective::Binary,
        }
    }

    /// Refuses what a model fitting numbers cannot do: weigh classes, or blend with an
    /// MLP's probabilities.
    pub(crate) fn check_objective(&self) -> Result<Objective> {
        let objective = self.objective();
        if objective.is_binary() {
            return Ok(objective);
        }
        let name = objective.name();
        if matches!(self.kind, ResponseKind::Blend { .. }) {
            return Err(ModelError::Unsupported(format!(
                "a blend averages probabilities, and the {name} objective fits numbers: use type = \"gbdt\""
            )));
        }
        if self.balance_classes {
            return Err(ModelError::Unsupported(format!(
                "class_weight = \"balanced\" weighs classes, and the {name} objective fits numbers: drop it"
            )));
        }
        Ok(objective)
    }
}

/// A trained model, ready to publish.
#[derive(Debug, Clone)]
pub struct TrainedModel {
    /// Architecture and preprocessing.
    pub architecture: Architecture,
    /// Safetensors bytes.
    pub weights: Vec<u8>,
    /// `test_*` and `train_*` metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Rows (series) trained on.
    pub train_rows: usize,
    /// Rows (series) held out.
    pub test_rows: usize,
    /// The training distributions of the input columns, for drift monitoring (tabular
    /// models).
    pub reference: Option<Reference>,
    /// The held-out curves of the version's report (not for segmentations).
    pub evaluation: Option<Evaluation>,
}

/// The drift reference of a tabular model trained on `batches`.
fn reference_of(batches: &[RecordBatch], architecture: &Architecture) -> Result<Option<Reference>> {
    architecture
        .preprocessor()
        .map(|p| Reference::fit(batches, p))
        .transpose()
}

/// Progress of a member's epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemberReport {
    /// Member (0-based).
    pub member: usize,
    /// Members in all.
    pub members: usize,
    /// Which model of a recipe that trains several (an uplift job's `treated arm`,
    /// `control arm`, `pooled reference`, `treated effect`, `control effect`).
    pub model: Option<&'static str>,
    /// The epoch's report.
    pub epoch: EpochReport,
}

/// Train a response model on `batches`.
pub fn train_response_model(
    batches: &[RecordBatch],
    features: &FeatureConfig,
    rc: &ResponseConfig,
    mut on_epoch: impl FnMut(MemberReport) -> ControlFlow<()>,
) -> Result<TrainedModel> {
    let rows = rows_to_train_on(batches)?;
    let mut preprocessor = Preprocessor::fit(batches, features)?;
    // Trees alone see missing numbers as missing (a blend's MLP needs them imputed).
    preprocessor.keep_missing = matches!(rc.kind, ResponseKind::Gbdt(_));
    let objective = rc.check_objective()?;
    preprocessor.numeric_label = !objective.is_binary();
    // One pass over the columns, then the splits: test rows; for early stopping, the
    // validation rows among the others (row_roles: by split column or row index).
    let roles = row_roles(batches, features)?;
    let all = preprocessor.transform(batches, |_| true)?;
    let (fit_rows, test_set) = all.partition(|i| roles[i] == Role::Test);
    let original: Vec<usize> = (0..rows).filter(|&i| roles[i] != Role::Test).collect();
    let parts = learners(&preprocessor, rc);
    // A blend fits its weight on the validation rows.
    let early_stopping = parts.len() > 1 || stops_early(&parts[0].0, rc);
    let split =
        early_stopping.then(|| fit_rows.partition(|j| roles[original[j]] == Role::Validation));
    let no_rows = Encoded::empty(fit_rows.dim);
    let (train_set, valid_set) = match &split {
        Some((train, valid)) => (train, valid),
        None => (&fit_rows, &no_rows),
    };
    // The training rows' numbers in `batches` (trees bag rows by them, as data-parallel
    // workers do).
    let train_ids: Vec<u64> = original
        .iter()
        .filter(|&&i| split.is_none() || roles[i] != Role::Validation)
        .map(|&i| i as u64)
        .collect();
    if train_set.rows == 0 {
        return Err(ModelError::NoRows {
            purpose: "train on",
            rows,
        });
    }
    if test_set.rows == 0 {
        return Err(ModelError::NoRows {
            purpose: "test on",
            rows,
        });
    }
    let positives = train_set.y.iter().filter(|&&y| y > 0.5).count();
    if objective.is_binary() && (positives == 0 || positives == train_set.rows) {
        return Err(ModelError::SingleClass {
            label: features.label.clone(),
            class: u8::from(positives > 0),
        });
    }
    let members = rc.ensemble.max(1);
    if let [(learner, _)] = parts.as_slice() {
        let trained = train_members(
            (train_set, Some(&train_ids), valid_set),
            learner,
            rc,
            (0, members, None),
            &mut on_epoch,
        )?;
        let runtime = Runtime::new(
            architecture(preprocessor, learner, members, Some(&trained)),
            &trained.weights,
        )?;
        return response_metrics(batches, runtime, trained.weights, &test_set, &fit_rows);
    }
    // A blend: the MLP's members, then the trees (one member), each scored on the
    // validation rows.
    let all_members = members + 1;
    let mut blended = Vec::new();
    for (k, (learner, name)) in parts.iter().enumerate() {
        let part_members = if matches!(learner, Learner::Gbdt(..)) {
            1
        } else {
            members
        };
        let part_rc = ResponseConfig {
            ensemble: part_members,
            ..rc.clone()
        };
        let trained = train_members(
            (train_set, Some(&train_ids), valid_set),
            learner,
            &part_rc,
            (k * members, all_members, Some(*name)),
            &mut on_epoch,
        )?;
        let arch = architecture(preprocessor.clone(), learner, part_members, Some(&trained));
        blended.push((arch, trained.weights));
    }
    let [mlp, trees] = <[_; 2]>::try_from(blended).expect("a blend has two parts");
    finish_blend(batches, mlp, trees, (valid_set, &test_set, &fit_rows))
}

/// A blend of the MLP part and the trees part (each its architecture and weights): the
/// trees' weight fitted on the validation rows, then scored on the test rows. `rows`: the
/// validation, test and fitting rows, encoded by the parts' preprocessor.
pub(crate) fn finish_blend(
    batches: &[RecordBatch],
    mlp: (Architecture, Vec<u8>),
    trees: (Architecture, Vec<u8>),
    (valid_set, test_set, fit_rows): (&Encoded, &Encoded, &Encoded),
) -> Result<TrainedModel> {
    let scores = |(arch, weights): &(Architecture, Vec<u8>)| {
        Runtime::new(arch.clone(), weights)?.score_encoded(valid_set)
    };
    let (weight, valid_loss) = blend_weight(&scores(&mlp)?, &scores(&trees)?, &valid_set.y);
    let weights = crate::artifact::prefixed(&[
        ("part.0.", mlp.1.as_slice()),
        ("part.1.", trees.1.as_slice()),
    ])?;
    let architecture = Architecture::Blend {
        parts: [(mlp.0, 1.0 - weight), (trees.0, weight)]
            .into_iter()
            .map(|(architecture, weight)| crate::artifact::BlendPart {
                architecture: Box::new(architecture),
                weight,
            })
            .collect(),
    };
    let runtime = Runtime::new(architecture, &weights)?;
    let mut model = response_metrics(batches, runtime, weights, test_set, fit_rows)?;
    model.metrics.insert("blend_trees_weight".into(), weight);
    // What a search ranks a blend's trials by (records hold finite numbers only).
    if valid_loss.is_finite() {
        model.metrics.insert("valid_loss".into(), valid_loss);
    }
    Ok(model)
}

/// The weight `w` of the second scores in `(1 − w)·a + w·b` (in steps of 0.01) with the
/// least log loss on `labels`, the first of equals, and that log loss.
fn blend_weight(a: &[f32], b: &[f32], labels: &[f32]) -> (f64, f64) {
    let loss = |w: f64| {
        let p: Vec<f32> = a
            .iter()
            .zip(b)
            .map(|(&a, &b)| ((1.0 - w) * f64::from(a) + w * f64::from(b)) as f32)
            .collect();
        crate::metrics::log_loss(&p, labels)
    };
    (0..=100)
        .map(|k| f64::from(k) / 100.0)
        .map(|w| (w, loss(w)))
        .fold(
            (0.5, f64::INFINITY),
            |best, (w, l)| if l < best.1 { (w, l) } else { best },
        )
}

/// The rows of `batches`, or an error when there are none.
fn rows_to_train_on(batches: &[RecordBatch]) -> Result<usize> {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rows == 0 {
        return Err(ModelError::NoRows {
            purpose: "train on",
            rows,
        });
    }
    Ok(rows)
}

/// A blend's parts as progress reports name them ([`MemberReport::model`]).
pub const MLP_PART: &str = "mlp part";
/// See [`MLP_PART`]; the trees report every few trees, not every epoch.
pub const TREES_PART: &str = "trees part";

/// The learners of `rc` on `preprocessor`'s input with their names in progress reports:
/// one, or a blend's MLP and trees.
fn learners(preprocessor: &Preprocessor, rc: &ResponseConfig) -> Vec<(Learner, &'static str)> {
    match &rc.kind {
        ResponseKind::Blend { trees, .. } => vec![
            (learner(preprocessor, rc), MLP_PART),
            (
                Learner::Gbdt(trees.clone(), InputLayout::of(preprocessor)),
                TREES_PART,
            ),
        ],
        _ => vec![(learner(preprocessor, rc), "")],
    }
}

/// The learner of `rc` on `preprocessor`'s input (a blend's: its MLP).
fn learner(preprocessor: &Preprocessor, rc: &ResponseConfig) -> Learner {
    match &rc.kind {
        ResponseKind::Mlp {
            hidden,
            max_embedding,
        }
        | ResponseKind::Blend {
            hidden,
            max_embedding,
            ..
        } => Learner::Mlp(MlpConfig::new(
            InputLayout::of(preprocessor),
            hidden.clone(),
            *max_embedding,
        )),
        ResponseKind::Gbdt(cfg) => Learner::Gbdt(cfg.clone(), InputLayout::of(preprocessor)),
        ResponseKind::LogisticRegression => Learner::Linear,
    }
}

/// Whether the learner stops early on validation rows (which are then held out of its fit).
fn stops_early(learner: &Learner, rc: &ResponseConfig) -> bool {
    match learner {
        Learner::Mlp(_) => rc.train.patience > 0,
        Learner::Gbdt(cfg, _) => cfg.early_stopping > 0,
        Learner::Linear => false,
    }
}

/// The rows a learner fits: training rows, their numbers in the data set (trees bag rows
/// by them; `None` for recipes without trees), validation rows.
type FitRows<'a> = (&'a Encoded, Option<&'a [u64]>, &'a Encoded);

/// Train `rc.ensemble` members on the training rows (early stopping on the validation
/// rows), their weights merged; progress counts them as members `first..` of `all`.
fn train_members(
    (train_set, train_ids, valid_set): FitRows<'_>,
    learner: &Learner,
    rc: &ResponseConfig,
    (first, all, model): (usize, usize, Option<&'static str>),
    on_epoch: &mut dyn FnMut(MemberReport) -> ControlFlow<()>,
) -> Result<Members> {
    let positives = train_set.y.iter().filter(|&&y| y > 0.5).count();
    let mut tc = rc.train.clone();
    if rc.balance_classes && positives > 0 {
        tc.positive_weight = (train_set.rows - positives) as f64 / positives as f64;
    }
    let members = rc.ensemble.max(1);
    let mut weights = Vec::with_capacity(members);
    let (mut trees, mut importance) = (Vec::new(), Vec::new());
    // Trees: every member bins alike (as data-parallel workers do).
    let mut binnings = None;
    for member in 0..members {
        let mut mtc = tc.clone();
        mtc.seed = tc.seed.wrapping_add(member as u64);
        let report = |epoch| {
            on_epoch(MemberReport {
                member: first + member,
                members: all,
                model,
                epoch,
            })
        };
        let bytes = match learner {
            Learner::Mlp(cfg) => {
                export_module(&train_mlp(train_set, valid_set, cfg, &mtc, report)?)?
            }
            Learner::Linear => export_module(&train(train_set, &mtc, report)?)?,
            Learner::Gbdt(cfg, layout) => {
                // (Every recipe that trains trees numbers its rows.)
                let ids = train_ids.ok_or_else(|| {
                    ModelError::Internal("trees need their training rows' numbers".into())
                })?;
                let rows = TreeRows {
                    train: train_set,
                    ids,
                    valid: valid_set,
                };
                let binnings = binnings.get_or_insert_with(|| {
                    Binnings::fit(train_set, layout, cfg.max_bins, rc.train.seed)
                });
                let (forest, imp) = train_gbdt_rows(rows, binnings, layout, cfg, &mtc, report)?;
                add_forest(&mut trees, &mut importance, &forest, &imp);
                crate::artifact::f32_file(&forest.tensors())?
            }
        };
        weights.push(bytes);
    }
    Ok(Members {
        weights: merge_members(&weights)?,
        trees,
        importance,
    })
}

/// Count a member's trees and add its inputs' importance to the members' sum.
fn add_forest(
    trees: &mut Vec<usize>,
    importance: &mut Vec<Importance>,
    forest: &Forest,
    imp: &[Importance],
) {
    trees.push(forest.trees());
    importance.resize(imp.len(), Importance::default());
    for (sum, i) in importance.iter_mut().zip(imp) {
        sum.gain += i.gain;
        sum.splits += i.splits;
    }
}

/// Bootstrap resamples behind each uplift metric's interval.
const BOOTSTRAP_ROUNDS: usize = 200;
/// A treatment-from-features AUC above this warns that treatment was not random.
pub const TREATMENT_AUC_WARNING: f64 = 0.6;

/// Train an uplift model (T-learner): the same response model recipe on the treated rows
/// and on the control rows (flag column `treatment`, 0 or 1), on one preprocessing fitted
/// on all training rows. Metrics on the held-out rows (`test_`): the Qini coefficient,
/// AUUC and uplift at 10 % and 30 % ([`crate::uplift`]) with 95 % bootstrap intervals
/// (`_low`, `_high`); the same for two reference rankings, a pooled response model that
/// ignores treatment (`test_response_ranking_*`) and random rankings
/// (`test_random_ranking_qini`, the mean of 100); each arm's AUC on its own rows; and the
/// randomisation check: the treated share (`treatment_share`) and how well the features
/// predict treatment (`treatment_auc`, a logistic regression's test AUC; about 0.5 in a
/// randomised experiment, a warning above [`TREATMENT_AUC_WARNING`]).
pub fn train_uplift_model(
    batches: &[RecordBatch],
    features: &FeatureConfig,
    treatment: &str,
    x_learner: bool,
    rc: &ResponseConfig,
    mut on_epoch: impl FnMut(MemberReport) -> ControlFlow<()>,
) -> Result<TrainedModel> {
    let rows = rows_to_train_on(batches)?;
    let flags = crate::preprocess::binary_column(batches, treatment)?;
    let mut features = features.clone();
    if !features.exclude.iter().any(|c| c == treatment) {
        features.exclude.push(treatment.to_string());
    }
    let mut preprocessor = Preprocessor::fit(batches, &features)?;
    if !rc.objective().is_binary() || matches!(rc.kind, ResponseKind::Blend { .. }) {
        return Err(ModelError::Unsupported(
            "an uplift job's arms are logistic_regression, mlp or gbdt (binary) models".into(),
        ));
    }
    // Tree arms see missing numbers as missing.
    preprocessor.keep_missing = matches!(rc.kind, ResponseKind::Gbdt(_));
    let roles = row_roles(batches, &features)?;
    let all = preprocessor.transform(batches, |_| true)?;
    let learner = learner(&preprocessor, rc);
    let members = rc.ensemble.max(1);
    let early_stopping = stops_early(&learner, rc);
    // The rows of one arm's fit (train and validation), or of both with `arm = None`, and
    // the training rows' numbers (trees bag rows by them).
    let fit_of = |arm: Option<f32>| -> (Encoded, Encoded, Vec<u64>) {
        let idx: Vec<usize> = (0..rows)
            .filter(|&i| roles[i] != Role::Test && arm.is_none_or(|a| flags[i] == a))
            .collect();
        let (_, fit) =
            all.partition(|i| roles[i] != Role::Test && arm.is_none_or(|a| flags[i] == a));
        let trained_on = |i: &&usize| !early_stopping || roles[**i] != Role::Validation;
        let ids = idx.iter().filter(trained_on).map(|&i| i as u64).collect();
        if early_stopping {
            let (train, valid) = fit.partition(|j| roles[idx[j]] == Role::Validation);
            (train, valid, ids)
        } else {
            (fit, Encoded::empty(all.dim), ids)
        }
    };
    // The X-learner's effect models fit numbers in [0, 1]: trees with squared error, the
    // other recipes with log loss on soft labels.
    let effect_learner = match &learner {
        Learner::Gbdt(cfg, layout) => Learner::Gbdt(
            GbdtConfig {
                objective: Objective::L2,
                ..cfg.clone()
            },
            layout.clone(),
        ),
        other => other.clone(),
    };
    // Members trained in all, for progress: both arms, the pooled reference and, for an
    // X-learner, the two effect models.
    let stages = if x_learner { 5 } else { 3 };
    let mut arms = Vec::new();
    for (k, (arm, name, model)) in [
        (1.0, "treated", "treated arm"),
        (0.0, "control", "control arm"),
    ]
    .into_iter()
    .enumerate()
    {
        let (train_set, valid_set, ids) = fit_of(Some(arm));
        let positives = train_set.y.iter().filter(|&&y| y > 0.5).count();
        if positives == 0 || positives == train_set.rows {
            return Err(ModelError::Unsupported(format!(
                "the {name} rows' training part has {} rows, {positives} of them responders: each arm needs responders and non-responders",
                train_set.rows
            )));
        }
        let w = train_members(
            (&train_set, Some(&ids), &valid_set),
            &learner,
            rc,
            (k * members, stages * members, Some(model)),
            &mut on_epoch,
        )?;
        arms.push(w);
    }
    let arch_of = |learner: &Learner, trained: &Members| {
        Box::new(architecture(
            preprocessor.clone(),
            learner,
            members,
            Some(trained),
        ))
    };
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("treated.", arms[0].weights.clone()),
        ("control.", arms[1].weights.clone()),
    ];
    let x_stage = if x_learner {
        // Impute each row's effect with the other arm's model: y − μ0(x) on the treated
        // rows, μ1(x) − y on the control rows; fit each as (effect + 1) / 2 through a
        // sigmoid (a cross-entropy fit with soft labels estimates their mean).
        let mu1 = Runtime::new(*arch_of(&learner, &arms[0]), &arms[0].weights)?;
        let mu0 = Runtime::new(*arch_of(&learner, &arms[1]), &arms[1].weights)?;
        let relabel = |set: &Encoded, other: &Runtime, treated: bool| -> Result<Encoded> {
            let p = other.score_encoded(set)?;
            let mut e = set.clone();
            e.y = set
                .y
                .iter()
                .zip(&p)
                .map(|(y, p)| (if treated { y - p } else { p - y } + 1.0) / 2.0)
                .collect();
            Ok(e)
        };
        let soft = ResponseConfig {
            balance_classes: false,
            ..rc.clone()
        };
        let mut taus = Vec::new();
        for (k, (arm, other, treated)) in [(1.0, &mu0, true), (0.0, &mu1, false)]
            .into_iter()
            .enumerate()
        {
            let (train_set, valid_set, ids) = fit_of(Some(arm));
            let (train_set, valid_set) = (
                relabel(&train_set, other, treated)?,
                relabel(&valid_set, other, treated)?,
            );
            taus.push(train_members(
                (&train_set, Some(&ids), &valid_set),
                &effect_learner,
                &soft,
                (
                    (3 + k) * members,
                    stages * members,
                    Some(["treated effect", "control effect"][k]),
                ),
                &mut on_epoch,
            )?);
        }
        let fit_idx: Vec<usize> = (0..rows).filter(|&i| roles[i] != Role::Test).collect();
        let propensity =
            fit_idx.iter().map(|&i| f64::from(flags[i])).sum::<f64>() / fit_idx.len().max(1) as f64;
        files.push(("tau_treated.", taus[0].weights.clone()));
        files.push(("tau_control.", taus[1].weights.clone()));
        Some(crate::artifact::XStage {
            treated: arch_of(&effect_learner, &taus[0]),
            control: arch_of(&effect_learner, &taus[1]),
            propensity,
        })
    } else {
        None
    };
    let named: Vec<(&str, &[u8])> = files.iter().map(|(p, w)| (*p, w.as_slice())).collect();
    let weights = crate::artifact::prefixed(&named)?;
    let runtime = Runtime::new(
        Architecture::Uplift {
            treated: arch_of(&learner, &arms[0]),
            control: arch_of(&learner, &arms[1]),
            treatment: treatment.to_string(),
            x_learner: x_stage,
        },
        &weights,
    )?;
    // The pooled response model, for the reference ranking.
    let (pooled_train, pooled_valid, pooled_ids) = fit_of(None);
    let pooled = train_members(
        (&pooled_train, Some(&pooled_ids), &pooled_valid),
        &learner,
        rc,
        (2 * members, stages * members, Some("pooled reference")),
        &mut on_epoch,
    )?;
    let pooled = Runtime::new(*arch_of(&learner, &pooled), &pooled.weights)?;

    let test_idx: Vec<usize> = (0..rows).filter(|&i| roles[i] == Role::Test).collect();
    let (_, test_set) = all.partition(|i| roles[i] == Role::Test);
    if test_set.rows == 0 {
        return Err(ModelError::NoRows {
            purpose: "test on",
            rows,
        });
    }
    let y: Vec<f64> = test_set.y.iter().map(|v| f64::from(*v)).collect();
    let t: Vec<f64> = test_idx.iter().map(|&i| f64::from(flags[i])).collect();
    let (pt, pc) = runtime.arms_encoded(&test_set)?;
    let uplift: Vec<f64> = runtime
        .score_encoded(&test_set)?
        .into_iter()
        .map(f64::from)
        .collect();
    let mut metrics = BTreeMap::new();
    uplift_metrics(&mut metrics, "test_", &y, &uplift, &t, true)?;
    let response: Vec<f64> = pooled
        .score_encoded(&test_set)?
        .into_iter()
        .map(f64::from)
        .collect();
    uplift_metrics(
        &mut metrics,
        "test_response_ranking_",
        &y,
        &response,
        &t,
        false,
    )?;
    let random: f64 = (0..100u64)
        .map(|seed| {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let r: Vec<f64> = (0..y.len()).map(|_| rng.random::<f64>()).collect();
            crate::uplift::qini_auc(&y, &r, &t)
        })
        .sum::<Result<f64>>()?
        / 100.0;
    metrics.insert("test_random_ranking_qini".into(), random);
    for (name, arm, p) in [("treated", 1.0, &pt), ("control", 0.0, &pc)] {
        let (probs, labels): (Vec<f32>, Vec<f32>) = (0..y.len())
            .filter(|&i| t[i] == arm)
            .map(|i| (p[i], test_set.y[i]))
            .unzip();
        if let Some(a) = crate::metrics::auc(&probs, &labels) {
            metrics.insert(format!("test_{name}_auc"), a);
        }
    }
    metrics.insert(
        "treatment_share".into(),
        flags.iter().map(|f| f64::from(*f)).sum::<f64>() / rows as f64,
    );
    // Randomisation check: can the features tell who was treated?
    // (A linear model: missing numbers, kept missing for tree arms, become the mean, 0.)
    let imputed = |e: &Encoded| {
        let mut e = e.clone();
        e.x.iter_mut().filter(|v| v.is_nan()).for_each(|v| *v = 0.0);
        e
    };
    let (check_fit, _, _) = fit_of(None);
    let mut check_train = imputed(&check_fit);
    let fit_idx: Vec<usize> = (0..rows).filter(|&i| roles[i] != Role::Test).collect();
    check_train.y = if early_stopping {
        // (fit_of split off the validation rows: label the training part alone.)
        fit_idx
            .iter()
            .filter(|&&i| roles[i] != Role::Validation)
            .map(|&i| flags[i])
            .collect()
    } else {
        fit_idx.iter().map(|&i| flags[i]).collect()
    };
    let mut lr = rc.train.clone();
    lr.positive_weight = 1.0;
    let check = export_module(&train(&check_train, &lr, |_| ControlFlow::Continue(()))?)?;
    let check = Runtime::new(
        architecture(preprocessor.clone(), &Learner::Linear, 1, None),
        &merge_members(&[check])?,
    )?;
    let t32: Vec<f32> = t.iter().map(|v| *v as f32).collect();
    if let Some(a) = crate::metrics::auc(&check.score_encoded(&imputed(&test_set))?, &t32) {
        metrics.insert("treatment_auc".into(), a);
    }
    metrics.retain(|_, v| v.is_finite());
    let evaluation = crate::evaluation::uplift(
        y.len(),
        crate::uplift::qini_curve(&y, &uplift, &t)?,
        crate::uplift::qini_curve(&y, &response, &t)?,
    );
    Ok(TrainedModel {
        reference: reference_of(batches, &runtime.architecture)?,
        architecture: runtime.architecture,
        weights,
        metrics,
        train_rows: rows - test_set.rows,
        test_rows: test_set.rows,
        evaluation: Some(evaluation),
    })
}

/// Rows of the held-out part whose silhouette chooses k.
const SILHOUETTE_SAMPLE: usize = 2000;

/// Segment customers with k-means ([`crate::kmeans`]): the preprocessing of `features`
/// (the label, when named, is not an input: it only profiles the segments), fitted on the
/// training rows for each of `ks`; the k with the best silhouette on up to 2,000 held-out
/// rows is kept. `on_k` reports each k. Metrics: `k`, `inertia`, `silhouette`,
/// `silhouette_k<k>` for each tried, `init_share`. The artifact holds the centres and each
/// segment's profile over all rows (size, numeric means, top categories, response rate).
pub fn train_segments(
    batches: &[RecordBatch],
    features: &FeatureConfig,
    ks: &[usize],
    seed: u64,
    on_k: impl FnMut(&ClusterReport) -> ControlFlow<()>,
) -> Result<TrainedModel> {
    rows_to_train_on(batches)?;
    let data = SegmentData {
        all: Some(batches),
        local: batches,
    };
    train_segments_group(data, features, ks, seed, &mut Solo, on_k)?
        .ok_or_else(|| ModelError::Internal("a group of one has no rank 0".into()))
}

/// One k tried.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterReport {
    /// Clusters.
    pub k: usize,
    /// The fit's inertia (over the training rows of the whole group).
    pub inertia: f64,
    /// Mean silhouette on the held-out sample.
    pub silhouette: f64,
    /// Lloyd iterations of the best run.
    pub iterations: usize,
    /// Share of the best run's time spent initialising.
    pub init_share: f64,
    /// Seconds the fit took (every run).
    pub seconds: f64,
}

/// A k-means worker's rows: its own and, on rank 0, every row (for the preprocessor, the
/// silhouette and the profiles).
#[derive(Debug, Clone, Copy)]
pub struct SegmentData<'a> {
    /// Every row (rank 0 only).
    pub all: Option<&'a [RecordBatch]>,
    /// This worker's rows.
    pub local: &'a [RecordBatch],
}

/// [`train_segments`] as one rank of `group`: the centres are fitted data-parallel
/// ([`crate::kmeans::fit_group`]) over the training rows every rank holds; rank 0 alone
/// scores the silhouettes, reports (`on_k`), profiles the segments and returns the model;
/// the other ranks return `None`. The split column or the holdout rule of `features`
/// decides the training rows, as for the other models.
pub fn train_segments_group(
    data: SegmentData<'_>,
    features: &FeatureConfig,
    ks: &[usize],
    seed: u64,
    group: &mut dyn Collective,
    mut on_k: impl FnMut(&ClusterReport) -> ControlFlow<()>,
) -> Result<Option<TrainedModel>> {
    let lead = group.rank() == 0;
    let preprocessor = shared_preprocessor(group, data.all, features)?;
    // Rank 0's view of every row.
    let whole = match data.all {
        Some(all) if lead => Some((
            preprocessor.transform(all, |_| true)?,
            row_roles(all, features)?,
        )),
        _ => None,
    };
    // The rows this rank fits on (in a group of one, every row).
    let (fit_rows, _) = match &whole {
        Some((all, roles)) if group.size() == 1 => all.partition(|i| roles[i] == Role::Test),
        _ => {
            let roles = row_roles(data.local, features)?;
            let local = preprocessor.transform(data.local, |_| true)?;
            local.partition(|i| roles[i] == Role::Test)
        }
    };
    let held_out: Vec<usize> = whole.as_ref().map_or_else(Vec::new, |(_, roles)| {
        (0..roles.len())
            .filter(|&i| roles[i] == Role::Test)
            .take(SILHOUETTE_SAMPLE)
            .collect()
    });
    let mut metrics = BTreeMap::new();
    let mut best: Option<(f64, crate::kmeans::KMeansFit)> = None;
    for &k in ks {
        let started = std::time::Instant::now();
        let fit = crate::kmeans::fit_group(
            &fit_rows.x,
            fit_rows.rows,
            fit_rows.dim,
            &crate::kmeans::KMeansConfig::new(k, seed),
            group,
        )?;
        let Some((all, _)) = &whole else { continue };
        let s = crate::kmeans::silhouette(&all.x, &held_out, &fit);
        metrics.insert(format!("silhouette_k{k}"), s);
        let report = ClusterReport {
            k,
            inertia: fit.inertia,
            silhouette: s,
            iterations: fit.iterations,
            init_share: fit.init_share,
            seconds: started.elapsed().as_secs_f64(),
        };
        if on_k(&report).is_break() {
            return Err(ModelError::Cancelled);
        }
        if best.as_ref().is_none_or(|(b, _)| s > *b) {
            best = Some((s, fit));
        }
    }
    let Some((all, roles)) = whole else {
        return Ok(None);
    };
    let (s, fit) =
        best.ok_or_else(|| ModelError::Unsupported("[model] k lists no cluster count".into()))?;
    metrics.insert("k".into(), fit.k as f64);
    metrics.insert("silhouette".into(), s);
    metrics.insert("inertia".into(), fit.inertia);
    metrics.insert("init_share".into(), fit.init_share);
    let labels: Vec<usize> = (0..all.rows)
        .map(|i| crate::kmeans::nearest(all.row(i), &fit.centers, all.dim).0)
        .collect();
    let batches = data.all.expect("rank 0 holds every row");
    let profile = segment_profiles(
        batches,
        &preprocessor,
        &labels,
        fit.k,
        (!features.label.is_empty()).then_some(&all.y),
    )?;
    let weights = crate::artifact::centers_file(&fit.centers, fit.k, fit.dim)?;
    let runtime = Runtime::new(
        Architecture::KMeans {
            preprocessor,
            k: fit.k,
            profile,
        },
        &weights,
    )?;
    let test_rows = roles.iter().filter(|r| **r == Role::Test).count();
    Ok(Some(TrainedModel {
        reference: reference_of(batches, &runtime.architecture)?,
        architecture: runtime.architecture,
        weights,
        metrics,
        train_rows: all.rows - test_rows,
        test_rows,
        evaluation: None,
    }))
}

/// Each segment's size, numeric means, most frequent categories and response rate.
fn segment_profiles(
    batches: &[RecordBatch],
    pre: &Preprocessor,
    labels: &[usize],
    k: usize,
    y: Option<&Vec<f32>>,
) -> Result<Vec<crate::artifact::SegmentProfile>> {
    use crate::preprocess::ColumnEncoding;
    let rows = labels.len();
    let mut out: Vec<crate::artifact::SegmentProfile> = (0..k)
        .map(|segment| {
            let n = labels.iter().filter(|l| **l == segment).count();
            let responses = y.map(|y| {
                labels
                    .iter()
                    .zip(y)
                    .filter(|(l, _)| **l == segment)
                    .map(|(_, v)| f64::from(*v))
                    .sum::<f64>()
                    / n.max(1) as f64
            });
            crate::artifact::SegmentProfile {
                segment,
                rows: n,
                share: n as f64 / rows.max(1) as f64,
                means: BTreeMap::new(),
                top: BTreeMap::new(),
                response_rate: responses,
            }
        })
        .collect();
    for col in pre.columns.iter().filter(|c| c.sources.is_empty()) {
        match col.encoding {
            ColumnEncoding::Numeric { .. } | ColumnEncoding::Buckets { .. } => {
                let values = crate::preprocess::numeric_values(&crate::preprocess::concat_column(
                    batches, &col.name,
                )?)?;
                let mut sums = vec![(0.0, 0usize); k];
                for (v, l) in values.iter().zip(labels) {
                    if v.is_finite() {
                        sums[*l].0 += v;
                        sums[*l].1 += 1;
                    }
                }
                for (p, (s, n)) in out.iter_mut().zip(sums) {
                    if n > 0 {
                        p.means.insert(col.name.clone(), s / n as f64);
                    }
                }
            }
            ColumnEncoding::OneHot { .. } | ColumnEncoding::Hashed { .. } => {
                let values = crate::preprocess::string_values(&crate::preprocess::concat_column(
                    batches, &col.name,
                )?)?;
                let mut counts: Vec<BTreeMap<&str, usize>> = vec![BTreeMap::new(); k];
                for (v, l) in values.iter().zip(labels) {
                    if let Some(v) = v {
                        *counts[*l].entry(v.as_str()).or_default() += 1;
                    }
                }
                for (p, c) in out.iter_mut().zip(counts) {
                    let total: usize = c.values().sum();
                    if let Some((v, n)) = c
                        .into_iter()
                        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
                    {
                        p.top
                            .insert(col.name.clone(), (v.to_string(), n as f64 / total as f64));
                    }
                }
            }
            // A date's mean day is its numeric column's.
            ColumnEncoding::DatePart { .. } => {}
        }
    }
    Ok(out)
}

/// The uplift metrics of a ranking under `prefix`, with bootstrap intervals when
/// `intervals`.
fn uplift_metrics(
    out: &mut BTreeMap<String, f64>,
    prefix: &str,
    y: &[f64],
    score: &[f64],
    t: &[f64],
    intervals: bool,
) -> Result<()> {
    use crate::uplift::{TopK, bootstrap, qini_auc, uplift_at_k, uplift_auc};
    type Metric = fn(&[f64], &[f64], &[f64]) -> Result<Option<f64>>;
    let table: [(&str, Metric); 4] = [
        ("qini", |y, u, t| Ok(Some(qini_auc(y, u, t)?))),
        ("auuc", |y, u, t| Ok(Some(uplift_auc(y, u, t)?))),
        ("uplift_at_10", |y, u, t| {
            uplift_at_k(y, u, t, TopK::Fraction(0.1), false)
        }),
        ("uplift_at_30", |y, u, t| {
            uplift_at_k(y, u, t, TopK::Fraction(0.3), false)
        }),
    ];
    for (name, metric) in table {
        if let Some(v) = metric(y, score, t)? {
            out.insert(format!("{prefix}{name}"), v);
        }
        if intervals
            && let Some((lo, hi)) = bootstrap(y, score, t, BOOTSTRAP_ROUNDS, 0.95, 17, metric)
        {
            out.insert(format!("{prefix}{name}_low"), lo);
            out.insert(format!("{prefix}{name}_high"), hi);
        }
    }
    Ok(())
}

fn architecture(
    preprocessor: Preprocessor,
    learner: &Learner,
    members: usize,
    trained: Option<&Members>,
) -> Architecture {
    match learner {
        Learner::Mlp(config) => Architecture::Mlp {
            preprocessor,
            config: config.clone(),
            members,
        },
        Learner::Linear => Architecture::LogisticRegression {
            preprocessor,
            members,
        },
        Learner::Gbdt(cfg, _) => {
            let (trees, importance) = trained.map_or((Vec::new(), Vec::new()), |t| {
                (t.trees.clone(), t.importance.clone())
            });
            let layout = InputLayout::of(&preprocessor);
            let names = crate::gbdt::input_names(&preprocessor, &layout);
            Architecture::Gbdt {
                importance: names.into_iter().zip(importance).collect(),
                preprocessor,
                members,
                trees,
                objective: cfg.objective,
            }
        }
    }
}

/// Score the held-out and the fitted rows with the serving runtime.
fn response_metrics(
    batches: &[RecordBatch],
    runtime: Runtime,
    weights: Vec<u8>,
    test_set: &Encoded,
    fit_rows: &Encoded,
) -> Result<TrainedModel> {
    let test_scores = runtime.score_encoded(test_set)?;
    let train_scores = runtime.score_encoded(fit_rows)?;
    let (mut metrics, evaluation) = match runtime.architecture.objective() {
        // A model of numbers: errors, not a ranking of classes.
        Some(objective) if !objective.is_binary() => {
            let poisson = objective == Objective::Poisson;
            let mut m = regression("test_", &test_scores, &test_set.y, poisson);
            m.extend(regression("train_", &train_scores, &fit_rows.y, poisson));
            let curves = crate::evaluation::regression(&test_scores, &test_set.y);
            (m, Some(curves))
        }
        _ => {
            let mut m = classification("test_", &test_scores, &test_set.y);
            m.extend(classification("train_", &train_scores, &fit_rows.y));
            let curves = crate::evaluation::response(&test_scores, &test_set.y);
            (m, Some(curves))
        }
    };
    metrics.retain(|_, v| v.is_finite());
    Ok(TrainedModel {
        reference: reference_of(batches, &runtime.architecture)?,
        architecture: runtime.architecture,
        weights,
        metrics,
        train_rows: fit_rows.rows,
        test_rows: test_set.rows,
        evaluation,
    })
}

/// What data-parallel workers trained: an MLP's members' weights files, or each tree
/// member's forest and its inputs' importance.
pub(crate) enum Finished {
    Mlp(MlpConfig, Vec<Vec<u8>>),
    Trees(GbdtConfig, Vec<(Forest, Vec<Importance>)>),
}

/// A model trained elsewhere (data-parallel), scored on every row's test part with the
/// serving runtime; `all`: every row of `batches` as its preprocessor encodes them.
pub(crate) fn finish_response(
    batches: &[RecordBatch],
    features: &FeatureConfig,
    all: Encoded,
    (architecture, weights): (Architecture, Vec<u8>),
) -> Result<TrainedModel> {
    let roles = row_roles(batches, features)?;
    let (fit_rows, test_set) = all.partition(|i| roles[i] == Role::Test);
    let runtime = Runtime::new(architecture, &weights)?;
    response_metrics(batches, runtime, weights, &test_set, &fit_rows)
}

/// The architecture and weights of a model trained elsewhere.
pub(crate) fn finished_model(
    preprocessor: Preprocessor,
    finished: Finished,
) -> Result<(Architecture, Vec<u8>)> {
    let (learner, count, members) = match finished {
        Finished::Mlp(cfg, weights) => (
            Learner::Mlp(cfg),
            weights.len(),
            Members {
                weights: merge_members(&weights)?,
                trees: Vec::new(),
                importance: Vec::new(),
            },
        ),
        Finished::Trees(cfg, forests) => {
            let (mut trees, mut importance, mut weights) = (Vec::new(), Vec::new(), Vec::new());
            for (forest, imp) in &forests {
                add_forest(&mut trees, &mut importance, forest, imp);
                weights.push(crate::artifact::f32_file(&forest.tensors())?);
            }
            let layout = InputLayout::of(&preprocessor);
            (
                Learner::Gbdt(cfg, layout),
                forests.len(),
                Members {
                    weights: merge_members(&weights)?,
                    trees,
                    importance,
                },
            )
        }
    };
    Ok((
        architecture(preprocessor, &learner, count, Some(&members)),
        members.weights,
    ))
}

/// Train an N-BEATS forecaster on `train` and score it on `test` (the true futures of the
/// same series, in the same order; empty: no test metrics). Metrics: `test_smape`,
/// `test_mase`, `test_owa` and Naive2's for reference.
pub fn train_forecaster(
    train: &[Series],
    test: &[Series],
    horizon: usize,
    period: usize,
    tc: &NBeatsTrainConfig,
    on_progress: impl FnMut(StepReport) -> ControlFlow<()>,
) -> Result<TrainedModel> {
    let trained = train_nbeats(train, horizon, period, tc, on_progress)?;
    let weights = merge_members(
        &trained
            .members
            .iter()
            .map(export_module)
            .collect::<Result<Vec<_>>>()?,
    )?;
    let runtime = Runtime::new(
        Architecture::NBeats {
            config: trained.config,
        },
        &weights,
    )?;
    let mut metrics = BTreeMap::new();
    let mut evaluation = None;
    if !test.is_empty() {
        if test.len() != train.len() {
            return Err(ModelError::Unsupported(format!(
                "the test set has {} series but the training set {}: they must match one to one",
                test.len(),
                train.len()
            )));
        }
        let h = test
            .iter()
            .map(|s| s.values.len())
            .min()
            .unwrap_or(0)
            .min(horizon);
        let ours = runtime.forecast(train, h)?;
        let naive2: Vec<Vec<f64>> = train
            .iter()
            .map(|s| forecast(&s.values, period, h, Method::Naive2))
            .collect();
        let insample: Vec<&[f64]> = train.iter().map(|s| s.values.as_slice()).collect();
        let actual: Vec<&[f64]> = test.iter().map(|s| &s.values[..h]).collect();
        let a = score(&insample, &actual, &ours, period);
        let n2 = score(&insample, &actual, &naive2, period);
        metrics.insert("test_smape".into(), a.smape);
        metrics.insert("test_mase".into(), a.mase);
        metrics.insert("test_owa".into(), a.owa(&n2));
        metrics.insert("naive2_smape".into(), n2.smape);
        metrics.insert("naive2_mase".into(), n2.mase);
        metrics.insert("test_series".into(), a.series as f64);
        evaluation = Some(crate::evaluation::forecast(train, &actual, &ours, &naive2));
    }
    Ok(TrainedModel {
        architecture: runtime.architecture,
        weights,
        metrics,
        train_rows: train.len(),
        test_rows: test.len(),
        reference: None,
        evaluation,
    })
}

#[cfg(test)]
mod tests {
    use super::blend_weight;

    #[test]
    fn the_blend_weight_leans_to_the_better_scores() {
        let labels = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        let right: Vec<f32> = labels
            .iter()
            .map(|&y| if y > 0.5 { 0.9 } else { 0.1 })
            .collect();
        let flat = [0.5f32; 8];
        let right_loss = crate::metrics::log_loss(&right, &labels);
        assert_eq!(blend_weight(&flat, &right, &labels), (1.0, right_loss));
        assert_eq!(blend_weight(&right, &flat, &labels), (0.0, right_loss));
        // The same scores: every weight gives the same loss, and the first (0) is kept.
        assert_eq!(blend_weight(&right, &right, &labels).0, 0.0);
    }
}
