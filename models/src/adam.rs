//! AdamW in one pass over each parameter, on every core.
//!
//! burn's `Adam` and `AdamW` update a parameter in about a dozen element-wise tensor
//! operations (scale, square, add, square root, divide, each a new tensor), each on one
//! thread: on the N-BEATS member's 6.3 million parameters that is 13–35 ms of a ~230 ms step
//! (benches/RESULTS.md). [`FusedAdamW`] reads the parameter, its gradient and both moments
//! once, writes the parameter and the moments once, in chunks spread over the rayon pool,
//! updating burn's own buffers in place where the backend hands them over unshared.
//!
//! The arithmetic is burn's `AdamW` (bias-corrected moments, decoupled weight decay); with
//! no weight decay it is Adam (burn's `Adam` computes the same quantity in another order, so
//! the two agree to rounding, not bit for bit). The state is burn's `AdamWState`, so a
//! checkpoint of the optimiser's record has burn's layout. Where the tensors are not `f32`
//! on the CPU (a GPU device keeps burn's own kernels) the step is burn's `AdamW`.

use burn::optim::{
    AdamW as BurnAdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate,
    ModuleOptimizer, Optimizer,
};
use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;

use crate::device::Placement;

/// burn's defaults for both moments and the denominator's epsilon.
const BETA_1: f32 = 0.9;
const BETA_2: f32 = 0.999;
const EPSILON: f32 = 1e-5;

/// Elements one rayon task updates: small tensors (biases) stay on the calling thread.
const CHUNK: usize = 1 << 16;

/// AdamW's constants and its update of flat `f32` slices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AdamW {
    pub(crate) beta_1: f32,
    pub(crate) beta_2: f32,
    pub(crate) epsilon: f32,
    pub(crate) weight_decay: f32,
}

impl AdamW {
    /// burn's defaults with this decoupled weight decay (0 for Adam).
    pub(crate) fn new(weight_decay: f32) -> AdamW {
        AdamW {
            beta_1: BETA_1,
            beta_2: BETA_2,
            epsilon: EPSILON,
            weight_decay,
        }
    }

    /// Step `t` (from 1): the moments `m`, `v` take in the gradient `g`, and the
    /// parameters `p` move by the bias-corrected update. Above [`CHUNK`] elements the work
    /// is spread over the current rayon pool (the same bits: each element's update depends
    /// on that element alone).
    pub(crate) fn step(
        &self,
        t: u64,
        lr: f64,
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
    ) {
        let k = Update::new(self, t, lr);
        if p.len() <= CHUNK {
            return k.apply(p, g, m, v);
        }
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| k.apply(p, g, m, v));
    }
}

/// One step's constants.
#[derive(Debug, Clone, Copy)]
struct Update {
    b1: f32,
    b2: f32,
    /// `1 - b1`, `1 - b2`.
    f1: f32,
    f2: f32,
    /// The bias corrections `1 - b^t`.
    c1: f32,
    c2: f32,
    epsilon: f32,
    /// `1 - lr · weight_decay`.
    decay: f32,
    lr: f32,
}

impl Update {
    fn new(a: &AdamW, t: u64, lr: f64) -> Update {
        let (b1, b2) = (a.beta_1, a.beta_2);
        Update {
            b1,
            b2,
            f1: 1.0 - b1,
            f2: 1.0 - b2,
            c1: 1.0 - b1.powi(t as i32),
            c2: 1.0 - b2.powi(t as i32),
            epsilon: a.epsilon,
            decay: (1.0 - lr * f64::from(a.weight_decay)) as f32,
            lr: lr as f32,
        }
    }

    /// The update of one run of elements, in burn's order of operations.
    fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = *m * self.b1 + *g * self.f1;
            *v = *v * self.b2 + *g * *g * self.f2;
            let delta = (*m / self.c1) / ((*v / self.c2).sqrt() + self.epsilon);
            *p = *p * self.decay - delta * self.lr;
        }
    }
}

