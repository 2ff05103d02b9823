//! The supervisor: starts one worker per rule, applies reloads as a diff, and drains on
//! shutdown. It never sees a signal; it consumes [`Control`] messages, so tests drive it
//! exactly as SIGHUP and SIGTERM do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{
    Config, ConfigErrors, JobRule, KubernetesSettings, LeaderElection, RolloutStrategy, Rule, ServerSettings,
};
use crate::engine::State;
use crate::job_worker;
use crate::leader::{Electors, Leadership};
use crate::signals::Control;
use crate::source::QueueReader;
use crate::worker::{self, Deps};
use crate::workload::ScaleTarget;
use crate::workload::jobs::JobTarget;
use std::sync::atomic::{AtomicBool, Ordering};

/// How a reload went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new rules run: counts of rules added, removed, changed (restarted on the new
    /// rule; the engine state carries over unless the target or context changed) and
    /// unchanged (kept running with their state and schedule).
    Applied { added: usize, removed: usize, changed: usize, unchanged: usize },
    /// The new file was invalid; the old rules run untouched.
    Rejected(Vec<String>),
}

/// Why shutdown did not drain cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Aborted {
    #[error("a second shutdown signal arrived while draining")]
    Signal,
    #[error("workers were still busy when the drain deadline passed")]
    Deadline,
}

/// A job rule's running task.
struct RunningJob {
    rule: Arc<JobRule>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    /// A rollout is owed (see [`job_worker::run`]): shared with the task, which clears it.
    rollout: Arc<AtomicBool>,
}

struct Running {
    rule: Arc<Rule>,
    cancel: CancellationToken,
    /// The worker's task, which ends with the rule's engine state.
    task: JoinHandle<State>,
}

/// Owns the workers of the current configuration.
pub struct Supervisor<Q, T> {
    /// Shared by every worker (one pointer each).
    deps: Arc<Deps<Q, T>>,
    /// The sections that only change on restart, as started: a reload that changes
    /// them is warned about. (Each worker holds its own rule; nothing else is kept.)
    kubernetes: KubernetesSettings,
    server: ServerSettings,
    leader_election: LeaderElection,
    workers: HashMap<String, Running>,
    /// One task per job rule, by name.
    jobs: HashMap<String, RunningJob>,
    tracker: TaskTracker,
    root: CancellationToken,
    /// With leader election: an elector per kube context the rules use.
    leader: Option<Electors>,
}

impl<Q: QueueReader, T: ScaleTarget + JobTarget> Supervisor<Q, T> {
    /// Starts a worker for every rule of `config`.
    pub fn start(config: Config, deps: Deps<Q, T>) -> Self {
        Supervisor::start_electing(config, deps, None)
    }

    /// Starts a worker for every rule of `config`, and with `leader`, an elector for
    /// every kube context they use.
    pub fn start_electing(config: Config, deps: Deps<Q, T>, leader: Option<Electors>) -> Self {
        let Config { kubernetes, server, leader_election, groups, rules, jobs, .. } = config;
        let rules: Vec<Arc<Rule>> = rules.into_iter().map(Arc::new).collect();
        let jobs: Vec<Arc<JobRule>> = jobs.into_iter().map(Arc::new).collect();
        deps.queues.set_needs_of(&rules, &jobs);
        deps.observer.rules_loaded(&rules);
        deps.observer.jobs_loaded(&jobs);
        deps.observer.groups().configure_with_jobs(&groups, rules.iter().map(|r| &**r), jobs.iter().map(|j| &**j));
        let mut s = Supervisor {
            deps: Arc::new(deps),
            kubernetes,
            server,
            leader_election,
            workers: HashMap::new(),
            jobs: HashMap::new(),
            tracker: TaskTracker::new(),
            root: CancellationToken::new(),
            leader,
        };
        s.set_contexts(&rules, &jobs);
        s.keep_state(&rules);
        s.watch_jobs(&jobs);
        let (n, start) = (rules.len() + jobs.len(), Instant::now());
        for rule in rules {
            s.spawn(rule, start, n, None);
        }
        for rule in jobs {
            // At start the running Jobs may come from any older template (spec §7).
            let owed = Arc::new(AtomicBool::new(rule.rollout.strategy == RolloutStrategy::Default));
            s.spawn_job(rule, start, n, None, owed);
        }
        info!(rules = s.workers.len(), jobs = s.jobs.len(), dry_run = s.deps.dry_run, "started");
        s
    }

