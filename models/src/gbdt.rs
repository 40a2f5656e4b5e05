//! Gradient-boosted decision trees for response prediction, in the style of LightGBM:
//! numeric inputs binned once into at most `max_bins` bins (quantiles of the training rows,
//! thresholds halfway between neighbouring values), trees grown leaf-wise (the leaf with the
//! largest gain splits next) up to `num_leaves` leaves and `max_depth` levels, gradient
//! histograms with the larger child's histogram taken as its parent's minus the smaller's,
//! native categorical splits (categories sorted by their gradient statistics, a prefix sent
//! left, as LightGBM's many-versus-many splits), L1 and L2 regularisation, row and feature
//! subsampling per tree, missing values sent to the better side of each split, and early
//! stopping on the validation rows' loss. Objectives ([`Objective`]): binary log loss (a
//! response), L2 and L1 (a number) and Poisson (a count).
//!
//! Inputs are the preprocessor's columns through [`InputLayout`]: a numeric column is its
//! standardised value (trees do not care about the scaling; missing is NaN, with
//! [`crate::preprocess::Preprocessor::keep_missing`], or else the mean), a categorical
//! column is the index of its one-hot (or hashed) slot, the last slot being the category
//! seen too rarely or never.
//!
//! The trees are stored as f32 tensors ([`Forest::tensors`]). Training keeps its scores
//! with the one-row walk ([`Forest::raw_score`]); the serving runtime scores with
//! [`Forest::raw_scores`] (bit-vector tables, `gbdt/bits.rs`), which adds the same leaves in the
//! same order: a served score equals the training-time score bit for bit. Training is deterministic for a given seed.

use std::ops::ControlFlow;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::index::sample;
use serde::{Deserialize, Serialize};

use crate::distributed::{Collective, Solo, float_bytes, floats, from_rank_zero, sum_i64};
use crate::error::{ModelError, Result};
use crate::logistic::{EpochReport, TrainConfig};
use crate::metrics::row_log_loss;
use crate::mlp::InputLayout;
use crate::preprocess::Encoded;
use crate::runtime::sigmoid;

mod bits;

/// A categorical column with at most this many categories is split one category against
/// the rest (LightGBM's `max_cat_to_onehot`).
const ONE_VS_REST_CATEGORIES: usize = 4;

/// Categorical splits: added to each category's hessian when categories are ordered by
/// gradient over hessian (LightGBM's `cat_smooth`).
const CAT_SMOOTH: f64 = 10.0;

/// Categorical splits: the most categories sent to one side (`max_cat_threshold`).
const MAX_CAT_THRESHOLD: usize = 32;

/// Categorical splits: rows a category needs to be placed by its statistics; rarer ones go
/// with the right side (`min_data_per_group`).
const MIN_DATA_PER_GROUP: usize = 100;

/// Training progress is reported after every this many trees (and after the last).
const REPORT_EVERY: usize = 10;

/// What the trees fit, as LightGBM's objectives of the same names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Binary log loss on 0/1 labels; scores are probabilities (the sigmoid of the sum).
    #[default]
    Binary,
    /// Squared error on numeric labels; scores are the sum (the conditional mean).
    L2,
    /// Absolute error on numeric labels: gradients are the residuals' signs, and each new
    /// leaf's value becomes the median of its rows' residuals (LightGBM's leaf renewal);
    /// scores are the sum (the conditional median).
    L1,
    /// Poisson log likelihood on counts (labels ≥ 0) with a log link; scores are the
    /// exponential of the sum (the expected count).
    Poisson,
}

/// Poisson: the hessian is `exp(z + this)`, which damps the first steps (LightGBM's
/// `poisson_max_delta_step`).
const POISSON_MAX_DELTA_STEP: f64 = 0.7;

impl Objective {
    /// Its name in a job spec and a manifest.
    pub fn name(self) -> &'static str {
        match self {
            Objective::Binary => "binary",
            Objective::L2 => "l2",
            Objective::L1 => "l1",
            Objective::Poisson => "poisson",
        }
    }

    /// Whether labels are classes (0/1) rather than numbers.
    pub fn is_binary(self) -> bool {
        self == Objective::Binary
    }

    /// The served score of a raw sum of leaves `z`.
    pub fn output(self, z: f64) -> f32 {
        match self {
            Objective::Binary => sigmoid(z as f32),
            Objective::L2 | Objective::L1 => z as f32,
            Objective::Poisson => z.exp() as f32,
        }
    }

    /// The gradient and hessian of one row's loss at raw score `z` with label `y`, the
    /// row weighing `w`.
    fn gradient(self, z: f64, y: f64, w: f64) -> (f64, f64) {
        match self {
            Objective::Binary => {
                let p = 1.0 / (1.0 + (-z).exp());
                (w * (p - y), w * p * (1.0 - p))
            }
            Objective::L2 => (w * (z - y), w),
            Objective::L1 => (w * (z - y).signum() * f64::from(u8::from(z != y)), w),
            Objective::Poisson => (w * (z.exp() - y), w * (z + POISSON_MAX_DELTA_STEP).exp()),
        }
    }

    /// One row's loss at raw score `z` with label `y` (early stopping watches its mean):
    /// log loss, squared error, absolute error, or the Poisson negative log likelihood
    /// without its constant term (`exp(z) − y·z`, LightGBM's `poisson` metric).
    fn row_loss(self, z: f64, y: f32) -> f64 {
        let yf = f64::from(y);
        match self {
            Objective::Binary => row_log_loss(f64::from(sigmoid(z as f32)), y),
            Objective::L2 => (z - yf) * (z - yf),
            Objective::L1 => (z - yf).abs(),
            Objective::Poisson => z.exp() - yf * z,
        }
    }
}

/// The trees' shape and regularisation (`[model]` of a `type = "gbdt"` job; the defaults
/// are the job spec's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GbdtConfig {
    /// What the trees fit.
    #[serde(default)]
    pub objective: Objective,
    /// Boosting rounds (the most, with early stopping).
    pub trees: usize,
    /// Shrinkage of each tree's leaf values.
    pub learning_rate: f64,
    /// Leaves per tree.
    pub num_leaves: usize,
    /// Levels per tree (0: no limit beyond `num_leaves`).
    pub max_depth: usize,
    /// Training rows a leaf needs at least.
    pub min_data_in_leaf: usize,
    /// Sum of hessians a leaf needs at least.
    pub min_sum_hessian: f64,
    /// L1 penalty on leaf values.
    pub lambda_l1: f64,
    /// L2 penalty on leaf values.
    pub lambda_l2: f64,
    /// Bins per numeric column (at most 65,535).
    pub max_bins: usize,
    /// Share of the input columns each tree may split on.
    pub feature_fraction: f64,
    /// Share of the training rows each tree is grown on.
    pub bagging_fraction: f64,
    /// Stop after this many trees without a better validation loss (the objective's), and
    /// keep the best (0: never stop early).
    pub early_stopping: usize,
}

impl GbdtConfig {
    /// `trees` rounds at `learning_rate`, every other setting LightGBM's default (which the
    /// job spec's defaults, set in `halyard-core`, also are); for tests and benches.
    pub fn new(trees: usize, learning_rate: f64) -> GbdtConfig {
        GbdtConfig {
            objective: Objective::Binary,
            trees,
            learning_rate,
            num_leaves: 31,
            max_depth: 0,
            min_data_in_leaf: 20,
            min_sum_hessian: 1e-3,
            lambda_l1: 0.0,
            lambda_l2: 0.0,
            max_bins: 255,
            feature_fraction: 1.0,
            bagging_fraction: 1.0,
            early_stopping: 50,
        }
    }
}

/// Where a branch leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Child {
    Node(u32),
    Leaf(u32),
}

impl Child {
    /// As stored: a node's index, or `-(leaf + 1)`.
    fn encode(self) -> f32 {
        match self {
            Child::Node(n) => n as f32,
            Child::Leaf(l) => -(l as f32) - 1.0,
        }
    }

    fn decode(v: f32) -> Child {
        if v < 0.0 {
            Child::Leaf((-v - 1.0) as u32)
        } else {
            Child::Node(v as u32)
        }
    }
}

/// A split. Numeric: `value <= threshold` goes left, a missing value (NaN) to the side
/// `missing_left` says. Categorical: the categories whose flag in
/// `categories[offset..offset + width]` is set go left.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Node {
    feature: u32,
    threshold: f32,
    /// Categorical: where its flags start in [`Forest::categories`].
    categorical: Option<u32>,
    /// Numeric: where a missing value goes.
    missing_left: bool,
    left: Child,
    right: Child,
}

/// A trained ensemble of trees on the inputs of an [`InputLayout`] (numeric columns first,
/// then categorical ones).
#[derive(Debug, Clone, PartialEq)]
pub struct Forest {
    /// What the trees fit: how a sum of leaves becomes a score.
    objective: Objective,
    /// The starting raw score (binary: the training rows' log-odds; L2: their mean label;
    /// L1: their median; Poisson: the log of their mean).
    base: f32,
    /// Each tree's root.
    roots: Vec<Child>,
    nodes: Vec<Node>,
    leaves: Vec<f32>,
    /// Categorical splits' flags, one per category slot.
    categories: Vec<bool>,
    /// Numeric inputs (the first inputs).
    numeric: usize,
    /// The same trees laid out for scoring many rows at once ([`Forest::raw_scores`]);
    /// derived from the fields above by [`Flat::of`].
    flat: Flat,
}

/// The objectives by their code in the weights file (`objective`).
const OBJECTIVES: [Objective; 4] = [
    Objective::Binary,
    Objective::L2,
    Objective::L1,
    Objective::Poisson,
];

/// Rows scored together, tree by tree, in [`Forest::raw_scores`].
const BLOCK: usize = 32;

/// Fewer rows than this are walked one by one, each to its leaf and no further.
const SCALAR_ROWS: usize = 8;

