//! The response networks' forward pass on plain arrays, one row at a time, for the few
//! rows of a served request.
//!
//! candle allocates a tensor for every operation (an embedding lookup, a concatenation, a
//! matrix product, a bias, a ReLU), which for one record of a 10-member MLP is about eighty
//! allocations and most of the model's time. Here the weights are copied once, at load
//! time, into arrays laid out input by input (`in × out`: PyTorch's `[out, in]`
//! transposed), and a row goes through a layer as `y = b + Σᵢ xᵢ · wᵢ` over the inputs
//! that are not zero, buffers reused from layer to layer. A one-hot block or a ReLU
//! output is mostly zeros, so most rows of the weights are never read.
//!
//! Each output's sum runs over the inputs in their order (no fused multiply-add), so a
//! row's score is the same bits on every machine and does not depend on the other rows of
//! its request. It differs from candle's matrix product, which sums in another order, by
//! rounding only: the parity tests hold both to burn's forward pass within 1e-5.
//!
//! A row reads every weight of the model once: for one record that is the floor (the
//! weights of a 10-member MLP, about a megabyte, stream from the caches); for many rows
//! candle's matrix products, which reuse each weight across rows, are faster from about
//! five rows on, so a server takes this path for a few rows only
//! ([`crate::runtime::Runtime::with_plain_rows`]).

use crate::mlp::{InputLayout, category_of};
use crate::preprocess::Encoded;

/// A linear layer with its weights input by input.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    /// `in × out`, row `i` the weights of input `i`.
    w: Vec<f32>,
    /// `[out]`.
    b: Vec<f32>,
}

impl Layer {
    fn bytes(&self) -> u64 {
        ((self.w.len() + self.b.len()) * size_of::<f32>()) as u64
    }

    /// From the weights in `in × out` order and the bias.
    pub(crate) fn new(w: Vec<f32>, b: Vec<f32>) -> Layer {
        debug_assert!(!b.is_empty() && w.len().is_multiple_of(b.len()));
        Layer { w, b }
    }

    /// How many outputs the layer gives.
    pub(crate) fn outputs(&self) -> usize {
        self.b.len()
    }

    /// How many inputs the layer takes.
    pub(crate) fn inputs(&self) -> usize {
        self.w.len() / self.b.len()
    }

    /// `y ← b + Σᵢ xᵢ · wᵢ` over the inputs that are not zero (listed once in `nz`, without
    /// a branch per input: a ReLU's zeros fall at random), sixteen outputs at a time, their
    /// sums held in registers while the inputs go by.
    #[inline(always)]
    fn forward(&self, x: &[f32], nz: &mut Vec<usize>, y: &mut Vec<f32>) {
        nz.clear();
        nz.resize(x.len(), 0);
        let mut k = 0;
        for (i, &xi) in x.iter().enumerate() {
            nz[k] = i;
            k += usize::from(xi != 0.0);
        }
        nz.truncate(k);
        let n = self.b.len();
        y.clear();
        y.extend_from_slice(&self.b);
        let full = n - n % BLOCK;
        for (j, out) in y[..full].chunks_exact_mut(BLOCK).enumerate() {
            let mut sum = [0f32; BLOCK];
            sum.copy_from_slice(out);
            for &i in nz.iter() {
                let xi = x[i];
                let w = &self.w[i * n + j * BLOCK..][..BLOCK];
                for (s, w) in sum.iter_mut().zip(w) {
                    *s += xi * w;
                }
            }
            out.copy_from_slice(&sum);
        }
        for &i in nz.iter() {
            let xi = x[i];
            for (y, w) in y[full..].iter_mut().zip(&self.w[i * n + full..(i + 1) * n]) {
                *y += xi * w;
            }
        }
    }
}

/// Outputs summed together in registers.
const BLOCK: usize = 16;

/// A row's values between layers and the list of its inputs that are not zero, reused
/// from row to row.
#[derive(Default)]
struct Buffers {
    a: Vec<f32>,
    b: Vec<f32>,
    nz: Vec<usize>,
}

/// One member of a response model.
#[derive(Debug, Clone)]
pub(crate) enum DenseNet {
    /// Logistic regression: one layer of one output over the whole feature vector.
    Linear(Layer),
    /// The MLP: numeric inputs then each categorical column's embedding, the hidden
    /// layers with ReLU, one output.
    Mlp {
        /// Where the numeric inputs and the categorical blocks sit in a row.
        layout: InputLayout,
        /// Each categorical column's table (`categories × width`) and its width.
        embeddings: Vec<(Vec<f32>, usize)>,
        /// The hidden layers.
        hidden: Vec<Layer>,
        /// The output layer.
        output: Layer,
    },
}

impl DenseNet {
    /// The bytes of its arrays.
    pub(crate) fn bytes(&self) -> u64 {
        match self {
            DenseNet::Linear(layer) => layer.bytes(),
            DenseNet::Mlp {
                embeddings,
                hidden,
                output,
                ..
            } => {
                let tables: usize = embeddings.iter().map(|(t, _)| t.len()).sum();
                (tables * size_of::<f32>()) as u64
                    + hidden.iter().map(Layer::bytes).sum::<u64>()
                    + output.bytes()
            }
        }
    }

    /// The member's logit of every row of `data`.
    pub(crate) fn logits(&self, data: &Encoded) -> Vec<f32> {
        let mut buffers = Buffers::default();
        (0..data.rows)
            .map(|i| self.row_logit(data.row(i), &mut buffers))
            .collect()
    }

    #[inline(always)]
    fn row_logit(&self, row: &[f32], buffers: &mut Buffers) -> f32 {
        let Buffers { a, b, nz } = buffers;
        match self {
            DenseNet::Linear(layer) => {
                layer.forward(row, nz, a);
                a[0]
            }
            DenseNet::Mlp {
                layout,
                embeddings,
                hidden,
                output,
            } => {
                a.clear();
                a.extend(layout.numeric.iter().map(|&o| row[o]));
                for ((table, width), &block) in embeddings.iter().zip(&layout.categorical) {
                    let c = category_of(row, block);
                    a.extend_from_slice(&table[c * width..(c + 1) * width]);
                }
                for layer in hidden {
                    layer.forward(a, nz, b);
                    for v in b.iter_mut() {
                        *v = v.max(0.0);
                    }
                    std::mem::swap(a, b);
                }
                output.forward(a, nz, b);
                b[0]
            }
        }
    }
}
