//! The serving runtime: loads an artifact and scores raw records or forecasts from
//! histories with candle-core on the CPU; a request of a few rows goes through the
//! response networks on plain arrays instead ([`crate::dense`]: no allocation per
//! operation). No burn type is used here; the parity tests hold both paths equal to burn's
//! forward pass (within 1e-5).
//!
//! Rules at scoring time (documented in `docs/models.md`):
//! - a missing, NaN or infinite numeric value is the training mean (0 after scaling);
//! - an unseen or missing category takes the `other` slot (one-hot) or its hash bucket;
//! - a missing feature column is refused with the list of columns the data has;
//! - a series shorter than a member's input window is padded on the left with its first
//!   value; a series with NaN or infinite values is refused;
//! - a horizon longer than the model was trained for is refused;
//! - a prediction that is not finite is an error, never an answer.

use std::collections::HashMap;

use arrow::array::RecordBatch;
use candle_core::{Device, Tensor};

use crate::artifact::{Architecture, FORMAT, FORMAT_NUMERIC, Manifest};
use crate::dense::{DenseNet, Layer};
use crate::error::{ModelError, Result};
use crate::forecast::nbeats::{NBeatsConfig, history_windows, unscale};
use crate::forecast::{Series, check_series};
use crate::gbdt::Forest;
use crate::mlp::{InputLayout, MlpConfig};
use crate::preprocess::Encoded;

fn candle_err(e: candle_core::Error) -> ModelError {
    ModelError::Internal(format!("candle: {e}"))
}

/// A linear layer in PyTorch layout.
#[derive(Debug, Clone)]
struct Lin {
    /// `[out, in]`, stored transposed for the matmul.
    wt: Tensor,
    /// `[out]`.
    b: Tensor,
}

