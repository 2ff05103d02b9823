//! `sqscale simulate`: replay a queue-length trace through the same engine as the
//! daemon, on a virtual clock, and print the timeline.
//!
//! The trace is a step function per queue: the last row at or before a poll's time is in
//! effect (no row yet means an empty queue). Each rule and each job rule polls at 0, P,
//! 2P, ... like the daemon, and every write succeeds at once. Job rules create Jobs in a
//! virtual cluster ([`jobs`]).

pub mod chart;
mod jobs;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{Read, Write};

use crate::config::{JobRule, Rule};
use crate::engine::job::JobReason;
use crate::engine::{self, Counts, Observation, Pause, Reason, State, Time};
use crate::group::Groups;

/// One queue's reading at a point of the trace.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Sample {
    Counts(Counts),
    /// `visible = error`: polls of this queue fail until its next row.
    Error,
}

/// A parsed trace: per queue name, its rows sorted by time.
#[derive(Debug, Default)]
pub struct Trace {
    queues: HashMap<String, Vec<(Time, Sample)>>,
}

/// A bad trace row, with the line it is on.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct TraceError {
    pub line: u64,
    pub message: String,
}

const HEADER: [&str; 5] = ["time", "queue", "visible", "in_flight", "delayed"];

/// The queue key used for matching: a URL's last path segment, or the name as given.
fn queue_key(q: &str) -> &str {
    q.trim_end_matches('/').rsplit('/').next().unwrap_or(q)
}

impl Trace {
    /// Parses `time,queue,visible,in_flight,delayed` (header required).
    pub fn parse<R: Read>(input: R) -> Result<Trace, TraceError> {
        let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).flexible(true).from_reader(input);
        let header = reader.headers().map_err(|e| TraceError { line: 1, message: e.to_string() })?;
        if header.iter().collect::<Vec<_>>() != HEADER {
            return Err(TraceError {
                line: 1,
                message: format!(
                    "the header must be {:?}, found {:?}",
                    HEADER.join(","),
                    header.iter().collect::<Vec<_>>().join(",")
                ),
            });
        }
        let mut trace = Trace::default();
        for record in reader.records() {
            let record = record
                .map_err(|e| TraceError { line: e.position().map_or(0, |p| p.line()), message: e.to_string() })?;
            let line = record.position().map_or(0, |p| p.line());
            let bad = |message: String| TraceError { line, message };
            if record.len() != HEADER.len() {
                return Err(bad(format!("expected {} fields, found {}", HEADER.len(), record.len())));
            }
            let time: f64 =
                record[0].parse().map_err(|_| bad(format!("time ({:?}) is not a number of seconds", &record[0])))?;
            // 1e10 s is three centuries: beyond it the virtual clock (milliseconds in
            // an i64) and the poll count stop making sense.
            if !time.is_finite() || !(0.0..=1e10).contains(&time) {
                return Err(bad(format!("time ({}) must be a number of seconds between 0 and 1e10", &record[0])));
            }
            let queue = &record[1];
            if queue.is_empty() {
                return Err(bad("queue is empty".to_owned()));
            }
            let count = |i: usize, empty_ok: bool| -> Result<u64, TraceError> {
                let v = &record[i];
                if v.is_empty() && empty_ok {
                    return Ok(0);
                }
                v.parse().map_err(|_| bad(format!("{} ({v:?}) is not a message count", HEADER[i])))
            };
            let sample = if record[2].eq_ignore_ascii_case("error") {
                Sample::Error
            } else {
                Sample::Counts(Counts {
                    visible: count(2, false)?,
                    in_flight: count(3, true)?,
                    delayed: count(4, true)?,
                })
            };
            let at = Time((time * 1000.0).round() as i64);
            trace.queues.entry(queue_key(queue).to_owned()).or_default().push((at, sample));
        }
        for rows in trace.queues.values_mut() {
            // Stable: two rows at the same time keep file order, the later one wins.
            rows.sort_by_key(|(t, _)| *t);
        }
        Ok(trace)
    }

    /// The counts of `queue` at `t`, `None` if polls fail then. Before the queue's first
    /// row it is empty.
    fn at(&self, queue: &str, t: Time) -> Option<Counts> {
        let rows = self.queues.get(queue)?;
        let idx = rows.partition_point(|(at, _)| *at <= t);
        match idx.checked_sub(1).map(|i| rows[i].1) {
            None => Some(Counts::default()),
            Some(Sample::Counts(c)) => Some(c),
            Some(Sample::Error) => None,
        }
    }

    /// Time of the last row of any queue.
    pub fn end(&self) -> Time {
        self.queues.values().filter_map(|rows| rows.last().map(|(t, _)| *t)).max().unwrap_or_default()
    }

    fn has(&self, queue: &str) -> bool {
        self.queues.contains_key(queue)
    }
}