    /// How many job rules run.
    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    /// The running job rule called `name`.
    pub fn job_rule(&self, name: &str) -> Option<&JobRule> {
        self.jobs.get(name).map(|r| &*r.rule)
    }

    /// Starts the task of job rule `rule`; with `previous` (cancelled already), only once
    /// that task has ended, so two never create side by side. `rollout`: whether a
    /// rollout is owed before the first poll, a flag the task clears once it is paid
    /// (shared with the task it replaces when the template is the same).
    fn spawn_job(
        &mut self,
        rule: Arc<JobRule>,
        start: Instant,
        rules: usize,
        previous: Option<RunningJob>,
        rollout: Arc<AtomicBool>,
    ) {
        let cancel = self.root.child_token();
        let first_poll = start + job_start_offset(&rule, rules);
        let lead = self.leader.as_ref().map_or_else(Leadership::unelected, |l| l.leadership(rule.context.as_deref()));
        let run = job_worker::run(rule.clone(), self.deps.clone(), lead, cancel.clone(), first_poll, rollout.clone());
        let work: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match previous {
            None => Box::pin(run),
            Some(previous) => Box::pin(async move {
                if let Err(e) = previous.task.await {
                    warn!(job = %previous.rule.name, error = %e, "the previous task of this job rule failed");
                }
                run.await
            }),
        };
        let task = match self.leader.as_ref().and_then(|l| l.users(rule.context.as_deref())) {
            Some(users) => self.tracker.spawn(users.track_future(work)),
            None => self.tracker.spawn(work),
        };
        self.jobs.insert(rule.name.clone(), RunningJob { rule, cancel, task, rollout });
    }

    /// Tells the Jobs adapter which job rules run (its caches follow them), and the
    /// observer where to ask for the Jobs of job rules that no longer run.
    fn watch_jobs(&self, jobs: &[Arc<JobRule>]) {
        let refs: Vec<&JobRule> = jobs.iter().map(|r| &**r).collect();
        self.deps.targets.watch_jobs(&refs);
        let (targets, running) = (self.deps.targets.clone(), jobs.to_vec());
        self.deps.observer.set_orphans(move || {
            let refs: Vec<&JobRule> = running.iter().map(|r| &**r).collect();
            targets
                .orphaned_jobs(&refs)
                .into_iter()
                .map(|(namespace, job_rule, name, finished)| crate::status::OrphanedJob {
                    namespace,
                    job_rule,
                    name,
                    finished,
                })
                .collect()
        });
    }

    /// How many rules run.
    pub fn rule_count(&self) -> usize {
        self.workers.len()
    }

