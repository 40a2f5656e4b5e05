//! Samples/s of one training step on the CPU, burn flex: the MLP (forward, BCE, backward,
//! AdamW) and an N-BEATS member (forward, L1, backward, Adam; and without the optimiser).
//! The steps take Halyard's fused AdamW (`halyard_models::adam`), as the training loops
//! do; the N-BEATS step is also timed with burn's own Adam, the baseline.
//!
//! The architectures match `benches/torch_mlp.py`: 64 numeric inputs, hidden 256 and 256,
//! one logit, batch 1024; the N-BEATS member below. The bench allocates with mimalloc, as
//! the `halyard` binary does; it runs the MLP step once from the bench's thread and once
//! from inside a rayon pool (as a data-parallel worker trains). The optimiser is handed the
//! model, not a copy of it, as in `mlp.rs` and `train_nbeats`: with a second reference to
//! its weights the backend could not update them in place.
//!
//! The third group, `dp_shard_gradients`, asks what two data-parallel workers can gain on
//! this machine at best (issue 19 item 2): the gradients of a global batch of 8,192 rows
//! computed by one single-threaded worker, against two single-threaded workers computing
//! those of 4,096 rows each at the same time, with no all-reduce and no control plane.
//!
//! `cargo bench -p halyard-models --bench mlp_train`

use std::hint::black_box;
use std::time::{Duration, Instant};

use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::Module;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use criterion::{Bencher, Criterion, Throughput, criterion_group, criterion_main};
use halyard_models::adam::adamw;
use halyard_models::device::{Placement, bce_with_logits};
use halyard_models::distributed::flatten_grads;
use halyard_models::forecast::nbeats::{NBeats, NBeatsConfig};

// As in `src/main.rs`: glibc's malloc returns each step's freed buffers to the kernel.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Module, Debug)]
struct Mlp {
    l1: Linear,
    l2: Linear,
    out: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.out
            .forward(relu(self.l2.forward(relu(self.l1.forward(x)))))
    }
}

fn bench(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    device.seed(1);
    let (inputs, hidden, batch) = (64, 256, 1024);
    let mut model = Some(Mlp {
        l1: LinearConfig::new(inputs, hidden).init(&device),
        l2: LinearConfig::new(hidden, hidden).init(&device),
        out: LinearConfig::new(hidden, 1).init(&device),
    });
    let mut optim = adamw(1e-4, Placement::Cpu);
    let xs: Vec<f32> = (0..batch * inputs)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let ys: Vec<f32> = (0..batch).map(|i| (i % 9 == 0) as u8 as f32).collect();
    let mut g = c.benchmark_group("mlp_train_step");
    g.throughput(Throughput::Elements(batch as u64));
    g.sample_size(30);
    let mut step = || {
        let x = Tensor::<2>::from_data(TensorData::new(xs.clone(), [batch, inputs]), &device);
        let y = Tensor::<2>::from_data(TensorData::new(ys.clone(), [batch, 1]), &device);
        let m = model.take().expect("the model between steps");
        let loss = bce_with_logits(m.forward(x), y).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        model = Some(black_box(optim.step(1e-3, m, grads)));
    };
    g.bench_function("burn_flex_64x256x256x1_batch1024", |b| b.iter(&mut step));
    // The same step with the calling thread one of the pool's, as a data-parallel worker
    // trains (`executor/src/parallel.rs`).
    let pool = rayon::ThreadPoolBuilder::new()
        .build()
        .expect("a thread pool");
    g.bench_function("burn_flex_64x256x256x1_batch1024_in_pool", |b| {
        pool.install(|| b.iter(&mut step))
    });
    g.finish();
}

