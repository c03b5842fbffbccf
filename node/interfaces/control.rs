//! The node control interface: what a node answers about itself, over rpc.

use multispace_rpc::rkyv::{Archive, Deserialize, Serialize};

/// One service instance as the cluster sees it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = multispace_rpc::rkyv)]
pub struct InstanceRecord {
    /// Unique in the cluster: the hosting node's id in the high 32 bits, a counter below.
    pub id: u64,
    /// The service (interface) name.
    pub service: String,
    /// Where it answers reliable calls (`ip:port`).
    pub addr: String,
    /// Load figure (calls in flight, quantized); lower is better.
    pub load: u32,
    /// False once its health probe failed: stubs stop choosing it before its beacons expire.
    pub up: bool,
}

/// A node's whole table of instances at one version (what a registry pulls to catch up).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = multispace_rpc::rkyv)]
pub struct NodeTable {
    /// The node's id.
    pub node: u64,
    /// The node's incarnation (greater after every restart).
    pub incarnation: u64,
    /// The table's version (bumped on every change).
    pub version: u64,
    /// Every instance the node hosts.
    pub instances: Vec<InstanceRecord>,
}

/// What a node made of the beacons it received, and how it signs its own.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = multispace_rpc::rkyv)]
pub struct BeaconCounters {
    /// Beacons sent.
    pub sent: u64,
    /// Beacons accepted.
    pub accepted: u64,
    /// Dropped: seen before (replays and duplicates).
    pub replayed: u64,
    /// Dropped: signed with a key id not in the keyring (never installed, or retired).
    pub unknown_key: u64,
    /// Dropped: the MAC did not verify (forged, altered, or another cluster's).
    pub bad_mac: u64,
    /// Dropped: the signed body did not parse.
    pub malformed: u64,
    /// Dropped: sent too far from this node's clock.
    pub stale: u64,
    /// Nodes that said goodbye.
    pub goodbyes: u64,
    /// Nodes dropped because their beacons stopped.
    pub expired: u64,
    /// The key id this node signs with.
    pub primary_key: u8,
    /// Every key id this node accepts.
    pub key_ids: Vec<u8>,
}

/// One node of the cluster as the answering node sees it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = multispace_rpc::rkyv)]
pub struct MemberRecord {
    /// The node's id.
    pub node: u64,
    /// Its incarnation (greater after every restart).
    pub incarnation: u64,
    /// Where it answers control calls (`ip:port`).
    pub control: String,
    /// Milliseconds since its last beacon arrived (0 for the answering node itself).
    pub last_heard_ms: u64,
    /// Instances it hosts, and how many of them are up.
    pub instances: u32,
    /// Of `instances`, those whose health probe passes.
    pub up: u32,
    /// The key id its beacons are signed with, if known.
    pub key_id: Option<u8>,
    /// True for the answering node.
    pub this_node: bool,
}

/// Control of one node.
pub trait NodeControl {
    /// The node's table of local instances.
    #[idempotent]
    async fn table(&self) -> NodeTable;

    /// Every instance of `service` the node's registry knows, across the cluster.
    #[idempotent]
    async fn lookup(&self, service: String) -> Vec<InstanceRecord>;

    /// Every node this node knows, itself included, by id.
    #[idempotent]
    async fn members(&self) -> Vec<MemberRecord>;

    /// Every instance in the cluster this node knows, its own included, up or down, by id.
    #[idempotent]
    async fn instances(&self) -> Vec<InstanceRecord>;

    /// Beacon counters (authentication failures, replays, goodbyes) and key ids.
    #[idempotent]
    async fn beacon_counters(&self) -> BeaconCounters;

    /// The service types this node can start.
    #[idempotent]
    async fn service_types(&self) -> Vec<String>;

    /// Start an instance of a service type the node knows; its record.
    async fn start_instance(&self, service: String) -> InstanceRecord;

    /// Stop a local instance; false if there was none with this id.
    async fn stop_instance(&self, id: u64) -> bool;

    /// Begin a lame-duck exit (see `Node::drain`): goodbye now, new calls refused, calls in
    /// flight given `grace_ms` to finish, then the node stops. Answers at once with the
    /// number of calls in flight.
    async fn drain(&self, grace_ms: u64) -> u32;
}
