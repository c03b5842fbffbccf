//! Keiretsu, the paper's instant-messaging service, and its two load clients: the
//! speedometer (many identities, counting what arrives) and the driver (messages to random
//! clients as fast as it can, through a redirector).
//!
//! Bindings are soft state under leases. The instance a client identifies to shares the
//! binding with every other Keiretsu instance the node's registry knows, so any instance can
//! deliver to any client; an instance that restarts empty relearns bindings as clients renew.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use multispace_node::{Node, WeakNode};
use multispace_rpc::rkyv::Archived;
use multispace_rpc::{spawn, CallContext, CallOptions, Status};

/// The Keiretsu stubs.
#[allow(missing_docs)]
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/keiretsu.rs"));
}

/// The client endpoint's stubs.
#[allow(missing_docs)]
pub mod client_api {
    include!(concat!(env!("OUT_DIR"), "/keiretsu_client.rs"));
}

use api::KeiretsuClient as KeiretsuStub;
use client_api::KeiretsuClientClient;

struct Binding {
    client: SocketAddr,
    until: Instant,
}

/// One Keiretsu instance.
pub struct KeiretsuServer {
    node: Option<WeakNode>,
    bindings: RefCell<HashMap<String, Binding>>,
    clients: RefCell<HashMap<SocketAddr, KeiretsuClientClient>>,
    delivered: Cell<u64>,
}

impl std::fmt::Debug for KeiretsuServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeiretsuServer").field("bindings", &self.bindings.borrow().len()).finish()
    }
}

impl KeiretsuServer {
    /// An instance hosted by `node` (which it asks for its peers), or standalone.
    pub fn new(node: Option<&Node>) -> Self {
        KeiretsuServer {
            node: node.map(Node::downgrade),
            bindings: RefCell::default(),
            clients: RefCell::default(),
            delivered: Cell::new(0),
        }
    }

    /// Messages this instance delivered.
    pub fn delivered(&self) -> u64 {
        self.delivered.get()
    }

    fn bind(&self, name: &str, client: &str, lease_ms: u32) -> Result<(), Status> {
        if lease_ms == 0 {
            self.bindings.borrow_mut().remove(name);
            return Ok(());
        }
        let client: SocketAddr = client.parse().map_err(|_| Status::application("client is not an ip:port"))?;
        let until = Instant::now() + Duration::from_millis(lease_ms.into());
        self.bindings.borrow_mut().insert(name.to_owned(), Binding { client, until });
        Ok(())
    }

    /// Tell the other instances (fire and forget: leases repair what is lost).
    fn share(&self, name: &str, client: &str, lease_ms: u32) {
        let Some(node) = self.node.as_ref().and_then(WeakNode::upgrade) else { return };
        for peer in node.lookup(api::SERVICE) {
            let Ok(addr) = peer.addr.parse::<SocketAddr>() else { continue };
            let (name, client) = (name.to_owned(), client.to_owned());
            spawn(async move {
                let stub = KeiretsuStub::new(addr).with_options(CallOptions::timeout(Duration::from_secs(1)));
                if let Err(e) = stub.share_binding(name, client, lease_ms).await {
                    tracing::debug!(%addr, error = %e, "sharing a binding failed");
                }
            })
            .detach();
        }
    }

    /// Ask the other instances for a binding this one lacks (it restarted, or missed the
    /// share); the first answer is kept.
    async fn find_at_peers(&self, name: &str) -> Option<SocketAddr> {
        let node = self.node.as_ref().and_then(WeakNode::upgrade)?;
        for peer in node.lookup(api::SERVICE) {
            let Ok(addr) = peer.addr.parse::<SocketAddr>() else { continue };
            let stub = KeiretsuStub::new(addr).with_options(CallOptions::timeout(Duration::from_millis(500)));
            if let Ok(found) = stub.find_binding(name.to_owned()).await {
                if let Some(b) = found.as_ref() {
                    let (client, lease_ms) = (b.0.as_str().to_owned(), b.1.to_native());
                    if self.bind(name, &client, lease_ms).is_ok() {
                        return client.parse().ok();
                    }
                }
            }
        }
        None
    }

    fn client(&self, addr: SocketAddr) -> KeiretsuClientClient {
        self.clients.borrow_mut().entry(addr).or_insert_with(|| KeiretsuClientClient::new(addr)).clone()
    }
}

impl api::Keiretsu for KeiretsuServer {
    async fn identify_self(
        &self,
        _ctx: &CallContext,
        name: &Archived<String>,
        client: &Archived<String>,
        lease_ms: &Archived<u32>,
    ) -> Result<(), Status> {
        let lease_ms = lease_ms.to_native().max(1);
        self.bind(name, client, lease_ms)?;
        self.share(name, client, lease_ms);
        Ok(())
    }

    async fn disconnect_self(&self, _ctx: &CallContext, name: &Archived<String>) -> Result<(), Status> {
        self.bindings.borrow_mut().remove(name.as_str());
        self.share(name, "", 0);
        Ok(())
    }

