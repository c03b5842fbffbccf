//! Each served call gets one `rpc` tracing span with its trace ids, and a `served` event on
//! it. A test binary of its own: it installs the process-wide subscriber, which must not race
//! with other tests' callsites (tracing caches per-callsite interest globally).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::hops::{two_hops, Seen, FORWARD};
use common::{each_driver, must, until};
use multispace_rpc::trace::{self, TraceContext};
use multispace_rpc::{CallOptions, Client};

/// A recorded span: its name and fields.
type SpanRecord = (String, HashMap<String, String>);

/// A subscriber that records every span's name and fields, and the events logged in them.
#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<Vec<SpanRecord>>>,
    /// (span index, message) of each event logged with a parent span.
    events: Arc<Mutex<Vec<(usize, String)>>>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl tracing::Subscriber for Recorder {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attrs: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.spans.lock().unwrap();
        spans.push((attrs.metadata().name().to_string(), fields));
        tracing::span::Id::from_u64(spans.len() as u64)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        if let Some(parent) = event.parent() {
            let mut fields = HashMap::new();
            event.record(&mut Fields(&mut fields));
            let message = fields.remove("message").unwrap_or_default();
            self.events.lock().unwrap().push((parent.into_u64() as usize - 1, message));
        }
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn each_served_call_has_an_rpc_span_with_its_trace_ids() {
    let recorder = Recorder::default();
    tracing::subscriber::set_global_default(recorder.clone()).expect("the only subscriber of this test binary");
    {
        each_driver(|_| async {
            let client = Client::new(two_hops());
            let root: TraceContext = trace::start();
            let (a, b) = must(
                "traced call",
                trace::in_trace(Some(root), client.call::<(), (Seen, Seen)>(FORWARD, &(), CallOptions::default())),
            )
            .await
            .unwrap()
            .to_owned()
            .unwrap();
            let (a_span, b_span) = (a.unwrap().2, b.unwrap().2);
            let spans = recorder.spans.lock().unwrap().clone();
            let rpc_span = |span_id: u64| {
                let id = format!("{:016x}", span_id);
                spans
                    .iter()
                    .position(|(name, f)| name == "rpc" && f.get("span_id") == Some(&id))
                    .unwrap_or_else(|| panic!("no rpc span with span_id {id} in {spans:?}"))
            };
            let (ia, ib) = (rpc_span(a_span), rpc_span(b_span));
            let trace_id = root.trace_id.to_string();
            assert_eq!(spans[ia].1["trace_id"], trace_id);
            assert_eq!(spans[ib].1["trace_id"], trace_id);
            assert_eq!(spans[ia].1["parent_id"], root.span_id.to_string());
            assert_eq!(spans[ib].1["parent_id"], format!("{a_span:016x}"));
            assert_eq!((spans[ia].1["service"].as_str(), spans[ib].1["service"].as_str()), ("a", "b"));
            // Each ends with a `served` event logged on its span.
            let served = |i: usize| recorder.events.lock().unwrap().iter().any(|(s, m)| *s == i && m == "served");
            until("both calls logged as served", || served(ia) && served(ib)).await;
        })
    }
}
