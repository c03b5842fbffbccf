//! Every rkyv type that arrives from the network through `Message::<T>::new`: the generated
//! `*Args` of every interface (what a server validates) and every method's result type (what a
//! client validates), rpc's own `InterfaceInfo`, and the beacon. The `wire` target picks one
//! by its first input byte.
//!
//! Generated `*Args` types are written out here by hand (field names and types, from the
//! interface files): when an interface changes, this file stops compiling or its seeds go
//! stale, and `cargo run --example seeds` rewrites them.

use bytes::Bytes;
use multispace_dht::api::{peer, table};
use multispace_dht::command::{self, Op};
use multispace_dht::maps::{slot_of, Group, Maps, Redirect};
use multispace_node::beacon::SignedBeacon;
use multispace_node::control::{self, BeaconCounters, InstanceRecord, NodeTable};
use multispace_rpc::rkyv::{self, rancor};
use multispace_rpc::stub::InterfaceInfo;
use multispace_services::calc::{self, Point};
use multispace_services::keiretsu::{api as keiretsu, client_api as keiretsu_client};

use crate::{field, round_trip, samples, validate, Encode};

/// One wire type: how to validate and read it, and valid archives of it for the seeds.
#[derive(Debug)]
pub struct WireType {
    /// Where it travels, and its name.
    pub name: &'static str,
    /// Validate bytes as this type and, when they pass, read all of it.
    pub check: fn(Bytes),
    /// Valid archives of it.
    pub samples: fn() -> Vec<Vec<u8>>,
}

fn archive<T: Encode>(value: &T) -> Vec<u8> {
    rkyv::to_bytes::<rancor::Error>(value).expect("samples archive").to_vec()
}

/// A type that derives `Deserialize` and `PartialEq`: validated, deserialized, archived again
/// and compared; then, if given, handed to what the receiver does with it next.
macro_rules! owned {
    ($name:literal, $ty:ty, $samples:expr) => {
        owned!($name, $ty, $samples, |_v: $ty| {})
    };
    ($name:literal, $ty:ty, $samples:expr, $consume:expr) => {
        WireType {
            name: $name,
            check: |b| {
                validate::<$ty>(b, |a| {
                    let consume: fn($ty) = $consume;
                    consume(round_trip::<$ty>(a));
                })
            },
            samples: || {
                let values: Vec<$ty> = $samples;
                values.iter().map(archive).collect()
            },
        }
    };
}

/// A generated `*Args` struct (no `Deserialize` of its own): validated, then each field
/// deserialized on its own.
macro_rules! args {
    ($name:literal, $path:path { $($f:ident : $fty:ty),* $(,)? }, $samples:expr) => {
        WireType {
            name: $name,
            check: |b| {
                #[allow(unused_variables)]
                validate::<$path>(b, |a| {
                    $(let _ = field::<$fty>(&a.$f);)*
                })
            },
            samples: || {
                let values: Vec<$path> = $samples;
                values.iter().map(archive).collect()
            },
        }
    };
}

/// What a dht client does with a node's cluster view (`dht::client::Client::connect` and
/// `refresh`): check its maps and route keys with them, parse its node addresses, learn its
/// groups into maps it already has.
fn use_cluster_view(view: table::ClusterView) {
    if let Ok(maps) = view.maps.clone().checked() {
        route(&maps);
    }
    for (_, addr) in &view.nodes {
        let _ = addr.parse::<std::net::SocketAddr>();
    }
    let mut known = samples::cluster_view().maps;
    for g in view.maps.groups() {
        learn(&mut known, g.clone());
    }
}

/// What a dht client does with a refusal: learn a redirect's group into its maps.
fn use_refusal(refusal: &table::Refusal) {
    if let table::Refusal::Redirect(g) = refusal {
        learn(&mut samples::cluster_view().maps, g.clone());
    }
}

/// Learning a group from the wire leaves good maps good.
fn learn(maps: &mut Maps, group: Group) {
    maps.learn(&Redirect { group });
    let maps = maps.clone().checked().expect("maps stay whole whatever a peer says");
    route(&maps);
}

/// Route a few keys, as a client does before every call.
fn route(maps: &Maps) {
    for key in [&b""[..], b"a", b"user:42"] {
        std::hint::black_box(maps.group_of(key));
    }
    std::hint::black_box(maps.ranges().count());
    std::hint::black_box(slot_of(b"k"));
}

