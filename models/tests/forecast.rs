//! Forecasting: the M4 benchmarks and scorer against the published figures, the classical
//! methods on series with known structure, N-BEATS learning, and the bad-input rules.

use std::ops::ControlFlow;
use std::path::PathBuf;

use halyard_models::evaluation::Evaluation;
use halyard_models::forecast::classical::{Method, forecast, forecast_all, is_seasonal};
use halyard_models::forecast::data::read_wide_csv;
use halyard_models::forecast::metrics::score;
use halyard_models::forecast::nbeats::NBeatsTrainConfig;
use halyard_models::forecast::{Series, check_series};
use halyard_models::pipeline::train_forecaster;

/// The M4 data under the reference data folder (`HALYARD_REFERENCE_DATA`, or
/// `../shared/data` beside the repository), or `None` with one line saying the test skips.
fn m4_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("HALYARD_REFERENCE_DATA")
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
            PathBuf::from,
        )
        .join("m4");
    let found = dir.join("Hourly-train.csv").exists();
    if !found {
        eprintln!("skipped: {} not found", dir.display());
    }
    found.then_some(dir)
}

#[test]
fn naive2_reproduces_the_published_m4_hourly_scores() {
    let Some(dir) = m4_dir() else { return };
    let train = read_wide_csv(
        &std::fs::read_to_string(dir.join("Hourly-train.csv")).unwrap(),
        "train",
    )
    .unwrap();
    let test = read_wide_csv(
        &std::fs::read_to_string(dir.join("Hourly-test.csv")).unwrap(),
        "test",
    )
    .unwrap();
    assert_eq!(train.len(), 414);
    let insample: Vec<&[f64]> = train.iter().map(|s| s.values.as_slice()).collect();
    let actual: Vec<&[f64]> = test.iter().map(|s| s.values.as_slice()).collect();
    let f: Vec<Vec<f64>> = train
        .iter()
        .map(|s| forecast(&s.values, 24, 48, Method::Naive2))
        .collect();
    let a = score(&insample, &actual, &f, 24);
    // Published (M4 "Evaluation and Ranks.xlsx"): sMAPE 18.383, MASE 2.395.
    assert_eq!(format!("{:.3}", a.smape), "18.383", "sMAPE {}", a.smape);
    assert_eq!(format!("{:.3}", a.mase), "2.395", "MASE {}", a.mase);
}

fn seasonal(n: usize, period: usize, level: f64) -> Vec<f64> {
    (0..n)
        .map(|t| {
            level
                * (1.0 + 0.3 * ((t % period) as f64 / period as f64 * std::f64::consts::TAU).sin())
        })
        .collect()
}

#[test]
fn classical_methods_on_known_structure() {
    let x = seasonal(24 * 10, 24, 100.0);
    assert!(is_seasonal(&x, 24));
    // White noise is not seasonal.
    let mut state = 7u64;
    let noise: Vec<f64> = (0..240)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            100.0 + (state >> 33) as f64 / (1u64 << 31) as f64
        })
        .collect();
    assert!(!is_seasonal(&noise, 24));
    // A pure multiplicative season is forecast exactly by seasonal naive and Naive2.
    let future: Vec<f64> = seasonal(24 * 12, 24, 100.0)[240..288].to_vec();
    for m in [Method::SeasonalNaive, Method::Naive2] {
        let f = forecast(&x, 24, 48, m);
        for (a, b) in f.iter().zip(&future) {
            assert!((a - b).abs() < 1e-6 * b.abs(), "{m:?}: {a} vs {b}");
        }
    }
    // A straight line: Holt and Theta follow the trend, SES stays flat.
    let line: Vec<f64> = (0..100).map(|t| 10.0 + 2.0 * t as f64).collect();
    let all = forecast_all(&line, 1, 5);
    let get = |m: Method| all.iter().find(|(k, _)| *k == m).unwrap().1.clone();
    let holt = get(Method::Holt);
    for (h, v) in holt.iter().enumerate() {
        let truth = 10.0 + 2.0 * (100 + h) as f64;
        assert!((v - truth).abs() < 0.5, "holt step {h}: {v} vs {truth}");
    }
    let ses = get(Method::Ses);
    assert!((ses[4] - ses[0]).abs() < 1e-9);
    let damped = get(Method::Damped);
    assert!(damped[4] > damped[0] && damped[4] < holt[4]);
    assert_eq!(all.len(), Method::ALL.len());
}