/// The trees as one array of steps without branches: every node has two successors, and
/// every leaf is a step to itself, so a row takes exactly a tree's depth in steps and many
/// rows advance together.
#[derive(Debug, Clone, Default, PartialEq)]
struct Flat {
    steps: Vec<Step>,
    /// Each tree's root step and depth.
    trees: Vec<(u32, u32)>,
    /// The same trees as bit vectors of leaves ([`bits`]), when none has more than 64.
    bits: Option<bits::Bits>,
}

/// One step of [`Flat`]: a split, or a leaf that steps to itself.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Step {
    feature: u32,
    /// Numeric: `value <= threshold` goes left. A leaf's is infinite (both successors are
    /// itself).
    threshold: f32,
    /// Categorical: the offset of its flags, else `u32::MAX`.
    categorical: u32,
    /// Numeric: where a missing value goes.
    missing_left: bool,
    /// Left and right successor.
    next: [u32; 2],
    /// A leaf's value (0 for a split).
    value: f32,
}

impl Flat {
    fn of(forest: &Forest, layout: &InputLayout) -> Flat {
        let mut flat = Flat {
            bits: bits::Bits::of(forest, layout),
            ..Flat::default()
        };
        for &root in &forest.roots {
            let start = flat.steps.len() as u32;
            let depth = flat.push(forest, root, 0);
            flat.trees.push((start, depth));
        }
        flat
    }

    /// Lay out the subtree at `at` from the next free step; returns its depth.
    fn push(&mut self, forest: &Forest, at: Child, depth: u32) -> u32 {
        let me = self.steps.len();
        let mut step = Step {
            feature: 0,
            threshold: f32::INFINITY,
            categorical: u32::MAX,
            missing_left: false,
            next: [me as u32; 2],
            value: 0.0,
        };
        match at {
            Child::Leaf(l) => {
                step.value = forest.leaves[l as usize];
                self.steps.push(step);
                depth
            }
            Child::Node(n) => {
                let node = forest.nodes[n as usize];
                step.feature = node.feature;
                step.threshold = node.threshold;
                step.categorical = node.categorical.unwrap_or(u32::MAX);
                step.missing_left = node.missing_left;
                self.steps.push(step);
                let left = self.steps.len() as u32;
                let dl = self.push(forest, node.left, depth + 1);
                let right = self.steps.len() as u32;
                let dr = self.push(forest, node.right, depth + 1);
                self.steps[me].next = [left, right];
                dl.max(dr)
            }
        }
    }
}

/// Per input column: the gain its splits brought and how many splits use it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Importance {
    /// Sum of the loss reductions of its splits.
    pub gain: f64,
    /// Splits on it.
    pub splits: u64,
}

impl Forest {
    /// Trees in the ensemble.
    pub fn trees(&self) -> usize {
        self.roots.len()
    }

    /// The log-odds of one row's inputs (`inputs[j]`: numeric value, or a category's slot).
    pub fn raw_score(&self, inputs: &[f32]) -> f64 {
        let mut z = f64::from(self.base);
        for &root in &self.roots {
            z += f64::from(self.leaves[self.leaf_of(root, inputs) as usize]);
        }
        z
    }

    fn leaf_of(&self, mut at: Child, inputs: &[f32]) -> u32 {
        loop {
            match at {
                Child::Leaf(l) => return l,
                Child::Node(n) => {
                    let node = &self.nodes[n as usize];
                    let v = inputs[node.feature as usize];
                    let left = match node.categorical {
                        Some(offset) => self.categories[offset as usize + v as usize],
                        None => numeric_left(v, node.threshold, node.missing_left),
                    };
                    at = if left { node.left } else { node.right };
                }
            }
        }
    }

    /// Bytes of what loading derives from the stored trees for scoring: the step layout and
    /// the bit-vector tables.
    pub fn derived_bytes(&self) -> u64 {
        let steps = self.flat.steps.len() * size_of::<Step>()
            + self.flat.trees.len() * size_of::<(u32, u32)>();
        steps as u64 + self.flat.bits.as_ref().map_or(0, bits::Bits::bytes)
    }

    /// What the trees fit.
    pub fn objective(&self) -> Objective {
        self.objective
    }

    /// The scores of `data`'s rows: response probabilities, or predicted numbers or counts
    /// ([`Objective::output`]).
    pub fn score(&self, layout: &InputLayout, data: &Encoded) -> Vec<f32> {
        self.raw_scores(layout, data)
            .into_iter()
            .map(|z| self.objective.output(z))
            .collect()
    }

    /// The log-odds of `data`'s rows, equal to [`Forest::raw_score`] of each bit for bit
    /// (the same leaves added in the same order): through the bit-vector tables
    /// (`gbdt/bits.rs`) when the forest has them, else walking 32 rows at a time, a step at
    /// a time without a branch per step (fewer than 8 one by one).
    pub fn raw_scores(&self, layout: &InputLayout, data: &Encoded) -> Vec<f64> {
        let mut out = vec![f64::from(self.base); data.rows];
        match &self.flat.bits {
            Some(bits) => bits.add_scores(layout, data, &mut out),
            None => self.walk_scores(layout, data, &mut out),
        }
        out
    }

    /// The step walk of [`Forest::raw_scores`], whatever the forest has: for forests the
    /// tables cannot hold, and to compare the two (`benches/gbdt.rs`).
    pub fn walked_raw_scores(&self, layout: &InputLayout, data: &Encoded) -> Vec<f64> {
        let mut out = vec![f64::from(self.base); data.rows];
        self.walk_scores(layout, data, &mut out);
        out
    }

    fn walk_scores(&self, layout: &InputLayout, data: &Encoded, out: &mut [f64]) {
        if data.rows < SCALAR_ROWS {
            let mut inputs = Vec::new();
            for (i, z) in out.iter_mut().enumerate() {
                inputs_of(layout, data.row(i), &mut inputs);
                *z = self.raw_score(&inputs);
            }
            return;
        }
        let f = &self.flat;
        let width = layout.numeric.len() + layout.categorical.len();
        let mut inputs = Vec::with_capacity(BLOCK * width);
        let mut row = Vec::with_capacity(width);
        let mut at = [0u32; BLOCK];
        for (b, scores) in out.chunks_mut(BLOCK).enumerate() {
            inputs.clear();
            for i in b * BLOCK..b * BLOCK + scores.len() {
                inputs_of(layout, data.row(i), &mut row);
                inputs.extend_from_slice(&row);
            }
            let at = &mut at[..scores.len()];
            for &(root, depth) in &f.trees {
                at.fill(root);
                for level in 0..depth {
                    // Every row at a leaf (a step to itself): the tree is done for them.
                    if level >= 4 && at.iter().all(|&s| f.steps[s as usize].next[0] == s) {
                        break;
                    }
                    for (r, at) in at.iter_mut().enumerate() {
                        let step = &f.steps[*at as usize];
                        let v = inputs[r * width + step.feature as usize];
                        let right = if step.categorical == u32::MAX {
                            !numeric_left(v, step.threshold, step.missing_left)
                        } else {
                            !self.categories[step.categorical as usize + v as usize]
                        };
                        *at = step.next[usize::from(right)];
                    }
                }
                for (z, &at) in scores.iter_mut().zip(at.iter()) {
                    *z += f64::from(f.steps[at as usize].value);
                }
            }
        }
    }

