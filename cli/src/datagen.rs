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

use crate::{CliError, Result};

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

impl std::fmt::Display for Generated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wrote {} ({} rows, {:.1}% responded) and {}",
            self.responses.display(),
            self.rows,
            self.response_rate * 100.0,
            self.kpis.display()
        )
    }
}

fn pick(rng: &mut StdRng, items: &[(&'static str, f64)]) -> &'static str {
    items[rng.random_range(0..items.len())].0
}

/// The effect of `name` in `table` (0 for a name the table does not hold).
fn effect(table: &[(&str, f64)], name: &str) -> f64 {
    table
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0.0, |(_, fx)| *fx)
}

/// The columns of a `responses.csv` row that drive `responded` ([`EFFECTS`]).
#[derive(Debug, Clone, Copy)]
pub struct Customer<'a> {
    /// Yearly income.
    pub income: f64,
    /// Campaigns answered before (0 to 5).
    pub previous_responses: u32,
    /// Days since the last contact.
    pub days_since_last_contact: u32,
    /// E-mails opened in the last 30 days.
    pub emails_opened_30d: u32,
    /// Customer segment.
    pub segment: &'a str,
    /// Contact channel.
    pub channel: &'a str,
    /// Campaign.
    pub campaign: &'a str,
    /// Offer made.
    pub offer: &'a str,
}

impl<'a> Customer<'a> {
    /// A data row of `responses.csv` as written by [`generate`]: the customer and whether
    /// they responded; `None` for the header or a row of another shape.
    pub fn from_row(line: &'a str) -> Option<(Customer<'a>, bool)> {
        let f: Vec<&str> = line.trim_end().split(',').collect();
        let [
            _,
            _,
            income,
            _,
            _,
            segment,
            channel,
            campaign,
            offer,
            previous,
            days,
            opened,
            responded,
        ] = f.as_slice()
        else {
            return None;
        };
        let customer = Customer {
            income: income.parse().ok()?,
            previous_responses: previous.parse().ok()?,
            days_since_last_contact: days.parse().ok()?,
            emails_opened_30d: opened.parse().ok()?,
            segment,
            channel,
            campaign,
            offer,
        };
        Some((customer, *responded == "yes"))
    }

    /// The true log-odds of a response: what a perfect model would rank customers by, so
    /// tests can hold a trained model's AUC against the best one possible on the same rows.
    pub fn log_odds(&self) -> f64 {
        -2.4 + 0.35 * f64::from(self.previous_responses)
            - 0.004 * f64::from(self.days_since_last_contact)
            + 0.15 * f64::from(self.emails_opened_30d)
            + 0.3 * (self.income - 50_000.0) / 20_000.0
            + effect(&CHANNELS, self.channel)
            + effect(&OFFERS, self.offer)
            + effect(&SEGMENTS, self.segment)
            + effect(&CAMPAIGNS, self.campaign)
    }
}

/// Write the data set under `dir` (`dir/campaign/…`).
pub fn generate(dir: &Path, rows: usize, seed: u64) -> Result<Generated> {
    let out = dir.join("campaign");
    std::fs::create_dir_all(&out).map_err(|source| CliError::Io {
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
        let segment = pick(&mut rng, &SEGMENTS);
        let channel = pick(&mut rng, &CHANNELS);
        let campaign = pick(&mut rng, &CAMPAIGNS);
        let offer = pick(&mut rng, &OFFERS);
        let previous: u32 = (0..5).filter(|_| rng.random_bool(0.18)).count() as u32;
        let days: u32 = rng.random_range(0..365);
        let opened: u32 = rng.random_range(0..9);
        let customer = Customer {
            income,
            previous_responses: previous,
            days_since_last_contact: days,
            emails_opened_30d: opened,
            segment,
            channel,
            campaign,
            offer,
        };
        let z = customer.log_odds();
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
        .map_err(|source| CliError::Io {
            path: path.display().to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_follow_the_documented_log_odds() {
        let dir = tempfile::tempdir().unwrap();
        let generated = generate(dir.path(), 20_000, 4).unwrap();
        let text = std::fs::read_to_string(&generated.responses).unwrap();
        let rows: Vec<(Customer, bool)> = text
            .lines()
            .skip(1)
            .map(|l| Customer::from_row(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 20_000);
        assert!(Customer::from_row(text.lines().next().unwrap()).is_none());
        // Calibration: the true probabilities average to the observed rate (the standard
        // error of a rate over 20 000 rows is about 0.003).
        let expected: f64 = rows
            .iter()
            .map(|(c, _)| 1.0 / (1.0 + (-c.log_odds()).exp()))
            .sum::<f64>()
            / 20_000.0;
        assert!(
            (expected - generated.response_rate).abs() < 0.01,
            "expected {expected}, observed {}",
            generated.response_rate
        );
        // And by group: direct mail (+0.6) answers more than push (-0.4), as documented.
        let rate = |channel: &str| {
            let of: Vec<bool> = rows
                .iter()
                .filter(|(c, _)| c.channel == channel)
                .map(|(_, r)| *r)
                .collect();
            of.iter().filter(|r| **r).count() as f64 / of.len() as f64
        };
        assert!(
            rate("direct_mail") > rate("push") + 0.05,
            "{} vs {}",
            rate("direct_mail"),
            rate("push")
        );
    }
}
