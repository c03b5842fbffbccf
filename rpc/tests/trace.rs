//! Trace ids crossing rpc hops: reliable calls (nested), one-way datagrams and calls from
//! plain threads carry the caller's trace, and each served call runs in a new span of it.
//! Both drivers. (The tracing spans themselves: `trace_spans.rs`.)

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use common::hops::{seen, serve, two_hops, Seen, FORWARD, SEEN};
use common::{each_driver, must, until};
use multispace_rpc::trace;
use multispace_rpc::{
    spawn, CallOptions, Client, ClientHandle, DriverChoice, Message, OneWaySender, OneWayServer, RuntimeBuilder,
    Service, Status,
};

const NOTE: u32 = 3;

#[test]
fn a_trace_crosses_two_hops_with_a_new_span_per_hop() {
    each_driver(|_| async {
        let client = Client::new(two_hops());
        let call = || client.call::<(), (Seen, Seen)>(FORWARD, &(), CallOptions::default());

        let untraced = must("untraced call", call()).await.unwrap().to_owned().unwrap();
        assert_eq!(untraced, (None, None), "no trace unless the caller has one (sampling is off)");

        let root = trace::start();
        let (a, b) = must("traced call", trace::in_trace(Some(root), call())).await.unwrap().to_owned().unwrap();
        let (a_trace, a_parent, a_span) = a.expect("A got the trace");
        let (b_trace, b_parent, b_span) = b.expect("B got the trace from A's nested call");
        assert_eq!((a_trace, b_trace), (root.trace_id.get(), root.trace_id.get()));
        assert_eq!(a_parent, root.span_id.0, "A's parent is the caller's span");
        assert_eq!(b_parent, a_span, "B's parent is A's span");
        assert_ne!(a_span, b_span);
        assert_eq!(trace::current(), None, "the caller's thread is left as it was");
    });
}

#[test]
fn a_one_way_datagram_sent_inside_a_trace_carries_it() {
    each_driver(|_| async {
        let got: Rc<RefCell<Vec<Seen>>> = Rc::default();
        let svc = {
            let got = got.clone();
            Service::builder("notes")
                .one_way(NOTE, move |ctx, _m: Message<String>| {
                    got.borrow_mut().push(seen(&ctx));
                    async {}
                })
                .build()
        };
        let server = OneWayServer::bind("127.0.0.1:0".parse().unwrap(), [svc]).unwrap();
        let addr = server.local_addr();
        spawn(server.serve()).detach();
        let sender = OneWaySender::new().unwrap();
        sender.send(addr, NOTE, &"plain".to_string()).await.unwrap();
        until("untraced datagram", || got.borrow().len() == 1).await;
        let root = trace::start();
        trace::in_trace(Some(root), sender.send(addr, NOTE, &"traced".to_string())).await.unwrap();
        until("traced datagram", || got.borrow().len() == 2).await;
        let got = got.borrow();
        assert_eq!(got[0], None);
        let (t, parent, _) = got[1].expect("traced");
        assert_eq!((t, parent), (root.trace_id.get(), root.span_id.0));
    });
}

#[test]
fn a_call_from_a_plain_thread_carries_that_threads_trace() {
    for kind in common::drivers() {
        let rt = RuntimeBuilder::new().cores(1).pin(false).driver(DriverChoice::Force(kind)).build().unwrap();
        let addr = rt
            .core(0)
            .run(|| async {
                serve(
                    Service::builder("b")
                        .method(SEEN, |ctx, _req: Message<()>| async move { Ok::<Seen, Status>(seen(&ctx)) })
                        .build(),
                )
            })
            .unwrap();
        let handle = ClientHandle::new(rt.core(0).clone(), addr);
        let opts = CallOptions::timeout(Duration::from_secs(20));
        let root = trace::start();
        let traced: Message<Seen> = trace::scope(root, || handle.call_blocking(SEEN, &(), opts)).unwrap();
        let (t, parent, _) = traced.to_owned().unwrap().expect("the handle sent the thread's trace");
        assert_eq!((t, parent), (root.trace_id.get(), root.span_id.0));
        let plain: Message<Seen> = handle.call_blocking(SEEN, &(), opts).unwrap();
        assert_eq!(plain.to_owned().unwrap(), None);
    }
}
