//! Rows through many small trees without walking them, after QuickScorer (Lucchese et al.,
//! SIGIR 2015). Each tree's leaves are numbered left to right and a row keeps, per tree, a
//! bit vector of the leaves it may still reach, all set at first. A split whose test the
//! row fails (it goes right) clears the leaves of the split's left subtree; once every
//! failed test has cleared its bits, a tree's lowest bit still set is the leaf the row's
//! walk would reach.
//!
//! Which splits on one input a row fails depends only on which interval of that input's
//! thresholds its value falls in (numeric), or on its category slot (categorical). So
//! each input keeps a table: for each interval or slot, every tree's mask with the bits
//! of all those failed splits cleared. A row looks up its interval (a binary search over
//! the input's distinct thresholds) and `and`s one row of masks per input into its bit
//! vectors: no row walks a tree, no step waits for the load before it, and the loop over
//! the trees is plain vector arithmetic. A missing value (NaN) has an interval of its own,
//! in which the splits that send missing values right fail. Inputs with few intervals
//! (most categorical columns) share a table with a row for each combination of their
//! intervals, up to [`MERGED_INTERVALS`] rows: one `and` per row for all of them.
//!
//! Each row's score adds the same leaves in the same order as [`super::Forest::raw_score`],
//! so the two agree bit for bit. [`ROWS`] rows are scored together so that their sums,
//! one dependent chain of additions each, overlap.
//!
//! The bit vectors are `u32` when every tree has at most 32 leaves, `u64` up to 64; the
//! tables take `intervals × trees` masks per input, and a forest whose tables would pass
//! [`TABLE_BYTES`], or with a tree of more than 64 leaves, is scored by the step walk.

use std::ops::BitAnd;

use super::{Child, Forest, inputs_of};
use crate::mlp::InputLayout;
use crate::preprocess::Encoded;

/// Rows scored together.
const ROWS: usize = 8;

/// Tables of inputs whose intervals multiply to at most this many are merged into one.
const MERGED_INTERVALS: usize = 64;

/// Trees whose masks [`and_rows`] combines at once.
const TREES: usize = 32;

/// The most memory the tables may take (64 MiB; a 500-tree forest of 31 leaves on a dozen
/// inputs binned in 255 takes about 6 MiB).
const TABLE_BYTES: usize = 64 << 20;

/// A tree's bit vector of reachable leaves.
pub(super) trait Mask: Copy + std::fmt::Debug + PartialEq + BitAnd<Output = Self> {
    const ALL: Self;
    const BITS: u32;
    /// The mask from the low bits of a 64-bit one.
    fn narrow(wide: u64) -> Self;
    /// The lowest bit set.
    fn first(self) -> u32;
}

impl Mask for u32 {
    const ALL: u32 = u32::MAX;
    const BITS: u32 = 32;
    fn narrow(wide: u64) -> u32 {
        wide as u32
    }
    fn first(self) -> u32 {
        self.trailing_zeros()
    }
}

impl Mask for u64 {
    const ALL: u64 = u64::MAX;
    const BITS: u32 = 64;
    fn narrow(wide: u64) -> u64 {
        wide
    }
    fn first(self) -> u32 {
        self.trailing_zeros()
    }
}

/// One or more inputs' masks: for each of their intervals (numeric) or slots
/// (categorical), a mask per tree.
#[derive(Debug, Clone, PartialEq)]
struct Table<M> {
    /// The inputs it reads; a table of several has a row of masks for each combination of
    /// their intervals.
    parts: Vec<Part>,
    /// `masks[interval * trees + tree]`.
    masks: Vec<M>,
    /// Whether an interval's masks clear any bit (those that do not are skipped).
    clears: Vec<bool>,
}

/// One input of a [`Table`].
#[derive(Debug, Clone, PartialEq)]
struct Part {
    /// The input's position in [`inputs_of`]'s row.
    input: usize,
    /// Numeric: the split thresholds, distinct and ascending; interval `i` holds the values
    /// above exactly `i` of them, interval `len + 1` the missing ones. Empty: categorical,
    /// the slot is the interval.
    thresholds: Vec<f32>,
    /// What one interval of this input counts for in the table's interval.
    stride: usize,
}

impl<M> Table<M> {
    /// The row of masks for a row's inputs.
    fn interval(&self, inputs: &[f32]) -> usize {
        self.parts
            .iter()
            .map(|p| {
                let value = inputs[p.input];
                let i = if p.thresholds.is_empty() {
                    value as usize
                } else if value.is_nan() {
                    p.thresholds.len() + 1
                } else {
                    p.thresholds.partition_point(|&t| t < value)
                };
                i * p.stride
            })
            .sum()
    }
}