    /// The tensors of the weights file: `base` `[1]`, `roots` `[trees]`, `nodes`
    /// `[nodes, 5]` (input, threshold, categorical offset or −1, left, right; a child is a
    /// node's index or `−(leaf + 1)`), `leaves` `[leaves]`, `categories` `[flags + 1]`
    /// (0 or 1), `missing` `[nodes + 1]` (1: a node sends missing values left; absent in
    /// artifacts written before it, whose inputs are never missing), `numeric` `[1]`,
    /// `objective` `[1]` (0 binary, 1 L2, 2 L1, 3 Poisson; absent before it: binary).
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let nodes: Vec<f32> = self
            .nodes
            .iter()
            .flat_map(|n| {
                [
                    n.feature as f32,
                    n.threshold,
                    n.categorical.map_or(-1.0, |o| o as f32),
                    n.left.encode(),
                    n.right.encode(),
                ]
            })
            .collect();
        let mut categories: Vec<f32> = self
            .categories
            .iter()
            .map(|&c| f32::from(u8::from(c)))
            .collect();
        // safetensors keeps no empty tensor: one padding flag.
        categories.push(0.0);
        let mut missing: Vec<f32> = self
            .nodes
            .iter()
            .map(|n| f32::from(u8::from(n.missing_left)))
            .collect();
        missing.push(0.0);
        vec![
            ("base".into(), vec![1], vec![self.base]),
            (
                "roots".into(),
                vec![self.roots.len()],
                self.roots.iter().map(|r| r.encode()).collect(),
            ),
            ("nodes".into(), vec![self.nodes.len(), 5], nodes),
            (
                "leaves".into(),
                vec![self.leaves.len()],
                self.leaves.clone(),
            ),
            ("categories".into(), vec![categories.len()], categories),
            ("missing".into(), vec![missing.len()], missing),
            ("numeric".into(), vec![1], vec![self.numeric as f32]),
            (
                "objective".into(),
                vec![1],
                vec![
                    OBJECTIVES
                        .iter()
                        .position(|&o| o == self.objective)
                        .unwrap_or(0) as f32,
                ],
            ),
        ]
    }

    /// Read back from a weights file of [`Forest::tensors`] (as [`crate::artifact::f32_file`]
    /// writes it), checked as [`Forest::from_tensors`] checks.
    pub fn from_file(bytes: &[u8], layout: &InputLayout) -> Result<Forest> {
        let tensors = crate::artifact::read_tensors(bytes)?;
        Forest::from_tensors(
            |name| {
                tensors
                    .get(name)
                    .map(|(_, data)| floats(data))
                    .ok_or_else(|| ModelError::Artifact(format!("tree weights: no {name}")))
            },
            layout,
        )
    }

    /// Read back from [`Forest::tensors`], checking every reference against `layout`.
    pub fn from_tensors(
        get: impl Fn(&str) -> Result<Vec<f32>>,
        layout: &InputLayout,
    ) -> Result<Forest> {
        let bad = |what: &str| ModelError::Artifact(format!("tree weights: {what}"));
        let base = *get("base")?.first().ok_or_else(|| bad("no base score"))?;
        let objective = match get("objective") {
            Ok(code) => *code
                .first()
                .and_then(|&c| {
                    OBJECTIVES
                        .get(c as usize)
                        .filter(|_| c >= 0.0 && c.fract() == 0.0)
                })
                .ok_or_else(|| bad("an objective this version does not know"))?,
            Err(_) => Objective::Binary,
        };
        let numeric = get("numeric")?.first().copied().unwrap_or(-1.0);
        if numeric != layout.numeric.len() as f32 {
            return Err(bad(
                "the numeric inputs do not match the manifest's features",
            ));
        }
        let leaves = get("leaves")?;
        let mut categories: Vec<bool> = get("categories")?.iter().map(|&c| c > 0.5).collect();
        categories.pop();
        let raw = get("nodes")?;
        if raw.len() % 5 != 0 {
            return Err(bad("nodes are not rows of 5"));
        }
        let inputs = layout.numeric.len() + layout.categorical.len();
        let child = |v: f32, nodes: usize| -> Result<Child> {
            let c = Child::decode(v);
            match c {
                Child::Node(n) if (n as usize) < nodes => Ok(c),
                Child::Leaf(l) if (l as usize) < leaves.len() => Ok(c),
                _ => Err(bad("a branch leads nowhere")),
            }
        };
        let count = raw.len() / 5;
        let missing = match get("missing") {
            Ok(mut m) => {
                m.pop();
                if m.len() != count {
                    return Err(bad("the missing-value flags do not match the nodes"));
                }
                m.into_iter().map(|f| f > 0.5).collect()
            }
            Err(_) => vec![false; count],
        };
        let mut nodes = Vec::with_capacity(count);
        for (i, r) in raw.chunks_exact(5).enumerate() {
            let feature = r[0] as usize;
            if feature >= inputs {
                return Err(bad("a split on an input the manifest does not have"));
            }
            let categorical = if r[2] >= 0.0 {
                let width = feature
                    .checked_sub(layout.numeric.len())
                    .map(|c| layout.categorical[c].1)
                    .ok_or_else(|| bad("a categorical split on a numeric input"))?;
                if r[2] as usize + width > categories.len() {
                    return Err(bad("a categorical split's flags are missing"));
                }
                Some(r[2] as u32)
            } else {
                None
            };
            let (left, right) = (child(r[3], count)?, child(r[4], count)?);
            // Children come after their parent: no cycle.
            if [left, right]
                .iter()
                .any(|c| matches!(c, Child::Node(n) if *n as usize <= i))
            {
                return Err(bad("a branch leads back up the tree"));
            }
            nodes.push(Node {
                feature: feature as u32,
                threshold: r[1],
                categorical,
                missing_left: missing[i],
                left,
                right,
            });
        }
        let roots = get("roots")?
            .into_iter()
            .map(|r| child(r, count))
            .collect::<Result<_>>()?;
        let mut forest = Forest {
            objective,
            base,
            roots,
            nodes,
            leaves,
            categories,
            numeric: layout.numeric.len(),
            flat: Flat::default(),
        };
        forest.flat = Flat::of(&forest, layout);
        Ok(forest)
    }
}

/// The input columns' names in [`inputs_of`]'s order.
pub fn input_names(pre: &crate::preprocess::Preprocessor, layout: &InputLayout) -> Vec<String> {
    let at = |offset: usize| {
        pre.columns
            .iter()
            .find(|c| c.offset == offset)
            .map_or_else(|| format!("input at {offset}"), |c| c.name.clone())
    };
    layout
        .numeric
        .iter()
        .chain(layout.categorical.iter().map(|(o, _)| o))
        .map(|&o| at(o))
        .collect()
}

/// Whether a numeric split sends `value` left: at most the threshold, or missing (NaN)
/// when the split sends missing values left. Both walks, one row's and many rows', decide
/// by this.
fn numeric_left(value: f32, threshold: f32, missing_left: bool) -> bool {
    value <= threshold || (missing_left && value.is_nan())
}

/// One row's model inputs: its numeric values, then each categorical column's slot.
pub fn inputs_of(layout: &InputLayout, row: &[f32], out: &mut Vec<f32>) {
    out.clear();
    out.extend(layout.numeric.iter().map(|&o| row[o]));
    out.extend(
        layout
            .categorical
            .iter()
            .map(|&block| crate::mlp::category_of(row, block) as f32),
    );
}

/// How one input is binned.
#[derive(Debug, Clone)]
enum Binning {
    /// Bin `b` holds the values in `(thresholds[b - 1], thresholds[b]]`; the last bin,
    /// after the values', holds missing values (NaN).
    Numeric(Vec<f32>),
    /// A category's slot is its bin.
    Categorical(usize),
}

impl Binning {
    fn bins(&self) -> usize {
        match self {
            Binning::Numeric(t) => t.len() + 2,
            Binning::Categorical(w) => *w,
        }
    }

    fn bin(&self, v: f32) -> u16 {
        match self {
            Binning::Numeric(t) if v.is_nan() => (t.len() + 1) as u16,
            // The thresholds below v: v <= thresholds[b] exactly when bin <= b.
            Binning::Numeric(t) => t.partition_point(|&x| x < v) as u16,
            Binning::Categorical(w) => (v as usize).min(w - 1) as u16,
        }
    }
}

/// Thresholds of a numeric input from its values (missing ones aside): between
/// neighbouring distinct values, at most `max_bins - 1` of them, placed so the bins hold
/// similar row counts.
fn thresholds(mut values: Vec<f32>, max_bins: usize) -> Vec<f32> {
    values.retain(|v| !v.is_nan());
    values.sort_by(f32::total_cmp);
    let mut distinct: Vec<(f32, usize)> = Vec::new();
    for v in values.iter().copied() {
        match distinct.last_mut() {
            Some((last, n)) if *last == v => *n += 1,
            _ => distinct.push((v, 1)),
        }
    }
    let between = |a: f32, b: f32| {
        let mid = ((f64::from(a) + f64::from(b)) / 2.0) as f32;
        if mid >= a && mid < b { mid } else { a }
    };
    if distinct.len() <= max_bins {
        return distinct
            .windows(2)
            .map(|w| between(w[0].0, w[1].0))
            .collect();
    }
    let per_bin = values.len() as f64 / max_bins as f64;
    let mut out = Vec::new();
    let mut seen = 0usize;
    for w in distinct.windows(2) {
        seen += w[0].1;
        if seen as f64 >= per_bin * (out.len() + 1) as f64 && out.len() + 1 < max_bins {
            out.push(between(w[0].0, w[1].0));
        }
    }
    out
}

/// Gradient statistics of a bin, a leaf or a side, in fixed point (units of
/// [`Penalty::unit`]): integer sums are exact in any order, so a histogram summed over a
/// group of workers, or taken as its parent's minus a child's, is the same bits however
/// the rows are split among workers (the trees of 1, 2 or 3 workers are identical).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Stats {
    g: i64,
    h: i64,
    n: i64,
}

impl Stats {
    fn add(&mut self, o: Stats) {
        self.g += o.g;
        self.h += o.h;
        self.n += o.n;
    }

    fn minus(self, o: Stats) -> Stats {
        Stats {
            g: self.g - o.g,
            h: self.h - o.h,
            n: self.n - o.n,
        }
    }
}

/// The penalised loss reduction terms, and the fixed point's unit.
#[derive(Debug, Clone, Copy)]
struct Penalty {
    l1: f64,
    l2: f64,
    /// The value of one fixed-point step of a gradient or hessian sum.
    unit: f64,
}

impl Penalty {
    fn g(self, s: Stats) -> f64 {
        s.g as f64 * self.unit
    }

    fn h(self, s: Stats) -> f64 {
        s.h as f64 * self.unit
    }

    fn shrunk(self, g: f64) -> f64 {
        g.signum() * (g.abs() - self.l1).max(0.0)
    }

    /// How much a leaf with these statistics lowers the loss.
    fn score(self, s: Stats) -> f64 {
        let g = self.shrunk(self.g(s));
        g * g / (self.h(s) + self.l2)
    }

    /// The leaf's value (before the learning rate).
    fn value(self, s: Stats) -> f64 {
        -self.shrunk(self.g(s)) / (self.h(s) + self.l2)
    }
}

/// The best split found for a leaf.
#[derive(Debug, Clone)]
struct Split {
    gain: f64,
    feature: usize,
    /// Numeric: the last bin sent left.
    bin: u16,
    /// Categorical: the bins sent left.
    left_bins: Option<Vec<bool>>,
    /// Numeric: missing values go left.
    missing_left: bool,
    left: Stats,
    right: Stats,
}

/// A leaf while its tree grows.
struct Growing {
    rows: Vec<u32>,
    hist: Vec<Stats>,
    stats: Stats,
    depth: usize,
    best: Option<Split>,
    /// Where it hangs: (parent node, left side), or the root.
    parent: Option<(usize, bool)>,
    /// Its best split's children, made ready before it was chosen ([`PREPARE_AHEAD`]).
    prepared: Option<Prepared>,
}

/// A leaf's split made ready: the rows each child gets, and the summed histogram of the
/// child with fewer rows in the whole group (`Split::left.n <= Split::right.n`: the left).
struct Prepared {
    left: Vec<u32>,
    right: Vec<u32>,
    small: Vec<Stats>,
}

/// In a group, one all-reduce readies the splits of up to this many leaves: the leaf to
/// split next and the next best ones, whose children are then ready when they come up.
/// The tree is the one-at-a-time tree (leaves are still split in order of gain); a group
/// pays fewer round trips per tree, and a leaf readied but never split costs its smaller
/// child's histogram. Alone there is no round trip to save: one.
const PREPARE_AHEAD: usize = 4;