impl Lin {
    fn load(t: &HashMap<String, Tensor>, prefix: &str) -> Result<Lin> {
        let w = take(t, &format!("{prefix}.weight"))?;
        let b = take(t, &format!("{prefix}.bias"))?;
        Ok(Lin {
            wt: w.t().and_then(|w| w.contiguous()).map_err(candle_err)?,
            b,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.wt)
            .and_then(|y| y.broadcast_add(&self.b))
            .map_err(candle_err)
    }

    /// The same layer on plain arrays.
    fn dense(&self) -> Result<Layer> {
        Ok(Layer::new(floats(&self.wt)?, floats(&self.b)?))
    }
}

/// A tensor's values, row-major.
fn floats(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()
        .and_then(|v| v.to_vec1::<f32>())
        .map_err(candle_err)
}

fn take(t: &HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    t.get(name)
        .cloned()
        .ok_or_else(|| ModelError::Artifact(format!("weights file has no tensor {name}")))
}

#[derive(Debug, Clone)]
enum ResponseNet {
    Linear(Lin),
    Mlp {
        layout: InputLayout,
        embeddings: Vec<Tensor>,
        hidden: Vec<Lin>,
        output: Lin,
    },
}

impl ResponseNet {
    /// The same network on plain arrays, for requests of a few rows.
    fn dense(&self) -> Result<DenseNet> {
        Ok(match self {
            ResponseNet::Linear(lin) => DenseNet::Linear(lin.dense()?),
            ResponseNet::Mlp {
                layout,
                embeddings,
                hidden,
                output,
            } => {
                let embeddings: Vec<(Vec<f32>, usize)> = embeddings
                    .iter()
                    .zip(&layout.categorical)
                    .map(|(table, &(_, categories))| {
                        let dims = table.dims();
                        if dims.len() != 2 || dims[0] != categories {
                            return Err(ModelError::Artifact(format!(
                                "an embedding table is {dims:?} for a column of {categories} categories"
                            )));
                        }
                        Ok((floats(table)?, dims[1]))
                    })
                    .collect::<Result<_>>()?;
                let hidden: Vec<Layer> = hidden.iter().map(Lin::dense).collect::<Result<_>>()?;
                let output = output.dense()?;
                let widths = std::iter::once(
                    layout.numeric.len() + embeddings.iter().map(|(_, w)| w).sum::<usize>(),
                );
                let outs = hidden.iter().map(|l| l.outputs());
                for ((layer, want), k) in hidden
                    .iter()
                    .chain([&output])
                    .zip(widths.chain(outs))
                    .zip(0..)
                {
                    if layer.inputs() != want {
                        return Err(ModelError::Artifact(format!(
                            "layer {k} takes {} inputs where {want} come to it",
                            layer.inputs()
                        )));
                    }
                }
                DenseNet::Mlp {
                    layout: layout.clone(),
                    embeddings,
                    hidden,
                    output,
                }
            }
        })
    }
}

/// A member of a response model, in both forms.
#[derive(Debug, Clone)]
struct Member {
    candle: ResponseNet,
    dense: DenseNet,
}

impl Member {
    fn new(candle: ResponseNet) -> Result<Member> {
        Ok(Member {
            dense: candle.dense()?,
            candle,
        })
    }
}

#[derive(Debug, Clone)]
struct NBeatsNet {
    cfg: NBeatsConfig,
    blocks: Vec<(Vec<Lin>, Lin, Lin)>,
}

#[derive(Debug, Clone)]
enum Net {
    Response(Vec<Member>),
    Forecast(Vec<NBeatsNet>),
    /// The treated arm's and the control arm's models, and an X-learner's effect models
    /// with the treated share.
    Uplift(
        Box<Runtime>,
        Box<Runtime>,
        Option<(Box<Runtime>, Box<Runtime>, f32)>,
    ),
    /// Gradient-boosted trees: each member's forest, on the inputs of `layout`.
    Trees(Vec<Forest>, InputLayout),
    /// A blend's models and their weights.
    Blend(Vec<(Runtime, f64)>),
    /// k-means centres, row-major `k × dim`.
    KMeans {
        centers: Vec<f32>,
        dim: usize,
    },
}

/// A loaded artifact, ready to score.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The manifest.
    pub manifest: Manifest,
    /// The networks.
    pub runtime: Runtime,
}

impl LoadedModel {
    /// Load from the weights file's and the manifest's bytes.
    pub fn from_bytes(weights: &[u8], manifest: &[u8]) -> Result<LoadedModel> {
        let manifest: Manifest = serde_json::from_slice(manifest)
            .map_err(|e| ModelError::Artifact(format!("manifest: {e}")))?;
        if manifest.format != manifest.architecture.format() {
            return Err(ModelError::Artifact(format!(
                "manifest format {:?}, expected {FORMAT:?} or, for a model scoring numbers, {FORMAT_NUMERIC:?} (retrain the model with this Halyard)",
                manifest.format
            )));
        }
        let runtime = Runtime::new(manifest.architecture.clone(), weights)?;
        Ok(LoadedModel { manifest, runtime })
    }

    /// Response probabilities of raw records: see [`Runtime::score`].
    pub fn score(&self, batches: &[RecordBatch]) -> Result<Vec<f32>> {
        self.runtime.score(batches)
    }

    /// See [`Runtime::with_plain_rows`].
    pub fn with_plain_rows(mut self, rows: usize) -> LoadedModel {
        self.runtime = self.runtime.with_plain_rows(rows);
        self
    }

    /// Forecasts: see [`Runtime::forecast`].
    pub fn forecast(&self, series: &[Series], horizon: usize) -> Result<Vec<Vec<f64>>> {
        self.runtime.forecast(series, horizon)
    }
}

/// An architecture with its weights in candle tensors.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// What the weights are.
    pub architecture: Architecture,
    net: Net,
    /// Requests of at most this many rows go through the plain arrays (0, candle only,
    /// until [`Runtime::with_plain_rows`]: serving's `plain_rows` setting).
    plain_rows: usize,
}