/// One row of the timeline: one poll of one rule or job rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub time: Time,
    /// The rule's or the job rule's name.
    pub rule: String,
    pub backlog: Option<u64>,
    pub active: bool,
    /// A rule: the replicas it asked for. A job rule: the Jobs created in this poll.
    pub desired: Option<u32>,
    /// A rule: the target's replicas after the poll. A job rule: its unfinished Jobs.
    pub replicas: u32,
    pub reason: RowReason,
}

/// The engine's reason for a row, a rule's or a job rule's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowReason {
    Rule(Reason),
    Job(JobReason),
}

impl RowReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RowReason::Rule(r) => r.as_str(),
            RowReason::Job(r) => r.as_str(),
        }
    }
}

/// How long each simulated Job runs unless `--job-duration` says otherwise.
pub const DEFAULT_JOB_DURATION: std::time::Duration = std::time::Duration::from_secs(60);

/// Options of one simulation run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Last poll time; `None` lets each run settle after the trace ends.
    pub until: Option<Time>,
    /// Replicas before the first poll; `None` starts each target at its min.
    pub initial_replicas: Option<u32>,
    /// Unix time (ms) of the trace's time 0, `--start`: the engine decides at
    /// `start + t`, so schedules open on the calendar. 0 is 1970-01-01T00:00:00Z.
    pub start: Time,
    /// The rule file's `[[group]]`s: members share them as in the daemon.
    pub groups: Vec<crate::config::Group>,
    /// `--job-duration`: how long each Job of a job rule runs before it is Complete.
    pub job_duration: std::time::Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            until: None,
            initial_replicas: None,
            start: Time::default(),
            groups: Vec::new(),
            job_duration: DEFAULT_JOB_DURATION,
        }
    }
}

