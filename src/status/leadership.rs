//! Leadership as `/status`, `sqscale_is_leader` and readiness show it: the electors
//! report what they hold (`campaign`, `set_leading`, `forget`). Workers do not ask here:
//! each reads its context's [`crate::leader::Leadership`].

use super::*;

/// One context's election as the observer keeps it.
#[derive(Clone, Debug)]
pub(super) struct Campaign {
    /// Which elector reports: a context dropped and added again by reloads gets a new
    /// elector, and the old one's last words must not count.
    pub(super) generation: u64,
    /// `Some`: leading, and writes must end before this instant.
    pub(super) until: Option<Instant>,
    /// The lease's holder as last read (`holderIdentity`): who leads.
    pub(super) holder: Option<String>,
}

/// `/status` of an instance with leader election: who it is, whether it stands by,
/// and who leads each cluster.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct ElectionStatus {
    /// This instance's identity in the leases.
    pub identity: String,
    /// `cold` or `warm`: what this instance does while it stands by.
    pub standby_mode: String,
    /// True unless this instance leads in every cluster.
    pub standby: bool,
    pub contexts: Vec<ContextLead>,
}

/// One cluster's lease as this instance last saw it.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct ContextLead {
    /// The kube context (`null`: the default one).
    pub context: Option<String>,
    /// Whether this instance holds the lease and may write.
    pub leading: bool,
    /// The lease's `holderIdentity`: the instance that leads (`null`: none yet).
    pub leader: Option<String>,
}

impl Observer {
    /// Registers `sqscale_is_leader`; from now on `/status` names this instance by
    /// `identity` (as in the leases) and its `standby` mode, and readiness waits for a
    /// lease in every context the electors report (see [`Observer::campaign`]). Whether
    /// a worker may write is not decided here but by its [`crate::leader::Leadership`].
    pub fn enable_leader_election(&mut self, identity: &str, standby: Standby) {
        self.election = Some((identity.to_owned(), standby));
        self.registry.register(
            "sqscale_is_leader",
            "1 while this instance holds the lease of every cluster it scales",
            self.metrics.is_leader.clone(),
        );
        *lock(&self.leadership) = Some(BTreeMap::new());
    }

    /// A new elector (`generation`) campaigns for `context`: a standby there until it
    /// reports a lease. It replaces any older elector of the context.
    pub fn campaign(&self, context: Option<&str>, generation: u64) {
        self.update_leadership(|map| {
            map.insert(context.map(str::to_owned), Campaign { generation, until: None, holder: None });
        });
    }

    /// Elector `generation` of `context` leads until `until`, or (`None`) not at all;
    /// the lease names `holder`.
    pub fn set_leading(&self, context: Option<&str>, generation: u64, until: Option<Instant>, holder: Option<&str>) {
        self.update_leadership(|map| {
            if let Some(c) = map.get_mut(&context.map(str::to_owned)).filter(|c| c.generation == generation) {
                c.until = until;
                if c.holder.as_deref() != holder {
                    c.holder = holder.map(str::to_owned);
                }
            }
        });
    }

    /// Elector `generation` of `context` has stopped: the context no longer counts.
    pub fn forget(&self, context: Option<&str>, generation: u64) {
        self.update_leadership(|map| {
            let key = context.map(str::to_owned);
            if map.get(&key).is_some_and(|c| c.generation == generation) {
                map.remove(&key);
            }
        });
    }

    pub(super) fn update_leadership(&self, change: impl FnOnce(&mut BTreeMap<Option<String>, Campaign>)) {
        let mut guard = lock(&self.leadership);
        if let Some(map) = guard.as_mut() {
            change(map);
            let leading = !map.is_empty() && map.values().all(|c| c.until.is_some());
            self.metrics.is_leader.set(i64::from(leading));
        }
    }

    /// `/status`'s account of the election; `None` without one.
    pub fn election(&self) -> Option<ElectionStatus> {
        let (identity, mode) = self.election.as_ref()?;
        let now = Instant::now();
        let contexts: Vec<ContextLead> = lock(&self.leadership)
            .as_ref()
            .map(|m| {
                m.iter()
                    .map(|(context, c)| ContextLead {
                        context: context.clone(),
                        leading: c.until.is_some_and(|u| u > now),
                        leader: c.holder.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(ElectionStatus {
            identity: identity.clone(),
            standby_mode: mode.as_str().to_owned(),
            standby: contexts.is_empty() || contexts.iter().any(|c| !c.leading),
            contexts,
        })
    }

    /// The groups as `/status` shows them: with leader election, a group whose members'
    /// contexts this instance does not all lead says so. Its members there stand by (a
    /// cold standby does not even poll), so the group cannot weigh them: the leader of
    /// all of them must be one instance.
    pub fn group_statuses(&self) -> Vec<crate::group::GroupStatus> {
        let mut groups = self.groups.statuses();
        let Some(election) = self.election() else { return groups };
        for g in &mut groups {
            let not_led: Vec<String> = g
                .contexts
                .iter()
                .filter(|c| !election.contexts.iter().any(|l| &l.context == *c && l.leading))
                .map(|c| c.clone().unwrap_or_else(|| "(default)".to_owned()))
                .collect();
            if !not_led.is_empty() && not_led.len() < g.contexts.len() {
                g.note = Some(format!(
                    "its members span contexts this instance does not all lead (not: {}); members there stand by, \
                     and the group scales up only once every member has reported: lead all of its contexts \
                     from one instance",
                    not_led.join(", ")
                ));
            }
        }
        groups
    }

    pub(super) fn leads_everywhere(&self) -> bool {
        let now = Instant::now();
        lock(&self.leadership)
            .as_ref()
            .is_none_or(|m| !m.is_empty() && m.values().all(|c| c.until.is_some_and(|u| u > now)))
    }
}
