//! Redirector: one client over many instances of a service (the MultiSpace's redirector
//! stub). Each call goes to an instance the policy picks; a failed call is repeated on
//! another instance only when that is safe. Generated redirector stubs wrap this with the
//! service's typed methods; the node layer replaces the instance set as the cluster changes.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::client::{CallOptions, Client};
use super::conn::ConnConfig;
use super::error::CallError;
use super::service::current_deadline;
use crate::buf::{Message, Payload, Validate};
use crate::proto::balance::{after_failure, key_hash, Candidate, Chooser, FailureClass, Next, Policy};
use crate::proto::frame::ErrorCode;

/// Redirector settings.
#[derive(Debug, Clone)]
pub struct RedirectConfig {
    /// How calls are spread over instances.
    pub policy: Policy,
    /// Instances tried per call, the first included (default 3).
    pub max_attempts: u32,
    /// Give up on one instance after this long and (if safe) try another. Default: none,
    /// so a slow instance is waited for up to the call's own deadline.
    pub attempt_timeout: Option<Duration>,
    /// The whole call's deadline, across attempts (default none; an inherited handler
    /// deadline still applies).
    pub timeout: Option<Duration>,
    /// How long an instance that failed is avoided (default 1 s).
    pub down_for: Duration,
    /// Connection settings for every instance (default: the core's, [`ConnConfig::for_this_core`]).
    pub conn: ConnConfig,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        RedirectConfig {
            policy: Policy::default(),
            max_attempts: 3,
            attempt_timeout: None,
            timeout: None,
            down_for: Duration::from_secs(1),
            conn: ConnConfig::for_this_core(),
        }
    }
}

/// Why a redirected call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedirectError {
    /// The redirector knows no instance of the service.
    #[error("no instance of the service is known")]
    NoInstances,
    /// The call failed and was not (or no longer) repeated.
    #[error(
        "call failed after {attempts} attempt(s); {}",
        if *may_have_run { "it may have run (not repeated: the method is not idempotent, or the budget is spent)" } else { "it did not run" }
    )]
    Failed {
        /// Instances tried.
        attempts: u32,
        /// False only if no attempt can have run the call.
        may_have_run: bool,
        /// The last attempt's error.
        #[source]
        last: CallError,
    },
}

impl RedirectError {
    /// True if the service may have run the call (so repeating a non-idempotent call might
    /// run it twice).
    pub fn may_have_run(&self) -> bool {
        matches!(self, RedirectError::Failed { may_have_run: true, .. })
    }

    /// The last attempt's error, if any attempt was made.
    pub fn last(&self) -> Option<&CallError> {
        match self {
            RedirectError::NoInstances => None,
            RedirectError::Failed { last, .. } => Some(last),
        }
    }
}

/// A [`Redirector`] that may have been dropped.
#[derive(Clone)]
pub struct WeakRedirector(std::rc::Weak<Inner>);

impl std::fmt::Debug for WeakRedirector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WeakRedirector")
    }
}

impl WeakRedirector {
    /// The redirector, if any stub still holds it.
    pub fn upgrade(&self) -> Option<Redirector> {
        self.0.upgrade().map(|inner| Redirector { inner })
    }
}

/// How a call's key is placed: `None` for methods that name no key.
pub type Key = Option<u64>;

struct Instance {
    addr: SocketAddr,
    id: u64,
    client: Client,
    outstanding: Cell<u32>,
    load: Cell<u32>,
    down_until: Cell<Option<Instant>>,
}

/// Counts a call against its instance for as long as it is in flight (also when cancelled).
struct Outstanding<'a>(&'a Instance);

impl<'a> Outstanding<'a> {
    fn new(i: &'a Instance) -> Self {
        i.outstanding.set(i.outstanding.get() + 1);
        Outstanding(i)
    }
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.outstanding.set(self.0.outstanding.get() - 1);
    }
}

/// One client over many instances of a service, on the current core. Cheap to clone.
#[derive(Clone)]
pub struct Redirector {
    inner: Rc<Inner>,
}

struct Inner {
    config: RedirectConfig,
    instances: RefCell<Rc<[Rc<Instance>]>>,
    chooser: RefCell<Chooser>,
    /// Reused per call so choosing does not allocate.
    scratch: RefCell<Vec<Candidate>>,
    /// Calls repeated on another instance after a failed attempt.
    failovers: Cell<u64>,
}