/// The binned training rows and what trees are grown with.
struct Grower<'a> {
    cfg: &'a GbdtConfig,
    penalty: Penalty,
    binnings: &'a [Binning],
    /// Where each input's bins start in a histogram.
    offsets: Vec<usize>,
    /// Row-major bins, `rows × inputs`.
    bins: Vec<u16>,
    inputs: usize,
}

impl Grower<'_> {
    fn histogram(&self, rows: &[u32], g: &[i64], h: &[i64]) -> Vec<Stats> {
        let mut hist = vec![Stats::default(); *self.offsets.last().unwrap_or(&0)];
        for &r in rows {
            let r = r as usize;
            let (gr, hr) = (g[r], h[r]);
            let bins = &self.bins[r * self.inputs..(r + 1) * self.inputs];
            for (&b, &o) in bins.iter().zip(&self.offsets) {
                let s = &mut hist[o + b as usize];
                s.g += gr;
                s.h += hr;
                s.n += 1;
            }
        }
        hist
    }

    fn allowed(&self, s: Stats) -> bool {
        s.n >= self.cfg.min_data_in_leaf as i64 && self.penalty.h(s) >= self.cfg.min_sum_hessian
    }

    /// The best split of a leaf over the inputs `features`, if any lowers the loss.
    fn best_split(&self, hist: &[Stats], total: Stats, features: &[usize]) -> Option<Split> {
        let parent = self.penalty.score(total);
        let mut best: Option<Split> = None;
        // A left side (its statistics; numeric: the last bin sent left, categorical: the
        // bins sent left) becomes the best split if both sides may be leaves and it gains
        // more than any before it.
        let mut consider = |feature: usize,
                            bin: u16,
                            left_bins: Option<Vec<bool>>,
                            missing_left: bool,
                            left: Stats| {
            let right = total.minus(left);
            if !self.allowed(left) || !self.allowed(right) {
                return;
            }
            let gain = self.penalty.score(left) + self.penalty.score(right) - parent;
            if gain > 1e-12 && best.as_ref().is_none_or(|b| gain > b.gain) {
                best = Some(Split {
                    gain,
                    feature,
                    bin,
                    left_bins,
                    missing_left,
                    left,
                    right,
                });
            }
        };
        for &f in features {
            let h = &hist[self.offsets[f]..self.offsets[f + 1]];
            match &self.binnings[f] {
                Binning::Numeric(t) => {
                    // The values' bins, then the missing values' bin.
                    let (values, missing) = h.split_at(h.len() - 1);
                    let missing = missing[0];
                    let mut left = Stats::default();
                    for (b, s) in values.iter().enumerate().take(values.len() - 1) {
                        left.add(*s);
                        if missing.n == 0 {
                            // No missing value here: one seen later goes where the mean
                            // (0 after scaling) goes, as if imputed.
                            consider(f, b as u16, None, 0.0 <= t[b], left);
                        } else {
                            // Missing values to the better side.
                            consider(f, b as u16, None, false, left);
                            let mut with = left;
                            with.add(missing);
                            consider(f, b as u16, None, true, with);
                        }
                    }
                }
                Binning::Categorical(width) => {
                    for (left_bins, left) in self.category_sets(h, *width) {
                        consider(f, 0, Some(left_bins), false, left);
                    }
                }
            }
        }
        best
    }

    /// Candidate left sides of a categorical split: each category alone when there are
    /// few; otherwise the categories with enough rows ordered by `g / (h + cat_smooth)`,
    /// and every prefix of that order from either end, up to `max_cat_threshold` long.
    fn category_sets(&self, h: &[Stats], width: usize) -> Vec<(Vec<bool>, Stats)> {
        let present: Vec<usize> = (0..width).filter(|&c| h[c].n > 0).collect();
        let mut out = Vec::new();
        if present.len() <= ONE_VS_REST_CATEGORIES {
            for &c in &present {
                let mut set = vec![false; width];
                set[c] = true;
                out.push((set, h[c]));
            }
            return out;
        }
        let mut ordered: Vec<usize> = present
            .into_iter()
            .filter(|&c| h[c].n >= MIN_DATA_PER_GROUP as i64)
            .collect();
        let p = self.penalty;
        let key = |c: usize| p.g(h[c]) / (p.h(h[c]) + CAT_SMOOTH);
        ordered.sort_by(|&a, &b| key(a).total_cmp(&key(b)).then(a.cmp(&b)));
        let longest = MAX_CAT_THRESHOLD.min(ordered.len().saturating_sub(1));
        for from_end in [false, true] {
            let mut set = vec![false; width];
            let mut left = Stats::default();
            for k in 0..longest {
                let c = if from_end {
                    ordered[ordered.len() - 1 - k]
                } else {
                    ordered[k]
                };
                set[c] = true;
                left.add(h[c]);
                out.push((set.clone(), left));
            }
        }
        out
    }

    fn goes_left(&self, split: &Split, row: usize) -> bool {
        let b = self.bins[row * self.inputs + split.feature];
        match &split.left_bins {
            Some(set) => set[b as usize],
            None => {
                b <= split.bin
                    || (split.missing_left
                        && usize::from(b) == self.binnings[split.feature].bins() - 1)
            }
        }
    }
}

/// Bins are fitted on at most this many training rows (a sample drawn with the seed).
const BINNING_ROWS: usize = 200_000;

/// Each input's bins, fitted once on the training rows: a group's rank 0 fits them on every
/// training row and shares them ([`Binnings::shared`]), so every worker bins alike.
#[derive(Debug, Clone)]
pub struct Binnings(Vec<Binning>);

impl Binnings {
    /// Fit on the numeric inputs of `train`'s rows (at most [`BINNING_ROWS`] of them, drawn
    /// with `seed`), at most `max_bins` bins each; a categorical input's slots are its bins.
    pub fn fit(train: &Encoded, layout: &InputLayout, max_bins: usize, seed: u64) -> Binnings {
        let sampled: Vec<usize> = if train.rows > BINNING_ROWS {
            let mut s =
                sample(&mut StdRng::seed_from_u64(seed), train.rows, BINNING_ROWS).into_vec();
            s.sort_unstable();
            s
        } else {
            (0..train.rows).collect()
        };
        let max_bins = max_bins.clamp(2, usize::from(u16::MAX));
        let numeric = layout.numeric.iter().map(|&o| {
            let values = sampled.iter().map(|&i| train.row(i)[o]).collect();
            Binning::Numeric(thresholds(values, max_bins))
        });
        let categorical = layout
            .categorical
            .iter()
            .map(|&(_, width)| Binning::Categorical(width));
        Binnings(numeric.chain(categorical).collect())
    }

    /// Rank 0's binnings (`fit` runs there only), the same bits on every rank.
    pub fn shared(
        group: &mut dyn Collective,
        layout: &InputLayout,
        fit: impl FnOnce() -> Result<Binnings>,
    ) -> Result<Binnings> {
        if group.size() == 1 {
            return fit();
        }
        let bytes = from_rank_zero(group, || Ok(fit()?.to_bytes()))?;
        Binnings::from_bytes(&bytes, layout)
    }

    /// Each numeric input's threshold count, then its thresholds, as little-endian f32.
    fn to_bytes(&self) -> Vec<u8> {
        let mut values = Vec::new();
        for b in &self.0 {
            if let Binning::Numeric(t) = b {
                values.push(t.len() as f32);
                values.extend_from_slice(t);
            }
        }
        float_bytes(&values)
    }

    fn from_bytes(bytes: &[u8], layout: &InputLayout) -> Result<Binnings> {
        let bad = || ModelError::Collective("the broadcast bins do not match the inputs".into());
        let values = floats(bytes);
        let mut rest = values.as_slice();
        let mut out = Vec::new();
        for _ in &layout.numeric {
            let (&n, tail) = rest.split_first().ok_or_else(bad)?;
            let n = n as usize;
            let t = tail.get(..n).ok_or_else(bad)?;
            out.push(Binning::Numeric(t.to_vec()));
            rest = &tail[n..];
        }
        if !rest.is_empty() {
            return Err(bad());
        }
        out.extend(
            layout
                .categorical
                .iter()
                .map(|&(_, width)| Binning::Categorical(width)),
        );
        Ok(Binnings(out))
    }
}

/// One worker's rows for the trees.
#[derive(Debug, Clone, Copy)]
pub struct TreeRows<'a> {
    /// Its training rows.
    pub train: &'a Encoded,
    /// Each training row's number in the whole data set: a tree's rows are bagged by it,
    /// so they do not depend on which worker holds them.
    pub ids: &'a [u64],
    /// Its validation rows (early stopping).
    pub valid: &'a Encoded,
}

/// The best validation loss so far: after how many trees, and the forest's size then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Best {
    /// Trees.
    pub trees: usize,
    /// The loss's bits (exact through a checkpoint's JSON).
    pub loss_bits: u64,
    /// Nodes, leaves and categorical flags of the forest at that point.
    pub nodes: usize,
    /// See `nodes`.
    pub leaves: usize,
    /// See `nodes`.
    pub categories: usize,
}

/// Where a member's boosting stands, which a checkpoint keeps: every tree grown so far,
/// the inputs' importance, and the best validation loss so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Boosted {
    /// The trees.
    pub forest: Forest,
    /// Each input's importance.
    pub importance: Vec<Importance>,
    /// The best validation loss so far.
    pub best: Option<Best>,
}

/// Losses of classes are summed in fixed point, in units of 2^-24 per row (exact in any
/// order); losses of numbers in a unit sized to the labels ([`boost`]).
const LOSS_UNIT: f64 = 1.0 / (1u64 << 24) as f64;

/// The largest of each worker's `local` (≥ 0) over the group: every rank's value travels
/// in its own slot of an exact sum.
fn group_max(group: &mut dyn Collective, local: f64) -> Result<f64> {
    let mut slots = vec![0i64; group.size()];
    slots[group.rank()] = local.to_bits() as i64;
    sum_i64(group, &mut slots)?;
    Ok(slots
        .into_iter()
        .map(|b| f64::from_bits(b as u64))
        .fold(0.0, f64::max))
}

