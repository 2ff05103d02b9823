//! In-memory fakes of the two ports, for supervisor tests under tokio's paused clock:
//! scripted, no I/O, and they record every call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqscale::config::{QueueSource, TargetRef};
use sqscale::engine::{Counts, Pause, Time};
use sqscale::leader::Leadership;
use sqscale::source::{Attrs, QueueReader, SourceError, SourceErrorKind};
use sqscale::workload::{ScaleTarget, TargetError, TargetErrorKind, TargetEvent, TargetView};

/// Queues by name: a backlog, or `None` for "fails".
#[derive(Clone, Default)]
pub struct FakeQueues {
    pub backlog: Arc<Mutex<HashMap<String, Option<u64>>>>,
    pub reads: Arc<Mutex<Vec<String>>>,
}

impl FakeQueues {
    pub fn set(&self, queue: &str, backlog: Option<u64>) {
        self.backlog.lock().unwrap().insert(queue.to_owned(), backlog);
    }

    pub fn reads_of(&self, queue: &str) -> usize {
        self.reads.lock().unwrap().iter().filter(|q| *q == queue).count()
    }
}

impl QueueReader for FakeQueues {
    async fn read(&self, q: &QueueSource, _attrs: Attrs) -> Result<Counts, SourceError> {
        self.reads.lock().unwrap().push(q.name.clone());
        match self.backlog.lock().unwrap().get(&q.name).copied().flatten() {
            Some(visible) => Ok(Counts { visible, ..Counts::default() }),
            None => Err(SourceError::new(&q.name, SourceErrorKind::Unreachable, "scripted failure")),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct FakeObject {
    pub replicas: u32,
    pub pause: Pause,
    pub last_active: Option<Time>,
    /// Every replica count written, in order.
    pub writes: Vec<u32>,
}

/// Targets by name; `scale_delay` makes each patch take that long (virtual time).
#[derive(Clone, Default)]
pub struct FakeTargets {
    pub objects: Arc<Mutex<HashMap<String, FakeObject>>>,
    pub scale_delay: Arc<Mutex<Duration>>,
    /// How long publishing an Event takes (virtual time).
    pub publish_delay: Arc<Mutex<Duration>>,
    /// How long storing a last-active time takes (virtual time): the daemon's state
    /// writes wait up to a second for the PATCH they join.
    pub state_delay: Arc<Mutex<Duration>>,
    /// Every Event published, with the target name.
    pub events: Arc<Mutex<Vec<(String, TargetEvent)>>>,
    /// The targets passed to each `retain` (a reload), as `context/Kind/namespace/name`.
    pub retained: Arc<Mutex<Vec<Vec<String>>>>,
    /// The stored original replica counts, by target name (the state ConfigMap's).
    pub originals: Arc<Mutex<HashMap<String, u32>>>,
}

impl FakeTargets {
    pub fn add(&self, name: &str, replicas: u32) {
        self.objects.lock().unwrap().insert(name.to_owned(), FakeObject { replicas, ..FakeObject::default() });
    }

    pub fn get(&self, name: &str) -> FakeObject {
        self.objects.lock().unwrap().get(name).cloned().unwrap_or_default()
    }

    pub fn replicas(&self, name: &str) -> u32 {
        self.get(name).replicas
    }

    pub fn with<R>(&self, name: &str, f: impl FnOnce(&mut FakeObject) -> R) -> R {
        f(self.objects.lock().unwrap().get_mut(name).expect("known target"))
    }

    fn missing(t: &TargetRef) -> TargetError {
        TargetError::new(t.to_string(), TargetErrorKind::NotFound, "no such object")
    }
}

/// No Jobs: the port's defaults (the job rules' own fake is in the unit tests).
impl sqscale::workload::jobs::JobTarget for FakeTargets {}

impl ScaleTarget for FakeTargets {
    async fn read(&self, _ctx: Option<&str>, t: &TargetRef) -> Result<TargetView, TargetError> {
        let o = self.objects.lock().unwrap().get(&t.name).cloned().ok_or_else(|| Self::missing(t))?;
        Ok(TargetView {
            replicas: o.replicas,
            status_replicas: Some(o.replicas),
            ready_replicas: Some(o.replicas),
            pause: o.pause,
            overrides: Default::default(),
            last_active: o.last_active,
            // Everything this fake holds is stored by it.
            stored_last_active: o.last_active,
            resource_version: None,
        })
    }

    async fn scale(
        &self,
        _ctx: Option<&str>,
        t: &TargetRef,
        replicas: u32,
        _rv: Option<&str>,
    ) -> Result<(), TargetError> {
        let delay = *self.scale_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let mut objects = self.objects.lock().unwrap();
        let o = objects.get_mut(&t.name).ok_or_else(|| Self::missing(t))?;
        o.replicas = replicas;
        o.writes.push(replicas);
        Ok(())
    }

    async fn set_last_active(
        &self,
        _ctx: Option<&str>,
        t: &TargetRef,
        at: Time,
        _lead: &Leadership,
    ) -> Result<(), TargetError> {
        let delay = *self.state_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let mut objects = self.objects.lock().unwrap();
        objects.get_mut(&t.name).ok_or_else(|| Self::missing(t))?.last_active = Some(at);
        Ok(())
    }

    async fn original_replicas(&self, _ctx: Option<&str>, t: &TargetRef) -> Result<Option<u32>, TargetError> {
        Ok(self.originals.lock().unwrap().get(&t.name).copied())
    }

    async fn set_original_replicas(
        &self,
        _ctx: Option<&str>,
        t: &TargetRef,
        replicas: Option<u32>,
        _lead: &Leadership,
    ) -> Result<(), TargetError> {
        let mut originals = self.originals.lock().unwrap();
        match replicas {
            Some(n) => originals.insert(t.name.clone(), n),
            None => originals.remove(&t.name),
        };
        Ok(())
    }

    async fn publish(&self, _ctx: Option<&str>, t: &TargetRef, event: &TargetEvent) -> Result<(), TargetError> {
        let delay = *self.publish_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        self.events.lock().unwrap().push((t.name.clone(), event.clone()));
        Ok(())
    }

    fn retain(&self, used: &[(Option<&str>, &TargetRef)]) {
        let used = used.iter().map(|(ctx, t)| format!("{}/{t}", ctx.unwrap_or_default())).collect();
        self.retained.lock().unwrap().push(used);
    }
}