#[test]
fn nbeats_beats_naive2_on_seasonal_series_and_refuses_bad_requests() {
    // 20 series with a daily cycle, different levels and a gentle trend.
    let full: Vec<Series> = (0..20)
        .map(|k| {
            let level = 50.0 + 10.0 * k as f64;
            let v: Vec<f64> = (0..24 * 20)
                .map(|t| {
                    let day = ((t % 24) as f64 / 24.0 * std::f64::consts::TAU).sin();
                    level * (1.0 + 0.4 * day) + 0.05 * t as f64
                })
                .collect();
            Series::new(format!("s{k}"), v)
        })
        .collect();
    let h = 24;
    let train: Vec<Series> = full
        .iter()
        .map(|s| Series::new(s.id.clone(), s.values[..s.values.len() - h].to_vec()))
        .collect();
    let test: Vec<Series> = full
        .iter()
        .map(|s| Series::new(s.id.clone(), s.values[s.values.len() - h..].to_vec()))
        .collect();
    let tc = NBeatsTrainConfig {
        steps: 300,
        batch_size: 64,
        learning_rate: 2e-3,
        lookbacks: vec![2],
        blocks: 2,
        layers: 2,
        width: 64,
        ..NBeatsTrainConfig::default()
    };
    let mut progress = 0;
    let model = train_forecaster(&train, &test, h, 24, &tc, |_| {
        progress += 1;
        ControlFlow::Continue(())
    })
    .unwrap();
    assert!(progress > 0);
    let m = &model.metrics;
    assert!(m["test_smape"] < m["naive2_smape"], "{m:?}");
    assert!(m["test_owa"] < 1.0, "{m:?}");
    // The report's error per step ahead averages to the overall sMAPE, the model's and
    // Naive2's; six series spread over the test set, each with three horizons of history.
    let Some(Evaluation::Forecast(f)) = &model.evaluation else {
        panic!("a forecaster's evaluation: {:?}", model.evaluation);
    };
    let mean = |e: &[f64]| e.iter().sum::<f64>() / e.len() as f64;
    assert_eq!((f.horizon, f.step_smape.len(), f.series_scored), (h, h, 20));
    assert!(
        (mean(&f.step_smape) - m["test_smape"]).abs() < 1e-9,
        "{f:?}"
    );
    assert!((mean(&f.step_smape_naive2) - m["naive2_smape"]).abs() < 1e-9);
    let ids: Vec<&str> = f.series.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["s0", "s3", "s6", "s10", "s13", "s16"]);
    assert!(
        f.series
            .iter()
            .all(|s| s.history.len() == 3 * h && s.forecast.len() == h)
    );
    assert_eq!(f.series[1].actual, test[3].values);

    let rt =
        halyard_models::runtime::Runtime::new(model.architecture.clone(), &model.weights).unwrap();
    // Longer than trained for: refused with the limit.
    let err = rt.forecast(&train[..1], h + 1).unwrap_err();
    assert!(err.to_string().contains("at most 24"), "{err}");
    // NaN in a history: refused, naming the series and the observation.
    let mut bad = train[0].clone();
    bad.values[3] = f64::NAN;
    let err = rt.forecast(&[bad.clone()], h).unwrap_err();
    assert!(
        err.to_string().contains("\"s0\"") && err.to_string().contains("observation 4"),
        "{err}"
    );
    assert!(check_series(&bad).is_err());
    // Shorter than the input window: padded, still a finite forecast.
    let short = Series::new("short", train[0].values[..10].to_vec());
    let f = rt.forecast(&[short], h).unwrap();
    assert!(f[0].iter().all(|v| v.is_finite() && *v >= 0.0));
    // Asking a forecaster for scores is refused.
    assert!(rt.score_encoded(&Default::default()).is_err());
}