/// An f32's place in the numbers' order as an unsigned integer.
fn order_key(v: f32) -> u32 {
    let b = v.to_bits();
    if b >> 31 == 1 { !b } else { b | 0x8000_0000 }
}

/// The f32 of an [`order_key`].
fn from_order_key(k: u32) -> f32 {
    f32::from_bits(if k >> 31 == 1 { k & 0x7fff_ffff } else { !k })
}

/// The lower median (the ⌈n/2⌉-th smallest) of each of `groups` sets of values over the
/// whole group of workers: `values[i]` belongs to set `of[i]`; `None` for an empty set.
/// Found by bisection on the values' order, 32 rounds of one exact sum of counts each, so
/// every rank finds the same value however the rows are split among workers.
fn medians(
    group: &mut dyn Collective,
    values: &[f32],
    of: &[u32],
    groups: usize,
) -> Result<Vec<Option<f32>>> {
    let keys: Vec<u32> = values.iter().map(|&v| order_key(v)).collect();
    let mut n = vec![0i64; groups];
    for &s in of {
        n[s as usize] += 1;
    }
    sum_i64(group, &mut n)?;
    let (mut lo, mut hi) = (vec![0u32; groups], vec![u32::MAX; groups]);
    for _ in 0..32 {
        let mid: Vec<u32> = lo.iter().zip(&hi).map(|(&l, &h)| l + (h - l) / 2).collect();
        let mut below = vec![0i64; groups];
        for (&k, &s) in keys.iter().zip(of) {
            below[s as usize] += i64::from(k <= mid[s as usize]);
        }
        sum_i64(group, &mut below)?;
        for s in 0..groups {
            if below[s] >= (n[s] + 1) / 2 {
                hi[s] = mid[s];
            } else {
                lo[s] = (mid[s] + 1).min(hi[s]);
            }
        }
    }
    Ok((0..groups)
        .map(|s| (n[s] > 0).then(|| from_order_key(lo[s])))
        .collect())
}

/// SplitMix64's mixing of `x`.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of tree `t`'s draws.
fn tree_seed(seed: u64, t: usize) -> u64 {
    mix(seed ^ mix(t as u64))
}

/// Whether row `id` is among the rows tree `t` grows on: a draw from the row's number, the
/// tree and the seed, so any worker holding the row draws the same.
fn bagged(seed: u64, t: usize, id: u64, fraction: f64) -> bool {
    ((mix(tree_seed(seed, t) ^ id) >> 11) as f64 / (1u64 << 53) as f64) < fraction
}

/// The model inputs of every row of `data`, row-major.
fn all_inputs(layout: &InputLayout, data: &Encoded) -> Vec<f32> {
    let mut row = Vec::new();
    let mut all = Vec::with_capacity(data.rows * inputs_width(layout));
    for i in 0..data.rows {
        inputs_of(layout, data.row(i), &mut row);
        all.extend_from_slice(&row);
    }
    all
}

fn inputs_width(layout: &InputLayout) -> usize {
    layout.numeric.len() + layout.categorical.len()
}

/// Train a forest on `train` (early stopping on `valid` when it has rows and
/// `cfg.early_stopping > 0`), alone; rows are numbered by their place in `train`. See
/// [`boost`]. `on_round` is called every few trees; `ControlFlow::Break` stops with
/// [`ModelError::Cancelled`]. Also returns each input's importance.
pub fn train_gbdt(
    train: &Encoded,
    valid: &Encoded,
    layout: &InputLayout,
    cfg: &GbdtConfig,
    tc: &TrainConfig,
    on_round: impl FnMut(EpochReport) -> ControlFlow<()>,
) -> Result<(Forest, Vec<Importance>)> {
    let ids: Vec<u64> = (0..train.rows as u64).collect();
    let rows = TreeRows {
        train,
        ids: &ids,
        valid,
    };
    let binnings = Binnings::fit(train, layout, cfg.max_bins, tc.seed);
    train_gbdt_rows(rows, &binnings, layout, cfg, tc, on_round)
}

/// [`train_gbdt`] with the rows' numbers and the bins given.
pub fn train_gbdt_rows(
    rows: TreeRows<'_>,
    binnings: &Binnings,
    layout: &InputLayout,
    cfg: &GbdtConfig,
    tc: &TrainConfig,
    mut on_round: impl FnMut(EpochReport) -> ControlFlow<()>,
) -> Result<(Forest, Vec<Importance>)> {
    let boosted = boost(
        rows,
        binnings,
        layout,
        cfg,
        tc,
        &mut Solo,
        None,
        |_, report| Ok(report.map_or(ControlFlow::Continue(()), &mut on_round)),
    )?;
    Ok((boosted.forest, boosted.importance))
}