impl<M: Mask> Table<M> {
    fn new(parts: Vec<Part>, masks: Vec<M>, trees: usize) -> Table<M> {
        let clears = masks
            .chunks_exact(trees.max(1))
            .map(|m| m.iter().any(|&m| m != M::ALL))
            .collect();
        Table {
            parts,
            masks,
            clears,
        }
    }

    fn intervals(&self, trees: usize) -> usize {
        self.masks.len() / trees.max(1)
    }

    /// One table for both: a row for each pair of their rows, the two `and`ed.
    fn merged(self, other: Table<M>, trees: usize) -> Table<M> {
        let n = other.intervals(trees);
        let mut masks = Vec::with_capacity(self.masks.len() * n);
        for a in self.masks.chunks_exact(trees) {
            for b in other.masks.chunks_exact(trees) {
                masks.extend(a.iter().zip(b).map(|(&a, &b)| a & b));
            }
        }
        let parts = self
            .parts
            .into_iter()
            .map(|p| Part {
                stride: p.stride * n,
                ..p
            })
            .chain(other.parts)
            .collect();
        Table::new(parts, masks, trees)
    }
}

/// A forest laid out for bit-vector scoring.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct BitForest<M> {
    /// Where each tree's leaves start in `leaves`, and one past the last tree's.
    leaf_starts: Vec<u32>,
    /// Every tree's leaf values, left to right.
    leaves: Vec<f64>,
    /// The inputs some split uses.
    tables: Vec<Table<M>>,
}

/// The forest in the width its trees need.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Bits {
    Narrow(BitForest<u32>),
    Wide(BitForest<u64>),
}

impl Bits {
    /// `None` when a tree has more than 64 leaves, the tables would pass [`TABLE_BYTES`] or
    /// there are no trees.
    pub(super) fn of(forest: &Forest, layout: &InputLayout) -> Option<Bits> {
        const NARROW: usize = <u32 as Mask>::BITS as usize;
        const WIDE: usize = <u64 as Mask>::BITS as usize;
        let numbered = Numbered::of(forest);
        let made = match numbered.widest {
            0 => Err("the forest has no trees".to_string()),
            1..=NARROW => BitForest::of(forest, layout, numbered).map(Bits::Narrow),
            w if w <= WIDE => BitForest::of(forest, layout, numbered).map(Bits::Wide),
            widest => Err(format!("a tree has {widest} leaves, more than {WIDE}")),
        };
        made.map_err(|why| tracing::debug!(%why, "trees scored by walking them, not by tables"))
            .ok()
    }

    /// How many inputs each table reads, in the tables' order (for the tests).
    #[cfg(test)]
    pub(super) fn inputs_per_table(&self) -> Vec<usize> {
        match self {
            Bits::Narrow(f) => f.tables.iter().map(|t| t.parts.len()).collect(),
            Bits::Wide(f) => f.tables.iter().map(|t| t.parts.len()).collect(),
        }
    }

    /// The bytes of the tables and the leaves.
    pub(super) fn bytes(&self) -> u64 {
        match self {
            Bits::Narrow(f) => f.bytes(),
            Bits::Wide(f) => f.bytes(),
        }
    }

    /// Add each row's leaves to `out` (which holds the base score).
    pub(super) fn add_scores(&self, layout: &InputLayout, data: &Encoded, out: &mut [f64]) {
        match self {
            Bits::Narrow(f) => f.add_scores(layout, data, out),
            Bits::Wide(f) => f.add_scores(layout, data, out),
        }
    }
}

/// A split found while numbering a tree's leaves, with the mask that clears its left
/// subtree's leaves.
struct Found {
    node: u32,
    tree: u32,
    mask: u64,
}

/// Every tree's leaves numbered left to right, and its splits.
struct Numbered {
    /// Every tree's leaf values, left to right.
    leaves: Vec<f64>,
    /// Where each tree's leaves start in `leaves`, and one past the last tree's.
    leaf_starts: Vec<u32>,
    found: Vec<Found>,
    /// The most leaves of one tree (0: no trees).
    widest: usize,
}

impl Numbered {
    fn of(forest: &Forest) -> Numbered {
        let mut n = Numbered {
            leaves: Vec::new(),
            leaf_starts: vec![0],
            found: Vec::with_capacity(forest.nodes.len()),
            widest: 0,
        };
        for (t, &root) in forest.roots.iter().enumerate() {
            let start = n.leaves.len();
            number(forest, root, t as u32, start, &mut n.leaves, &mut n.found);
            n.widest = n.widest.max(n.leaves.len() - start);
            n.leaf_starts.push(n.leaves.len() as u32);
        }
        n
    }
}