    async fn inject_message(
        &self,
        _ctx: &CallContext,
        to: &Archived<String>,
        from: &Archived<String>,
        text: &Archived<String>,
        msg_id: &Archived<u64>,
    ) -> Result<bool, Status> {
        let known = match self.bindings.borrow().get(to.as_str()) {
            Some(b) if b.until > Instant::now() => Some(b.client),
            _ => None,
        };
        let target = match known {
            Some(t) => t,
            None => match self.find_at_peers(to).await {
                Some(t) => t,
                None => return Ok(false),
            },
        };
        // Nested call: it inherits this call's deadline.
        self.client(target)
            .deliver(to.as_str().to_owned(), from.as_str().to_owned(), text.as_str().to_owned(), msg_id.to_native())
            .await
            .map_err(|e| Status::application(format!("client {target} unreachable: {e}")))?;
        self.delivered.set(self.delivered.get() + 1);
        Ok(true)
    }

    async fn get_client_list(&self, _ctx: &CallContext) -> Result<Vec<String>, Status> {
        let now = Instant::now();
        let mut names: Vec<String> =
            self.bindings.borrow().iter().filter(|(_, b)| b.until > now).map(|(n, _)| n.clone()).collect();
        names.sort_unstable();
        Ok(names)
    }

    async fn find_binding(&self, _ctx: &CallContext, name: &Archived<String>) -> Result<Option<(String, u32)>, Status> {
        let now = Instant::now();
        Ok(self
            .bindings
            .borrow()
            .get(name.as_str())
            .filter(|b| b.until > now)
            .map(|b| (b.client.to_string(), u32::try_from((b.until - now).as_millis()).unwrap_or(u32::MAX))))
    }

    async fn share_binding(
        &self,
        _ctx: &CallContext,
        name: &Archived<String>,
        client: &Archived<String>,
        lease_ms: &Archived<u32>,
    ) -> Result<(), Status> {
        self.bind(name, client, lease_ms.to_native())
    }
}

/// What a speedometer has received.
#[derive(Debug, Default)]
pub struct Received {
    /// Distinct messages.
    pub unique: Cell<u64>,
    /// Repeats of a message already received (a delivery retried after a failover).
    pub duplicates: Cell<u64>,
    seen: RefCell<HashSet<u64>>,
}

/// The client endpoint of a speedometer: counts messages.
#[derive(Debug, Clone)]
pub struct Speedometer {
    received: Rc<Received>,
}

impl Speedometer {
    /// A fresh counter.
    pub fn new() -> Self {
        Speedometer { received: Rc::default() }
    }

    /// What arrived so far.
    pub fn received(&self) -> Rc<Received> {
        self.received.clone()
    }

    /// The endpoint's service (serve it, then identify names bound to its address).
    pub fn service(&self) -> multispace_rpc::Service {
        client_api::service(self.clone())
    }
}

impl Default for Speedometer {
    fn default() -> Self {
        Self::new()
    }
}

impl client_api::KeiretsuClient for Speedometer {
    async fn deliver(
        &self,
        _ctx: &CallContext,
        _to: &Archived<String>,
        _from: &Archived<String>,
        _text: &Archived<String>,
        msg_id: &Archived<u64>,
    ) -> Result<(), Status> {
        let r = &self.received;
        if r.seen.borrow_mut().insert(msg_id.to_native()) {
            r.unique.set(r.unique.get() + 1);
        } else {
            r.duplicates.set(r.duplicates.get() + 1);
        }
        Ok(())
    }
}

/// Keep `names` bound to `endpoint` through `keiretsu`, renewing every `lease / 3`, until the
/// returned task is dropped.
pub fn keep_identified(
    keiretsu: api::KeiretsuRedirector,
    names: Vec<String>,
    endpoint: SocketAddr,
    lease: Duration,
) -> multispace_rpc::runtime::JoinHandle<()> {
    let lease_ms = u32::try_from(lease.as_millis()).unwrap_or(u32::MAX);
    spawn(async move {
        loop {
            for n in &names {
                if let Err(e) = keiretsu.identify_self(n.clone(), endpoint.to_string(), lease_ms).await {
                    tracing::warn!(name = %n, error = %e, "identify_self failed");
                }
            }
            multispace_rpc::runtime::time::sleep(lease / 3).await;
        }
    })
}

/// Driver statistics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DriverStats {
    /// Messages acknowledged as delivered.
    pub delivered: u64,
    /// Messages to names not bound (at that instance, at that moment).
    pub unbound: u64,
    /// Calls that failed.
    pub failed: u64,
}

/// Send `count` 75-byte messages to clients picked at random from `names` (the paper's
/// driver), one after another. Message ids start at `first_id`, which also seeds the choice,
/// so a run can be repeated exactly.
pub async fn drive(keiretsu: &api::KeiretsuRedirector, names: &[String], count: u64, first_id: u64) -> DriverStats {
    let text = "x".repeat(75);
    let mut stats = DriverStats::default();
    let mut rng = first_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for i in 0..count {
        // xorshift64: a fair spread of receivers, no dependency.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let to = names[(rng % names.len() as u64) as usize].clone();
        match keiretsu.inject_message(to, "driver".into(), text.clone(), first_id + i).await {
            Ok(m) if *m => stats.delivered += 1,
            Ok(_) => stats.unbound += 1,
            Err(e) => {
                tracing::warn!(error = %e, "inject_message failed");
                stats.failed += 1;
            }
        }
    }
    stats
}
