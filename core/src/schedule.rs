//! Scheduled runs: a job spec fired by the leader every interval or on a cron pattern,
//! each run an ordinary job linked to its schedule.
//!
//! **Invariants.** A run's job id is derived from its due time (`<schedule>-<due ms>`), so
//! a leader that fails after submitting a run and before recording it finds the job there
//! on the next tick (the submission conflicts, which counts as done): each due time fires at
//! most once, across failovers. Due times missed while no leader ran are coalesced into
//! one run. A run that is still going when the next is due is not started again; that due
//! time is recorded as skipped.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::spec::JobSpec;

/// Runs kept in a schedule's history (the oldest go first).
pub const MAX_RUNS: usize = 100;

/// When a schedule fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timing {
    /// Every so many seconds, from its creation.
    Every(u64),
    /// A five-field cron pattern (minute hour day-of-month month day-of-week), in UTC.
    Cron(String),
}

impl Timing {
    /// Parse `--every` (`24h`, `90m`, `30s`: humantime's durations, at least 1 s) or
    /// `--cron` (five fields).
    pub fn parse(every: Option<&str>, cron: Option<&str>) -> Result<Timing> {
        let bad = |field: &str, value: &str, rule: String| {
            Error::invalid("schedule", field, format!("{value:?}"), rule)
        };
        match (every, cron) {
            (Some(e), None) => {
                let d = humantime::parse_duration(e.trim()).map_err(|err| {
                    bad("every", e, format!("{err}: write it as 24h, 90m or 30s"))
                })?;
                if d.as_secs() == 0 {
                    return Err(bad("every", e, "must be at least 1s".into()));
                }
                Ok(Timing::Every(d.as_secs()))
            }
            (None, Some(c)) => {
                CronPattern::parse(c).map_err(|rule| bad("cron", c, rule))?;
                Ok(Timing::Cron(c.trim().to_string()))
            }
            _ => Err(bad(
                "every",
                every.or(cron).unwrap_or(""),
                "give exactly one of --every or --cron".into(),
            )),
        }
    }

    /// The first due time strictly after `after_ms` (ms since the epoch).
    pub fn next_after(&self, after_ms: i64, created_ms: i64) -> i64 {
        match self {
            Timing::Every(secs) => {
                let every = (*secs as i64) * 1000;
                let since = (after_ms - created_ms).max(0);
                created_ms + (since / every + 1) * every
            }
            Timing::Cron(c) => CronPattern::parse(c)
                .ok()
                .and_then(|p| p.next_after(after_ms))
                .unwrap_or(i64::MAX),
        }
    }
}

impl std::fmt::Display for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Timing::Every(s) => write!(
                f,
                "every {}",
                humantime::format_duration(std::time::Duration::from_secs(*s))
            ),
            Timing::Cron(c) => write!(f, "cron {c:?} (UTC)"),
        }
    }
}

/// One run of a schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// When it was due.
    pub due_ms: i64,
    /// Its job, or `None` when it was skipped.
    pub job: Option<String>,
    /// Why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// A schedule as the coordinator keeps it (`schedules/<name>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Its name (runs are jobs `<name>-<due ms>`).
    pub name: String,
    /// The job each run submits.
    pub spec: JobSpec,
    /// When it fires.
    pub timing: Timing,
    /// A paused schedule fires nothing (its due times pass).
    pub paused: bool,
    /// The next due time, ms since the epoch.
    pub next_ms: i64,
    /// Creation time.
    pub created_ms: i64,
    /// The key that created it (its runs are that key's jobs).
    pub owner: Option<String>,
    /// Runs, oldest first (at most [`MAX_RUNS`]).
    pub runs: Vec<Run>,
}

impl Schedule {
    /// A new schedule, first due after `now_ms`.
    pub fn new(name: &str, spec: JobSpec, timing: Timing, now_ms: i64) -> Result<Schedule> {
        if !crate::spec::is_name(name) {
            return Err(Error::invalid(
                "schedule",
                "name",
                format!("{name:?}"),
                "must be 1 to 64 letters, digits, '-' or '_', starting with a letter or digit",
            ));
        }
        Ok(Schedule {
            name: name.to_string(),
            next_ms: timing.next_after(now_ms, now_ms),
            spec,
            timing,
            paused: false,
            created_ms: now_ms,
            owner: None,
            runs: Vec::new(),
        })
    }

    /// The job id of the run due at `due_ms`.
    pub fn run_id(&self, due_ms: i64) -> String {
        format!("{}-{due_ms}", self.name)
    }

    /// Record a run (or a skipped due time) and move `next_ms` past `now_ms`.
    pub fn record(&mut self, run: Run, now_ms: i64) {
        self.runs.push(run);
        if self.runs.len() > MAX_RUNS {
            let extra = self.runs.len() - MAX_RUNS;
            self.runs.drain(..extra);
        }
        self.next_ms = self.timing.next_after(now_ms, self.created_ms);
    }
}

/// A five-field cron pattern: each field the set of values it matches.
#[derive(Debug, Clone, PartialEq)]
pub struct CronPattern {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days: Vec<bool>,
    months: Vec<bool>,
    weekdays: Vec<bool>,
    /// Whether day-of-month and day-of-week were both restricted (then either matches,
    /// as Vixie cron does).
    either_day: bool,
}