impl<M: Mask> BitForest<M> {
    /// The tables of `forest`, numbered (its trees fit `M`); why not, when they would pass
    /// [`TABLE_BYTES`].
    fn of(
        forest: &Forest,
        layout: &InputLayout,
        numbered: Numbered,
    ) -> Result<BitForest<M>, String> {
        let Numbered {
            leaves,
            leaf_starts,
            found,
            ..
        } = numbered;
        let trees = forest.roots.len();
        let node = |f: &Found| forest.nodes[f.node as usize];
        let numeric = layout.numeric.len();
        let mut by_input: Vec<Vec<&Found>> = vec![Vec::new(); numeric + layout.categorical.len()];
        for f in &found {
            by_input[node(f).feature as usize].push(f);
        }
        // Numeric inputs' splits by threshold, and their distinct thresholds.
        let thresholds: Vec<Vec<f32>> = by_input[..numeric]
            .iter_mut()
            .map(|splits| {
                splits.sort_by(|a, b| node(a).threshold.total_cmp(&node(b).threshold));
                let mut t: Vec<f32> = splits.iter().map(|f| node(f).threshold).collect();
                t.dedup_by(|a, b| a == b);
                t
            })
            .collect();
        let intervals = |input: usize| match input.checked_sub(numeric) {
            None => thresholds[input].len() + 2,
            Some(c) => layout.categorical[c].1,
        };
        let mut bytes: usize = (0..by_input.len())
            .filter(|&i| !by_input[i].is_empty())
            .map(|i| intervals(i) * trees * size_of::<M>())
            .sum();
        if bytes > TABLE_BYTES {
            return Err(format!(
                "the tables would take {} MiB, more than {}",
                bytes >> 20,
                TABLE_BYTES >> 20
            ));
        }
        let clear = |masks: &mut [M], f: &Found| {
            let m = &mut masks[f.tree as usize];
            *m = *m & M::narrow(f.mask);
        };
        let mut tables = Vec::new();
        for (input, splits) in by_input.iter().enumerate() {
            if splits.is_empty() {
                continue;
            }
            let mut masks = vec![M::ALL; intervals(input) * trees];
            let thresholds = match thresholds.get(input) {
                Some(thresholds) => {
                    // Interval 0 fails no split; interval i + 1 also fails those at the
                    // i-th threshold.
                    let mut next = splits.iter().peekable();
                    for (i, &t) in thresholds.iter().enumerate() {
                        let (done, rest) = masks.split_at_mut((i + 1) * trees);
                        let row = &mut rest[..trees];
                        row.copy_from_slice(&done[i * trees..]);
                        while let Some(f) = next.next_if(|f| node(f).threshold <= t) {
                            clear(row, f);
                        }
                    }
                    let missing = thresholds.len() + 1;
                    for f in splits.iter().filter(|f| !node(f).missing_left) {
                        clear(&mut masks[missing * trees..][..trees], f);
                    }
                    thresholds.clone()
                }
                None => {
                    for f in splits {
                        let n = node(f);
                        for slot in 0..intervals(input) {
                            let left = match n.categorical {
                                Some(offset) => forest.categories[offset as usize + slot],
                                None => {
                                    super::numeric_left(slot as f32, n.threshold, n.missing_left)
                                }
                            };
                            if !left {
                                clear(&mut masks[slot * trees..][..trees], f);
                            }
                        }
                    }
                    Vec::new()
                }
            };
            tables.push(Table::new(
                vec![Part {
                    input,
                    thresholds,
                    stride: 1,
                }],
                masks,
                trees,
            ));
        }
        // Inputs with few intervals (most categorical columns) share a table: one `and`
        // per row instead of one per input, for a few more rows of masks.
        tables.sort_by_key(|t| t.intervals(trees));
        while tables.len() >= 2 {
            let (a, b) = (tables[0].intervals(trees), tables[1].intervals(trees));
            let more = (a * b).saturating_sub(a + b) * trees * size_of::<M>();
            if a * b > MERGED_INTERVALS || bytes + more > TABLE_BYTES {
                break;
            }
            bytes += more;
            let first = tables.remove(0);
            let second = tables.remove(0);
            let merged = first.merged(second, trees);
            let at = tables.partition_point(|t| t.intervals(trees) <= merged.intervals(trees));
            tables.insert(at, merged);
        }
        Ok(BitForest {
            leaf_starts,
            leaves,
            tables,
        })
    }

