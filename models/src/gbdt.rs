//! Gradient-boosted decision trees for response prediction, in the style of LightGBM:
//! numeric inputs binned once into at most `max_bins` bins (quantiles of the training rows,
//! thresholds halfway between neighbouring values), trees grown leaf-wise (the leaf with the
//! largest gain splits next) up to `num_leaves` leaves and `max_depth` levels, gradient
//! histograms with the larger child's histogram taken as its parent's minus the smaller's,
//! native categorical splits (categories sorted by their gradient statistics, a prefix sent
//! left, as LightGBM's many-versus-many splits), L1 and L2 regularisation, row and feature
//! subsampling per tree, and early stopping on the validation rows' log loss.
//!
//! Inputs are the preprocessor's columns through [`InputLayout`]: a numeric column is its
//! standardised value (trees do not care about the scaling; a missing value was imputed
//! with the mean), a categorical column is the index of its one-hot (or hashed) slot, the
//! last slot being the category seen too rarely or never.
//!
//! The trees are stored as f32 tensors ([`Forest::tensors`]). Training keeps its scores
//! with the one-row walk ([`Forest::raw_score`]); the serving runtime scores batches with
//! [`Forest::raw_scores`], which adds the same leaves in the same order: a served score
//! equals the training-time score bit for bit. Training is deterministic for a given seed.

use std::ops::ControlFlow;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::index::sample;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::logistic::{EpochReport, TrainConfig};
use crate::metrics::log_loss;
use crate::mlp::InputLayout;
use crate::preprocess::Encoded;
use crate::runtime::sigmoid;

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

/// The trees' shape and regularisation (`[model]` of a `type = "gbdt"` job; the defaults
/// are the job spec's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GbdtConfig {
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
    /// Stop after this many trees without a better validation log loss, and keep the best
    /// (0: never stop early).
    pub early_stopping: usize,
}

impl GbdtConfig {
    /// `trees` rounds at `learning_rate`, every other setting LightGBM's default (which the
    /// job spec's defaults, set in `halyard-core`, also are); for tests and benches.
    pub fn new(trees: usize, learning_rate: f64) -> GbdtConfig {
        GbdtConfig {
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

/// A split. Numeric: `value <= threshold` goes left. Categorical: the categories whose
/// flag in `categories[offset..offset + width]` is set go left.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Node {
    feature: u32,
    threshold: f32,
    /// Categorical: where its flags start in [`Forest::categories`].
    categorical: Option<u32>,
    left: Child,
    right: Child,
}

/// A trained ensemble of trees on the inputs of an [`InputLayout`] (numeric columns first,
/// then categorical ones).
#[derive(Debug, Clone, PartialEq)]
pub struct Forest {
    /// The starting log-odds (the training rows' base rate).
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
    /// Left and right successor.
    next: [u32; 2],
    /// A leaf's value (0 for a split).
    value: f32,
}

impl Flat {
    fn of(forest: &Forest) -> Flat {
        let mut flat = Flat::default();
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
                        None => numeric_left(v, node.threshold),
                    };
                    at = if left { node.left } else { node.right };
                }
            }
        }
    }

    /// Response probabilities of `data`'s rows.
    pub fn score(&self, layout: &InputLayout, data: &Encoded) -> Vec<f32> {
        self.raw_scores(layout, data)
            .into_iter()
            .map(|z| sigmoid(z as f32))
            .collect()
    }

    /// The log-odds of `data`'s rows, equal to [`Forest::raw_score`] of each bit for bit
    /// (the same leaves added in the same order), computed [`BLOCK`] rows at a time: each
    /// tree walks all of them a step at a time, without a branch per step.
    pub fn raw_scores(&self, layout: &InputLayout, data: &Encoded) -> Vec<f64> {
        if data.rows < SCALAR_ROWS {
            let mut inputs = Vec::new();
            return (0..data.rows)
                .map(|i| {
                    inputs_of(layout, data.row(i), &mut inputs);
                    self.raw_score(&inputs)
                })
                .collect();
        }
        let width = layout.numeric.len() + layout.categorical.len();
        let mut inputs = Vec::with_capacity(BLOCK * width);
        let mut row = Vec::with_capacity(width);
        let mut out = vec![f64::from(self.base); data.rows];
        let f = &self.flat;
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
                            !numeric_left(v, step.threshold)
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
        out
    }

    /// The tensors of the weights file: `base` `[1]`, `roots` `[trees]`, `nodes`
    /// `[nodes, 5]` (input, threshold, categorical offset or −1, left, right; a child is a
    /// node's index or `−(leaf + 1)`), `leaves` `[leaves]`, `categories` `[flags + 1]`
    /// (0 or 1), `numeric` `[1]`.
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
            ("numeric".into(), vec![1], vec![self.numeric as f32]),
        ]
    }

    /// Read back from [`Forest::tensors`], checking every reference against `layout`.
    pub fn from_tensors(
        get: impl Fn(&str) -> Result<Vec<f32>>,
        layout: &InputLayout,
    ) -> Result<Forest> {
        let bad = |what: &str| ModelError::Artifact(format!("tree weights: {what}"));
        let base = *get("base")?.first().ok_or_else(|| bad("no base score"))?;
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
                left,
                right,
            });
        }
        let roots = get("roots")?
            .into_iter()
            .map(|r| child(r, count))
            .collect::<Result<_>>()?;
        let mut forest = Forest {
            base,
            roots,
            nodes,
            leaves,
            categories,
            numeric: layout.numeric.len(),
            flat: Flat::default(),
        };
        forest.flat = Flat::of(&forest);
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