const CPU: Device = Device::Cpu;

impl Runtime {
    /// Build from an architecture and its safetensors bytes.
    pub fn new(architecture: Architecture, weights: &[u8]) -> Result<Runtime> {
        if let Architecture::Uplift {
            treated,
            control,
            x_learner,
            ..
        } = &architecture
        {
            let arm = |a: &Architecture, prefix: &str| {
                Runtime::new(a.clone(), &crate::artifact::unprefixed(weights, prefix)?)
                    .map(Box::new)
            };
            let x = match x_learner {
                Some(x) => Some((
                    arm(&x.treated, "tau_treated.")?,
                    arm(&x.control, "tau_control.")?,
                    x.propensity as f32,
                )),
                None => None,
            };
            let net = Net::Uplift(arm(treated, "treated.")?, arm(control, "control.")?, x);
            return Ok(Runtime::of(architecture, net));
        }
        if let Architecture::Blend { parts } = &architecture {
            let net = Net::Blend(
                parts
                    .iter()
                    .enumerate()
                    .map(|(k, p)| {
                        let w = crate::artifact::unprefixed(weights, &format!("part.{k}."))?;
                        Ok((Runtime::new((*p.architecture).clone(), &w)?, p.weight))
                    })
                    .collect::<Result<_>>()?,
            );
            return Ok(Runtime::of(architecture, net));
        }
        let t = candle_core::safetensors::load_buffer(weights, &CPU)
            .map_err(|e| ModelError::Artifact(format!("weights file: {e}")))?;
        let net = match &architecture {
            Architecture::LogisticRegression {
                preprocessor,
                members,
            } => Net::Response(
                (0..*members)
                    .map(|k| {
                        let lin = Lin::load(&t, &format!("members.{k}.linear"))?;
                        let inputs = lin.wt.dims()[0];
                        if inputs != preprocessor.dim {
                            return Err(ModelError::Artifact(format!(
                                "weights have {inputs} inputs but the manifest's features have {}",
                                preprocessor.dim
                            )));
                        }
                        Member::new(ResponseNet::Linear(lin))
                    })
                    .collect::<Result<_>>()?,
            ),
            Architecture::Mlp {
                config, members, ..
            } => Net::Response(
                (0..*members)
                    .map(|k| Member::new(load_mlp(&t, &format!("members.{k}"), config)?))
                    .collect::<Result<_>>()?,
            ),
            Architecture::Gbdt {
                preprocessor,
                members,
                objective,
                ..
            } => {
                let layout = InputLayout::of(preprocessor);
                let forests = (0..*members)
                    .map(|k| {
                        let get = |name: &str| {
                            take(&t, &format!("members.{k}.{name}"))?
                                .flatten_all()
                                .and_then(|v| v.to_vec1::<f32>())
                                .map_err(candle_err)
                        };
                        let forest = Forest::from_tensors(get, &layout)?;
                        if forest.objective() != *objective {
                            return Err(ModelError::Artifact(format!(
                                "member {k}'s trees fit the {} objective, the manifest says {}",
                                forest.objective().name(),
                                objective.name()
                            )));
                        }
                        Ok(forest)
                    })
                    .collect::<Result<_>>()?;
                Net::Trees(forests, layout)
            }
            Architecture::Uplift { .. } | Architecture::Blend { .. } => {
                unreachable!("handled above")
            }
            Architecture::KMeans {
                preprocessor, k, ..
            } => {
                let c = t.get("centers").ok_or_else(|| {
                    ModelError::Artifact("weights file: no tensor \"centers\"".into())
                })?;
                if c.dims() != [*k, preprocessor.dim] {
                    return Err(ModelError::Artifact(format!(
                        "centres are {:?}, the manifest says {k} × {}",
                        c.dims(),
                        preprocessor.dim
                    )));
                }
                Net::KMeans {
                    centers: c
                        .flatten_all()
                        .and_then(|c| c.to_vec1::<f32>())
                        .map_err(candle_err)?,
                    dim: preprocessor.dim,
                }
            }
            Architecture::NBeats { config } => Net::Forecast(
                config
                    .members
                    .iter()
                    .enumerate()
                    .map(|(k, cfg)| load_nbeats(&t, &format!("members.{k}"), cfg))
                    .collect::<Result<_>>()?,
            ),
        };
        Ok(Runtime::of(architecture, net))
    }