    /// The running rule called `name`.
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.workers.get(name).map(|r| &*r.rule)
    }

    /// Starts a worker for `rule`; with `previous` (cancelled already), it carries on
    /// from that worker's engine state.
    /// `start` is one instant for every rule started together, so that the rules on one
    /// step of the grid share their timer.
    fn spawn(&mut self, rule: Arc<Rule>, start: Instant, rules: usize, previous: Option<Running>) {
        let cancel = self.root.child_token();
        let first_poll = start + start_offset(&rule, rules);
        let (deps, token) = (self.deps.clone(), cancel.clone());
        let lead = self.leader.as_ref().map_or_else(Leadership::unelected, |l| l.leadership(rule.context.as_deref()));
        let work: std::pin::Pin<Box<dyn Future<Output = State> + Send>> = match previous {
            None => Box::pin(worker::run(rule.clone(), deps, lead, token, first_poll, None)),
            Some(previous) => Box::pin(take_over(previous, rule.clone(), deps, lead, token, first_poll)),
        };
        // Under leader election the worker also counts as a user of its context's
        // lease, which is handed back only once no worker of the context runs.
        let task = match self.leader.as_ref().and_then(|l| l.users(rule.context.as_deref())) {
            Some(users) => self.tracker.spawn(users.track_future(work)),
            None => self.tracker.spawn(work),
        };
        self.workers.insert(rule.name.clone(), Running { rule, cancel, task });
    }

    /// Once `old`'s worker has stopped (its poll in flight may still write), puts its
    /// target back to the original replica count. Tracked as a worker is: a shutdown
    /// waits for it, and the context's lease is kept until it is done.
    fn restore_after(&self, old: Running) {
        let ctx = old.rule.context.clone();
        let lead = self.leader.as_ref().map_or_else(Leadership::unelected, |l| l.leadership(ctx.as_deref()));
        let deps = self.deps.clone();
        let work = async move {
            let _ = old.task.await;
            worker::restore_original(&old.rule, &deps, &lead).await;
        };
        match self.leader.as_ref().and_then(|l| l.users(ctx.as_deref())) {
            Some(users) => drop(self.tracker.spawn(users.track_future(work))),
            None => drop(self.tracker.spawn(work)),
        }
    }

    /// Tells the electors which kube contexts `rules` and `jobs` use.
    fn set_contexts(&mut self, rules: &[Arc<Rule>], jobs: &[Arc<JobRule>]) {
        if let Some(leader) = &mut self.leader {
            leader.set_contexts(rules.iter().map(|r| r.context.clone()).chain(jobs.iter().map(|j| j.context.clone())));
        }
    }

    /// Tells the targets' adapter which rules run, so that the stored state of targets
    /// no rule names any more goes (by the writer of each context's state, under its
    /// lease). Never in a dry run, which writes nothing.
    fn keep_state(&self, rules: &[Arc<Rule>]) {
        if self.deps.dry_run {
            return;
        }
        let lead =
            |context: Option<&str>| self.leader.as_ref().map_or_else(Leadership::unelected, |l| l.leadership(context));
        self.deps.targets.keep_state(&rules.iter().cloned().collect(), &lead);
    }

    /// Applies a freshly loaded configuration, or keeps the old one if it is invalid.
    ///
    /// Rules are matched by name: unchanged rules keep running with their state
    /// (cooldowns, windows, failure counts) and schedule; changed rules restart on the
    /// new rule and poll at once, keeping their state as KEDA and the HPA do when a
    /// ScaledObject is edited (the HPA is updated in place), unless the target or the
    /// context changed: a different workload starts fresh (its last-active comes from
    /// its annotation). Removed rules stop and leave their target as it is; added rules
    /// start.
    pub fn reload(&mut self, loaded: Result<Config, ConfigErrors>) -> ReloadOutcome {
        let new = match loaded {
            Ok(c) => c,
            Err(e) => {
                for problem in &e.problems {
                    error!(file = %e.origin, problem = %problem, "rule file invalid; keeping the running rules");
                }
                self.deps.observer.reload_rejected(&e, self.deps.clock.now());
                return ReloadOutcome::Rejected(e.problems);
            }
        };
        let waiting = self.restart_required(&new);
        for key in &waiting {
            warn!(key, "changed in the rule file, but only a restart applies it; the running value stays");
        }
        self.deps.observer.reload_applied(waiting.iter().map(|k| (*k).to_owned()).collect());

        let (mut added, mut changed, mut unchanged) = (0, 0, 0);
        let mut keep: HashMap<String, Running> = HashMap::new();
        let mut restarted = Vec::new();
        // Changed rules on the same target, by name: their new worker takes the state over.
        let mut handed_over: HashMap<String, Running> = HashMap::new();
        // The rules that will run: a kept rule's running copy, else the new one.
        let running: Vec<Arc<Rule>> = new
            .rules
            .into_iter()
            .map(|rule| match self.workers.remove(&rule.name) {
                Some(running) if *running.rule == rule => {
                    unchanged += 1;
                    let rule = running.rule.clone();
                    keep.insert(rule.name.clone(), running);
                    rule
                }
                Some(running) => {
                    changed += 1;
                    running.cancel.cancel();
                    restarted.push(rule.name.clone());
                    if running.rule.target == rule.target && running.rule.context == rule.context {
                        handed_over.insert(rule.name.clone(), running);
                    } else {
                        info!(rule = %rule.name, from = %running.rule.target, to = %rule.target, "target or context changed: the rule starts with fresh state");
                    }
                    Arc::new(rule)
                }
                None => {
                    added += 1;
                    Arc::new(rule)
                }
            })
            .collect();
        let removed = self.workers.len();
        let gone: Vec<Running> = self.workers.drain().map(|(_, r)| r).collect();
        for old in gone {
            old.cancel.cancel();
            // KEDA's finalizer: a removed rule that restores puts its target back, unless
            // a rule of the new file scales the same target.
            let retaken = running.iter().any(|r| r.context == old.rule.context && r.target == old.rule.target);
            if old.rule.restore_to_original_replica_count && !retaken {
                self.restore_after(old);
            }
        }
        self.workers = keep;
        let (jobs, job_outcome) = self.diff_jobs(new.jobs);
        self.deps.queues.set_needs_of(&running, &jobs.running);
        self.deps.observer.rules_loaded(&running);
        self.deps.observer.jobs_loaded(&jobs.running);
        self.deps.observer.groups().configure_with_jobs(
            &new.groups,
            running.iter().map(|r| &**r),
            jobs.running.iter().map(|j| &**j),
        );
        self.set_contexts(&running, &jobs.running);
        for name in &restarted {
            self.deps.observer.rule_restarted(name);
        }
        for name in &jobs.restarted {
            self.deps.observer.job_rule_restarted(name);
        }
        self.log_orphans(&jobs);
        self.watch_jobs(&jobs.running);
        // What is kept for targets no rule reads any more (the watches) goes.
        let used: Vec<(Option<&str>, &crate::config::TargetRef)> =
            running.iter().map(|r| (r.context.as_deref(), &r.target)).collect();
        self.deps.targets.retain(&used);
        drop(used);
        self.keep_state(&running);
        let (n, start) = (running.len() + jobs.running.len(), Instant::now());
        for rule in running {
            if !self.workers.contains_key(&rule.name) {
                let previous = handed_over.remove(&rule.name);
                self.spawn(rule, start, n, previous);
            }
        }
        for (rule, previous, rollout) in jobs.start {
            self.spawn_job(rule, start, n, previous, rollout);
        }
        let [jobs_added, jobs_removed, jobs_changed, jobs_unchanged] = job_outcome;
        info!(
            added,
            removed, changed, unchanged, jobs_added, jobs_removed, jobs_changed, jobs_unchanged, "rules reloaded"
        );
        ReloadOutcome::Applied {
            added: added + jobs_added,
            removed: removed + jobs_removed,
            changed: changed + jobs_changed,
            unchanged: unchanged + jobs_unchanged,
        }
    }

    /// Job rules are matched by name, like rules: an unchanged one keeps running (its
    /// schedule and its task); a changed one restarts on the new rule once its task has
    /// stopped, owing a rollout if the template hash changed (or the old task still
    /// owed one: a paused rule's, say); a removed one stops and its Jobs are left to
    /// finish (spec §12.5); an added one starts, owing a rollout as at start.
    /// Returns the reload's job rules and `[added, removed, changed, unchanged]`.
    fn diff_jobs(&mut self, new: Vec<JobRule>) -> (JobReload, [usize; 4]) {
        let mut reload = JobReload::default();
        let mut counts = [0; 4];
        let mut keep = HashMap::new();
        for rule in new {
            let owes = rule.rollout.strategy == RolloutStrategy::Default;
            let rule = match self.jobs.remove(&rule.name) {
                Some(running) if *running.rule == rule => {
                    counts[3] += 1;
                    let rule = running.rule.clone();
                    keep.insert(rule.name.clone(), running);
                    rule
                }
                Some(running) => {
                    counts[2] += 1;
                    running.cancel.cancel();
                    // The same template: the old task's flag goes on (it may still pay
                    // the rollout before it stops); a new one: a rollout is owed.
                    let owed = if running.rule.template.hash == rule.template.hash {
                        running.rollout.clone()
                    } else {
                        Arc::new(AtomicBool::new(owes))
                    };
                    if !owes {
                        owed.store(false, Ordering::Release);
                    }
                    let rule = Arc::new(rule);
                    reload.restarted.push(rule.name.clone());
                    reload.start.push((rule.clone(), Some(running), owed));
                    rule
                }
                None => {
                    counts[0] += 1;
                    let rule = Arc::new(rule);
                    reload.start.push((rule.clone(), None, Arc::new(AtomicBool::new(owes))));
                    rule
                }
            };
            reload.running.push(rule);
        }
        counts[1] = self.jobs.len();
        for (name, old) in self.jobs.drain() {
            old.cancel.cancel();
            info!(job = %name, namespace = %old.rule.namespace, "job rule removed: its Jobs are left to finish");
            reload.removed.push(name);
        }
        self.jobs = keep;
        (reload, counts)
    }

    /// Logs, once, the unfinished Jobs of the job rules `reload` removed: nothing will
    /// count or clean them up any more, and `status` lists them as orphaned.
    fn log_orphans(&self, reload: &JobReload) {
        if reload.removed.is_empty() {
            return;
        }
        let running: Vec<&JobRule> = reload.running.iter().map(|r| &**r).collect();
        for (namespace, job_rule, name, finished) in self.deps.targets.orphaned_jobs(&running) {
            if !finished && reload.removed.contains(&job_rule) {
                info!(job = %job_rule, %namespace, name, "left running: its job rule was removed");
            }
        }
    }

    /// The keys of `[kubernetes]`, `[server]` and `[leader_election]` that `new` sets
    /// differently from the start: the clients, the listener and the electors were
    /// built from them once, so a reload cannot apply them.
    fn restart_required(&self, new: &Config) -> Vec<&'static str> {
        // Destructured, so that a new key cannot be forgotten here.
        let KubernetesSettings { kubeconfig, context, eks_cluster, qps, burst } = &self.kubernetes;
        let ServerSettings { listen } = &self.server;
        let LeaderElection { enabled, namespace, lease_name, lease_duration, renew_deadline, retry_period, standby } =
            &self.leader_election;
        let (k, s, l) = (&new.kubernetes, &new.server, &new.leader_election);
        [
            ("kubernetes.kubeconfig", *kubeconfig != k.kubeconfig),
            ("kubernetes.context", *context != k.context),
            ("kubernetes.eks_cluster", *eks_cluster != k.eks_cluster),
            ("kubernetes.qps", *qps != k.qps),
            ("kubernetes.burst", *burst != k.burst),
            ("server.listen", *listen != s.listen),
            ("leader_election.enabled", *enabled != l.enabled),
            ("leader_election.namespace", *namespace != l.namespace),
            ("leader_election.lease_name", *lease_name != l.lease_name),
            ("leader_election.lease_duration", *lease_duration != l.lease_duration),
            ("leader_election.renew_deadline", *renew_deadline != l.renew_deadline),
            ("leader_election.retry_period", *retry_period != l.retry_period),
            ("leader_election.standby", *standby != l.standby),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }

    /// Stops every worker and waits for polls in flight (and the events they publish),
    /// at most `grace`, or until another [`Control::Shutdown`] arrives. Then the
    /// electors stop: after a clean drain they hand the leases back; after a forced
    /// stop a write may still be on its way, so the leases are kept and expire on
    /// their own.
    pub async fn shutdown(self, grace: Duration, control: &mut mpsc::Receiver<Control>) -> Result<(), Aborted> {
        info!(rules = self.workers.len(), jobs = self.jobs.len(), "shutting down");
        self.root.cancel();
        self.tracker.close();
        let drained = drain(&self.tracker, grace, control).await;
        match drained {
            Ok(()) => info!("stopped cleanly"),
            Err(e) => warn!(error = %e, "stopped without draining; any lease held is kept until it expires"),
        }
        if let Some(leader) = self.leader {
            leader.stop(drained.is_ok()).await;
        }
        drained
    }
}