/// burn's `Optimizer` with the fused update, for CPU tensors ([`adamw`] chooses by
/// placement).
#[derive(Clone)]
struct FusedAdamW {
    adam: AdamW,
    /// The steps of tensors this optimiser does not fuse.
    burn: BurnAdamW,
}

impl FusedAdamW {
    /// AdamW with burn's defaults and this decoupled weight decay (0: Adam).
    fn new(weight_decay: f32) -> FusedAdamW {
        FusedAdamW {
            adam: AdamW::new(weight_decay),
            burn: burn_config(weight_decay).build(),
        }
    }
}

fn burn_config(weight_decay: f32) -> AdamWConfig {
    AdamWConfig::new()
        .with_beta_1(BETA_1)
        .with_beta_2(BETA_2)
        .with_epsilon(EPSILON)
        .with_weight_decay(weight_decay)
}

/// The training loops' optimiser: [`FusedAdamW`] on the CPU, burn's `AdamW` (its own
/// kernels) on a GPU. `weight_decay` 0 is Adam.
pub fn adamw(weight_decay: f32, placement: Placement) -> ModuleOptimizer {
    match placement {
        Placement::Cpu => ModuleOptimizer::from(FusedAdamW::new(weight_decay)),
        Placement::Gpu => burn_config(weight_decay).init(),
    }
}

/// Whether [`FusedAdamW`] updates this parameter itself: `f32` tensors and moments, no
/// AMSGrad maximum (burn's record may carry one; this optimiser never makes one).
fn fusable<const D: usize>(
    tensor: &Tensor<D>,
    grad: &Tensor<D>,
    state: Option<&AdamWState<D>>,
) -> bool {
    let f32_state = state.is_none_or(|s| {
        s.momentum.max_moment_2.is_none()
            && s.momentum.moment_1.dtype() == DType::F32
            && s.momentum.moment_2.dtype() == DType::F32
    });
    f32_state && tensor.dtype() == DType::F32 && grad.dtype() == DType::F32
}

