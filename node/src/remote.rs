//! Redirectors for clients outside the cluster: no cluster key, no beacons — they ask any node
//! they know for the service's instances, and keep asking.

use std::net::SocketAddr;
use std::time::Duration;

use multispace_rpc::runtime::time::sleep;
use multispace_rpc::runtime::JoinHandle;
use multispace_rpc::{spawn, CallOptions, RedirectConfig, Redirector};

use crate::control::NodeControlClient;

/// A redirector over `service` whose instance set follows the cluster: every `refresh` it asks
/// one of `nodes` (control addresses; the next one if that fails) for the instances that are
/// up, with their load. The returned task keeps it current; drop the task to stop.
pub fn remote_redirector(
    nodes: Vec<SocketAddr>,
    service: &str,
    config: RedirectConfig,
    refresh: Duration,
) -> (Redirector, JoinHandle<()>) {
    let redirector = Redirector::with_config([], config);
    let weak = redirector.downgrade();
    let service = service.to_owned();
    let task = spawn(async move {
        let mut next = 0usize;
        loop {
            let Some(r) = weak.upgrade() else { return };
            for attempt in 0..nodes.len() {
                let node = nodes[(next + attempt) % nodes.len()];
                let stub = NodeControlClient::new(node)
                    .with_options(CallOptions::timeout(refresh.max(Duration::from_millis(100))));
                match stub.lookup(service.clone()).await {
                    Ok(list) => {
                        r.set_instances_with_load(
                            list.iter()
                                .filter_map(|rec| rec.addr.as_str().parse().ok().map(|a| (a, rec.load.to_native()))),
                        );
                        next = (next + attempt) % nodes.len();
                        break;
                    }
                    Err(e) => tracing::debug!(%node, error = %e, "lookup failed; trying the next node"),
                }
            }
            drop(r);
            sleep(refresh).await;
        }
    });
    (redirector, task)
}