/// Waits until every task of `tracker` (closed) has ended, at most `grace`, or until a
/// [`Control::Shutdown`] arrives.
async fn drain(tracker: &TaskTracker, grace: Duration, control: &mut mpsc::Receiver<Control>) -> Result<(), Aborted> {
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    // A closed channel can bring no second signal: stop listening, keep draining.
    let mut listening = true;
    loop {
        tokio::select! {
            _ = tracker.wait() => return Ok(()),
            _ = &mut deadline => return Err(Aborted::Deadline),
            msg = control.recv(), if listening => match msg {
                Some(Control::Shutdown) => return Err(Aborted::Signal),
                // A reload while draining means nothing.
                Some(Control::Reload) => {}
                None => listening = false,
            },
        }
    }
}

/// Runs the changed `rule` on the engine state of its `previous` worker (recommendations,
/// scale events, last-active, failure counts, the time the initial cooldown counts
/// from). The previous worker is cancelled but may be mid-poll: its poll finishes
/// (every remote call has a timeout) and its result is part of the state taken over,
/// and the new worker never polls alongside it.
async fn take_over<Q: QueueReader, T: ScaleTarget>(
    previous: Running,
    rule: Arc<Rule>,
    deps: Arc<Deps<Q, T>>,
    lead: Leadership,
    cancel: CancellationToken,
    first_poll: Instant,
) -> State {
    let mut state = match previous.task.await {
        Ok(state) => Some(Box::new(state)),
        Err(e) => {
            warn!(rule = %rule.name, error = %e, "the previous worker of this rule failed; starting with fresh state");
            None
        }
    };
    // A paused rule has no HPA phase (KEDA deletes the HPA); if it was unpaused before
    // it polled, forget the phase here.
    if previous.rule.paused
        && let Some(state) = &mut state
    {
        state.reset_hpa();
    }
    worker::run(rule, deps, lead, cancel, first_poll, state).await
}