impl std::fmt::Debug for Redirector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirector")
            .field("policy", &self.inner.config.policy)
            .field("instances", &self.instances())
            .finish()
    }
}

impl Redirector {
    /// A redirector over `instances` with default settings.
    pub fn new(instances: impl IntoIterator<Item = SocketAddr>) -> Redirector {
        Redirector::with_config(instances, RedirectConfig::default())
    }

    /// A redirector with explicit settings.
    pub fn with_config(instances: impl IntoIterator<Item = SocketAddr>, config: RedirectConfig) -> Redirector {
        let seed = key_hash(&(std::process::id(), Instant::now()));
        let r = Redirector {
            inner: Rc::new(Inner {
                chooser: RefCell::new(Chooser::new(config.policy, seed)),
                config,
                instances: RefCell::new(Rc::new([])),
                scratch: RefCell::new(Vec::new()),
                failovers: Cell::new(0),
            }),
        };
        r.set_instances(instances);
        r
    }

    /// Replace the instance set. Instances still present keep their connection and state;
    /// calls in flight to removed ones finish normally. Duplicates are ignored.
    pub fn set_instances(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        self.set_instances_with_load(addrs.into_iter().map(|a| (a, 0)));
    }

    /// [`Redirector::set_instances`] with each instance's reported load (calls in flight
    /// there), which [`Policy::LeastOutstanding`] adds to this redirector's own count.
    pub fn set_instances_with_load(&self, instances: impl IntoIterator<Item = (SocketAddr, u32)>) {
        let old = self.inner.instances.borrow().clone();
        let mut next: Vec<Rc<Instance>> = Vec::new();
        for (addr, load) in instances {
            if next.iter().any(|i| i.addr == addr) {
                continue;
            }
            let inst = old.iter().find(|i| i.addr == addr).cloned().unwrap_or_else(|| {
                Rc::new(Instance {
                    addr,
                    id: key_hash(&addr),
                    client: Client::with_config(addr, self.inner.config.conn.clone()),
                    outstanding: Cell::new(0),
                    load: Cell::new(0),
                    down_until: Cell::new(None),
                })
            });
            inst.load.set(load);
            next.push(inst);
        }
        *self.inner.instances.borrow_mut() = next.into();
    }

    /// A handle that does not keep the redirector alive (for registries that feed many
    /// redirectors and must notice when one is dropped).
    pub fn downgrade(&self) -> WeakRedirector {
        WeakRedirector(Rc::downgrade(&self.inner))
    }

    /// The current instance addresses.
    pub fn instances(&self) -> Vec<SocketAddr> {
        self.inner.instances.borrow().iter().map(|i| i.addr).collect()
    }

    /// Calls in flight through this redirector, per instance.
    pub fn outstanding(&self) -> Vec<(SocketAddr, u32)> {
        self.inner.instances.borrow().iter().map(|i| (i.addr, i.outstanding.get())).collect()
    }