impl CronPattern {
    /// Parse `minute hour day-of-month month day-of-week`: `*`, numbers, ranges `a-b`,
    /// steps `*/n` and `a-b/n`, and lists of them; day of week 0–7 (0 and 7 are Sunday).
    pub fn parse(text: &str) -> std::result::Result<CronPattern, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "a cron pattern has five fields (minute hour day-of-month month day-of-week), this has {}",
                fields.len()
            ));
        }
        let mut weekdays = field(fields[4], 0, 7, "day of week")?;
        if weekdays[7] {
            weekdays[0] = true;
        }
        weekdays.truncate(7);
        Ok(CronPattern {
            minutes: field(fields[0], 0, 59, "minute")?,
            hours: field(fields[1], 0, 23, "hour")?,
            days: field(fields[2], 1, 31, "day of month")?,
            months: field(fields[3], 1, 12, "month")?,
            weekdays,
            either_day: fields[2] != "*" && fields[4] != "*",
        })
    }

    fn matches(&self, t: &DateTime<Utc>) -> bool {
        let day = self.days[t.day() as usize];
        let weekday = self.weekdays[t.weekday().num_days_from_sunday() as usize];
        let day_ok = if self.either_day {
            day || weekday
        } else {
            day && weekday
        };
        self.minutes[t.minute() as usize]
            && self.hours[t.hour() as usize]
            && self.months[t.month() as usize]
            && day_ok
    }

    /// The first whole minute strictly after `after_ms` that matches, within four years.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let minute = 60_000;
        let mut at = (after_ms.div_euclid(minute) + 1) * minute;
        for _ in 0..(4 * 366 * 24 * 60) {
            let t = DateTime::<Utc>::from_timestamp_millis(at)?;
            if self.matches(&t) {
                return Some(at);
            }
            at += minute;
        }
        None
    }
}

/// One field's matching values, indexed by value (`0..=max`).
fn field(text: &str, min: u32, max: u32, name: &str) -> std::result::Result<Vec<bool>, String> {
    let mut set = vec![false; max as usize + 1];
    let num = |s: &str| -> std::result::Result<u32, String> {
        let v: u32 = s
            .parse()
            .map_err(|_| format!("{name} {s:?} is not a number"))?;
        if v < min || v > max {
            return Err(format!("{name} {v} is outside {min}-{max}"));
        }
        Ok(v)
    };
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{name} step {s:?} must be a positive number"))?;
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = match range {
            "*" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None if step > 1 => (num(r)?, max),
                None => (num(r)?, num(r)?),
            },
        };
        if lo > hi {
            return Err(format!("{name} range {range:?} runs backwards"));
        }
        let mut v = lo;
        while v <= hi {
            set[v as usize] = true;
            v += step;
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn cron_patterns_fire_when_cron_would() {
        let next = |p: &str, after: &str| {
            let t = CronPattern::parse(p)
                .unwrap()
                .next_after(ms(after))
                .unwrap();
            DateTime::<Utc>::from_timestamp_millis(t)
                .unwrap()
                .to_rfc3339()
        };
        // 2026-12-02 is a Wednesday.
        assert_eq!(
            next("0 3 * * *", "2026-12-02T02:35:00Z"),
            "2026-12-02T03:00:00+00:00"
        );
        assert_eq!(
            next("0 3 * * *", "2026-12-02T03:00:00Z"),
            "2026-12-03T03:00:00+00:00"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-12-02T02:35:10Z"),
            "2026-12-02T02:45:00+00:00"
        );
        assert_eq!(
            next("30 9 * * 1-5", "2026-12-04T10:00:00Z"),
            "2026-12-07T09:30:00+00:00"
        );
        assert_eq!(
            next("0 0 1 1 *", "2026-12-02T00:00:00Z"),
            "2027-01-01T00:00:00+00:00"
        );
        // Both days restricted: either matches (the 15th, or a Sunday).
        assert_eq!(
            next("0 12 15 * 0", "2026-12-02T00:00:00Z"),
            "2026-12-06T12:00:00+00:00"
        );
        assert_eq!(
            next("0 12 * * 7", "2026-12-02T00:00:00Z"),
            "2026-12-06T12:00:00+00:00"
        );
        for bad in [
            "0 3 * *",
            "61 * * * *",
            "* * * * 8",
            "5-1 * * * *",
            "*/0 * * * *",
            "a * * * *",
        ] {
            assert!(CronPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn intervals_count_from_creation_and_missed_times_coalesce() {
        let t = Timing::parse(Some("10s"), None).unwrap();
        assert_eq!(t, Timing::Every(10));
        assert_eq!(t.next_after(1_000, 1_000), 11_000);
        assert_eq!(t.next_after(11_000, 1_000), 21_000);
        // A leader back after 35 s: one run, next due on the grid.
        assert_eq!(t.next_after(36_000, 1_000), 41_000);
        assert!(Timing::parse(Some("0s"), None).is_err());
        assert!(Timing::parse(Some("1d"), Some("* * * * *")).is_err());
        assert!(Timing::parse(None, None).is_err());
        let err = Timing::parse(None, Some("0 25 * * *"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("hour 25 is outside 0-23"), "{err}");
    }
}