    /// A runtime scoring with candle only until [`Runtime::with_plain_rows`].
    fn of(architecture: Architecture, net: Net) -> Runtime {
        Runtime {
            architecture,
            net,
            plain_rows: 0,
        }
    }

    /// Response probabilities of raw records (the training data's columns; the label may
    /// be absent).
    pub fn score(&self, batches: &[RecordBatch]) -> Result<Vec<f32>> {
        let pre = self.architecture.preprocessor().ok_or_else(|| {
            ModelError::Unsupported(
                "this model is a forecaster: ask it for a forecast, not a score".into(),
            )
        })?;
        let encoded = pre.transform(batches, |_| true)?;
        self.score_encoded(&encoded)
    }

    /// Response probabilities of preprocessed rows.
    pub fn score_encoded(&self, data: &Encoded) -> Result<Vec<f32>> {
        if let Net::Uplift(treated, control, x) = &self.net {
            if let Some((tau_t, tau_c, g)) = x {
                // τ = 2σ(z) − 1 of each effect model, blended by the treated share.
                let (a, b) = (tau_t.score_encoded(data)?, tau_c.score_encoded(data)?);
                return Ok(a
                    .iter()
                    .zip(&b)
                    .map(|(a, b)| g * (2.0 * b - 1.0) + (1.0 - g) * (2.0 * a - 1.0))
                    .collect());
            }
            let (t, c) = (treated.score_encoded(data)?, control.score_encoded(data)?);
            return Ok(t.iter().zip(&c).map(|(t, c)| t - c).collect());
        }
        if let Net::Blend(parts) = &self.net {
            let mut sum = vec![0f64; data.rows];
            for (part, weight) in parts {
                for (s, p) in sum.iter_mut().zip(part.score_encoded(data)?) {
                    *s += weight * f64::from(p);
                }
            }
            return Ok(sum.into_iter().map(|s| s as f32).collect());
        }
        if let Net::KMeans { centers, dim } = &self.net {
            return Ok((0..data.rows)
                .map(|i| crate::kmeans::nearest(data.row(i), centers, *dim).0 as f32)
                .collect());
        }
        let members = match &self.net {
            Net::Response(members) => members.len(),
            Net::Trees(forests, _) => forests.len(),
            _ => {
                return Err(ModelError::Unsupported(
                    "a forecaster cannot score rows".into(),
                ));
            }
        };
        if data.rows == 0 {
            return Ok(Vec::new());
        }
        // A member's score of its logit (or, for trees, of its sum of leaves).
        let output = match &self.net {
            Net::Trees(forests, _) => forests[0].objective(),
            _ => crate::gbdt::Objective::Binary,
        };
        let mut sum = vec![0f64; data.rows];
        for m in 0..members {
            let z = self.member_logits(m, data)?;
            for (s, z) in sum.iter_mut().zip(z) {
                *s += f64::from(output.output(f64::from(z)));
            }
        }
        let out: Vec<f32> = sum.iter().map(|s| (*s / members as f64) as f32).collect();
        if let Some(i) = out.iter().position(|p| !p.is_finite()) {
            return Err(ModelError::Internal(format!(
                "prediction for row {} is not finite",
                i + 1
            )));
        }
        Ok(out)
    }

    /// Values per row of [`Runtime::predict_encoded`]: 1 (the response probability), or 3
    /// for an uplift model (the uplift, the treated and the control arm's probabilities).
    pub fn outputs(&self) -> usize {
        match &self.net {
            Net::Uplift(..) => 3,
            Net::KMeans { centers, dim } => 1 + centers.len() / dim,
            _ => 1,
        }
    }