    /// Call `method_id` on some instance. `idempotent` says whether the call may be repeated
    /// on another instance after it may have run; `key` places it under
    /// [`Policy::KeyAffinity`].
    pub async fn call<Req, Resp>(
        &self,
        method_id: u32,
        idempotent: bool,
        key: Key,
        req: &Req,
    ) -> Result<Message<Resp>, RedirectError>
    where
        Req: Payload,
        Resp: Validate,
    {
        let config = &self.inner.config;
        let deadline = match (config.timeout.map(|t| Instant::now() + t), current_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Up to a handful of attempts: tried instances are remembered by identity, so a
        // replaced instance set mid-call cannot send the call back to one that failed.
        let mut tried: Vec<u64> = Vec::new();
        let mut may_have_run = false;
        let mut attempts = 0;
        let mut last: Option<CallError> = None;
        loop {
            let Some(inst) = self.pick(key, &tried) else {
                // Every instance tried (or none known).
                return Err(match last {
                    None => RedirectError::NoInstances,
                    Some(last) => RedirectError::Failed { attempts, may_have_run, last },
                });
            };
            attempts += 1;
            let now = Instant::now();
            let attempt_deadline = match (config.attempt_timeout.map(|t| now + t), deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let opts = CallOptions { timeout: attempt_deadline.map(|d| d.saturating_duration_since(now)) };
            let result = {
                let _counted = Outstanding::new(&inst);
                inst.client.call::<Req, Resp>(method_id, req, opts).await
            };
            let err = match result {
                Ok(m) => {
                    inst.down_until.set(None);
                    return Ok(m);
                }
                Err(e) => e,
            };
            let overall_expired = deadline.is_some_and(|d| Instant::now() >= d);
            let class = classify(&err, overall_expired);
            may_have_run |= !class.did_not_run;
            if class.mark_down {
                inst.down_until.set(Some(Instant::now() + config.down_for));
            }
            tracing::debug!(addr = %inst.addr, method_id, error = %err, attempts, "redirected call attempt failed");
            tried.push(inst.id);
            // Once any attempt may have run, only idempotent calls go on.
            let class = FailureClass { did_not_run: !may_have_run, ..class };
            if after_failure(class, idempotent, attempts, config.max_attempts) == Next::Stop {
                return Err(RedirectError::Failed { attempts, may_have_run, last: err });
            }
            self.inner.failovers.set(self.inner.failovers.get() + 1);
            last = Some(err);
        }
    }

    /// Calls repeated on another instance after a failed attempt, so far.
    pub fn failovers(&self) -> u64 {
        self.inner.failovers.get()
    }

    fn pick(&self, key: Key, tried: &[u64]) -> Option<Rc<Instance>> {
        let instances = self.inner.instances.borrow().clone();
        let now = Instant::now();
        let mut cands = self.inner.scratch.borrow_mut();
        cands.clear();
        cands.extend(instances.iter().map(|i| Candidate {
            id: i.id,
            outstanding: i.outstanding.get(),
            load: i.load.get(),
            down: i.down_until.get().is_some_and(|t| t > now),
            tried: tried.contains(&i.id),
        }));
        let idx = self.inner.chooser.borrow_mut().pick(&cands, key)?;
        Some(instances[idx].clone())
    }
}

/// Whose fault a failed attempt is, and whether it can have run.
fn classify(err: &CallError, overall_expired: bool) -> FailureClass {
    let did_not_run = err.did_not_run();
    let (instance_fault, mark_down) = match err {
        CallError::Connect(_) | CallError::ConnectionLost | CallError::Protocol(_) => (true, true),
        // The attempt's own timeout: try elsewhere unless the whole call is out of time.
        CallError::DeadlineExceeded => (!overall_expired, !overall_expired),
        CallError::Overloaded { .. } | CallError::UnknownMethod { .. } => (true, false),
        CallError::Status(s) if s.code() == ErrorCode::ShuttingDown => (true, true),
        CallError::Status(s) if s.code() == ErrorCode::Overloaded => (true, false),
        _ => (false, false),
    };
    FailureClass { did_not_run, instance_fault, mark_down }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::FrameError;
    use crate::Status;

    #[test]
    fn failures_are_classified_by_who_failed_and_whether_it_ran() {
        let refused = classify(&CallError::Connect(std::io::ErrorKind::ConnectionRefused.into()), false);
        assert!(refused.did_not_run && refused.instance_fault && refused.mark_down);
        let lost = classify(&CallError::ConnectionLost, false);
        assert!(!lost.did_not_run && lost.instance_fault);
        let slow = classify(&CallError::DeadlineExceeded, false);
        assert!(!slow.did_not_run && slow.instance_fault);
        let out_of_time = classify(&CallError::DeadlineExceeded, true);
        assert!(!out_of_time.instance_fault, "the whole call is out of time");
        let app = classify(&CallError::Status(Status::application("no")), false);
        assert!(!app.instance_fault, "the service answered");
        let bad = classify(&CallError::InvalidRequest, false);
        assert!(!bad.instance_fault, "every instance would refuse it");
        let proto = classify(&CallError::Protocol(FrameError::ReservedRequestId), false);
        assert!(proto.instance_fault && !proto.did_not_run);
        let busy = classify(&CallError::Status(Status::new(ErrorCode::ShuttingDown, "bye")), false);
        assert!(busy.did_not_run && busy.instance_fault);
    }
}
