//! The serving page's figures: each serving executor's `/metrics`, read by this scheduler,
//! turned into rates and latency percentiles between two reads.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use halyard_core::metrics::{Sample, parse};

/// One model's counters on one executor, as read.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Counters {
    /// Calls answered 200.
    pub(crate) ok: f64,
    /// Calls answered otherwise.
    pub(crate) errors: f64,
    /// Records scored.
    pub(crate) records: f64,
    /// Latency histogram: upper bound (seconds) → calls at or under it, ascending.
    pub(crate) buckets: Vec<(f64, f64)>,
}

/// Each model's counters in one executor's exposition.
pub(crate) fn counters(samples: &[Sample]) -> BTreeMap<String, Counters> {
    let mut out: BTreeMap<String, Counters> = BTreeMap::new();
    let mut buckets: BTreeMap<String, BTreeMap<u64, (f64, f64)>> = BTreeMap::new();
    for s in samples {
        let Some(model) = s.label("model") else {
            continue;
        };
        if model == "-" {
            continue;
        }
        match s.name.as_str() {
            "halyard_prediction_requests_total" => {
                let c = out.entry(model.to_string()).or_default();
                if s.label("code") == Some("200") {
                    c.ok += s.value;
                } else {
                    c.errors += s.value;
                }
            }
            "halyard_predicted_records_total" => {
                out.entry(model.to_string()).or_default().records += s.value;
            }
            "halyard_prediction_request_duration_seconds_bucket" => {
                let le = match s.label("le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(v) => v.parse().unwrap_or(f64::INFINITY),
                    None => continue,
                };
                let b = buckets.entry(model.to_string()).or_default();
                b.entry(le.to_bits()).or_insert((le, 0.0)).1 += s.value;
            }
            _ => {}
        }
    }
    for (model, b) in buckets {
        let mut list: Vec<(f64, f64)> = b.into_values().collect();
        list.sort_by(|a, b| a.0.total_cmp(&b.0));
        out.entry(model).or_default().buckets = list;
    }
    out
}

/// The `q` quantile of a cumulative histogram, interpolated within its bucket as
/// Prometheus's `histogram_quantile` does; `None` without observations.
pub(crate) fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            let share = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return Some(lower + (le - lower) * share);
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

/// One row of the serving page.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) model: String,
    pub(crate) executor: String,
    /// Per second since the previous read; `None` on the first.
    pub(crate) ok_rate: Option<f64>,
    pub(crate) error_rate: Option<f64>,
    pub(crate) records_rate: Option<f64>,
    /// Latency percentiles in seconds: of the calls since the previous read when there
    /// were some, else since the executor started.
    pub(crate) p50: Option<f64>,
    pub(crate) p99: Option<f64>,
    /// Calls since the executor started.
    pub(crate) total: f64,
    pub(crate) errors: f64,
}

/// When an executor was read, and each model's counters then.
type Read = (Instant, BTreeMap<String, Counters>);

/// The previous read of each executor, to turn counters into rates.
#[derive(Debug, Default)]
pub(crate) struct Reads {
    last: Mutex<HashMap<String, Read>>,
}

impl Reads {
    /// Rows from this read of each executor's exposition (`Err`: it did not answer).
    pub(crate) fn rows(
        &self,
        read: Vec<(String, Result<String, String>)>,
    ) -> (Vec<Row>, Vec<String>) {
        let now = Instant::now();
        let mut rows = Vec::new();
        let mut unreachable = Vec::new();
        let mut last = self.last.lock().expect("reads lock");
        for (executor, text) in read {
            let text = match text {
                Ok(t) => t,
                Err(e) => {
                    unreachable.push(format!("{executor}: {e}"));
                    continue;
                }
            };
            let current = counters(&parse(&text));
            let before = last.get(&executor);
            for (model, c) in &current {
                let prev = before.and_then(|(at, m)| Some((at, m.get(model)?)));
                let rate = |f: fn(&Counters) -> f64| {
                    prev.map(|(at, p)| {
                        let dt = now.duration_since(*at).as_secs_f64().max(1e-3);
                        ((f(c) - f(p)) / dt).max(0.0)
                    })
                };
                let recent: Vec<(f64, f64)> = match prev {
                    Some((_, p)) if p.buckets.len() == c.buckets.len() => c
                        .buckets
                        .iter()
                        .zip(&p.buckets)
                        .map(|(a, b)| (a.0, a.1 - b.1))
                        .collect(),
                    _ => Vec::new(),
                };
                let window = if recent.last().is_some_and(|b| b.1 > 0.0) {
                    &recent
                } else {
                    &c.buckets
                };
                rows.push(Row {
                    model: model.clone(),
                    executor: executor.clone(),
                    ok_rate: rate(|c| c.ok),
                    error_rate: rate(|c| c.errors),
                    records_rate: rate(|c| c.records),
                    p50: quantile(window, 0.5),
                    p99: quantile(window, 0.99),
                    total: c.ok + c.errors,
                    errors: c.errors,
                });
            }
            last.insert(executor, (now, current));
        }
        rows.sort_by(|a, b| (&a.model, &a.executor).cmp(&(&b.model, &b.executor)));
        (rows, unreachable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets_as_prometheus_does() {
        let b = [
            (0.1, 50.0),
            (0.2, 90.0),
            (0.5, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(quantile(&b, 0.5), Some(0.1));
        let p75 = quantile(&b, 0.75).unwrap();
        assert!((p75 - (0.1 + 0.1 * 25.0 / 40.0)).abs() < 1e-12, "{p75}");
        assert_eq!(quantile(&[(0.1, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        // Everything over the last finite bound: that bound.
        assert_eq!(
            quantile(&[(0.1, 0.0), (f64::INFINITY, 4.0)], 0.5),
            Some(0.1)
        );
    }

    #[test]
    fn two_reads_give_rates_per_model_and_executor() {
        let text = |ok: u64, bad: u64| {
            format!(
                "halyard_prediction_requests_total{{call=\"predict\",code=\"200\",model=\"m\"}} {ok}\n\
                 halyard_prediction_requests_total{{call=\"predict\",code=\"400\",model=\"m\"}} {bad}\n\
                 halyard_prediction_requests_total{{call=\"predict\",code=\"404\",model=\"-\"}} 7\n\
                 halyard_predicted_records_total{{model=\"m\",version=\"1\"}} {}\n",
                ok * 3
            )
        };
        let reads = Reads::default();
        let (first, _) = reads.rows(vec![("e1".into(), Ok(text(10, 1)))]);
        assert_eq!(first.len(), 1, "the unknown model is left out");
        assert_eq!((first[0].total, first[0].ok_rate), (11.0, None));
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (second, down) = reads.rows(vec![
            ("e1".into(), Ok(text(20, 1))),
            ("e2".into(), Err("refused".into())),
        ]);
        assert_eq!(down, ["e2: refused"]);
        let r = &second[0];
        assert!(
            r.ok_rate.unwrap() > 0.0 && r.error_rate == Some(0.0),
            "{r:?}"
        );
        let ratio = r.records_rate.unwrap() / r.ok_rate.unwrap();
        assert!((ratio - 3.0).abs() < 1e-9, "{r:?}");
    }
}