/// Boost one forest as a worker of `group` (every rank makes the same calls and ends with
/// the same trees): each tree's gradient histograms are built on each worker's rows and
/// summed over the group in fixed point (exact, so the trees do not depend on how the rows
/// are split among workers); the larger child's histogram is its parent's minus the
/// smaller's; rows are bagged by their number and inputs drawn per tree from the seed;
/// early stopping watches the group's validation loss and keeps the best trees. `resume`
/// continues from a checkpoint's state. `after_tree` sees the state after every tree, with
/// a progress report every few trees; `Break` stops with [`ModelError::Cancelled`].
#[allow(clippy::too_many_arguments)]
pub fn boost(
    rows: TreeRows<'_>,
    binnings: &Binnings,
    layout: &InputLayout,
    cfg: &GbdtConfig,
    tc: &TrainConfig,
    group: &mut dyn Collective,
    resume: Option<Boosted>,
    mut after_tree: impl FnMut(&Boosted, Option<EpochReport>) -> Result<ControlFlow<()>>,
) -> Result<Boosted> {
    let TreeRows { train, ids, valid } = rows;
    let objective = cfg.objective;
    let inputs = inputs_width(layout);
    let train_inputs = all_inputs(layout, train);
    let valid_inputs = all_inputs(layout, valid);
    let positives = train.y.iter().filter(|&&y| y > 0.5).count();
    let negatives = train.y.iter().chain(&valid.y).filter(|&&y| y < 0.0).count();
    // The group's training rows, positives, validation rows and negative labels.
    let mut counts = [
        train.rows as i64,
        positives as i64,
        valid.rows as i64,
        negatives as i64,
    ];
    sum_i64(group, &mut counts)?;
    let [total, positives, valid_total, negatives] = counts;
    if total == 0 {
        return Err(ModelError::NoRows {
            purpose: "train on",
            rows: 0,
        });
    }
    if objective == Objective::Poisson && negatives > 0 {
        return Err(ModelError::Unsupported(format!(
            "the poisson objective fits counts, but {negatives} rows have a negative label; use objective = \"l2\" or \"l1\" for numbers that can be negative"
        )));
    }
    // The labels' largest size over the group (1 for classes): gradients, hessians and
    // losses are bounded by multiples of it.
    let label_max = if objective.is_binary() {
        1.0
    } else {
        let local = train
            .y
            .iter()
            .chain(&valid.y)
            .fold(0f64, |m, &y| m.max(f64::from(y).abs()));
        group_max(group, local)?
    };
    if !label_max.is_finite() {
        return Err(ModelError::Unsupported(
            "a label is not a finite number".into(),
        ));
    }
    let pw = if objective.is_binary() {
        tc.positive_weight
    } else {
        1.0
    };
    // A row's gradient and hessian are at most `size` (|z − y| with scores inside the
    // labels' range; a Poisson hessian's exp(z + 0.7)), with room to spare.
    let size = match objective {
        Objective::Binary | Objective::L1 => 1.0,
        Objective::L2 => 4.0 * label_max + 1.0,
        Objective::Poisson => 4.0 * label_max * POISSON_MAX_DELTA_STEP.exp() + 1.0,
    };
    // Fixed point with room for the group's gradient sums below 2^62.
    let bits = 62.0 - (total as f64 * pw.max(1.0) * size).log2().ceil();
    if bits < 16.0 {
        return Err(ModelError::Unsupported(format!(
            "{total} training rows with positive_weight {pw} and labels up to {label_max} overflow the trees' gradient sums; lower [train] positive_weight, scale the label down or train on fewer rows"
        )));
    }
    let unit = 2f64.powi(-(bits.min(40.0) as i32));
    // A row's share of a sum never exceeds this, so no sum overflows (a diverging
    // score saturates here; the divergence check stops it).
    let cap = (1i64 << 62) / total;
    // Losses are summed in 2^-24 per row for classes; for numbers in the finest unit that
    // keeps the group's sum of the largest losses below 2^62 (a row's loss at most `worst`,
    // and a row's share capped so that no sum overflows).
    let loss_rows = total.max(valid_total).max(1);
    let worst = match objective {
        Objective::Binary => 0.0,
        Objective::L2 => (4.0 * label_max + 1.0).powi(2),
        Objective::L1 => 4.0 * label_max + 1.0,
        Objective::Poisson => {
            let top = 8.0 * label_max + 1.0;
            top + label_max * (top.ln().abs() + 20.0)
        }
    };
    let loss_unit = if objective.is_binary() {
        LOSS_UNIT
    } else {
        2f64.powi((worst * loss_rows as f64).log2().ceil() as i32 - 62)
    };
    let loss_cap = (1i64 << 62) / loss_rows;
    let loss_units = |raw: &[f64], y: &[f32]| -> i64 {
        raw.iter()
            .zip(y)
            .map(|(&z, &y)| {
                ((objective.row_loss(z, y) / loss_unit).round() as i64).clamp(-loss_cap, loss_cap)
            })
            .sum()
    };
    let mut offsets = vec![0];
    for b in &binnings.0 {
        offsets.push(offsets.last().unwrap() + b.bins());
    }
    let bins = train_inputs
        .chunks_exact(inputs.max(1))
        .flat_map(|row| row.iter().zip(&binnings.0).map(|(&v, b)| b.bin(v)))
        .collect();
    let grower = Grower {
        cfg,
        penalty: Penalty {
            l1: cfg.lambda_l1,
            l2: cfg.lambda_l2,
            unit,
        },
        bins,
        binnings: &binnings.0,
        offsets,
        inputs,
    };
    let base = match objective {
        Objective::Binary => {
            let wpos = positives as f64 * pw;
            let rate = (wpos / (wpos + (total - positives) as f64)).clamp(1e-6, 1.0 - 1e-6);
            (rate / (1.0 - rate)).ln() as f32
        }
        Objective::L2 | Objective::Poisson => {
            // The mean label, summed in fixed point (the same bits for any split of rows).
            let mut sum = [train
                .y
                .iter()
                .map(|&y| (f64::from(y) / unit).round() as i64)
                .sum()];
            sum_i64(group, &mut sum)?;
            let mean = sum[0] as f64 * unit / total as f64;
            if objective == Objective::L2 {
                mean as f32
            } else if mean > 0.0 {
                mean.ln() as f32
            } else {
                return Err(ModelError::Unsupported(
                    "the poisson objective needs some counts above 0, but every training row's label is 0".into(),
                ));
            }
        }
        Objective::L1 => {
            let at = vec![0u32; train.rows];
            medians(group, &train.y, &at, 1)?[0].unwrap_or(0.0)
        }
    };
    let mut state = match resume {
        Some(s) if s.forest.objective != objective => {
            return Err(ModelError::Unsupported(format!(
                "the checkpoint's trees fit the {} objective, this job {}",
                s.forest.objective.name(),
                objective.name()
            )));
        }
        Some(s) if s.forest.base.to_bits() != base.to_bits() => {
            return Err(ModelError::Unsupported(
                "the checkpoint's trees start from another base rate: they were trained on other rows".into(),
            ));
        }
        Some(s) => s,
        None => Boosted {
            forest: Forest {
                objective,
                base,
                roots: Vec::new(),
                nodes: Vec::new(),
                leaves: Vec::new(),
                categories: Vec::new(),
                numeric: layout.numeric.len(),
                flat: Flat::default(),
            },
            importance: vec![Importance::default(); inputs],
            best: None,
        },
    };
    // The scores so far: base, then every tree's leaf in order (as the serving walk adds).
    let scores = |forest: &Forest, all: &[f32]| -> Vec<f64> {
        all.chunks_exact(inputs.max(1))
            .map(|row| forest.raw_score(row))
            .collect()
    };
    let mut raw = scores(&state.forest, &train_inputs);
    let mut raw_valid = scores(&state.forest, &valid_inputs);
    let (mut g, mut h) = (vec![0i64; train.rows], vec![0i64; train.rows]);
    // The validation loss is watched when there are validation rows; early stopping acts on
    // it when `early_stopping > 0`.
    let watch = valid_total > 0;
    let trees = cfg.trees.max(1);
    for t in state.forest.trees()..trees {
        for i in 0..train.rows {
            let y = f64::from(train.y[i]);
            let w = if y > 0.5 { pw } else { 1.0 };
            let (gi, hi) = objective.gradient(raw[i], y, w);
            g[i] = ((gi / unit).round() as i64).clamp(-cap, cap);
            h[i] = ((hi / unit).round() as i64).clamp(1, cap);
        }
        let tree_rows: Vec<u32> = (0..train.rows as u32)
            .filter(|&i| {
                cfg.bagging_fraction >= 1.0
                    || bagged(tc.seed, t, ids[i as usize], cfg.bagging_fraction)
            })
            .collect();
        let features: Vec<usize> = if cfg.feature_fraction < 1.0 && inputs > 1 {
            let n = ((inputs as f64 * cfg.feature_fraction).ceil() as usize).clamp(1, inputs);
            let mut rng = StdRng::seed_from_u64(tree_seed(tc.seed, t));
            let mut s = sample(&mut rng, inputs, n).into_vec();
            s.sort_unstable();
            s
        } else {
            (0..inputs).collect()
        };
        let first_leaf = state.forest.leaves.len();
        // L1 renews the new leaves from the rows the tree grew on.
        let renewed = (objective == Objective::L1).then(|| tree_rows.clone());
        let root = grow_tree(
            &grower,
            &mut state,
            tree_rows,
            &features,
            (&g, &h),
            cfg.learning_rate,
            group,
        )?;
        let forest = &mut state.forest;
        forest.roots.push(root);
        // The serving path's own walk over the rows' values: the scores kept here are the
        // scores the runtime gives.
        let reached: Vec<u32> = train_inputs
            .chunks_exact(inputs.max(1))
            .map(|row| forest.leaf_of(root, row))
            .collect();
        if let Some(tree_rows) = renewed {
            // Each new leaf's value: the median residual of its (bagged) rows.
            let (residuals, at): (Vec<f32>, Vec<u32>) = tree_rows
                .iter()
                .map(|&i| {
                    let i = i as usize;
                    (
                        (f64::from(train.y[i]) - raw[i]) as f32,
                        reached[i] - first_leaf as u32,
                    )
                })
                .unzip();
            let leaves = forest.leaves.len() - first_leaf;
            for (leaf, m) in medians(group, &residuals, &at, leaves)?
                .into_iter()
                .enumerate()
            {
                if let Some(m) = m {
                    forest.leaves[first_leaf + leaf] = (f64::from(m) * cfg.learning_rate) as f32;
                }
            }
        }
        for (z, &leaf) in raw.iter_mut().zip(&reached) {
            *z += f64::from(forest.leaves[leaf as usize]);
        }
        for (z, row) in raw_valid
            .iter_mut()
            .zip(valid_inputs.chunks_exact(inputs.max(1)))
        {
            *z += f64::from(forest.leaves[forest.leaf_of(root, row) as usize]);
        }
        // The group's validation loss, and whether any score diverged.
        let diverged = raw.iter().chain(&raw_valid).any(|z| !z.is_finite());
        let mut sums = [
            if watch {
                loss_units(&raw_valid, &valid.y)
            } else {
                0
            },
            i64::from(diverged),
        ];
        sum_i64(group, &mut sums)?;
        if sums[1] > 0 {
            return Err(ModelError::Diverged {
                at: format!("tree {}", t + 1),
            });
        }
        let valid_loss = watch.then(|| sums[0] as f64 * loss_unit / valid_total as f64);
        let done = t + 1 == trees;
        let mut stop = false;
        if let Some(loss) = valid_loss {
            if state
                .best
                .is_none_or(|b| loss < f64::from_bits(b.loss_bits))
            {
                state.best = Some(Best {
                    trees: t + 1,
                    loss_bits: loss.to_bits(),
                    nodes: forest.nodes.len(),
                    leaves: forest.leaves.len(),
                    categories: forest.categories.len(),
                });
            } else if cfg.early_stopping > 0
                && state
                    .best
                    .is_some_and(|b| t + 1 - b.trees >= cfg.early_stopping)
            {
                stop = true;
            }
        }
        let report = if (t + 1) % REPORT_EVERY == 0 || done || stop {
            let mut loss = [loss_units(&raw, &train.y)];
            sum_i64(group, &mut loss)?;
            Some(EpochReport {
                epoch: (t + 1) as u32,
                epochs: cfg.trees as u32,
                loss: loss[0] as f64 * loss_unit / total as f64,
                valid_loss,
            })
        } else {
            None
        };
        if after_tree(&state, report)?.is_break() {
            return Err(ModelError::Cancelled);
        }
        if stop {
            break;
        }
    }
    if cfg.early_stopping > 0
        && let Some(b) = state.best
    {
        let forest = &mut state.forest;
        forest.roots.truncate(b.trees);
        forest.nodes.truncate(b.nodes);
        forest.leaves.truncate(b.leaves);
        forest.categories.truncate(b.categories);
    }
    state.forest.flat = Flat::of(&state.forest, layout);
    Ok(state)
}

/// Sum a histogram (or any statistics) over the group, exactly.
fn summed(group: &mut dyn Collective, hist: &mut [Stats]) -> Result<()> {
    if group.size() == 1 {
        return Ok(());
    }
    let mut flat: Vec<i64> = hist.iter().flat_map(|s| [s.g, s.h, s.n]).collect();
    sum_i64(group, &mut flat)?;
    for (s, v) in hist.iter_mut().zip(flat.chunks_exact(3)) {
        *s = Stats {
            g: v[0],
            h: v[1],
            n: v[2],
        };
    }
    Ok(())
}

