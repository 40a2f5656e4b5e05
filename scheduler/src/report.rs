//! A model version's report (`halyard report`, the console's report page): one
//! self-contained HTML page — inline style, SVG plots drawn with `plotters`, no script, no
//! request for anything else — that reads offline.
//!
//! Response models: ROC and precision–recall curves, the calibration plot, cumulative
//! gains and lift by decile, the training curves and the metrics. Uplift models: the Qini
//! curve against the response ranking's and random targeting's. Forecasters: a sample of
//! series, forecast against actuals and Naive2, the error per step ahead against Naive2's,
//! and the training curve. The curves come from the version's registry record
//! (`halyard_models::evaluation`, computed once at training), the training curves from
//! the job's log.

use std::fmt::Write as _;
use std::ops::Range;

use halyard_core::records::LogLine;
use halyard_core::registry::ModelVersion;
use halyard_models::evaluation::{
    Evaluation, ForecastSample, RegressionCurves, ResponseCurves, SeriesSample, UpliftCurves,
};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde::Deserialize;

use crate::console::html::{Series, curves, esc, number};

/// Width and height of a plot in pixels (SVG user units).
const PLOT: (u32, u32) = (520, 360);
/// The same for one of a forecaster's small multiples.
const SMALL: (u32, u32) = (400, 240);
const BLUE: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const ORANGE: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const GREEN: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const RED: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const PURPLE: RGBColor = RGBColor(0x94, 0x67, 0xbd);
const BROWN: RGBColor = RGBColor(0x8c, 0x56, 0x4b);
const PINK: RGBColor = RGBColor(0xe3, 0x77, 0xc2);
const GREY: RGBColor = RGBColor(0x7f, 0x7f, 0x7f);
const PALETTE: [RGBColor; 8] = [BLUE, ORANGE, GREEN, RED, PURPLE, BROWN, PINK, GREY];

/// One line of a plot.
struct Line {
    name: String,
    points: Vec<(f64, f64)>,
    colour: RGBColor,
    /// Dashed (a reference: random targeting, a baseline, validation loss).
    dashed: bool,
    /// Marks at the points (few points: calibration bins, deciles).
    marks: bool,
    /// Marks only, no line (a scatter of rows).
    scatter: bool,
}

impl Line {
    fn new(name: impl Into<String>, points: Vec<(f64, f64)>, colour: RGBColor) -> Line {
        Line {
            name: name.into(),
            points,
            colour,
            dashed: false,
            marks: false,
            scatter: false,
        }
    }

    fn dashed(mut self) -> Line {
        self.dashed = true;
        self
    }

    fn marked(mut self) -> Line {
        self.marks = true;
        self
    }

    fn scattered(mut self) -> Line {
        self.marks = true;
        self.scatter = true;
        self
    }
}

/// The axes of a plot.
struct Axes<'a> {
    x: &'a str,
    y: &'a str,
    x_range: Range<f64>,
    y_range: Range<f64>,
}

/// An SVG drawn by `draw` on a white `size` canvas; a sentence when plotters fails.
fn svg(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), String>,
) -> String {
    let mut out = String::new();
    let drawn = {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|()| draw(&root))
            .and_then(|()| root.present().map_err(|e| e.to_string()))
    };
    match drawn {
        Ok(()) => out,
        Err(e) => format!(
            "<p class=\"empty\">the plot could not be drawn: {}</p>",
            esc(&e)
        ),
    }
}

/// The range `lo..hi` of `values` with a little room, or `fallback` without values.
fn range_of(values: impl Iterator<Item = f64>, fallback: Range<f64>) -> Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return fallback;
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad)..(hi + pad)
}

/// A tick label: whole numbers without decimals (epochs, steps, counts), others with up
/// to three.
fn tick(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{:.0}", v.round() + 0.0)
    } else {
        let text = format!("{v:.3}");
        text.trim_end_matches('0').to_string()
    }
}

/// A plot's frame on `root`: its title, margins and label areas, over `x` and `y`.
fn frame<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    title: &str,
    x: Range<f64>,
    y: Range<f64>,
) -> Result<ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>, String> {
    ChartBuilder::on(root)
        .caption(title, ("sans-serif", 17))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(x, y)
        .map_err(|e| e.to_string())
}

