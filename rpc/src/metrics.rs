//! Per-core call metrics, for dashboards and the node's `/metrics` page.
//!
//! Each method a service registers owns its counters — calls, failures by error code, and a
//! latency histogram from the loop turn that read the request to the reply — in plain cells
//! on its core, so recording a call is a few increments: no lookup, no lock, no allocation. [`snapshot`] lists every method
//! still registered on the calling core (summed over services of the same name), and
//! [`render_prometheus`] writes them in the Prometheus text format.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::rc::{Rc, Weak};
use std::time::Instant;

use crate::proto::frame::ErrorCode;

/// Upper bounds of the latency buckets, in microseconds (the last bucket is unbounded).
pub const BUCKETS_US: [f64; 18] =
    [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1e3, 2.5e3, 5e3, 1e4, 2.5e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 5e6];
const BUCKETS_NS: [u64; 18] = {
    let mut ns = [0u64; 18];
    let mut i = 0;
    while i < 18 {
        ns[i] = (BUCKETS_US[i] * 1000.0) as u64;
        i += 1;
    }
    ns
};

/// Error kinds counted apart, as their metric label.
pub const ERROR_KINDS: [&str; 13] = [
    "unknown_method",
    "invalid_payload",
    "deadline_exceeded",
    "overloaded",
    "too_large",
    "unsupported_version",
    "malformed",
    "cancelled",
    "shutting_down",
    "permission_denied",
    "application",
    "internal",
    "other",
];

fn kind_index(code: ErrorCode) -> usize {
    match code.to_u16() {
        n @ 1..=10 => n as usize - 1,
        16 => 10,
        17 => 11,
        _ => 12,
    }
}

/// One method's counters on one core.
#[derive(Debug)]
pub(crate) struct MethodCell {
    service: Rc<str>,
    method_id: u32,
    method: Option<&'static str>,
    calls: Cell<u64>,
    errors: [Cell<u64>; ERROR_KINDS.len()],
    buckets: [Cell<u64>; BUCKETS_NS.len() + 1],
    sum_ns: Cell<u64>,
}

impl MethodCell {
    /// The service's name.
    pub(crate) fn service(&self) -> &str {
        &self.service
    }

    /// The method's name, if the service was built with names.
    pub(crate) fn method(&self) -> Option<&'static str> {
        self.method
    }

    /// A call that began at `started` finished with `result`.
    pub(crate) fn record(&self, started: Instant, result: Result<(), ErrorCode>) {
        let ns = started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        self.calls.set(self.calls.get() + 1);
        self.sum_ns.set(self.sum_ns.get().saturating_add(ns));
        let b = &self.buckets[BUCKETS_NS.partition_point(|&bound| bound < ns)];
        b.set(b.get() + 1);
        if let Err(code) = result {
            let e = &self.errors[kind_index(code)];
            e.set(e.get() + 1);
        }
    }
}

#[derive(Default)]
struct CoreMetrics {
    methods: Vec<Weak<MethodCell>>,
    /// Calls refused before any method took them: no such method, not allowed, too many.
    refused: [u64; ERROR_KINDS.len()],
}

thread_local! {
    static CORE: RefCell<CoreMetrics> = RefCell::default();
}

/// Counters for a method being registered on this core.
pub(crate) fn register(service: Rc<str>, method_id: u32, method: Option<&'static str>) -> Rc<MethodCell> {
    let cell = Rc::new(MethodCell {
        service,
        method_id,
        method,
        calls: Cell::new(0),
        errors: Default::default(),
        buckets: Default::default(),
        sum_ns: Cell::new(0),
    });
    CORE.with_borrow_mut(|c| {
        // Services come and go with instances: forget the dropped ones as new ones arrive.
        c.methods.retain(|w| w.strong_count() > 0);
        c.methods.push(Rc::downgrade(&cell));
    });
    cell
}

/// A call refused by the server before dispatch (`code`: why).
pub(crate) fn refused(code: ErrorCode) {
    CORE.with_borrow_mut(|c| c.refused[kind_index(code)] += 1);
}

/// A latency histogram: counts per bucket of [`BUCKETS_US`] (not cumulative), the last
/// for everything slower.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latency {
    /// Calls per bucket; `BUCKETS_US.len() + 1` entries.
    pub buckets: Vec<u64>,
    /// Total time of all calls, in seconds.
    pub sum_seconds: f64,
}

/// One method's totals on one core.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodMetrics {
    /// The service's name.
    pub service: String,
    /// The method id.
    pub method_id: u32,
    /// The method's name, if the service was built with names (generated services are).
    pub method: Option<&'static str>,
    /// Calls finished (successfully or not).
    pub calls: u64,
    /// Failed calls, by kind (labels from [`ERROR_KINDS`]); kinds with none are left out.
    pub errors: Vec<(&'static str, u64)>,
    /// Time from dispatch to reply.
    pub latency: Latency,
}