/// The values of a tensor read with `into_data`, which on burn's flex backend is the
/// tensor's own buffer when it is unshared (no copy).
fn f32s(data: &mut TensorData) -> &mut [f32] {
    data.as_mut_slice::<f32>()
        .expect("the optimiser checked that its tensors are f32")
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        if !fusable(&tensor, &grad, state.as_ref()) {
            return self.burn.step(lr, tensor, grad, state);
        }
        let device = tensor.device();
        let shape = tensor.shape();
        let (time, mut m, mut v) = match state {
            Some(s) => (
                s.momentum.time + 1,
                s.momentum.moment_1.into_data(),
                s.momentum.moment_2.into_data(),
            ),
            None => {
                let zeros = || TensorData::new(vec![0f32; shape.num_elements()], shape.clone());
                (1, zeros(), zeros())
            }
        };
        let (mut p, mut g) = (tensor.into_data(), grad.into_data());
        self.adam.step(
            time as u64,
            lr,
            f32s(&mut p),
            f32s(&mut g),
            f32s(&mut m),
            f32s(&mut v),
        );
        let moments = AdaptiveMomentumState::new(
            time,
            Tensor::from_data(m, &device),
            Tensor::from_data(v, &device),
        );
        (
            Tensor::from_data(p, &device),
            Some(AdamWState::new(moments)),
        )
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{AdamConfig, GradientsParams};

    use super::*;
    use crate::device::{to_vec, training_device};

    /// Two layers: one above [`CHUNK`] elements (the parallel path), the rest below it.
    #[derive(Module, Debug)]
    struct Net {
        big: Linear,
        small: Linear,
    }

    impl Net {
        fn new(device: &Device) -> Net {
            Net {
                big: LinearConfig::new(300, 300).init(device),
                small: LinearConfig::new(300, 3).init(device),
            }
        }

        fn loss(&self, step: usize, device: &Device) -> Tensor<1> {
            let x: Vec<f32> = (0..8 * 300)
                .map(|i| ((i * 31 + step * 17) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let x = Tensor::<2>::from_data(TensorData::new(x, [8, 300]), device);
            self.small
                .forward(self.big.forward(x).tanh())
                .powi_scalar(2)
                .mean()
        }
    }

    /// Every parameter of `net`, in visiting order.
    fn weights(net: &Net) -> Vec<f32> {
        let bias = |l: &Linear| l.bias.as_ref().expect("a bias").val();
        [
            to_vec(net.big.weight.val()),
            to_vec(bias(&net.big)),
            to_vec(net.small.weight.val()),
            to_vec(bias(&net.small)),
        ]
        .into_iter()
        .flat_map(|w| w.expect("f32 weights"))
        .collect()
    }

    /// Twenty steps of the same net from the same weights, with `ours` and with `theirs`.
    fn train_both(mut ours: ModuleOptimizer, mut theirs: ModuleOptimizer) -> (Vec<f32>, Vec<f32>) {
        let device = training_device(Placement::Cpu, 7).expect("the CPU device");
        let start = Net::new(&device);
        let (mut a, mut b) = (start.clone(), start);
        for step in 0..20 {
            let lr = 1e-2 / (1.0 + step as f64);
            let grads = GradientsParams::from_grads(a.loss(step, &device).backward(), &a);
            a = ours.step(lr, a, grads);
            let grads = GradientsParams::from_grads(b.loss(step, &device).backward(), &b);
            b = theirs.step(lr, b, grads);
        }
        (weights(&a), weights(&b))
    }

    #[test]
    fn the_fused_step_is_burns_adamw_bit_for_bit() {
        let (ours, theirs) = train_both(adamw(0.05, Placement::Cpu), burn_config(0.05).init());
        assert_eq!(ours.len(), 300 * 300 + 300 + 3 * 300 + 3);
        let moved = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
        assert_eq!(moved, 0, "{moved} weights differ from burn's AdamW");
    }

    #[test]
    fn without_weight_decay_it_is_burns_adam_to_rounding() {
        let (ours, theirs) = train_both(adamw(0.0, Placement::Cpu), AdamConfig::new().init());
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-6, "largest difference from burn's Adam: {worst}");
        // The weights moved: the comparison is not of two untouched nets.
        let device = training_device(Placement::Cpu, 7).expect("the CPU device");
        let start = weights(&Net::new(&device));
        assert!(start.iter().zip(&ours).filter(|(a, b)| a != b).count() > ours.len() / 2);
    }

    /// The comparisons above hold whichever path a step takes: this checks that the
    /// training loops' tensors take the fused one.
    #[test]
    fn training_tensors_take_the_fused_path() {
        let device = training_device(Placement::Cpu, 7).expect("the CPU device");
        let net = Net::new(&device);
        let w = net.big.weight.val().inner();
        let g = w.clone().mul_scalar(0.5);
        assert!(fusable(&w, &g, None));
        let moments = |m2: Option<Tensor<2>>| {
            let mut m = AdaptiveMomentumState::new(3, g.clone(), g.clone());
            m.max_moment_2 = m2;
            AdamWState::new(m)
        };
        assert!(fusable(&w, &g, Some(&moments(None))));
        assert!(!fusable(&w, &g, Some(&moments(Some(g.clone())))));
        let wide = w.clone().cast(DType::F64);
        assert!(!fusable(&wide, &g, None));
    }

    #[test]
    fn the_parallel_update_is_the_serial_one() {
        let adam = AdamW::new(0.01);
        let n = 3 * CHUNK + 5;
        let g: Vec<f32> = (0..n).map(|i| ((i % 37) as f32 - 18.0) / 9.0).collect();
        let mut serial = (vec![0.5f32; n], vec![0.0f32; n], vec![0.0f32; n]);
        let mut parallel = serial.clone();
        for t in 1..=3 {
            let (p, m, v) = &mut serial;
            Update::new(&adam, t, 1e-3).apply(p, &g, m, v);
            let (p, m, v) = &mut parallel;
            adam.step(t, 1e-3, p, &g, m, v);
        }
        assert_eq!(serial, parallel);
        assert!(serial.0.iter().any(|p| *p != 0.5));
    }
}
