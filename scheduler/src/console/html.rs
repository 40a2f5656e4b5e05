//! The console's HTML: the page frame, escaping, numbers and times as people read them,
//! and the training curve as SVG.

use std::collections::BTreeMap;
use std::fmt::Write;

/// `text` with `&`, `<`, `>`, `"` and `'` escaped, for HTML text and attribute values.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole number with thousands separators: `12,345`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A metric's value: four significant decimals, or a count with separators.
pub(crate) fn number(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    if x.fract() == 0.0 && x.abs() < 1e15 {
        let s = thousands(x.abs() as u64);
        return if x < 0.0 { format!("-{s}") } else { s };
    }
    format!("{x:.4}")
}

/// How long ago `ms` (ms since the epoch) was, from `now_ms`: `12 s ago`, `5 min ago`.
pub(crate) fn ago(ms: i64, now_ms: i64) -> String {
    if ms <= 0 {
        return "–".into();
    }
    let s = (now_ms - ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// The navigation's pages: path and title.
const NAV: &[(&str, &str)] = &[
    ("/", "Cluster"),
    ("/jobs", "Jobs"),
    ("/models", "Models"),
    ("/serving", "Serving"),
];

/// A whole page: `title`, the navigation (the current page marked), who is signed in,
/// and `body`.
pub(crate) fn page(title: &str, current: &str, who: &str, csrf: &str, body: &str) -> String {
    let mut nav = String::new();
    for (path, name) in NAV {
        let mark = if *path == current {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(nav, "<a href=\"{path}\"{mark}>{name}</a>");
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Halyard</title><link rel=\"stylesheet\" href=\"/console.css\">\
         <script src=\"/console.js\" defer></script></head><body>\
         <header><strong>Halyard</strong><nav>{nav}</nav>\
         <form method=\"post\" action=\"/logout\" class=\"who\"><span>{who}</span>\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button>Sign out</button></form></header>\
         <main><h1>{title}</h1>{body}</main></body></html>",
        title = esc(title),
        who = esc(who),
    )
}

/// A table with `head` cells and rows of already-escaped cells; `empty` when no row.
pub(crate) fn table(head: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    if rows.is_empty() {
        return format!("<p class=\"empty\">{}</p>", esc(empty));
    }
    let mut t = String::from("<table><thead><tr>");
    for h in head {
        let _ = write!(t, "<th>{}</th>", esc(h));
    }
    t.push_str("</tr></thead><tbody>");
    for row in rows {
        t.push_str("<tr>");
        for cell in row {
            let _ = write!(t, "<td>{cell}</td>");
        }
        t.push_str("</tr>");
    }
    t.push_str("</tbody></table>");
    t
}

/// One line of a training curve: its name and (x, y) points.
pub(crate) type Series = (String, Vec<(f64, f64)>);

/// The training curves in a job's log lines: per ensemble member (or model of a recipe,
/// or forecaster member) its training loss per epoch or step, and its validation loss
/// when logged. Lines read `[member m/M |NAME: ]epoch e/E loss l[ validation log loss v]`
/// or `member m/M step s/S scaled MAE x`.
pub(crate) fn curves<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<Series> {
    let mut by_name: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for line in lines {
        let (who, rest) = match line.find("epoch ").or_else(|| line.find("step ")) {
            Some(at) => line.split_at(at),
            None => continue,
        };
        let who = who.trim().trim_end_matches(':').trim();
        let mut words = rest.split_whitespace();
        let _unit = words.next();
        let Some(x) = words
            .next()
            .and_then(|w| w.split('/').next())
            .and_then(|w| w.parse::<f64>().ok())
        else {
            continue;
        };
        let words: Vec<&str> = words.collect();
        let value_after = |key: &[&str]| -> Option<f64> {
            words
                .windows(key.len() + 1)
                .find(|w| &w[..key.len()] == key)
                .and_then(|w| w[key.len()].parse().ok())
        };
        let prefix = if who.is_empty() {
            String::new()
        } else {
            format!("{who} ")
        };
        if let Some(loss) = value_after(&["loss"]).or_else(|| value_after(&["scaled", "MAE"])) {
            by_name
                .entry(format!("{prefix}training"))
                .or_default()
                .push((x, loss));
        }
        if let Some(v) = value_after(&["validation", "log", "loss"]) {
            by_name
                .entry(format!("{prefix}validation"))
                .or_default()
                .push((x, v));
        }
    }
    by_name.into_iter().collect()
}

const COLOURS: &[&str] = &[
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// `series` as an SVG line chart with axes, ticks and a legend; a sentence when empty.
pub(crate) fn chart(series: &[Series], x_label: &str, y_label: &str) -> String {
    let points: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    if points.is_empty() {
        return "<p class=\"empty\">No epoch finished yet.</p>".into();
    }
    let (w, h, left, right, top, bottom) = (640.0, 280.0, 64.0, 170.0, 12.0, 40.0);
    let min = |f: fn(&(f64, f64)) -> f64| points.iter().map(f).fold(f64::INFINITY, f64::min);
    let max = |f: fn(&(f64, f64)) -> f64| points.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
    let (x0, mut x1) = (min(|p| p.0), max(|p| p.0));
    let (mut y0, mut y1) = (min(|p| p.1), max(|p| p.1));
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        (y0, y1) = (y0 - 0.5, y1 + 0.5);
    }
    let pad = (y1 - y0) * 0.05;
    (y0, y1) = (y0 - pad, y1 + pad);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * plot_w;
    let sy = |y: f64| top + (1.0 - (y - y0) / (y1 - y0)) * plot_h;
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{} by {}\">",
        esc(y_label),
        esc(x_label)
    );
    let _ = write!(
        svg,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" class=\"axis\"/>\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" class=\"axis\"/>",
        top + plot_h,
        left + plot_w,
        top + plot_h,
        top + plot_h
    );
    for k in 0..=4 {
        let y = y0 + (y1 - y0) * f64::from(k) / 4.0;
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"end\">{y:.4}</text>",
            left - 6.0,
            sy(y) + 4.0
        );
        let x = x0 + (x1 - x0) * f64::from(k) / 4.0;
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{}</text>",
            sx(x),
            top + plot_h + 16.0,
            number(x.round())
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" class=\"label\" text-anchor=\"middle\">{}</text>",
        left + plot_w / 2.0,
        h - 4.0,
        esc(x_label)
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let dash = if name.ends_with("validation") {
            " stroke-dasharray=\"5 3\""
        } else {
            ""
        };
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            svg,
            "<polyline class=\"series\" data-series=\"{}\" points=\"{}\" stroke=\"{colour}\"{dash}/>",
            esc(name),
            path.join(" ")
        );
        let ly = top + 14.0 * i as f64 + 8.0;
        let _ = write!(
            svg,
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{colour}\"{dash} class=\"key\"/>\
             <text x=\"{}\" y=\"{}\" class=\"tick\">{}</text>",
            w - right + 10.0,
            w - right + 30.0,
            w - right + 34.0,
            ly + 4.0,
            esc(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped_and_numbers_read_well() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(number(0.123456), "0.1235");
        assert_eq!(number(45211.0), "45,211");
        assert_eq!(ago(1_000, 61_000), "1 min ago");
    }

    #[test]
    fn curves_are_read_from_the_training_log() {
        let lines = [
            "attempt 1 started",
            "member 1/2 epoch 1/3 loss 0.69000 validation log loss 0.70000",
            "member 2/2 epoch 1/3 loss 0.68000",
            "member 1/2 epoch 2/3 loss 0.50000 validation log loss 0.55000",
            "treated arm: epoch 1/2 loss 0.40000",
            "epoch 4/5 loss 0.30000",
            "member 1/3 step 200/1000 scaled MAE 1.25000",
        ];
        let c = curves(lines);
        let get = |n: &str| c.iter().find(|(name, _)| name == n).map(|(_, p)| p.clone());
        assert_eq!(
            get("member 1/2 training"),
            Some(vec![(1.0, 0.69), (2.0, 0.5)])
        );
        assert_eq!(
            get("member 1/2 validation"),
            Some(vec![(1.0, 0.7), (2.0, 0.55)])
        );
        assert_eq!(get("member 2/2 training"), Some(vec![(1.0, 0.68)]));
        assert_eq!(get("treated arm training"), Some(vec![(1.0, 0.4)]));
        assert_eq!(get("training"), Some(vec![(4.0, 0.3)]));
        assert_eq!(get("member 1/3 training"), Some(vec![(200.0, 1.25)]));
        let svg = chart(&c, "epoch", "loss");
        assert_eq!(svg.matches("<polyline").count(), c.len());
        assert!(chart(&[], "epoch", "loss").contains("No epoch"));
    }
}