/// Every method registered on this core, summed by (service, method), sorted; and calls
/// refused before dispatch, by kind.
pub fn snapshot() -> (Vec<MethodMetrics>, Vec<(&'static str, u64)>) {
    CORE.with_borrow(|c| {
        let mut out: Vec<MethodMetrics> = Vec::new();
        for cell in c.methods.iter().filter_map(Weak::upgrade) {
            let i = match out.iter().position(|m| *m.service == *cell.service && m.method_id == cell.method_id) {
                Some(i) => i,
                None => {
                    out.push(MethodMetrics {
                        service: cell.service.to_string(),
                        method_id: cell.method_id,
                        method: cell.method,
                        calls: 0,
                        errors: Vec::new(),
                        latency: Latency { buckets: vec![0; BUCKETS_NS.len() + 1], sum_seconds: 0.0 },
                    });
                    out.len() - 1
                }
            };
            let m = &mut out[i];
            m.calls += cell.calls.get();
            m.latency.sum_seconds += cell.sum_ns.get() as f64 / 1e9;
            for (total, b) in m.latency.buckets.iter_mut().zip(&cell.buckets) {
                *total += b.get();
            }
            for (k, e) in cell.errors.iter().enumerate() {
                if e.get() > 0 {
                    match m.errors.iter_mut().find(|(kind, _)| *kind == ERROR_KINDS[k]) {
                        Some((_, n)) => *n += e.get(),
                        None => m.errors.push((ERROR_KINDS[k], e.get())),
                    }
                }
            }
        }
        out.sort_by(|a, b| (&a.service, a.method_id).cmp(&(&b.service, b.method_id)));
        let rank = |kind: &str| ERROR_KINDS.iter().position(|k| *k == kind);
        for m in &mut out {
            m.errors.sort_by_key(|(kind, _)| rank(kind));
        }
        let refused = c.refused.iter().enumerate().filter(|(_, &n)| n > 0).map(|(k, &n)| (ERROR_KINDS[k], n)).collect();
        (out, refused)
    })
}

/// Prometheus label value escaping (backslash, quote, newline).
pub fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Append the metrics of [`snapshot`] in the Prometheus text format (0.0.4): calls and
/// errors as counters, latency as a histogram in seconds, refused calls as a counter.
pub fn render_prometheus(methods: &[MethodMetrics], refused: &[(&'static str, u64)], out: &mut String) {
    // Methods by name where the service gave names (generated services do), else by id.
    let label = |m: &MethodMetrics| match m.method {
        Some(name) => format!("service=\"{}\",method=\"{}\"", escape_label(&m.service), escape_label(name)),
        None => format!("service=\"{}\",method=\"{:#010x}\"", escape_label(&m.service), m.method_id),
    };
    out.push_str("# HELP multispace_rpc_calls_total Calls served, by service and method.\n");
    out.push_str("# TYPE multispace_rpc_calls_total counter\n");
    for m in methods {
        let _ = writeln!(out, "multispace_rpc_calls_total{{{}}} {}", label(m), m.calls);
    }
    out.push_str("# HELP multispace_rpc_errors_total Calls that failed, by service, method and kind.\n");
    out.push_str("# TYPE multispace_rpc_errors_total counter\n");
    for m in methods {
        for (kind, n) in &m.errors {
            let _ = writeln!(out, "multispace_rpc_errors_total{{{},kind=\"{kind}\"}} {n}", label(m));
        }
    }
    out.push_str("# HELP multispace_rpc_refused_total Calls refused before dispatch, by kind.\n");
    out.push_str("# TYPE multispace_rpc_refused_total counter\n");
    for (kind, n) in refused {
        let _ = writeln!(out, "multispace_rpc_refused_total{{kind=\"{kind}\"}} {n}");
    }
    out.push_str("# HELP multispace_rpc_call_seconds Time from dispatch to reply.\n");
    out.push_str("# TYPE multispace_rpc_call_seconds histogram\n");
    for m in methods {
        let l = label(m);
        let mut cumulative = 0;
        for (i, n) in m.latency.buckets.iter().enumerate() {
            cumulative += n;
            let le = BUCKETS_US.get(i).map_or("+Inf".to_string(), |us| format!("{}", us / 1e6));
            let _ = writeln!(out, "multispace_rpc_call_seconds_bucket{{{l},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "multispace_rpc_call_seconds_sum{{{l}}} {}", m.latency.sum_seconds);
        let _ = writeln!(out, "multispace_rpc_call_seconds_count{{{l}}} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn calls_land_in_their_bucket_and_errors_by_kind() {
        let a = register(Rc::from("svc"), 7, None);
        let now = Instant::now();
        a.record(now, Ok(()));
        a.record(now - Duration::from_millis(3), Err(ErrorCode::Application));
        // A second instance of the same service on this core adds to the same line.
        let b = register(Rc::from("svc"), 7, None);
        b.record(now - Duration::from_secs(10), Err(ErrorCode::DeadlineExceeded));
        refused(ErrorCode::PermissionDenied);
        let (methods, refused) = snapshot();
        let m = methods.iter().find(|m| m.service == "svc").unwrap();
        assert_eq!(m.calls, 3);
        assert_eq!(m.errors, [("deadline_exceeded", 1), ("application", 1)]);
        let b = &m.latency.buckets;
        assert_eq!(b.iter().sum::<u64>(), 3);
        assert_eq!(b[BUCKETS_US.iter().position(|&us| us == 5e3).unwrap()], 1, "3 ms is in the 5 ms bucket");
        assert_eq!(b[BUCKETS_US.len()], 1, "10 s is past the last bound");
        assert_eq!(refused, [("permission_denied", 1)]);
        let mut text = String::new();
        render_prometheus(&methods, &refused, &mut text);
        assert!(text.contains("multispace_rpc_calls_total{service=\"svc\",method=\"0x00000007\"} 3\n"), "{text}");
        assert!(text.contains("le=\"0.005\"} 2\n"), "cumulative: {text}");
        assert!(text.contains("le=\"+Inf\"} 3\n"), "{text}");
        // Dropped services disappear from the listing.
        drop((a, methods));
        let (methods, _) = snapshot();
        assert_eq!(methods.iter().find(|m| m.service == "svc").map(|m| m.calls), Some(1));
    }
}
