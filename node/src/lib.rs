//! The Base node (iSpace + MultiSpace): hosts service instances, keeps a soft-state registry of
//! every instance in the cluster from multicast beacons, hands out redirector stubs, probes
//! service health, and loads and stops components at run time.
//!
//! Not built yet: see issue 5. This crate will own the sans-IO `Registry`, the `Beacon` wire
//! type, `RedirectorStub` policies over the stub trait, health probing and the service host.
#![forbid(unsafe_code)]