/// Grow one tree leaf-wise on `rows` (this worker's), appending its nodes and leaves to
/// the forest; returns its root. Every choice reads the group's summed statistics.
fn grow_tree(
    grower: &Grower,
    state: &mut Boosted,
    rows: Vec<u32>,
    features: &[usize],
    (g, h): (&[i64], &[i64]),
    learning_rate: f64,
    group: &mut dyn Collective,
) -> Result<Child> {
    let cfg = grower.cfg;
    let forest = &mut state.forest;
    let mut hist = grower.histogram(&rows, g, h);
    let mut stats = Stats::default();
    for &r in &rows {
        stats.add(Stats {
            g: g[r as usize],
            h: h[r as usize],
            n: 1,
        });
    }
    // The root's statistics ride with its histogram.
    hist.push(stats);
    summed(group, &mut hist)?;
    let stats = hist.pop().expect("pushed above");
    let mut leaves = vec![Growing {
        best: grower.best_split(&hist, stats, features),
        rows,
        hist,
        stats,
        depth: 0,
        parent: None,
        prepared: None,
    }];
    let mut root = None;
    let can_split =
        |l: &Growing| l.best.is_some() && (cfg.max_depth == 0 || l.depth < cfg.max_depth);
    let gain = |l: &Growing| l.best.as_ref().map_or(f64::NEG_INFINITY, |b| b.gain);
    while leaves.len() < cfg.num_leaves.max(2) {
        let Some(k) = (0..leaves.len())
            .filter(|&k| can_split(&leaves[k]))
            .max_by(|&a, &b| {
                // The first of equal gains.
                gain(&leaves[a])
                    .total_cmp(&gain(&leaves[b]))
                    .then(b.cmp(&a))
            })
        else {
            break;
        };
        if leaves[k].prepared.is_none() {
            // Ready this leaf's split and, in a group, the next best leaves' too.
            let ahead = if group.size() == 1 { 1 } else { PREPARE_AHEAD };
            let room = cfg.num_leaves.max(2) - leaves.len();
            let mut picks: Vec<usize> = (0..leaves.len())
                .filter(|&j| j != k && can_split(&leaves[j]) && leaves[j].prepared.is_none())
                .collect();
            picks.sort_by(|&a, &b| {
                gain(&leaves[b])
                    .total_cmp(&gain(&leaves[a]))
                    .then(a.cmp(&b))
            });
            picks.truncate(ahead.min(room) - 1);
            picks.insert(0, k);
            prepare(grower, &mut leaves, &picks, (g, h), group)?;
        }
        let leaf = leaves.swap_remove(k);
        let split = leaf
            .best
            .clone()
            .expect("only leaves with a split are chosen");
        let node = forest.nodes.len();
        let categorical = split.left_bins.as_ref().map(|set| {
            let offset = forest.categories.len() as u32;
            forest.categories.extend_from_slice(set);
            offset
        });
        let threshold = match &grower.binnings[split.feature] {
            Binning::Numeric(t) => t[split.bin as usize],
            Binning::Categorical(_) => 0.0,
        };
        forest.nodes.push(Node {
            feature: split.feature as u32,
            threshold,
            categorical,
            missing_left: split.missing_left,
            // Set when the children become leaves or nodes.
            left: Child::Leaf(u32::MAX),
            right: Child::Leaf(u32::MAX),
        });
        attach(forest, &mut root, leaf.parent, Child::Node(node as u32));
        state.importance[split.feature].gain += split.gain;
        state.importance[split.feature].splits += 1;
        let Prepared {
            left: left_rows,
            right: right_rows,
            small: small_hist,
        } = leaf.prepared.expect("prepared above");
        let small_left = split.left.n <= split.right.n;
        let large_hist: Vec<Stats> = leaf
            .hist
            .iter()
            .zip(&small_hist)
            .map(|(p, s)| p.minus(*s))
            .collect();
        let (left_hist, right_hist) = if small_left {
            (small_hist, large_hist)
        } else {
            (large_hist, small_hist)
        };
        for (rows, hist, stats, side) in [
            (left_rows, left_hist, split.left, true),
            (right_rows, right_hist, split.right, false),
        ] {
            leaves.push(Growing {
                best: grower.best_split(&hist, stats, features),
                rows,
                hist,
                stats,
                depth: leaf.depth + 1,
                parent: Some((node, side)),
                prepared: None,
            });
        }
    }
    // Leaves in the order they hang, for a deterministic layout.
    leaves.sort_by_key(|l| l.parent);
    for leaf in leaves {
        // A leaf no row reached (a tree bagged no rows) adds nothing.
        let value = if leaf.stats.n == 0 {
            0.0
        } else {
            (grower.penalty.value(leaf.stats) * learning_rate) as f32
        };
        let index = forest.leaves.len() as u32;
        forest.leaves.push(value);
        attach(forest, &mut root, leaf.parent, Child::Leaf(index));
    }
    Ok(root.expect("a tree has a root"))
}

/// Ready the splits of `leaves[picks]`: each one's rows parted between its children and
/// the histogram of its smaller child (by the group's count) built on this worker's rows,
/// all of them summed over the group with one all-reduce.
fn prepare(
    grower: &Grower,
    leaves: &mut [Growing],
    picks: &[usize],
    (g, h): (&[i64], &[i64]),
    group: &mut dyn Collective,
) -> Result<()> {
    let width = *grower.offsets.last().unwrap_or(&0);
    let mut parts = Vec::with_capacity(picks.len());
    let mut all = Vec::with_capacity(picks.len() * width);
    for &j in picks {
        let leaf = &mut leaves[j];
        let split = leaf
            .best
            .as_ref()
            .expect("only leaves with a split are readied");
        let (left, right): (Vec<u32>, Vec<u32>) = std::mem::take(&mut leaf.rows)
            .into_iter()
            .partition(|&r| grower.goes_left(split, r as usize));
        let small_left = split.left.n <= split.right.n;
        all.extend(grower.histogram(if small_left { &left } else { &right }, g, h));
        parts.push((left, right));
    }
    summed(group, &mut all)?;
    for ((&j, (left, right)), small) in picks.iter().zip(parts).zip(all.chunks_exact(width.max(1)))
    {
        leaves[j].prepared = Some(Prepared {
            left,
            right,
            small: small.to_vec(),
        });
    }
    Ok(())
}