/// First polls start on a grid of this step, so the rules whose offsets fall in one step
/// poll together: the runtime wakes once for all of them, and their answers come back
/// together, instead of once per rule and per answer. At one rule per millisecond that
/// is about eight rules a step, half of what the direct SQS path sends at once; the
/// wake-ups were a fifth of the daemon's CPU at ten thousand rules (PERFORMANCE.md).
pub const START_GRID: Duration = Duration::from_millis(8);

/// When a rule polls first, after it starts. Ten thousand rules must not all fire in
/// the same millisecond, so first polls spread over a window of one millisecond per
/// rule, at most one polling interval, on the [`START_GRID`]: a handful of rules start
/// at once (as KEDA's do), a big file spreads evenly. The offset comes from the rule's
/// first queue, so rules reading one queue stay in step and share one read per round.
pub fn start_offset(rule: &Rule, rules: usize) -> Duration {
    offset(rule.polling_interval, rule.triggers.first(), rules)
}

fn offset(polling_interval: Duration, first_queue: Option<&crate::config::QueueSource>, rules: usize) -> Duration {
    use std::hash::{Hash, Hasher};
    let window = polling_interval.min(Duration::from_millis(rules as u64)).as_millis() as u64;
    if window <= 1 {
        return Duration::ZERO;
    }
    // DefaultHasher::new() uses fixed keys: the same queue gets the same offset in
    // every run and on every host.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    first_queue.map(|q| q.display()).hash(&mut h);
    let grid = START_GRID.as_millis() as u64;
    Duration::from_millis(h.finish() % window / grid * grid)
}