/// A line plot of `lines` titled `title` (a legend when there is more than one line).
fn line_plot(size: (u32, u32), title: &str, axes: &Axes<'_>, lines: &[Line]) -> String {
    svg(size, |root| {
        let mut chart = frame(root, title, axes.x_range.clone(), axes.y_range.clone())?;
        chart
            .configure_mesh()
            .x_desc(axes.x)
            .y_desc(axes.y)
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .light_line_style(WHITE.mix(0.0))
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(|e| e.to_string())?;
        for line in lines {
            let style = line.colour.stroke_width(2);
            // (A scatter's line has no points: only its legend entry is drawn.)
            let on_line = if line.scatter {
                &[][..]
            } else {
                &line.points[..]
            };
            let drawn = if line.dashed {
                chart.draw_series(DashedLineSeries::new(on_line.iter().copied(), 6, 4, style))
            } else {
                chart.draw_series(LineSeries::new(on_line.iter().copied(), style))
            }
            .map_err(|e| e.to_string())?;
            let colour = line.colour;
            drawn
                .label(line.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour));
            if line.marks {
                chart
                    .draw_series(
                        line.points
                            .iter()
                            .map(|&p| Circle::new(p, 3, line.colour.filled())),
                    )
                    .map_err(|e| e.to_string())?;
            }
        }
        if lines.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(GREY)
                .label_font(("sans-serif", 12))
                .draw()
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// A bar plot of `bars` (`(label, value)`) with a dashed reference level.
fn bar_plot(title: &str, x: &str, y: &str, bars: &[(String, f64)], reference: f64) -> String {
    let top = bars.iter().map(|b| b.1).fold(reference, f64::max) * 1.1;
    svg(PLOT, |root| {
        let mut chart = frame(
            root,
            title,
            0.5..bars.len() as f64 + 0.5,
            0.0..top.max(1e-9),
        )?;
        let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        chart
            .configure_mesh()
            .x_desc(x)
            .y_desc(y)
            .disable_x_mesh()
            .light_line_style(WHITE.mix(0.0))
            .x_labels(bars.len())
            .x_label_formatter(&|v| {
                let k = v.round() as usize;
                if (v - v.round()).abs() < 1e-6 && (1..=labels.len()).contains(&k) {
                    labels[k - 1].clone()
                } else {
                    String::new()
                }
            })
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                let x = i as f64 + 1.0;
                Rectangle::new([(x - 0.38, 0.0), (x + 0.38, b.1)], BLUE.filled())
            }))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(DashedLineSeries::new(
                [(0.5, reference), (bars.len() as f64 + 0.5, reference)],
                6,
                4,
                GREY.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

fn unit_axes<'a>(x: &'a str, y: &'a str) -> Axes<'a> {
    Axes {
        x,
        y,
        x_range: 0.0..1.0,
        y_range: 0.0..1.0,
    }
}

/// A metric of the version, four decimals, or a dash.
fn metric(v: &ModelVersion, key: &str) -> String {
    v.metrics.get(key).map_or("–".into(), |x| format!("{x:.4}"))
}

/// The response model's plots.
fn response_plots(v: &ModelVersion, r: &ResponseCurves) -> Vec<(String, String)> {
    let base = r.positives as f64 / r.rows.max(1) as f64;
    let roc = line_plot(
        PLOT,
        &format!("ROC curve (AUC {})", metric(v, "test_auc")),
        &unit_axes("false positive rate", "true positive rate"),
        &[
            Line::new("model", r.roc.clone(), BLUE),
            Line::new("random", vec![(0.0, 0.0), (1.0, 1.0)], GREY).dashed(),
        ],
    );
    let pr = line_plot(
        PLOT,
        "Precision and recall",
        &unit_axes("recall", "precision"),
        &[
            Line::new("model", r.pr.clone(), BLUE),
            Line::new(
                format!("positive rate {base:.3}"),
                vec![(0.0, base), (1.0, base)],
                GREY,
            )
            .dashed(),
        ],
    );
    let top = r
        .calibration
        .iter()
        .map(|b| b.predicted.max(b.observed))
        .fold(0.05, f64::max)
        .min(1.0)
        * 1.05;
    let calibration = line_plot(
        PLOT,
        &format!("Calibration (ECE {})", metric(v, "test_ece")),
        &Axes {
            x: "mean predicted probability",
            y: "observed response rate",
            x_range: 0.0..top,
            y_range: 0.0..top,
        },
        &[
            Line::new(
                "model (bins of 0.1)",
                r.calibration
                    .iter()
                    .map(|b| (b.predicted, b.observed))
                    .collect(),
                BLUE,
            )
            .marked(),
            Line::new("perfect", vec![(0.0, 0.0), (top, top)], GREY).dashed(),
        ],
    );
    let groups = r.deciles.len().max(1) as f64;
    let gains = line_plot(
        PLOT,
        "Cumulative gains",
        &unit_axes(
            "share of customers targeted, best first",
            "share of responders reached",
        ),
        &[
            Line::new(
                "model",
                std::iter::once((0.0, 0.0))
                    .chain(
                        r.deciles
                            .iter()
                            .enumerate()
                            .map(|(k, d)| ((k + 1) as f64 / groups, d.gain)),
                    )
                    .collect(),
                BLUE,
            )
            .marked(),
            Line::new("random", vec![(0.0, 0.0), (1.0, 1.0)], GREY).dashed(),
        ],
    );
    let lift = bar_plot(
        "Lift by decile",
        "decile (best scores first)",
        "response rate ÷ overall rate",
        &r.deciles
            .iter()
            .enumerate()
            .map(|(k, d)| ((k + 1).to_string(), d.lift))
            .collect::<Vec<_>>(),
        1.0,
    );
    vec![
        ("roc".into(), roc),
        ("pr".into(), pr),
        ("calibration".into(), calibration),
        ("gains".into(), gains),
        ("lift".into(), lift),
    ]
}

/// A model of numbers: its predictions against the truth, row by row (a sample) and by
/// decile of prediction.
fn regression_plots(v: &ModelVersion, r: &RegressionCurves) -> Vec<(String, String)> {
    let values = r.sample.iter().chain(&r.deciles).flat_map(|&(p, y)| [p, y]);
    let range = range_of(values, 0.0..1.0);
    let diagonal = vec![(range.start, range.start), (range.end, range.end)];
    let axes = Axes {
        x: "predicted",
        y: "actual",
        x_range: range.clone(),
        y_range: range,
    };
    let scatter = line_plot(
        PLOT,
        &format!("Predicted against actual (RMSE {})", metric(v, "test_rmse")),
        &axes,
        &[
            Line::new(
                format!("{} of {} test rows", r.sample.len(), r.rows),
                r.sample.clone(),
                BLUE,
            )
            .scattered(),
            Line::new("perfect", diagonal.clone(), GREY).dashed(),
        ],
    );
    let deciles = line_plot(
        PLOT,
        "Mean actual by decile of prediction",
        &axes,
        &[
            Line::new("model (deciles)", r.deciles.clone(), BLUE).marked(),
            Line::new("perfect", diagonal, GREY).dashed(),
        ],
    );
    vec![("predicted".into(), scatter), ("deciles".into(), deciles)]
}

/// The uplift model's Qini plot.
fn uplift_plots(v: &ModelVersion, u: &UpliftCurves) -> Vec<(String, String)> {
    let end = u.qini.last().copied().unwrap_or((0.0, 0.0));
    let axes = Axes {
        x: "customers targeted, highest uplift first",
        y: "incremental responders",
        x_range: 0.0..(u.rows.max(1) as f64),
        y_range: range_of(
            u.qini
                .iter()
                .chain(&u.response_ranking_qini)
                .map(|p| p.1)
                .chain([0.0]),
            0.0..1.0,
        ),
    };
    let qini = line_plot(
        PLOT,
        &format!("Qini curve (Qini {})", metric(v, "test_qini")),
        &axes,
        &[
            Line::new("uplift model", u.qini.clone(), BLUE),
            Line::new(
                "ranked by the response model",
                u.response_ranking_qini.clone(),
                ORANGE,
            ),
            Line::new("random", vec![(0.0, 0.0), end], GREY).dashed(),
        ],
    );
    vec![("qini".into(), qini)]
}

/// One sampled series: its past, then the truth and both forecasts.
fn series_plot(s: &SeriesSample) -> String {
    let past = s.history.len() as f64;
    let ahead = |values: &[f64]| -> Vec<(f64, f64)> {
        // From the last observation, so the lines join the history.
        s.history
            .last()
            .map(|&y| (0.0, y))
            .into_iter()
            .chain(values.iter().enumerate().map(|(j, &y)| ((j + 1) as f64, y)))
            .collect()
    };
    let history: Vec<(f64, f64)> = s
        .history
        .iter()
        .enumerate()
        .map(|(i, &y)| (i as f64 + 1.0 - past, y))
        .collect();
    let axes = Axes {
        x: "steps (0: the last observation)",
        y: "value",
        x_range: (1.0 - past).min(0.0)..(s.actual.len().max(1) as f64),
        y_range: range_of(
            s.history
                .iter()
                .chain(&s.actual)
                .chain(&s.forecast)
                .chain(&s.naive2)
                .copied(),
            0.0..1.0,
        ),
    };
    line_plot(
        SMALL,
        &format!("series {}", s.id),
        &axes,
        &[
            Line::new("history", history, GREY),
            Line::new("actual", ahead(&s.actual), BLUE),
            Line::new("forecast", ahead(&s.forecast), ORANGE),
            Line::new("Naive2", ahead(&s.naive2), GREEN).dashed(),
        ],
    )
}

/// The forecaster's plots: the error per step ahead, then the sampled series.
fn forecast_plots(f: &ForecastSample) -> Vec<(String, String)> {
    let steps = |e: &[f64]| -> Vec<(f64, f64)> {
        e.iter()
            .enumerate()
            .map(|(j, &y)| ((j + 1) as f64, y))
            .collect()
    };
    let errors = line_plot(
        PLOT,
        &format!("Error per step ahead ({} series)", f.series_scored),
        &Axes {
            x: "steps ahead",
            y: "sMAPE (%)",
            x_range: 0.5..(f.horizon.max(1) as f64 + 0.5),
            y_range: range_of(
                f.step_smape
                    .iter()
                    .chain(&f.step_smape_naive2)
                    .copied()
                    .chain([0.0]),
                0.0..1.0,
            ),
        },
        &[
            Line::new("model", steps(&f.step_smape), ORANGE).marked(),
            Line::new("Naive2", steps(&f.step_smape_naive2), GREEN)
                .dashed()
                .marked(),
        ],
    );
    std::iter::once(("errors".to_string(), errors))
        .chain(
            f.series
                .iter()
                .map(|s| (format!("series-{}", esc(&s.id)), series_plot(s))),
        )
        .collect()
}

/// The training curves of the job's log, one line per member or model of the recipe.
fn training_plot(series: &[Series], x: &str) -> Option<String> {
    if series.is_empty() {
        return None;
    }
    let lines: Vec<Line> = series
        .iter()
        .enumerate()
        .map(|(i, (name, points))| {
            let line = Line::new(name.clone(), points.clone(), PALETTE[i % PALETTE.len()]);
            if name.ends_with("validation") {
                line.dashed()
            } else {
                line
            }
        })
        .collect();
    let axes = Axes {
        x,
        y: "loss",
        x_range: range_of(
            series.iter().flat_map(|s| s.1.iter().map(|p| p.0)),
            0.0..1.0,
        ),
        y_range: range_of(
            series.iter().flat_map(|s| s.1.iter().map(|p| p.1)),
            0.0..1.0,
        ),
    };
    Some(line_plot(PLOT, "Training curves", &axes, &lines))
}

/// The metrics as a table: held-out and training side by side, then the rest.
fn metrics_table(v: &ModelVersion) -> String {
    let mut rows = String::new();
    let mut others = Vec::new();
    for (key, value) in &v.metrics {
        if let Some(name) = key.strip_prefix("test_") {
            let train = v
                .metrics
                .get(&format!("train_{name}"))
                .map_or("–".into(), |x| number(*x));
            let _ = write!(
                rows,
                "<tr><th>{}</th><td>{}</td><td>{train}</td></tr>",
                esc(name),
                number(*value)
            );
        } else if !key.starts_with("train_") {
            others.push((key, value));
        }
    }
    for (key, value) in others {
        let _ = write!(
            rows,
            "<tr><th>{}</th><td colspan=\"2\">{}</td></tr>",
            esc(key),
            number(*value)
        );
    }
    format!(
        "<table class=\"metrics\"><thead><tr><th>metric</th><th>held out</th><th>training</th></tr></thead><tbody>{rows}</tbody></table>"
    )
}

/// The report page of version `v`, with the job's log `lines` (its training curves).
pub(crate) fn render(v: &ModelVersion, lines: &[LogLine]) -> String {
    let evaluation = v
        .evaluation
        .as_ref()
        .and_then(|e| Evaluation::deserialize(e).ok());
    let mut plots = match &evaluation {
        Some(Evaluation::Response(r)) => response_plots(v, r),
        Some(Evaluation::Uplift(u)) => uplift_plots(v, u),
        Some(Evaluation::Forecast(f)) => forecast_plots(f),
        Some(Evaluation::Regression(r)) => regression_plots(v, r),
        None => Vec::new(),
    };
    let x = if matches!(evaluation, Some(Evaluation::Forecast(_))) || v.model_type == "nbeats" {
        "step"
    } else {
        "epoch"
    };
    if let Some(training) = training_plot(&curves(lines.iter().map(|l| l.message.as_str())), x) {
        plots.push(("training".into(), training));
    }
    let mut figures = String::new();
    for (id, plot) in &plots {
        let _ = write!(figures, "<figure id=\"{id}\">{plot}</figure>");
    }
    let missing = if evaluation.is_none() {
        "<p class=\"note\">This version carries no held-out curves: it was published before \
         reports existed, or it is a segmentation (see <code>halyard model</code>). Retrain it \
         for the plots.</p>"
    } else {
        ""
    };
    let title = format!("{} version {}", v.name, v.version);
    let created = when(v.created_ms);
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Report: {t}</title><style>{STYLE}</style></head><body>\
         <header><h1>{t}</h1><p>{kind} · trained by job <code>{job}</code> · {created}<br>\
         data <code>{source}</code> <code>{digest}</code></p></header>\
         {missing}<section class=\"plots\">{figures}</section>\
         <h2>Metrics</h2>{table}\
         <footer>Made by Halyard {hv} (<code>halyard report {name}@{version}</code>).</footer>\
         </body></html>",
        t = esc(&title),
        kind = esc(&v.model_type),
        job = esc(&v.job_id),
        source = esc(&v.data_source),
        digest = esc(v.data_digest.get(..19).unwrap_or(&v.data_digest)),
        table = metrics_table(v),
        hv = halyard_core::VERSION,
        name = esc(&v.name),
        version = v.version,
    )
}

/// A time in ms since the epoch as `YYYY-MM-DD HH:MM UTC`.
fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M UTC").to_string())
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1120px;\
color:#222;padding:0 16px}header p{color:#555;margin-top:4px}code{font-size:90%}\
.plots{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;border:1px solid #ddd;\
border-radius:4px;background:#fff}figure svg{display:block;max-width:100%;height:auto}\
table.metrics{border-collapse:collapse;margin-top:8px}table.metrics th,table.metrics td{\
border-bottom:1px solid #eee;padding:4px 12px;text-align:right}table.metrics th:first-child{\
text-align:left;font-weight:normal}.note{background:#fff7e0;padding:8px 12px;border-radius:4px}\
footer{margin-top:24px;color:#777;font-size:85%}";

#[cfg(test)]
mod tests {
    use super::*;
    use halyard_models::evaluation::{forecast, regression, response, uplift};
    use halyard_models::forecast::Series;

    fn version(model_type: &str, evaluation: Option<Evaluation>) -> ModelVersion {
        ModelVersion {
            sealed_with: None,
            name: "m".into(),
            version: 3,
            artifact: String::new(),
            model_type: model_type.into(),
            metrics: [
                ("test_auc".to_string(), 0.75),
                ("train_auc".to_string(), 0.8),
            ]
            .into(),
            job_id: "j".into(),
            data_source: "file:///d.csv".into(),
            data_digest: "sha256:00".into(),
            created_ms: 1_764_000_000_000,
            files: Default::default(),
            memory_bytes: 0,
            profile: None,
            evaluation: evaluation.map(|e| serde_json::to_value(e).unwrap()),
        }
    }

    fn line(message: &str) -> LogLine {
        LogLine {
            time_ms: 0,
            source: "executor/e".into(),
            message: message.into(),
        }
    }

    /// The ids of the page's figures, in order.
    fn figures(html: &str) -> Vec<&str> {
        html.split("<figure id=\"")
            .skip(1)
            .map(|f| f.split('"').next().unwrap())
            .collect()
    }

    #[test]
    fn each_kind_of_model_gets_its_plots_on_one_page_that_fetches_nothing() {
        let scores: Vec<f32> = (0..200).map(|i| (i % 17) as f32 / 17.0).collect();
        let labels: Vec<f32> = (0..200).map(|i| f32::from(u8::from(i % 3 == 0))).collect();
        let log = [line("epoch 1/2 loss 0.6"), line("epoch 2/2 loss 0.5")];
        // Trees fitting numbers: predicted against actual, and by decile.
        let numbers: Vec<f32> = (0..300).map(|i| (i % 50) as f32 * 3.0).collect();
        let truth: Vec<f32> = numbers.iter().map(|p| p + 5.0).collect();
        let page = render(&version("gbdt", Some(regression(&numbers, &truth))), &[]);
        assert_eq!(figures(&page), ["predicted", "deciles"]);
        assert!(page.contains("Predicted against actual"), "{page}");
        assert!(!page.contains("carries no held-out curves"));

        let page = render(&version("mlp", Some(response(&scores, &labels))), &log);
        assert_eq!(
            figures(&page),
            ["roc", "pr", "calibration", "gains", "lift", "training"]
        );
        assert!(page.contains("ROC curve (AUC 0.7500)") && page.contains("m version 3"));
        for fetch in ["<script", "<link", "src=", "url("] {
            assert!(!page.contains(fetch), "{fetch} in the page");
        }
        // Held out beside training in the metrics table.
        assert!(
            page.contains("<tr><th>auc</th><td>0.7500</td><td>0.8000</td></tr>"),
            "{page}"
        );

        let y: Vec<f64> = (0..100).map(|i| f64::from(i % 2)).collect();
        let t: Vec<f64> = (0..100).map(|i| f64::from(i % 4 < 2)).collect();
        let u: Vec<f64> = (0..100).map(f64::from).collect();
        let curve = halyard_models::uplift::qini_curve(&y, &u, &t).unwrap();
        let page = render(
            &version("uplift", Some(uplift(100, curve.clone(), curve))),
            &[],
        );
        assert_eq!(figures(&page), ["qini"]);

        let series: Vec<Series> = (0..3)
            .map(|k| Series::new(format!("s{k}"), vec![1.0, 2.0, 3.0, 4.0]))
            .collect();
        let actual: Vec<&[f64]> = vec![&[5.0, 6.0]; 3];
        let ours = vec![vec![5.0, 5.5]; 3];
        let naive2 = vec![vec![4.0, 4.0]; 3];
        let log = [line("member 1/1 step 10/20 scaled MAE 0.4")];
        let page = render(
            &version("nbeats", Some(forecast(&series, &actual, &ours, &naive2))),
            &log,
        );
        assert_eq!(
            figures(&page),
            ["errors", "series-s0", "series-s1", "series-s2", "training"]
        );
    }

    #[test]
    fn a_version_without_curves_says_why_and_keeps_its_metrics() {
        let page = render(&version("kmeans", None), &[]);
        assert!(figures(&page).is_empty());
        assert!(page.contains("carries no held-out curves") && page.contains("<th>auc</th>"));
    }
}