    fn bytes(&self) -> u64 {
        let tables: usize = self
            .tables
            .iter()
            .map(|t| {
                t.masks.len() * size_of::<M>()
                    + t.parts.iter().map(|p| p.thresholds.len()).sum::<usize>() * size_of::<f32>()
                    + t.clears.len()
            })
            .sum();
        (tables + self.leaves.len() * size_of::<f64>() + self.leaf_starts.len() * size_of::<u32>())
            as u64
    }

    fn add_scores(&self, layout: &InputLayout, data: &Encoded, out: &mut [f64]) {
        let trees = self.leaf_starts.len() - 1;
        let mut reach = vec![M::ALL; ROWS.min(out.len()) * trees];
        let mut inputs = Vec::new();
        let mut rows: Vec<&[M]> = Vec::with_capacity(self.tables.len());
        for (b, scores) in out.chunks_mut(ROWS).enumerate() {
            for (i, reach) in reach.chunks_exact_mut(trees).take(scores.len()).enumerate() {
                inputs_of(layout, data.row(b * ROWS + i), &mut inputs);
                rows.clear();
                rows.extend(self.tables.iter().filter_map(|table| {
                    let interval = table.interval(&inputs);
                    let masks = &table.masks[interval * trees..][..trees];
                    table.clears[interval].then_some(masks)
                }));
                and_rows(&rows, reach);
            }
            if let Ok(scores) = <&mut [f64; ROWS]>::try_from(&mut *scores) {
                self.add_leaves(&reach, scores);
            } else {
                for (reach, z) in reach.chunks_exact(trees).zip(scores) {
                    self.add_leaves(reach, std::array::from_mut(z));
                }
            }
        }
    }

    /// Add to each of `N` sums its row's leaves, tree by tree (the order of
    /// [`super::Forest::raw_score`]); `reach` holds the rows' bit vectors one row after the
    /// other. The rows' chains of additions overlap.
    fn add_leaves<const N: usize>(&self, reach: &[M], z: &mut [f64; N]) {
        let trees = self.leaf_starts.len() - 1;
        let rows: [&[M]; N] = std::array::from_fn(|k| &reach[k * trees..][..trees]);
        for (t, ends) in self.leaf_starts.windows(2).enumerate() {
            let leaves = &self.leaves[ends[0] as usize..ends[1] as usize];
            for (z, row) in z.iter_mut().zip(rows) {
                *z += leaves[row[t].first() as usize];
            }
        }
    }
}

/// `out[t]`: the `and` of every row's `t`-th mask, [`TREES`] trees at a time in registers.
fn and_rows<M: Mask>(rows: &[&[M]], out: &mut [M]) {
    let mut chunks = out.chunks_exact_mut(TREES);
    let mut at = 0;
    for out in &mut chunks {
        let mut acc = [M::ALL; TREES];
        for row in rows {
            let row: &[M; TREES] = row[at..at + TREES]
                .try_into()
                .unwrap_or_else(|_| unreachable!());
            for (a, &m) in acc.iter_mut().zip(row) {
                *a = *a & m;
            }
        }
        out.copy_from_slice(&acc);
        at += TREES;
    }
    for (j, out) in chunks.into_remainder().iter_mut().enumerate() {
        *out = rows.iter().fold(M::ALL, |a, row| a & row[at + j]);
    }
}

/// Number the leaves of the subtree at `at` left to right from `leaves.len()` (the tree's
/// first leaf at `tree_start`), pushing their values, and record each split with the mask
/// that clears its left subtree's leaves.
fn number(
    forest: &Forest,
    at: Child,
    tree: u32,
    tree_start: usize,
    leaves: &mut Vec<f64>,
    found: &mut Vec<Found>,
) {
    match at {
        Child::Leaf(l) => leaves.push(f64::from(forest.leaves[l as usize])),
        Child::Node(n) => {
            let node = forest.nodes[n as usize];
            let lo = leaves.len() - tree_start;
            number(forest, node.left, tree, tree_start, leaves, found);
            let hi = leaves.len() - tree_start;
            // Past 64 leaves the mask is meaningless; such a forest is refused.
            let left = if hi - lo >= 64 || lo >= 64 {
                0
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            found.push(Found {
                node: n,
                tree,
                mask: !left,
            });
            number(forest, node.right, tree, tree_start, leaves, found);
        }
    }
}