/// When a job rule polls first, after it starts: as [`start_offset`] for rules.
pub fn job_start_offset(rule: &JobRule, rules: usize) -> Duration {
    offset(rule.polling_interval, rule.triggers.first(), rules)
}

/// What a reload does to the job rules ([`Supervisor::diff_jobs`]).
#[derive(Default)]
struct JobReload {
    /// Every job rule that runs after the reload.
    running: Vec<Arc<JobRule>>,
    /// The tasks to start: the rule, the task it replaces, whether a rollout is owed.
    start: Vec<(Arc<JobRule>, Option<RunningJob>, Arc<AtomicBool>)>,
    /// The names of changed job rules.
    restarted: Vec<String>,
    /// The names of removed job rules.
    removed: Vec<String>,
}

/// A reload that produced no configuration, as the rule file's problem.
fn failed_load(why: &str) -> ConfigErrors {
    ConfigErrors { origin: "the rule file".to_owned(), problems: vec![format!("loading failed: {why}")] }
}

/// Runs the daemon until [`Control::Shutdown`]: starts the rules, reloads on
/// [`Control::Reload`] with `load`, then drains within `grace`.
pub async fn run<Q: QueueReader, T: ScaleTarget + JobTarget>(
    config: Config,
    deps: Deps<Q, T>,
    control: mpsc::Receiver<Control>,
    load: impl Fn() -> Result<Config, ConfigErrors> + Send + Sync + 'static,
    grace: Duration,
) -> Result<(), Aborted> {
    run_electing(config, deps, None, control, load, grace).await
}