impl Options {
    fn job_duration_ms(&self) -> i64 {
        i64::try_from(self.job_duration.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A polling interval in virtual milliseconds, at least 1.
fn step_ms(polling_interval: std::time::Duration) -> i64 {
    i64::try_from(polling_interval.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Why a trace cannot be replayed through the rules.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("rule {0:?} reads queue {1:?}, which has no row in the trace (select other rules with --rule)")]
    UnknownQueue(String, String),
    #[error("job rule {0:?} reads queue {1:?}, which has no row in the trace (select other rules with --rule)")]
    UnknownJobQueue(String, String),
    #[error("rule {0:?} would poll {1} times up to {2}s; give an earlier --until")]
    TooLong(String, i64, i64),
    #[error(
        "job rule {0:?} would keep more than {max} Jobs at {1}s; give an earlier --until or a shorter --job-duration",
        max = jobs::MAX_JOBS
    )]
    TooManyJobs(String, i64),
}

/// Replays `trace` through every rule in `rules`: [`run_all`] without job rules.
pub fn run(rules: &[&Rule], trace: &Trace, options: &Options) -> Result<Vec<Row>, RunError> {
    run_all(rules, &[], trace, options)
}

/// Replays `trace` through every rule in `rules` and every job rule in `jobs`: their rows
/// in time order, then by name. Fails if one reads a queue the trace never mentions (a
/// typo there would silently read as an empty queue).
pub fn run_all(rules: &[&Rule], jobs: &[&JobRule], trace: &Trace, options: &Options) -> Result<Vec<Row>, RunError> {
    for rule in rules {
        if let Some(q) = rule.triggers.iter().find(|q| !trace.has(&q.name)) {
            return Err(RunError::UnknownQueue(rule.name.clone(), q.name.clone()));
        }
    }
    for job in jobs {
        if let Some(q) = job.triggers.iter().find(|q| !trace.has(&q.name)) {
            return Err(RunError::UnknownJobQueue(job.name.clone(), q.name.clone()));
        }
    }
    let until = options.until.unwrap_or_else(|| {
        let rules = rules.iter().map(|r| settle_time(r));
        let jobs = jobs.iter().map(|j| jobs::settle_time(j, options));
        Time(trace.end().0.saturating_add(rules.chain(jobs).max().unwrap_or_default()))
    });
    let intervals = rules.iter().map(|r| (&r.name, r.polling_interval));
    for (name, interval) in intervals.chain(jobs.iter().map(|j| (&j.name, j.polling_interval))) {
        let polls = until.0 / step_ms(interval) + 1;
        if polls > 10_000_000 {
            return Err(RunError::TooLong(name.clone(), polls, until.0 / 1000));
        }
    }

    let mut rows = replay_rules(rules, trace, options, until);
    // A job rule's polls depend on nothing but its own Jobs: one at a time.
    for job in jobs {
        let mut timeline = jobs::Timeline::new(job);
        let step = step_ms(job.polling_interval);
        let mut t = Some(0i64);
        while let Some(now) = t {
            rows.push(timeline.poll(trace, options, Time(now))?);
            t = now.checked_add(step).filter(|n| *n <= until.0);
        }
    }
    // Stable: a rule and a job rule of the same name keep that order.
    rows.sort_by(|a, b| (a.time, &a.rule).cmp(&(b.time, &b.rule)));
    Ok(rows)
}

/// The rules' polls up to `until`.
fn replay_rules(rules: &[&Rule], trace: &Trace, options: &Options, until: Time) -> Vec<Row> {
    // Polls in time order across the rules (ties in the rules' order), so that members
    // of a group weigh each other's latest wants as the daemon's workers do.
    let groups = Groups::default();
    groups.configure(&options.groups, rules.iter().copied());
    let mut states: Vec<(State, u32)> =
        rules.iter().map(|r| (State::new(options.start), options.initial_replicas.unwrap_or(r.policy.min))).collect();
    let mut due: BinaryHeap<Reverse<(Time, usize)>> = (0..rules.len()).map(|i| Reverse((Time(0), i))).collect();
    let mut rows = Vec::new();
    while let Some(Reverse((t, i))) = due.pop() {
        let rule = rules[i];
        let (state, replicas) = &mut states[i];
        let obs = Observation {
            replicas: *replicas,
            // Every write succeeds at once, pods included.
            status_replicas: *replicas,
            ready_replicas: *replicas,
            pause: if rule.paused { Pause::Frozen } else { Pause::No },
            overrides: rule.overrides,
            queues: rule.triggers.iter().map(|q| trace.at(&q.name, t)).collect(),
        };
        // The engine decides on the calendar (`--start` + t): schedules open there.
        let now = Time(options.start.0.saturating_add(t.0));
        let (mut next, d) = engine::decide(&rule.policy, state, &obs, now);
        let d = groups.limit(rule, d);
        if let Some(to) = d.write {
            next.record_scale(&rule.policy, &d, now);
            groups.ran(rule, to);
            *replicas = to;
        }
        *state = next;
        rows.push(Row {
            time: t,
            rule: rule.name.clone(),
            backlog: d.backlog,
            active: d.active,
            desired: d.proposal,
            replicas: *replicas,
            reason: RowReason::Rule(d.reason),
        });
        if let Some(next) = t.0.checked_add(step_ms(rule.polling_interval)).filter(|n| *n <= until.0) {
            due.push(Reverse((Time(next), i)));
        }
    }
    rows
}

/// How long after the trace ends a rule needs to settle: its cooldown (to zero or idle),
/// or the scale-down window (down to min), plus two polls.
fn settle_time(rule: &Rule) -> i64 {
    let p = &rule.policy;
    let to_zero = p.cooldown.max(p.initial_cooldown).as_millis() as i64;
    let down_window = match &p.behavior {
        Some(b) => b.scale_down.stabilization_window_ms,
        None => p.legacy_downscale_window.as_millis() as i64,
    };
    let settle = if p.min == 0 || p.idle.is_some() { to_zero } else { down_window };
    settle + 2 * rule.polling_interval.as_millis() as i64
}

/// Seconds with as many decimals as needed: `10`, `10.5`, `0.25`.
pub fn format_time(t: Time) -> String {
    let s = format!("{}.{:03}", t.0.div_euclid(1000), t.0.rem_euclid(1000));
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Writes the timeline CSV: `time,rule,backlog,active,desired,replicas,reason`.
pub fn write_csv<W: Write>(rows: &[Row], out: W) -> std::io::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(["time", "rule", "backlog", "active", "desired", "replicas", "reason"])?;
    for r in rows {
        w.write_record([
            format_time(r.time),
            r.rule.clone(),
            r.backlog.map(|b| b.to_string()).unwrap_or_default(),
            r.active.to_string(),
            r.desired.map(|d| d.to_string()).unwrap_or_default(),
            r.replicas.to_string(),
            r.reason.as_str().to_owned(),
        ])?;
    }
    w.flush()
}

#[cfg(test)]
mod tests;