    /// Every row's [`Runtime::outputs`] values, row after row.
    pub fn predict_encoded(&self, data: &Encoded) -> Result<Vec<f32>> {
        if let Net::KMeans { centers, dim } = &self.net {
            let mut out = Vec::with_capacity(data.rows * self.outputs());
            for i in 0..data.rows {
                let row = data.row(i);
                out.push(crate::kmeans::nearest(row, centers, *dim).0 as f32);
                out.extend(centers.chunks(*dim).map(|c| {
                    row.iter()
                        .zip(c)
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum::<f32>()
                        .sqrt()
                }));
            }
            return Ok(out);
        }
        let Net::Uplift(treated, control, _) = &self.net else {
            return self.score_encoded(data);
        };
        let uplift = self.score_encoded(data)?;
        let (t, c) = (treated.score_encoded(data)?, control.score_encoded(data)?);
        Ok(uplift
            .iter()
            .zip(t.iter().zip(&c))
            .flat_map(|(u, (t, c))| [*u, *t, *c])
            .collect())
    }

    /// The treated and the control arm's probabilities of an uplift model's rows.
    pub fn arms_encoded(&self, data: &Encoded) -> Result<(Vec<f32>, Vec<f32>)> {
        match &self.net {
            Net::Uplift(t, c, _) => Ok((t.score_encoded(data)?, c.score_encoded(data)?)),
            _ => Err(ModelError::Unsupported(
                "only an uplift model has treated and control arms".into(),
            )),
        }
    }

    /// Log-odds of one member, before averaging (the parity tests compare these).
    fn logits(&self, member: &Member, data: &Encoded) -> Result<Vec<f32>> {
        if data.rows <= self.plain_rows {
            return Ok(member.dense.logits(data));
        }
        let z = match &member.candle {
            ResponseNet::Linear(lin) => {
                let x =
                    Tensor::from_slice(&data.x, (data.rows, data.dim), &CPU).map_err(candle_err)?;
                lin.forward(&x)?
            }
            ResponseNet::Mlp {
                layout,
                embeddings,
                hidden,
                output,
            } => mlp_forward(layout, embeddings, hidden, output, data)?,
        };
        z.flatten_all()
            .and_then(|z| z.to_vec1::<f32>())
            .map_err(candle_err)
    }

    /// The same runtime scoring requests of at most `rows` rows to a logistic regression
    /// or an MLP on plain arrays (0: always candle; `usize::MAX`: never candle), its parts'
    /// too.
    pub fn with_plain_rows(mut self, rows: usize) -> Runtime {
        self.plain_rows = rows;
        self.net = match self.net {
            Net::Uplift(t, c, x) => Net::Uplift(
                Box::new(t.with_plain_rows(rows)),
                Box::new(c.with_plain_rows(rows)),
                x.map(|(t, c, g)| {
                    (
                        Box::new(t.with_plain_rows(rows)),
                        Box::new(c.with_plain_rows(rows)),
                        g,
                    )
                }),
            ),
            Net::Blend(parts) => Net::Blend(
                parts
                    .into_iter()
                    .map(|(p, w)| (p.with_plain_rows(rows), w))
                    .collect(),
            ),
            net => net,
        };
        self
    }

    /// Bytes this runtime holds beyond its weights as read (about the weights file's
    /// size): a response model's plain-array copy of its weights, a forest's step layout and
    /// bit-vector tables; its parts' for an uplift model or a blend. The registry records
    /// the weights' size plus this as the memory a node needs to serve the version.
    pub fn derived_bytes(&self) -> u64 {
        match &self.net {
            Net::Response(members) => members.iter().map(|m| m.dense.bytes()).sum(),
            Net::Trees(forests, _) => forests.iter().map(Forest::derived_bytes).sum(),
            Net::Uplift(t, c, x) => {
                t.derived_bytes()
                    + c.derived_bytes()
                    + x.as_ref()
                        .map_or(0, |(t, c, _)| t.derived_bytes() + c.derived_bytes())
            }
            Net::Blend(parts) => parts.iter().map(|(p, _)| p.derived_bytes()).sum(),
            Net::Forecast(_) | Net::KMeans { .. } => 0,
        }
    }