/// [`run`], with leader election when `leader` is given: its electors follow the kube
/// contexts of the running rules, and stop after the drain.
pub async fn run_electing<Q: QueueReader, T: ScaleTarget + JobTarget>(
    config: Config,
    deps: Deps<Q, T>,
    leader: Option<Electors>,
    mut control: mpsc::Receiver<Control>,
    load: impl Fn() -> Result<Config, ConfigErrors> + Send + Sync + 'static,
    grace: Duration,
) -> Result<(), Aborted> {
    let load = Arc::new(load);
    let mut supervisor = Supervisor::start_electing(config, deps, leader);
    let mut next = control.recv().await;
    while let Some(Control::Reload) = next {
        // A burst of SIGHUPs is one reload: read the file once, after the burst.
        let mut shutdown = false;
        while let Ok(more) = control.try_recv() {
            shutdown |= more == Control::Shutdown;
        }
        if shutdown {
            break;
        }
        crate::systemd::reloading();
        // Read and validate off the runtime (ten thousand rules take about half a
        // second, and the polls must not wait for it), on a thread of its own, not
        // tokio's blocking pool: a runtime waits for its blocking tasks when it is
        // dropped, and a read that hangs (a FIFO, a hung mount) must not hold up the
        // exit. The control channel is heard meanwhile: SIGTERM stops the daemon
        // whatever the read does (`load` gives up on it at its own deadline).
        let (done, loaded) = tokio::sync::oneshot::channel();
        let load = load.clone();
        let spawned = std::thread::Builder::new().name("sqscale-reload".to_owned()).spawn(move || {
            let _ = done.send(load());
        });
        let loaded = async {
            match spawned {
                Ok(_) => loaded.await.unwrap_or_else(|_| Err(failed_load("the loader stopped without an answer"))),
                Err(e) => Err(failed_load(&format!("cannot start a thread to load it: {e}"))),
            }
        };
        tokio::pin!(loaded);
        // A SIGHUP during the load asks for another one: the file may have changed
        // after it was read.
        let mut again = false;
        let loaded = loop {
            tokio::select! {
                loaded = &mut loaded => break Some(loaded),
                msg = control.recv() => match msg {
                    Some(Control::Reload) => again = true,
                    Some(Control::Shutdown) | None => break None,
                },
            }
        };
        let Some(loaded) = loaded else {
            warn!("shutdown asked for while the rule file was being read; the reload is abandoned");
            break;
        };
        supervisor.reload(loaded);
        crate::systemd::ready(&format!("{} rules running", supervisor.rule_count()));
        next = if again { Some(Control::Reload) } else { control.recv().await };
    }
    crate::systemd::stopping();
    supervisor.shutdown(grace, &mut control).await
}
