//! Schedules (`[[rule.schedule]]`): windows that open at each match of a cron pattern,
//! read on the wall clock of a time zone, and stay open for a duration. While one is
//! open, its `min_replica_count`, `max_replica_count` or `paused` apply over the rule's.
//!
//! Pure: [`in_force`] is a function of the schedules and the poll's time. Time zones
//! come from the tz database built into the binary (jiff's bundle), never from the
//! host, so the daemon, `check` and `simulate` open the same windows on every host.
//!
//! DST follows cron (Vixie cron, and the Open Cron Pattern Specification that croner
//! implements): a fixed time that a spring-forward skips opens at the first instant after
//! the gap (02:30 on a day that jumps from 02:00 to 03:00 opens at 03:00); a fixed time
//! that a fall-back repeats opens once, on its first pass; wildcard and step fields
//! (`*`, `*/15`) match every wall-clock minute that happens. A duration is elapsed
//! time: a window of `10h` that spans a change closes 10 real hours after it opened.

use std::time::Duration;

use croner::Cron;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::Time;

/// One `[[rule.schedule]]`, validated.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// The pattern as written, for `check`, `/status` and comparison on reload.
    pub pattern: String,
    pub cron: Cron,
    /// The IANA name as written (`UTC` by default).
    pub timezone: String,
    pub tz: TimeZone,
    pub duration: Duration,
    pub min: Option<u32>,
    pub max: Option<u32>,
    pub paused: bool,
}

/// Two schedules are the same when they are written the same (what a reload compares).
impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
            && self.timezone == other.timezone
            && self.duration == other.duration
            && (self.min, self.max, self.paused) == (other.min, other.max, other.paused)
    }
}

/// Why a schedule's `cron` or `timezone` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("cron ({0:?}) is not a cron pattern of five fields (minute hour day-of-month month day-of-week)")]
    Cron(String, #[source] CronError),
    #[error("cron ({0:?}) never matches a date")]
    NeverMatches(String),
    #[error("timezone ({0:?}) is not an IANA time zone name such as \"Asia/Seoul\" or \"UTC\"")]
    TimeZone(String, #[source] jiff::Error),
}

/// Parses a five-field pattern (minute to day of week; no seconds, no year field), and
/// checks that it ever matches (`0 0 30 2 *` does not).
pub fn parse_cron(pattern: &str) -> Result<Cron, ScheduleError> {
    let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build();
    let cron = parser.parse(pattern).map_err(|e| ScheduleError::Cron(pattern.to_owned(), e))?;
    // Any fixed origin serves: a pattern that matches at all matches within 28 years
    // (the Gregorian calendar's weekdays repeat), well inside croner's search.
    let origin = Timestamp::UNIX_EPOCH.to_zoned(TimeZone::UTC);
    cron.find_next_occurrence(&origin, true).map_err(|_| ScheduleError::NeverMatches(pattern.to_owned()))?;
    Ok(cron)
}

/// An IANA time zone from the bundled database.
pub fn time_zone(name: &str) -> Result<TimeZone, ScheduleError> {
    jiff::tz::db().get(name).map_err(|e| ScheduleError::TimeZone(name.to_owned(), e))
}

/// One window: when it opened (or opens) and when it closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub opens: Time,
    pub closes: Time,
}

fn timestamp(t: Time) -> Option<Timestamp> {
    Timestamp::from_millisecond(t.0).ok()
}

fn time(z: &jiff::Zoned) -> Time {
    Time(z.timestamp().as_millisecond())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Schedule {
    /// The window open at `now`, if any. Windows are half-open, `[opens, closes)`; of
    /// overlapping ones (a duration longer than the pattern's period), the latest, which
    /// closes last.
    pub fn window_at(&self, now: Time) -> Option<Window> {
        // The latest opening at or before now: patterns match whole minutes, so the
        // second now falls in is as good as now.
        let at = Timestamp::from_second(now.0.div_euclid(1000)).ok()?.to_zoned(self.tz.clone());
        let opened = self.cron.find_previous_occurrence(&at, true).ok()?;
        let opens = time(&opened);
        let closes = Time(opens.0.saturating_add(millis(self.duration)));
        (closes > now).then_some(Window { opens, closes })
    }

    /// The windows that open after `now`, in order (for `check`).
    pub fn next_windows(&self, now: Time) -> impl Iterator<Item = Window> + '_ {
        let start = timestamp(now).map(|t| t.to_zoned(self.tz.clone()));
        let d = millis(self.duration);
        start.into_iter().flat_map(move |start| {
            self.cron.iter_after(start).map(move |z| {
                let opens = time(&z);
                Window { opens, closes: Time(opens.0.saturating_add(d)) }
            })
        })
    }

    /// `t` on this schedule's wall clock, as RFC 3339 with the zone's offset.
    pub fn local(&self, t: Time) -> String {
        timestamp(t).map_or_else(|| t.0.to_string(), |ts| ts.to_zoned(self.tz.clone()).strftime("%FT%T%:z").to_string())
    }
}

/// What the open windows of a rule's schedules impose at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Override {
    /// The largest `min_replica_count` of the open windows that set one.
    pub min: Option<u32>,
    /// The smallest `max_replica_count` of the open windows that set one.
    pub max: Option<u32>,
    /// Whether an open window pauses the rule.
    pub paused: bool,
    /// Bit i: schedule i (0-based, the first 64) is open.
    pub open: u64,
    /// When the last of the open windows closes, as the schedules stand now.
    pub until: Time,
}

impl Override {
    /// The 1-based numbers of the open schedules, as `check` and errors count them.
    pub fn open_schedules(&self) -> impl Iterator<Item = usize> + '_ {
        (0..64).filter(|i| self.open & (1 << i) != 0).map(|i| i + 1)
    }
}

/// The override of the windows open at `now`; `None` when none is (and at once for a
/// rule without schedules, which is most of them).
pub fn in_force(schedules: &[Schedule], now: Time) -> Option<Override> {
    let mut o: Option<Override> = None;
    for (i, s) in schedules.iter().enumerate() {
        let Some(w) = s.window_at(now) else { continue };
        let o = o.get_or_insert_with(Override::default);
        o.min = o.min.max(s.min);
        o.max = match (o.max, s.max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        o.paused |= s.paused;
        if i < 64 {
            o.open |= 1 << i;
        }
        o.until = o.until.max(w.closes);
    }
    o
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