/// One N-BEATS training step as `train_nbeats` takes it (forward, L1 loss, backward, Adam):
/// the M4 hourly member of benches/RESULTS.md (input 144, horizon 48, 6 blocks × 4 layers
/// of width 512, batch 1,024); `benches/torch_mlp.py` times the same step in PyTorch.
fn nbeats(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    device.seed(1);
    let cfg = NBeatsConfig {
        input_size: 144,
        horizon: 48,
        covariates: 0,
        blocks: 6,
        layers: 4,
        width: 512,
    };
    let batch = 1024;
    let mut model = Some(NBeats::new(&cfg, &device));
    let mut fused = adamw(0.0, Placement::Cpu);
    let mut burn_adam = AdamConfig::new().init();
    let wave = |n: usize| -> Vec<f32> { (0..n).map(|i| ((i % 97) as f32 / 97.0).sin()).collect() };
    let (xs, ys) = (wave(batch * cfg.input_size), wave(batch * cfg.horizon));
    let mut g = c.benchmark_group("nbeats_train_step");
    g.throughput(Throughput::Elements(batch as u64));
    g.sample_size(10);
    // Forward, L1 loss, backward.
    let grads_of = |m: &NBeats| {
        let x = Tensor::<2>::from_data(
            TensorData::new(xs.clone(), [batch, cfg.input_size]),
            &device,
        );
        let y = Tensor::<2>::from_data(TensorData::new(ys.clone(), [batch, cfg.horizon]), &device);
        let loss = (m.forward(x, None) - y).abs().mean();
        GradientsParams::from_grads(loss.backward(), m)
    };
    g.bench_function("burn_flex_144x6x4x512_batch1024", |b| {
        b.iter(|| {
            let m = model.take().expect("the model between steps");
            let grads = grads_of(&m);
            model = Some(black_box(fused.step(1e-3, m, grads)));
        })
    });
    // The baseline: burn's Adam (a dozen element-wise tensor operations on one thread).
    g.bench_function("burn_flex_144x6x4x512_batch1024_burn_adam", |b| {
        b.iter(|| {
            let m = model.take().expect("the model between steps");
            let grads = grads_of(&m);
            model = Some(black_box(burn_adam.step(1e-3, m, grads)));
        })
    });
    // The same step without the optimiser: where the time goes.
    g.bench_function("burn_flex_144x6x4x512_batch1024_no_optim", |b| {
        b.iter(|| black_box(grads_of(model.as_ref().expect("the model"))))
    });
    g.finish();
    // The optimiser's step alone (6.3 M parameters), each step's gradients computed
    // outside the timed part: the difference above is the whole step's noise on a shared
    // machine.
    let mut g = c.benchmark_group("nbeats_optimiser_step");
    g.sample_size(10);
    let mut alone = |b: &mut Bencher, optim: &mut ModuleOptimizer| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let m = model.take().expect("the model between steps");
                let grads = grads_of(&m);
                let start = Instant::now();
                model = Some(black_box(optim.step(1e-3, m, grads)));
                spent += start.elapsed();
            }
            spent
        })
    };
    g.bench_function("fused_adamw", |b| alone(b, &mut fused));
    g.bench_function("burn_adam", |b| alone(b, &mut burn_adam));
    g.finish();
}

/// The gradient computation of a data-parallel worker (`distributed.rs`, `Step::run`:
/// batch tensors, forward, BCE, backward, flattening), each worker on a one-thread pool
/// as `[resources] cpus = 1` gives it. The network has the bank-marketing-distributed
/// example's shape: its one-hot inputs (about 400 wide), hidden 128 and 64, one logit.
/// Two workers of 4,096 rows each run at the same time on two threads; the ratio of the
/// one worker's time for 8,192 rows to theirs is the most a 2-worker group can scale
/// this step here, before any transfer.
fn dp_shard_gradients(c: &mut Criterion) {
    let (inputs, global) = (400, 8192);
    let replica = || {
        let device = Device::flex().autodiff();
        device.seed(1);
        let model = Mlp {
            l1: LinearConfig::new(inputs, 128).init(&device),
            l2: LinearConfig::new(128, 64).init(&device),
            out: LinearConfig::new(64, 1).init(&device),
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("a thread pool");
        (device, model, pool)
    };
    // One-hot rows: a 1 in about one column of twenty.
    let xs: Vec<f32> = (0..global * inputs)
        .map(|i| ((i * 7919) % 20 == 0) as u8 as f32)
        .collect();
    let ys: Vec<f32> = (0..global).map(|i| (i % 9 == 0) as u8 as f32).collect();
    let gradients = |device: &Device, m: &Mlp, rows: usize| {
        let x = Tensor::<2>::from_data(
            TensorData::new(xs[..rows * inputs].to_vec(), [rows, inputs]),
            device,
        );
        let y = Tensor::<2>::from_data(TensorData::new(ys[..rows].to_vec(), [rows, 1]), device);
        let loss = bce_with_logits(m.forward(x), y).mean();
        let grads = GradientsParams::from_grads(loss.backward(), m);
        black_box(flatten_grads(m, &grads))
    };
    let mut g = c.benchmark_group("dp_shard_gradients");
    g.sample_size(20);
    g.throughput(Throughput::Elements(global as u64));
    let (device, model, pool) = replica();
    g.bench_function("one_worker_8192_rows", |b| {
        pool.install(|| b.iter(|| gradients(&device, &model, global)))
    });
    let other = replica();
    g.bench_function("two_workers_4096_rows_each_at_once", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for (device, model, pool) in
                    [(&device, &model, &pool), (&other.0, &other.1, &other.2)]
                {
                    let gradients = &gradients;
                    s.spawn(move || {
                        pool.install(|| {
                            for _ in 0..iters {
                                gradients(device, model, global / 2);
                            }
                        })
                    });
                }
            });
            start.elapsed()
        })
    });
    g.throughput(Throughput::Elements(global as u64 / 2));
    g.bench_function("one_worker_4096_rows", |b| {
        pool.install(|| b.iter(|| gradients(&device, &model, global / 2)))
    });
    g.finish();
}

criterion_group!(benches, bench, nbeats, dp_shard_gradients);
criterion_main!(benches);
