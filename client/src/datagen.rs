//! `halyard datagen`: a synthetic marketing data set that Halyard owns, with known effects,
//! so that the demo runs on a fresh machine with nothing else.
//!
//! - `campaign/responses.csv`: one row per customer contacted in a campaign; `responded`
//!   (yes/no) is drawn from a logistic model whose coefficients are [`EFFECTS`].
//! - `campaign/daily_kpis.csv`: per campaign and day, impressions, clicks, conversions and
//!   spend, with a trend, a weekly seasonality and promotion spikes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{ClientError, Result};

/// The true effects behind `responded`, on the log-odds scale (documented in the README).
pub const EFFECTS: &str = "\
intercept -2.4; +0.35 per previous response; -0.004 per day since last contact; \
+0.15 per email opened in 30 days; +0.3 per 20k income above 50k; \
channel: direct_mail +0.6, email +0.3, sms 0, push -0.4; \
offer: discount_20 +0.7, discount_10 +0.35, free_shipping +0.25, none -0.3; \
segment: premium +0.3, young_family +0.2, value 0, retired -0.2, student -0.4; \
campaign: loyalty +0.4, spring_sale +0.1, new_product 0, winback -0.5";

const CHANNELS: [(&str, f64); 4] = [
    ("email", 0.3),
    ("sms", 0.0),
    ("push", -0.4),
    ("direct_mail", 0.6),
];
const OFFERS: [(&str, f64); 4] = [
    ("discount_20", 0.7),
    ("discount_10", 0.35),
    ("free_shipping", 0.25),
    ("none", -0.3),
];
const SEGMENTS: [(&str, f64); 5] = [
    ("premium", 0.3),
    ("young_family", 0.2),
    ("value", 0.0),
    ("retired", -0.2),
    ("student", -0.4),
];
const CAMPAIGNS: [(&str, f64); 4] = [
    ("loyalty", 0.4),
    ("spring_sale", 0.1),
    ("new_product", 0.0),
    ("winback", -0.5),
];
const REGIONS: [&str; 5] = ["north", "south", "east", "west", "central"];

/// What `datagen` wrote.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The responses file.
    pub responses: PathBuf,
    /// The daily KPI file.
    pub kpis: PathBuf,
    /// Rows in the responses file.
    pub rows: usize,
    /// Share of responders.
    pub response_rate: f64,
}

fn pick<'a, T: Copy>(rng: &mut StdRng, items: &'a [(&'a str, T)]) -> (&'a str, T) {
    items[rng.random_range(0..items.len())]
}

/// Write the data set under `dir` (`dir/campaign/…`).
pub fn generate(dir: &Path, rows: usize, seed: u64) -> Result<Generated> {
    let out = dir.join("campaign");
    std::fs::create_dir_all(&out).map_err(|source| ClientError::Io {
        path: out.display().to_string(),
        source,
    })?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut csv = String::with_capacity(rows * 120);
    csv.push_str("customer_id,age,income,tenure_months,region,segment,channel,campaign,offer,previous_responses,days_since_last_contact,emails_opened_30d,responded\n");
    let mut responders = 0usize;
    for i in 0..rows {
        let age: u32 = rng.random_range(18..80);
        let income = (rng.random_range(15_000.0..140_000.0f64)
            * (0.6 + f64::from(age).min(55.0) / 80.0))
            .round();
        let tenure: u32 = rng.random_range(0..120);
        let region = REGIONS[rng.random_range(0..REGIONS.len())];
        let (segment, seg_fx) = pick(&mut rng, &SEGMENTS);
        let (channel, ch_fx) = pick(&mut rng, &CHANNELS);
        let (campaign, camp_fx) = pick(&mut rng, &CAMPAIGNS);
        let (offer, off_fx) = pick(&mut rng, &OFFERS);
        let previous: u32 = (0..5).filter(|_| rng.random_bool(0.18)).count() as u32;
        let days: u32 = rng.random_range(0..365);
        let opened: u32 = rng.random_range(0..9);
        let z = -2.4 + 0.35 * f64::from(previous) - 0.004 * f64::from(days)
            + 0.15 * f64::from(opened)
            + 0.3 * (income - 50_000.0) / 20_000.0
            + ch_fx
            + off_fx
            + seg_fx
            + camp_fx;
        let p = 1.0 / (1.0 + (-z).exp());
        let responded = rng.random_bool(p);
        responders += usize::from(responded);
        let _ = writeln!(
            csv,
            "C{:06},{age},{income},{tenure},{region},{segment},{channel},{campaign},{offer},{previous},{days},{opened},{}",
            i + 1,
            if responded { "yes" } else { "no" }
        );
    }
    let responses = out.join("responses.csv");
    write(&responses, &csv)?;

    let mut kpi = String::new();
    kpi.push_str("date,campaign,promotion,impressions,clicks,conversions,spend\n");
    let start = chrono::NaiveDate::from_ymd_opt(2025, 1, 1).expect("valid date");
    for (c, (campaign, _)) in CAMPAIGNS.iter().enumerate() {
        let base = 20_000.0 + 5_000.0 * c as f64;
        for d in 0..365u32 {
            let date = start + chrono::Days::new(u64::from(d));
            let weekday = date.format("%u").to_string().parse::<u32>().unwrap_or(1);
            let weekly = match weekday {
                6 | 7 => 0.75,
                1 => 1.1,
                _ => 1.0,
            };
            let promotion = (d + 7 * c as u32) % 45 < 4;
            let trend = 1.0 + 0.0015 * f64::from(d) * if c % 2 == 0 { 1.0 } else { -0.4 };
            let lift = if promotion { 1.8 } else { 1.0 };
            let noise = 1.0 + rng.random_range(-0.08..0.08);
            let impressions = (base * weekly * trend * lift * noise).round();
            let ctr = 0.021 * if promotion { 1.3 } else { 1.0 };
            let clicks = (impressions * ctr * (1.0 + rng.random_range(-0.1..0.1))).round();
            let conversions = (clicks * 0.045 * (1.0 + rng.random_range(-0.2..0.2))).round();
            let spend =
                (impressions * 0.004 * if promotion { 1.5 } else { 1.0 } * 100.0).round() / 100.0;
            let _ = writeln!(
                kpi,
                "{},{campaign},{},{impressions},{clicks},{conversions},{spend}",
                date.format("%Y-%m-%d"),
                u8::from(promotion)
            );
        }
    }
    let kpis = out.join("daily_kpis.csv");
    write(&kpis, &kpi)?;
    Ok(Generated {
        responses,
        kpis,
        rows,
        response_rate: responders as f64 / rows.max(1) as f64,
    })
}

fn write(path: &Path, text: &str) -> Result<()> {
    // Write aside and rename, so a reader never sees half a file.
    let tmp = path.with_extension("csv.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| ClientError::Io {
            path: path.display().to_string(),
            source,
        })
}