/// Whether a numeric split sends `value` left: at most the threshold (NaN goes right).
/// Both walks, one row's and many rows', decide by this.
fn numeric_left(value: f32, threshold: f32) -> bool {
    value <= threshold
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
    /// Bin `b` holds the values in `(thresholds[b - 1], thresholds[b]]`.
    Numeric(Vec<f32>),
    /// A category's slot is its bin.
    Categorical(usize),
}

impl Binning {
    fn bins(&self) -> usize {
        match self {
            Binning::Numeric(t) => t.len() + 1,
            Binning::Categorical(w) => *w,
        }
    }

    fn bin(&self, v: f32) -> u16 {
        match self {
            // The thresholds below v: v <= thresholds[b] exactly when bin <= b.
            Binning::Numeric(t) => t.partition_point(|&x| x < v) as u16,
            Binning::Categorical(w) => (v as usize).min(w - 1) as u16,
        }
    }
}

/// Thresholds of a numeric input from its values: between neighbouring distinct values,
/// at most `max_bins - 1` of them, placed so the bins hold similar row counts.
fn thresholds(mut values: Vec<f32>, max_bins: usize) -> Vec<f32> {
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

/// Gradient statistics of a bin, a leaf or a side.
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    g: f64,
    h: f64,
    n: u32,
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

/// The penalised loss reduction terms.
#[derive(Debug, Clone, Copy)]
struct Penalty {
    l1: f64,
    l2: f64,
}

impl Penalty {
    fn shrunk(self, g: f64) -> f64 {
        g.signum() * (g.abs() - self.l1).max(0.0)
    }

    /// How much a leaf with these statistics lowers the loss.
    fn score(self, s: Stats) -> f64 {
        let g = self.shrunk(s.g);
        g * g / (s.h + self.l2)
    }

    /// The leaf's value (before the learning rate).
    fn value(self, s: Stats) -> f64 {
        -self.shrunk(s.g) / (s.h + self.l2)
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
}

/// The binned training rows and what trees are grown with.
struct Grower<'a> {
    cfg: &'a GbdtConfig,
    penalty: Penalty,
    binnings: Vec<Binning>,
    /// Where each input's bins start in a histogram.
    offsets: Vec<usize>,
    /// Row-major bins, `rows × inputs`.
    bins: Vec<u16>,
    inputs: usize,
}

impl Grower<'_> {
    fn histogram(&self, rows: &[u32], g: &[f64], h: &[f64]) -> Vec<Stats> {
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
        s.n as usize >= self.cfg.min_data_in_leaf && s.h >= self.cfg.min_sum_hessian
    }

    /// The best split of a leaf over the inputs `features`, if any lowers the loss.
    fn best_split(&self, hist: &[Stats], total: Stats, features: &[usize]) -> Option<Split> {
        let parent = self.penalty.score(total);
        let mut best: Option<Split> = None;
        // A left side (its statistics; numeric: the last bin sent left, categorical: the
        // bins sent left) becomes the best split if both sides may be leaves and it gains
        // more than any before it.
        let mut consider = |feature: usize, bin: u16, left_bins: Option<Vec<bool>>, left: Stats| {
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
                    left,
                    right,
                });
            }
        };
        for &f in features {
            let h = &hist[self.offsets[f]..self.offsets[f + 1]];
            match &self.binnings[f] {
                Binning::Numeric(_) => {
                    let mut left = Stats::default();
                    for (b, s) in h.iter().enumerate().take(h.len() - 1) {
                        left.add(*s);
                        consider(f, b as u16, None, left);
                    }
                }
                Binning::Categorical(width) => {
                    for (left_bins, left) in self.category_sets(h, *width) {
                        consider(f, 0, Some(left_bins), left);
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
            .filter(|&c| h[c].n as usize >= MIN_DATA_PER_GROUP)
            .collect();
        let key = |c: usize| h[c].g / (h[c].h + CAT_SMOOTH);
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
            None => b <= split.bin,
        }
    }
}

/// Train a forest on `train` (early stopping on `valid` when it has rows and
/// `cfg.early_stopping > 0`). Uses `tc.seed` and `tc.positive_weight` of the training settings.
/// `on_round` is called every few trees; `ControlFlow::Break` stops with
/// [`ModelError::Cancelled`]. Also returns each input's importance.
pub fn train_gbdt(
    train: &Encoded,
    valid: &Encoded,
    layout: &InputLayout,
    cfg: &GbdtConfig,
    tc: &TrainConfig,
    mut on_round: impl FnMut(EpochReport) -> ControlFlow<()>,
) -> Result<(Forest, Vec<Importance>)> {
    if train.rows == 0 {
        return Err(ModelError::NoRows {
            purpose: "train on",
            rows: 0,
        });
    }
    let mut rng = StdRng::seed_from_u64(tc.seed);
    let mut row_inputs = Vec::new();
    let rows_of = |data: &Encoded, row_inputs: &mut Vec<f32>| -> Vec<f32> {
        let mut all =
            Vec::with_capacity(data.rows * (layout.numeric.len() + layout.categorical.len()));
        for i in 0..data.rows {
            inputs_of(layout, data.row(i), row_inputs);
            all.extend_from_slice(row_inputs);
        }
        all
    };
    let train_inputs = rows_of(train, &mut row_inputs);
    let valid_inputs = rows_of(valid, &mut row_inputs);
    let inputs = layout.numeric.len() + layout.categorical.len();
    // Bins from at most 200,000 training rows.
    let sampled: Vec<usize> = if train.rows > 200_000 {
        let mut s = sample(&mut rng, train.rows, 200_000).into_vec();
        s.sort_unstable();
        s
    } else {
        (0..train.rows).collect()
    };
    let max_bins = cfg.max_bins.clamp(2, usize::from(u16::MAX));
    let binnings: Vec<Binning> = (0..inputs)
        .map(|f| {
            if f < layout.numeric.len() {
                Binning::Numeric(thresholds(
                    sampled
                        .iter()
                        .map(|&i| train_inputs[i * inputs + f])
                        .collect(),
                    max_bins,
                ))
            } else {
                Binning::Categorical(layout.categorical[f - layout.numeric.len()].1)
            }
        })
        .collect();
    let mut offsets = vec![0];
    for b in &binnings {
        offsets.push(offsets.last().unwrap() + b.bins());
    }
    let bins = train_inputs
        .chunks_exact(inputs.max(1))
        .flat_map(|row| row.iter().zip(&binnings).map(|(&v, b)| b.bin(v)))
        .collect();
    let grower = Grower {
        cfg,
        penalty: Penalty {
            l1: cfg.lambda_l1,
            l2: cfg.lambda_l2,
        },
        bins,
        binnings,
        offsets,
        inputs,
    };

    let weight = |y: f32| if y > 0.5 { tc.positive_weight } else { 1.0 };
    let (wsum, wpos) = train.y.iter().fold((0.0, 0.0), |(s, p), &y| {
        (s + weight(y), p + if y > 0.5 { weight(y) } else { 0.0 })
    });
    let rate = (wpos / wsum).clamp(1e-6, 1.0 - 1e-6);
    let base = (rate / (1.0 - rate)).ln() as f32;
    let mut forest = Forest {
        base,
        roots: Vec::new(),
        nodes: Vec::new(),
        leaves: Vec::new(),
        categories: Vec::new(),
        numeric: layout.numeric.len(),
        flat: Flat::default(),
    };
    let mut importance = vec![Importance::default(); inputs];
    let mut raw = vec![f64::from(base); train.rows];
    let mut raw_valid = vec![f64::from(base); valid.rows];
    let (mut g, mut h) = (vec![0.0; train.rows], vec![0.0; train.rows]);
    let early = cfg.early_stopping > 0 && valid.rows > 0;
    let mut best: Option<(usize, f64, usize, usize, usize)> = None;
    for t in 0..cfg.trees.max(1) {
        for i in 0..train.rows {
            let p = 1.0 / (1.0 + (-raw[i]).exp());
            let (y, w) = (f64::from(train.y[i]), weight(train.y[i]));
            g[i] = w * (p - y);
            h[i] = (w * p * (1.0 - p)).max(1e-16);
        }
        let rows: Vec<u32> = if cfg.bagging_fraction < 1.0 {
            let n =
                ((train.rows as f64 * cfg.bagging_fraction).ceil() as usize).clamp(1, train.rows);
            let mut s: Vec<u32> = sample(&mut rng, train.rows, n)
                .into_iter()
                .map(|i| i as u32)
                .collect();
            s.sort_unstable();
            s
        } else {
            (0..train.rows as u32).collect()
        };
        let features: Vec<usize> = if cfg.feature_fraction < 1.0 && inputs > 1 {
            let n = ((inputs as f64 * cfg.feature_fraction).ceil() as usize).clamp(1, inputs);
            let mut s = sample(&mut rng, inputs, n).into_vec();
            s.sort_unstable();
            s
        } else {
            (0..inputs).collect()
        };
        let root = grow_tree(
            &grower,
            &mut forest,
            &mut importance,
            rows,
            &features,
            &g,
            &h,
            cfg.learning_rate,
        );
        forest.roots.push(root);
        // The serving path's own walk over the rows' values: the scores kept here are the
        // scores the runtime gives.
        for (z, row) in raw.iter_mut().zip(train_inputs.chunks_exact(inputs.max(1))) {
            *z += f64::from(forest.leaves[forest.leaf_of(root, row) as usize]);
        }
        for (z, row) in raw_valid
            .iter_mut()
            .zip(valid_inputs.chunks_exact(inputs.max(1)))
        {
            *z += f64::from(forest.leaves[forest.leaf_of(root, row) as usize]);
        }
        if raw.iter().any(|z| !z.is_finite()) {
            return Err(ModelError::Diverged {
                at: format!("tree {}", t + 1),
            });
        }
        let valid_loss = (valid.rows > 0).then(|| {
            let p: Vec<f32> = raw_valid.iter().map(|&z| sigmoid(z as f32)).collect();
            log_loss(&p, &valid.y)
        });
        let done = t + 1 == cfg.trees.max(1);
        let mut stop = false;
        if let (true, Some(loss)) = (early, valid_loss) {
            if best.is_none_or(|b| loss < b.1) {
                best = Some((
                    t + 1,
                    loss,
                    forest.nodes.len(),
                    forest.leaves.len(),
                    forest.categories.len(),
                ));
            } else if best.is_some_and(|b| t + 1 - b.0 >= cfg.early_stopping) {
                stop = true;
            }
        }
        if (t + 1) % REPORT_EVERY == 0 || done || stop {
            let p: Vec<f32> = raw.iter().map(|&z| sigmoid(z as f32)).collect();
            let report = EpochReport {
                epoch: (t + 1) as u32,
                epochs: cfg.trees as u32,
                loss: log_loss(&p, &train.y),
                valid_loss,
            };
            if on_round(report).is_break() {
                return Err(ModelError::Cancelled);
            }
        }
        if stop {
            break;
        }
    }
    if let Some((trees, _, nodes, leaves, categories)) = best {
        forest.roots.truncate(trees);
        forest.nodes.truncate(nodes);
        forest.leaves.truncate(leaves);
        forest.categories.truncate(categories);
    }
    forest.flat = Flat::of(&forest);
    Ok((forest, importance))
}

/// Grow one tree leaf-wise on `rows`, appending its nodes and leaves to `forest`; returns
/// its root.
#[allow(clippy::too_many_arguments)]
fn grow_tree(
    grower: &Grower,
    forest: &mut Forest,
    importance: &mut [Importance],
    rows: Vec<u32>,
    features: &[usize],
    g: &[f64],
    h: &[f64],
    learning_rate: f64,
) -> Child {
    let cfg = grower.cfg;
    let hist = grower.histogram(&rows, g, h);
    let mut stats = Stats::default();
    for &r in &rows {
        stats.add(Stats {
            g: g[r as usize],
            h: h[r as usize],
            n: 1,
        });
    }
    let mut leaves = vec![Growing {
        best: grower.best_split(&hist, stats, features),
        rows,
        hist,
        stats,
        depth: 0,
        parent: None,
    }];
    let mut root = None;
    let can_split =
        |l: &Growing| l.best.is_some() && (cfg.max_depth == 0 || l.depth < cfg.max_depth);
    while leaves.len() < cfg.num_leaves.max(2) {
        let Some(k) = (0..leaves.len())
            .filter(|&k| can_split(&leaves[k]))
            .max_by(|&a, &b| {
                let (ga, gb) = (
                    leaves[a].best.as_ref().unwrap().gain,
                    leaves[b].best.as_ref().unwrap().gain,
                );
                // The first of equal gains.
                ga.total_cmp(&gb).then(b.cmp(&a))
            })
        else {
            break;
        };
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
            // Set when the children become leaves or nodes.
            left: Child::Leaf(u32::MAX),
            right: Child::Leaf(u32::MAX),
        });
        attach(forest, &mut root, leaf.parent, Child::Node(node as u32));
        importance[split.feature].gain += split.gain;
        importance[split.feature].splits += 1;
        let (left_rows, right_rows): (Vec<u32>, Vec<u32>) = leaf
            .rows
            .iter()
            .partition(|&&r| grower.goes_left(&split, r as usize));
        let (small, large) = if left_rows.len() <= right_rows.len() {
            (&left_rows, true)
        } else {
            (&right_rows, false)
        };
        let small_hist = grower.histogram(small, g, h);
        let large_hist: Vec<Stats> = leaf
            .hist
            .iter()
            .zip(&small_hist)
            .map(|(p, s)| p.minus(*s))
            .collect();
        let (left_hist, right_hist) = if large {
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
            });
        }
    }
    // Leaves in the order they hang, for a deterministic layout.
    leaves.sort_by_key(|l| l.parent);
    for leaf in leaves {
        let value = (grower.penalty.value(leaf.stats) * learning_rate) as f32;
        let index = forest.leaves.len() as u32;
        forest.leaves.push(value);
        attach(forest, &mut root, leaf.parent, Child::Leaf(index));
    }
    root.expect("a tree has a root")
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
        let mut inputs = Vec::new();
        let one_by_one: Vec<f64> = (0..test.rows)
            .map(|i| {
                inputs_of(&lay, test.row(i), &mut inputs);
                forest.raw_score(&inputs)
            })
            .collect();
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
