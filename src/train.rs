//! `halyard train`: run a job spec's pipeline in this process, without a cluster, and print
//! its metrics (and, for a forecaster, the M4 classical methods on the same split). The
//! figures of `benches/RESULTS.md` come from here.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use halyard_core::config::file_url;
use halyard_core::spec::{DeviceKind, JobSpec};
use halyard_core::store::S3Config;
use halyard_core::store::Store;
use halyard_executor::pipeline::{self, Host, Run};
use halyard_executor::{
    ExecutorError, Trained, placement, read_series, test_forecasts, test_predictions,
};
use halyard_features::session::{DataAccess, local_context};
use halyard_models::device::Placement;
use halyard_models::forecast::classical::evaluate;

use crate::Error;

/// This process as a pipeline's host: lines to stderr, SQL on single-process DataFusion,
/// the model kept for printing and writing to a folder.
struct Local {
    access: DataAccess,
    gpus: u32,
    cancel: Arc<AtomicBool>,
    trained: Option<Trained>,
}

#[async_trait]
impl Host for Local {
    fn log(&mut self, line: String) {
        eprintln!("{line}");
    }

    async fn report(&mut self) -> bool {
        true
    }

    async fn sql(&mut self) -> halyard_executor::Result<SessionContext> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(local_context(&self.access, cores)?)
    }

    fn cancel(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    fn placement(&self, spec: &JobSpec) -> Placement {
        placement(spec, self.gpus)
    }

    async fn publish(&mut self, trained: Trained) -> halyard_executor::Result<()> {
        self.trained = Some(trained);
        Ok(())
    }

    fn unpublished(&mut self, _metrics: BTreeMap<String, f64>) {}
}

/// Train `spec_path` here. `device` overrides the spec's `[train] device`; `gpus` is what
/// `auto` may use. `out`: a folder for `model.safetensors` and `manifest.json`.
pub async fn train_local(
    spec_path: &Path,
    device: Option<DeviceKind>,
    gpus: u32,
    out: Option<&Path>,
    baselines: bool,
) -> Result<(), Error> {
    let mut spec = JobSpec::from_file(spec_path)?;
    if let Some(d) = device {
        spec.train.device = d;
    }
    if spec.score.is_some() {
        return Err(ExecutorError::Invalid(
            "a [score] job scores with a registered model on a cluster: submit it with halyard submit".into(),
        )
        .into());
    }
    if spec.train.workers.is_some() || spec.search.is_some() {
        eprintln!(
            "note: [train] workers and [search] take effect on a cluster (halyard submit); \
             here the spec trains once, alone, with its own parameters"
        );
    }
    spec.train.workers = None;
    // Here "publish" hands the model back to print it and write it to OUT.
    spec.train.publish = true;
    // S3 credentials come from the AWS_* environment.
    let s3 = S3Config::default();
    // The feature table is written to OUT/features, or to a temporary folder removed
    // when training ends, failed or not (the guard deletes it when dropped).
    let (scratch, _guard) = scratch_dir(out)?;
    let store = Store::open(&file_url(&scratch)?, &s3)?;
    let run = Run {
        spec: &spec,
        store: &store,
        // A user's own process reads what its user may.
        data: &DataAccess::unconfined(&s3),
        table_dir: "features".into(),
    };
    let mut host = Local {
        access: DataAccess::unconfined(&s3),
        gpus,
        cancel: Arc::new(AtomicBool::new(false)),
        trained: None,
    };
    let started = Instant::now();
    pipeline::run(&run, &spec.stages(), &mut host).await?;
    let (trained, lineage) = host.trained.ok_or_else(|| {
        ExecutorError::Panicked("the pipeline ended without a trained model".into())
    })?;
    let placement = placement(&spec, gpus);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} ({}) trained on the {placement} in {secs:.1} s: {} train, {} test",
        spec.name,
        spec.model.kind.as_str(),
        lineage.train_rows,
        lineage.test_rows
    );
    for (k, v) in &trained.metrics {
        println!("  {k:<24} {v:.4}");
    }
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let manifest = serde_json::json!({
            "architecture": trained.architecture,
            "metrics": trained.metrics,
            "data": lineage,
        });
        let w = dir.join("model.safetensors");
        std::fs::write(&w, &trained.weights).map_err(|e| io(&w, e))?;
        let m = dir.join("training.json");
        std::fs::write(&m, serde_json::to_vec_pretty(&manifest).unwrap_or_default())
            .map_err(|e| io(&m, e))?;
        println!("  weights in {}", w.display());
    }
    // Read once more for what comes after training: the test rows' predictions or
    // forecasts (with OUT) or a forecaster's classical methods (with --baselines).
    let input = if out.is_some() || (baselines && spec.forecast.is_some()) {
        Some(pipeline::input(&run, None, &mut |_| {}).await?)
    } else {
        None
    };
    if let (Some(dir), Some(input)) = (out, &input) {
        // The test rows scored, to check with any tool.
        if let Some(csv) = test_predictions(&spec, input, &trained)? {
            let p = dir.join("predictions.csv");
            std::fs::write(&p, csv).map_err(|e| io(&p, e))?;
            println!("  test rows' predictions in {}", p.display());
        }
        if let Some(csv) = test_forecasts(&spec, input, &trained)? {
            let p = dir.join("forecasts.csv");
            std::fs::write(&p, csv).map_err(|e| io(&p, e))?;
            println!("  held-out points' forecasts in {}", p.display());
        }
    }
    if baselines
        && let Some(f) = &spec.forecast
        && let Some(input) = &input
    {
        let series = read_series(input, &spec, f)?;
        let (train, test) = (series.train, series.test);
        let started = Instant::now();
        let rows = tokio::task::spawn_blocking({
            let (period, horizon) = (f.period, f.horizon);
            move || evaluate(&train, &test, period, horizon)
        })
        .await
        .map_err(|e| ExecutorError::Panicked(e.to_string()))?;
        println!(
            "classical methods on the same split ({:.1} s):",
            started.elapsed().as_secs_f64()
        );
        println!(
            "  {:<16} {:>8} {:>8} {:>7}",
            "method", "sMAPE", "MASE", "OWA"
        );
        for (m, a, owa) in rows {
            println!(
                "  {:<16} {:>8.3} {:>8.3} {:>7.3}",
                m.name(),
                a.smape,
                a.mase,
                owa
            );
        }
    }
    Ok(())
}

/// Where `halyard train` writes a feature table: `OUT/` when given (kept), else a fresh
/// folder under the system's temporary directory, removed with the returned guard.
fn scratch_dir(
    out: Option<&Path>,
) -> Result<(std::path::PathBuf, Option<tempfile::TempDir>), Error> {
    match out {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
            Ok((d.to_path_buf(), None))
        }
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("halyard-train-")
                .tempdir()
                .map_err(|e| io(&std::env::temp_dir(), e))?;
            Ok((tmp.path().to_path_buf(), Some(tmp)))
        }
    }
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Core(halyard_core::Error::Io {
        path: path.to_path_buf(),
        source,
    })
}