fn attach(
    forest: &mut Forest,
    root: &mut Option<Child>,
    parent: Option<(usize, bool)>,
    child: Child,
) {
    match parent {
        None => *root = Some(child),
        Some((p, true)) => forest.nodes[p].left = child,
        Some((p, false)) => forest.nodes[p].right = child,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn layout(numeric: usize, categorical: &[usize]) -> InputLayout {
        let mut offset = numeric;
        InputLayout {
            numeric: (0..numeric).collect(),
            categorical: categorical
                .iter()
                .map(|&w| {
                    let block = (offset, w);
                    offset += w;
                    block
                })
                .collect(),
        }
    }

    /// Rows with a numeric threshold effect, a categorical effect and noise.
    fn data(rows: usize, seed: u64) -> Encoded {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut e = Encoded {
            dim: 2 + 6,
            ..Encoded::default()
        };
        for _ in 0..rows {
            let a: f32 = rng.random_range(-2.0..2.0);
            let noise: f32 = rng.random_range(-2.0..2.0);
            let c = rng.random_range(0..6usize);
            let z = if a > 0.5 { 1.5 } else { -1.0 } + if c == 1 || c == 4 { 1.2 } else { -0.3 };
            let y = rng.random::<f32>() < sigmoid(z);
            e.x.extend([a, noise]);
            e.x.extend((0..6).map(|k| f32::from(u8::from(k == c))));
            e.y.push(f32::from(u8::from(y)));
            e.rows += 1;
        }
        e
    }

    fn cfg(trees: usize) -> GbdtConfig {
        GbdtConfig::new(trees, 0.1)
    }

    /// A tensor of [`Forest::tensors`] by name, as the runtime reads it.
    fn reader(
        tensors: &[(String, Vec<usize>, Vec<f32>)],
    ) -> impl Fn(&str) -> Result<Vec<f32>> + '_ {
        |name| {
            Ok(tensors
                .iter()
                .find(|t| t.0 == name)
                .map(|t| t.2.clone())
                .unwrap())
        }
    }

    /// `data` with two more categorical columns (3 and 4 slots, one-hot after its own),
    /// the label re-drawn for the rows of one slot of each.
    fn small_categories(data: Encoded) -> Encoded {
        let mut rng = StdRng::seed_from_u64(data.rows as u64);
        let mut e = Encoded {
            dim: data.dim + 7,
            ..Encoded::default()
        };
        for i in 0..data.rows {
            let (b, c) = (rng.random_range(0..3usize), rng.random_range(0..4usize));
            e.x.extend_from_slice(data.row(i));
            e.x.extend((0..3).map(|k| f32::from(u8::from(k == b))));
            e.x.extend((0..4).map(|k| f32::from(u8::from(k == c))));
            let y = match (b, c) {
                (1, _) => rng.random::<f32>() < 0.8,
                (_, 3) => rng.random::<f32>() < 0.1,
                _ => data.y[i] > 0.5,
            };
            e.y.push(f32::from(u8::from(y)));
            e.rows += 1;
        }
        e
    }

    /// Each row's score by the one-row walk training uses.
    fn walked_one_by_one(forest: &Forest, lay: &InputLayout, data: &Encoded) -> Vec<f64> {
        let mut inputs = Vec::new();
        (0..data.rows)
            .map(|i| {
                inputs_of(lay, data.row(i), &mut inputs);
                forest.raw_score(&inputs)
            })
            .collect()
    }

    fn tc(seed: u64) -> TrainConfig {
        TrainConfig {
            seed,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn thresholds_sit_between_values_and_bins_match_them() {
        let t = thresholds(vec![3.0, 1.0, 2.0, 2.0, 1.0], 255);
        assert_eq!(t, vec![1.5, 2.5]);
        let b = Binning::Numeric(t.clone());
        for v in [0.0f32, 1.0, 1.5, 1.6, 2.0, 2.5, 3.0, 9.0] {
            let bin = b.bin(v) as usize;
            for (k, &th) in t.iter().enumerate() {
                assert_eq!(v <= th, bin <= k, "value {v} bin {bin} threshold {th}");
            }
        }
        // Many distinct values: at most max_bins bins of similar counts.
        let many: Vec<f32> = (0..10_000).map(|i| i as f32).collect();
        let t = thresholds(many, 16);
        assert_eq!(t.len(), 15);
        assert!((t[0] - 624.5).abs() < 1.0, "{t:?}");
    }

    #[test]
    fn learns_numeric_and_categorical_effects_and_reads_back_identically() {
        let (train, valid, test) = (data(4000, 1), data(1000, 2), data(2000, 3));
        let lay = layout(2, &[6]);
        let cfg = GbdtConfig {
            num_leaves: 8,
            early_stopping: 20,
            ..cfg(200)
        };
        let (forest, importance) = train_gbdt(&train, &valid, &lay, &cfg, &tc(7), |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        assert!(
            forest.trees() < 200,
            "early stopping kept {} trees",
            forest.trees()
        );
        let p = forest.score(&lay, &test);
        let auc = crate::metrics::auc(&p, &test.y).unwrap();
        // Within 0.02 of the true probabilities' AUC on the same rows.
        let truth: Vec<f32> = (0..test.rows)
            .map(|i| {
                let r = test.row(i);
                let c = r[2..].iter().position(|&v| v > 0.5).unwrap();
                sigmoid(
                    if r[0] > 0.5 { 1.5 } else { -1.0 } + if c == 1 || c == 4 { 1.2 } else { -0.3 },
                )
            })
            .collect();
        let best = crate::metrics::auc(&truth, &test.y).unwrap();
        assert!(
            auc > best - 0.02,
            "auc {auc}, the true probabilities' {best}"
        );
        // The noise column earns the least gain.
        assert!(importance[1].gain < importance[0].gain && importance[1].gain < importance[2].gain);
        // Through the tensors and back: the same scores, bit for bit.
        let tensors = forest.tensors();
        let get = reader(&tensors);
        // Many rows at once: each row's walk, bit for bit (2,000 rows: 62 blocks and a part).
        let one_by_one = walked_one_by_one(&forest, &lay, &test);
        assert_eq!(forest.raw_scores(&lay, &test), one_by_one);
        let back = Forest::from_tensors(get, &lay).unwrap();
        assert_eq!(back, forest);
        assert_eq!(back.score(&lay, &test), p);
    }

    #[test]
    fn the_same_seed_gives_the_same_trees_and_subsampling_depends_on_it() {
        let (train, valid) = (data(2000, 4), data(500, 5));
        let lay = layout(2, &[6]);
        let cfg = GbdtConfig {
            bagging_fraction: 0.7,
            feature_fraction: 0.7,
            ..cfg(30)
        };
        let run = |seed| {
            train_gbdt(&train, &valid, &lay, &cfg, &tc(seed), |_| {
                ControlFlow::Continue(())
            })
            .unwrap()
            .0
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn missing_values_go_to_the_better_side_and_serve_as_trained() {
        // x in [-1, 1] for 70 % of rows, missing (NaN) for the rest; the missing rows and
        // those with x > 0.5 respond 90 % of the time, the others 10 %.
        let mut rng = StdRng::seed_from_u64(3);
        let mut e = Encoded {
            dim: 1,
            ..Encoded::default()
        };
        for _ in 0..4000 {
            let missing = rng.random::<f32>() < 0.3;
            let x: f32 = if missing {
                f32::NAN
            } else {
                rng.random_range(-1.0..1.0)
            };
            let rate = if missing || x > 0.5 { 0.9 } else { 0.1 };
            e.x.push(x);
            e.y.push(f32::from(u8::from(rng.random::<f32>() < rate)));
            e.rows += 1;
        }
        let lay = layout(1, &[]);
        let (forest, _) = train_gbdt(&e, &Encoded::empty(1), &lay, &cfg(40), &tc(1), |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        let p = |x: f32| sigmoid(forest.raw_score(&[x]) as f32);
        // Missing is a branch of its own: not where the mean (0) goes.
        assert!(p(f32::NAN) > 0.8, "missing: {}", p(f32::NAN));
        assert!(p(0.0) < 0.2, "x = 0: {}", p(0.0));
        assert!(p(0.9) > 0.8, "x = 0.9: {}", p(0.9));
        // Batches walk missing values as one row does, and the flags read back.
        let test = Encoded {
            x: vec![
                f32::NAN,
                0.0,
                0.9,
                -0.7,
                f32::NAN,
                0.6,
                0.1,
                f32::NAN,
                -0.2,
                0.55,
            ],
            y: vec![0.0; 10],
            rows: 10,
            dim: 1,
        };
        let one: Vec<f64> = test.x.iter().map(|&x| forest.raw_score(&[x])).collect();
        assert_eq!(forest.raw_scores(&lay, &test), one);
        let tensors = forest.tensors();
        assert!(
            tensors
                .iter()
                .any(|t| t.0 == "missing" && t.2.contains(&1.0))
        );
        assert_eq!(
            Forest::from_tensors(reader(&tensors), &lay).unwrap(),
            forest
        );
    }

    #[test]
    fn trees_written_before_missing_flags_read_with_missing_values_right() {
        let (train, valid) = (data(500, 8), data(100, 9));
        let lay = layout(2, &[6]);
        let (forest, _) = train_gbdt(&train, &valid, &lay, &cfg(3), &tc(1), |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        let old: Vec<_> = forest
            .tensors()
            .into_iter()
            .filter(|t| t.0 != "missing")
            .collect();
        let back = Forest::from_tensors(
            |name| {
                old.iter()
                    .find(|t| t.0 == name)
                    .map(|t| t.2.clone())
                    .ok_or_else(|| ModelError::Artifact(format!("no {name}")))
            },
            &lay,
        )
        .unwrap();
        assert!(back.nodes.iter().all(|n| !n.missing_left));
        assert_eq!(back.roots, forest.roots);
    }

    /// Batches through the bit-vector tables agree bit for bit with the one-row walk and the
    /// step walk, with trees of up to 32 leaves (`u32` masks), up to 64 (`u64`) and beyond
    /// (no tables: the step walk), on rows with missing and infinite values.
    #[test]
    fn tables_score_as_the_walk_for_every_tree_size() {
        // Two more categorical columns of 3 and 4 slots, which share one table.
        let (train, valid) = (
            small_categories(data(6000, 10)),
            small_categories(data(500, 11)),
        );
        let mut test = small_categories(data(1003, 12));
        for (i, v) in test.x.iter_mut().step_by(test.dim).enumerate() {
            *v = match i % 7 {
                0 => f32::NAN,
                1 => f32::INFINITY,
                2 => f32::NEG_INFINITY,
                _ => *v,
            };
        }
        let mut train = train;
        for v in train.x.iter_mut().step_by(train.dim).step_by(5) {
            *v = f32::NAN;
        }
        let lay = layout(2, &[6, 3, 4]);
        for (leaves, width) in [(31, Some(32)), (48, Some(64)), (100, None)] {
            let cfg = GbdtConfig {
                num_leaves: leaves,
                min_data_in_leaf: 2,
                ..cfg(40)
            };
            let (forest, _) = train_gbdt(&train, &valid, &lay, &cfg, &tc(3), |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
            let widest = (0..forest.trees())
                .map(|t| {
                    let mut sizes = Vec::new();
                    let mut stack = vec![forest.roots[t]];
                    while let Some(c) = stack.pop() {
                        match c {
                            Child::Leaf(_) => sizes.push(()),
                            Child::Node(n) => {
                                let n = forest.nodes[n as usize];
                                stack.extend([n.left, n.right]);
                            }
                        }
                    }
                    sizes.len()
                })
                .max()
                .unwrap();
            let tables = match &forest.flat.bits {
                Some(bits::Bits::Narrow(_)) => Some(32),
                Some(bits::Bits::Wide(_)) => Some(64),
                None => None,
            };
            assert_eq!(tables, width, "{leaves} leaves asked, {widest} grown");
            // The tables' size, counted here from the nodes: one mask per tree for each
            // interval of a numeric input's distinct thresholds (and the missing one), for
            // each slot of the 6-slot column, for each pair of slots of the other two.
            let steps = forest.flat.steps.len() * size_of::<Step>();
            let mut numeric: Vec<Vec<u32>> = vec![Vec::new(); 2];
            for n in forest.nodes.iter().filter(|n| n.categorical.is_none()) {
                numeric[n.feature as usize].push(n.threshold.to_bits());
            }
            let used = |input: u32| forest.nodes.iter().any(|n| n.feature == input);
            assert!(used(2) && used(3) && used(4), "a categorical column unused");
            let intervals: usize = numeric
                .iter_mut()
                .filter(|t| !t.is_empty())
                .map(|t| {
                    t.sort_unstable();
                    t.dedup();
                    t.len() + 2
                })
                .sum::<usize>()
                + 6
                + 3 * 4;
            let masks = intervals * forest.trees() * width.unwrap_or(0) / 8;
            let derived = forest.derived_bytes() as usize;
            assert!(
                derived >= steps + masks && derived < steps + masks + 100_000,
                "{derived} bytes derived; steps {steps}, masks {masks}"
            );
            if let Some(bits) = &forest.flat.bits {
                let mut inputs = bits.inputs_per_table();
                inputs.sort_unstable();
                assert_eq!(inputs, [1, 1, 1, 2], "{leaves} leaves");
            }
            assert!(widest > leaves / 2, "{leaves} leaves asked, {widest} grown");
            // Values exactly at split thresholds (they go left).
            let mut test = test.clone();
            let at: Vec<(u32, f32)> = forest
                .nodes
                .iter()
                .filter(|n| n.categorical.is_none())
                .map(|n| (n.feature, n.threshold))
                .collect();
            for (i, &(input, t)) in at.iter().take(300).enumerate() {
                test.x[(i * 3) * test.dim + input as usize] = t;
            }
            let one_by_one = walked_one_by_one(&forest, &lay, &test);
            assert_eq!(
                forest.raw_scores(&lay, &test),
                one_by_one,
                "{leaves} leaves"
            );
            assert_eq!(forest.walked_raw_scores(&lay, &test), one_by_one);
            // A lone row and the rows of a partial block.
            for rows in [1, 3, 9] {
                let part = test.partition(|i| i >= rows).0;
                assert_eq!(forest.raw_scores(&lay, &part), one_by_one[..rows]);
            }
            // No trees (an artifact can say so): the base score.
            let mut none = forest.clone();
            none.roots.clear();
            none.flat = Flat::of(&none, &lay);
            assert_eq!(
                none.raw_scores(&lay, &test),
                vec![f64::from(none.base); test.rows]
            );
        }
    }

    #[test]
    fn corrupt_tree_tensors_are_refused() {
        let (train, valid) = (data(500, 6), data(100, 7));
        let lay = layout(2, &[6]);
        let cfg = cfg(3);
        let (forest, _) = train_gbdt(&train, &valid, &lay, &cfg, &tc(1), |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        let mut tensors = forest.tensors();
        let nodes = tensors.iter_mut().find(|t| t.0 == "nodes").unwrap();
        nodes.2[3] = 0.0; // the first node's left child: itself
        let get = reader(&tensors);
        let err = Forest::from_tensors(get, &lay).unwrap_err().to_string();
        assert!(err.contains("leads back up"), "{err}");
        assert!(Forest::from_tensors(reader(&tensors), &layout(3, &[6])).is_err());
    }
}