    /// One member's log-odds, before averaging (for the parity tests).
    pub fn member_logits(&self, member: usize, data: &Encoded) -> Result<Vec<f32>> {
        match &self.net {
            Net::Response(m) => self.logits(&m[member], data),
            Net::Trees(forests, layout) => Ok(forests[member]
                .raw_scores(layout, data)
                .into_iter()
                .map(|z| z as f32)
                .collect()),
            Net::Forecast(_) => Err(ModelError::Unsupported("a forecaster has no logits".into())),
            Net::Uplift(..) => Err(ModelError::Unsupported(
                "an uplift model's logits are its arms'".into(),
            )),
            Net::Blend(..) => Err(ModelError::Unsupported(
                "a blend's logits are its parts'".into(),
            )),
            Net::KMeans { .. } => Err(ModelError::Unsupported(
                "a k-means model has no logits".into(),
            )),
        }
    }

    /// Forecast `horizon` steps after each series' history: the members' median, floored
    /// at 0 when the training series were never negative.
    pub fn forecast(&self, series: &[Series], horizon: usize) -> Result<Vec<Vec<f64>>> {
        let (Net::Forecast(members), Architecture::NBeats { config }) =
            (&self.net, &self.architecture)
        else {
            return Err(ModelError::Unsupported(
                "this model is a response model: ask it for scores, not a forecast".into(),
            ));
        };
        if horizon > config.horizon {
            return Err(ModelError::Unsupported(format!(
                "horizon {horizon} is longer than the {} steps the model was trained for: ask for at most {} or retrain with a longer horizon",
                config.horizon, config.horizon
            )));
        }
        for s in series {
            check_series(s)?;
        }
        if series.is_empty() {
            return Ok(Vec::new());
        }
        let per_member: Vec<Vec<Vec<f64>>> = members
            .iter()
            .map(|m| self.forecast_member(m, series))
            .collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(series.len());
        for (i, s) in series.iter().enumerate() {
            let mut f = Vec::with_capacity(horizon);
            for h in 0..horizon {
                let mut v: Vec<f64> = per_member.iter().map(|m| m[i][h]).collect();
                v.sort_by(f64::total_cmp);
                let mid = v.len() / 2;
                let med = if v.len() % 2 == 1 {
                    v[mid]
                } else {
                    0.5 * (v[mid - 1] + v[mid])
                };
                let med = if config.nonnegative {
                    med.max(0.0)
                } else {
                    med
                };
                if !med.is_finite() {
                    return Err(ModelError::Internal(format!(
                        "forecast of series {:?} step {} is not finite",
                        s.id,
                        h + 1
                    )));
                }
                f.push(med);
            }
            out.push(f);
        }
        Ok(out)
    }

    /// One member's forecasts, unfloored (the parity tests compare these).
    pub fn member_forecast(&self, member: usize, series: &[Series]) -> Result<Vec<Vec<f64>>> {
        match &self.net {
            Net::Forecast(m) => self.forecast_member(&m[member], series),
            Net::Response(_)
            | Net::Trees(..)
            | Net::Blend(..)
            | Net::Uplift(..)
            | Net::KMeans { .. } => Err(ModelError::Unsupported("not a forecaster".into())),
        }
    }