/// Every wire type, in a fixed order (a seed's first byte indexes this table).
pub static WIRE_TYPES: &[WireType] = &[
    // rpc: the built-in interface method of every generated service.
    owned!("rpc () request/response", (), vec![()]),
    owned!("rpc InterfaceInfo response", InterfaceInfo, vec![samples::interface_info()]),
    // node: the control interface.
    args!("node NodeControl::table args", control::TableArgs {}, vec![control::TableArgs {}]),
    args!(
        "node NodeControl::lookup args",
        control::LookupArgs { service: String },
        vec![control::LookupArgs { service: "calc".into() }]
    ),
    args!(
        "node NodeControl::beacon_counters args",
        control::BeaconCountersArgs {},
        vec![control::BeaconCountersArgs {}]
    ),
    args!("node NodeControl::service_types args", control::ServiceTypesArgs {}, vec![control::ServiceTypesArgs {}]),
    args!(
        "node NodeControl::start_instance args",
        control::StartInstanceArgs { service: String },
        vec![control::StartInstanceArgs { service: "Keiretsu".into() }]
    ),
    args!(
        "node NodeControl::stop_instance args",
        control::StopInstanceArgs { id: u64 },
        vec![control::StopInstanceArgs { id: 2 << 32 | 1 }]
    ),
    owned!("node NodeTable response", NodeTable, vec![samples::node_table()]),
    owned!("node Vec<InstanceRecord> response", Vec<InstanceRecord>, vec![samples::node_table().instances, vec![]]),
    owned!("node Vec<String> response", Vec<String>, vec![vec!["calc".into(), "Keiretsu".into()]]),
    owned!("node InstanceRecord response", InstanceRecord, vec![samples::instance(7, "calc")]),
    owned!("node bool response", bool, vec![true]),
    owned!("node BeaconCounters response", BeaconCounters, vec![samples::beacon_counters()]),
    owned!("node SignedBeacon one-way", SignedBeacon, samples::signed_beacons()),
    // dht: the client interface.
    args!(
        "dht Table::get args",
        table::GetArgs { group: u64, epoch: u64, key: Vec<u8>, stale: bool },
        vec![table::GetArgs { group: 1, epoch: 4, key: b"user:1".to_vec(), stale: false }]
    ),
    args!(
        "dht Table::write args",
        table::WriteArgs { group: u64, epoch: u64, client: u64, seq: u64, acked_below: u64, ops: Vec<Op> },
        vec![table::WriteArgs { group: 1, epoch: 4, client: 0xfeed, seq: 3, acked_below: 2, ops: samples::ops() }]
    ),
    args!(
        "dht Table::change_members args",
        table::ChangeMembersArgs { group: u64, change: table::MemberChange },
        samples::member_changes().into_iter().map(|change| table::ChangeMembersArgs { group: 1, change }).collect()
    ),
    args!("dht Table::cluster args", table::ClusterArgs {}, vec![table::ClusterArgs {}]),
    owned!("dht ReadAnswer response", table::ReadAnswer, samples::read_answers(), |a| {
        if let table::ReadAnswer::Refused(r) = &a {
            use_refusal(r)
        }
    }),
    owned!("dht WriteAnswer response", table::WriteAnswer, samples::write_answers(), |a| {
        if let table::WriteAnswer::Refused(r) = &a {
            use_refusal(r)
        }
    }),
    owned!("dht ChangeAnswer response", table::ChangeAnswer, samples::change_answers(), |a| {
        if let table::ChangeAnswer::Refused(r) = &a {
            use_refusal(r)
        }
    }),
    owned!("dht ClusterView response", table::ClusterView, vec![samples::cluster_view()], use_cluster_view),
    // dht: replica to replica (the messages inside are fuzzed by the `dht` target).
    args!(
        "dht RaftPeer::deliver args",
        peer::DeliverArgs { from: u64, incarnation: u64, messages: Vec<(u64, Vec<u8>)> },
        vec![peer::DeliverArgs { from: 2, incarnation: 7, messages: vec![(1, vec![8, 3, 16, 2, 24, 1]), (2, vec![])] }]
    ),
    args!(
        "dht RaftPeer::post args",
        peer::PostArgs { from: u64, incarnation: u64, messages: Vec<(u64, Vec<u8>)>, removed: Vec<u64> },
        vec![peer::PostArgs { from: 3, incarnation: 0, messages: vec![(1, vec![8, 3, 16, 2, 24, 1])], removed: vec![2] }]
    ),
    owned!("dht Command (raft entry)", command::Command, vec![samples::command()]),
    // services: the calculator.
    args!("services Calc::ping args", calc::PingArgs {}, vec![calc::PingArgs {}]),
    args!("services Calc::add args", calc::AddArgs { a: i64, b: i64 }, vec![calc::AddArgs { a: 2, b: -40 }]),
    args!("services Calc::divide args", calc::DivideArgs { a: i64, b: i64 }, vec![calc::DivideArgs { a: 9, b: 0 }]),
    args!("services Calc::accumulate args", calc::AccumulateArgs { x: i64 }, vec![calc::AccumulateArgs { x: 5 }]),
    args!("services Calc::echo args", calc::EchoArgs { data: Vec<u8> }, vec![calc::EchoArgs { data: vec![1, 2, 3] }]),
    args!(
        "services Calc::centroid_sum args",
        calc::CentroidSumArgs { points: Vec<Point> },
        vec![calc::CentroidSumArgs { points: vec![samples::point(), Point { x: 1, y: 1 }] }]
    ),
    args!("services Calc::get args", calc::GetArgs { name: String }, vec![calc::GetArgs { name: "r1".into() }]),
    args!(
        "services Calc::set args",
        calc::SetArgs { name: String, value: i64 },
        vec![calc::SetArgs { name: "r1".into(), value: 6 }]
    ),
    args!("services Calc::whoami args", calc::WhoamiArgs {}, vec![calc::WhoamiArgs {}]),
    args!("services Calc::log args", calc::LogArgs { line: String }, vec![calc::LogArgs { line: "hello".into() }]),
    args!(
        "services Calc::announce args",
        calc::AnnounceArgs { at: Point },
        vec![calc::AnnounceArgs { at: samples::point() }]
    ),
    owned!("services i64 response", i64, vec![-42]),
    owned!("services Vec<u8> response", Vec<u8>, vec![vec![1, 2, 3]]),
    owned!("services Point response", Point, vec![samples::point()]),
    owned!("services Option<i64> response", Option<i64>, vec![Some(6), None]),
    owned!("services String response", String, vec!["calc-1".into()]),
    // services: Keiretsu and its client endpoint.
    args!(
        "services Keiretsu::identify_self args",
        keiretsu::IdentifySelfArgs { name: String, client: String, lease_ms: u32 },
        vec![keiretsu::IdentifySelfArgs { name: "ann".into(), client: "127.0.0.1:9100".into(), lease_ms: 5000 }]
    ),
    args!(
        "services Keiretsu::disconnect_self args",
        keiretsu::DisconnectSelfArgs { name: String },
        vec![keiretsu::DisconnectSelfArgs { name: "ann".into() }]
    ),
    args!(
        "services Keiretsu::inject_message args",
        keiretsu::InjectMessageArgs { to: String, from: String, text: String, msg_id: u64 },
        vec![keiretsu::InjectMessageArgs { to: "bob".into(), from: "ann".into(), text: "hi".into(), msg_id: 77 }]
    ),
    args!(
        "services Keiretsu::get_client_list args",
        keiretsu::GetClientListArgs {},
        vec![keiretsu::GetClientListArgs {}]
    ),
    args!(
        "services Keiretsu::find_binding args",
        keiretsu::FindBindingArgs { name: String },
        vec![keiretsu::FindBindingArgs { name: "bob".into() }]
    ),
    args!(
        "services Keiretsu::share_binding args",
        keiretsu::ShareBindingArgs { name: String, client: String, lease_ms: u32 },
        vec![keiretsu::ShareBindingArgs { name: "bob".into(), client: "127.0.0.1:9101".into(), lease_ms: 5000 }]
    ),
    owned!(
        "services Option<(String, u32)> response",
        Option<(String, u32)>,
        vec![Some(("127.0.0.1:9101".into(), 4000)), None]
    ),
    args!(
        "services KeiretsuClient::deliver args",
        keiretsu_client::DeliverArgs { to: String, from: String, text: String, msg_id: u64 },
        vec![keiretsu_client::DeliverArgs { to: "bob".into(), from: "ann".into(), text: "hi".into(), msg_id: 77 }]
    ),
];

/// Check `data` as the wire type its first byte picks; the second byte sets the payload's
/// alignment (mod 16) in memory.
pub fn check(data: &[u8]) {
    let [pick, misalign, payload @ ..] = data else { return };
    let ty = &WIRE_TYPES[usize::from(*pick) % WIRE_TYPES.len()];
    (ty.check)(crate::bytes_at(payload, *misalign));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_passes_its_own_check() {
        assert!(WIRE_TYPES.len() <= 256, "the first input byte picks the type");
        for (i, ty) in WIRE_TYPES.iter().enumerate() {
            let samples = (ty.samples)();
            assert!(!samples.is_empty(), "{}", ty.name);
            for s in samples {
                for misalign in [0, 1, 8] {
                    let mut input = vec![i as u8, misalign];
                    input.extend_from_slice(&s);
                    check(&input);
                }
            }
        }
    }
}