    fn forecast_member(&self, net: &NBeatsNet, series: &[Series]) -> Result<Vec<Vec<f64>>> {
        let cfg = &net.cfg;
        let b = series.len();
        let (xs, cs, scales) = history_windows(series, cfg);
        let x = Tensor::from_vec(xs, (b, cfg.input_size), &CPU).map_err(candle_err)?;
        let cov = if cfg.covariates > 0 {
            Some(
                Tensor::from_vec(
                    cs,
                    (b, cfg.covariates * (cfg.input_size + cfg.horizon)),
                    &CPU,
                )
                .map_err(candle_err)?,
            )
        } else {
            None
        };
        let mut residual = x;
        let mut forecast: Option<Tensor> = None;
        for (layers, backcast, head) in &net.blocks {
            let mut h = match &cov {
                Some(c) => Tensor::cat(&[&residual, c], 1).map_err(candle_err)?,
                None => residual.clone(),
            };
            for l in layers {
                h = l.forward(&h)?.relu().map_err(candle_err)?;
            }
            residual = (&residual - backcast.forward(&h)?).map_err(candle_err)?;
            let f = head.forward(&h)?;
            forecast = Some(match forecast {
                Some(acc) => (acc + f).map_err(candle_err)?,
                None => f,
            });
        }
        let out = forecast
            .ok_or_else(|| ModelError::Artifact("an N-BEATS member has no blocks".into()))?
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(candle_err)?;
        Ok(unscale(&out, cfg.horizon, &scales))
    }
}

fn load_mlp(t: &HashMap<String, Tensor>, prefix: &str, cfg: &MlpConfig) -> Result<ResponseNet> {
    let embeddings = (0..cfg.layout.categorical.len())
        .map(|c| take(t, &format!("{prefix}.embeddings.{c}.weight")))
        .collect::<Result<_>>()?;
    let hidden = (0..cfg.hidden.len())
        .map(|i| Lin::load(t, &format!("{prefix}.hidden.{i}")))
        .collect::<Result<_>>()?;
    Ok(ResponseNet::Mlp {
        layout: cfg.layout.clone(),
        embeddings,
        hidden,
        output: Lin::load(t, &format!("{prefix}.output"))?,
    })
}

fn load_nbeats(t: &HashMap<String, Tensor>, prefix: &str, cfg: &NBeatsConfig) -> Result<NBeatsNet> {
    let blocks = (0..cfg.blocks)
        .map(|k| {
            let p = format!("{prefix}.blocks.{k}");
            let layers = (0..cfg.layers)
                .map(|i| Lin::load(t, &format!("{p}.layers.{i}")))
                .collect::<Result<_>>()?;
            Ok((
                layers,
                Lin::load(t, &format!("{p}.backcast"))?,
                Lin::load(t, &format!("{p}.forecast"))?,
            ))
        })
        .collect::<Result<_>>()?;
    Ok(NBeatsNet {
        cfg: cfg.clone(),
        blocks,
    })
}

fn mlp_forward(
    layout: &InputLayout,
    embeddings: &[Tensor],
    hidden: &[Lin],
    output: &Lin,
    data: &Encoded,
) -> Result<Tensor> {
    let rows: Vec<usize> = (0..data.rows).collect();
    let (num, cat) = layout.split(data, &rows);
    let b = data.rows;
    let mut parts =
        vec![Tensor::from_vec(num, (b, layout.numeric.len()), &CPU).map_err(candle_err)?];
    let ncat = layout.categorical.len();
    for (c, table) in embeddings.iter().enumerate() {
        let idx: Vec<u32> = (0..b).map(|r| cat[r * ncat + c] as u32).collect();
        let idx = Tensor::from_vec(idx, b, &CPU).map_err(candle_err)?;
        parts.push(table.index_select(&idx, 0).map_err(candle_err)?);
    }
    let mut x = Tensor::cat(&parts, 1).map_err(candle_err)?;
    for l in hidden {
        x = l.forward(&x)?.relu().map_err(candle_err)?;
    }
    output.forward(&x)
}

/// The logistic function, stable for large |z|.
pub fn sigmoid(z: f32) -> f32 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}
