//! Two services, A calling B, that answer which trace (and spans) each handler ran in: the
//! setup the trace tests share.

use std::net::SocketAddr;

use multispace_rpc::{spawn, trace, CallContext, CallOptions, Client, Message, Server, Service, Status};

pub const SEEN: u32 = 1;
pub const FORWARD: u32 = 2;

/// What a handler saw: the trace id, the caller's span and its own span.
pub type Seen = Option<(u128, u64, u64)>;

pub fn seen(ctx: &CallContext) -> Seen {
    let current = trace::current();
    match ctx.trace {
        None => {
            assert_eq!(current, None, "an untraced call runs outside any trace");
            None
        }
        Some(caller) => {
            let me = current.expect("a traced call runs inside its trace");
            assert_eq!(me.trace_id, caller.trace_id);
            assert_ne!(me.span_id, caller.span_id, "the handler gets a span of its own");
            Some((caller.trace_id.get(), caller.span_id.0, me.span_id.0))
        }
    }
}

pub fn serve(svc: Service) -> SocketAddr {
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), [svc]).unwrap();
    let addr = server.local_addr();
    spawn(server.serve()).detach();
    addr
}

/// B answers what it saw; A calls B (a nested call) and answers both views.
pub fn two_hops() -> SocketAddr {
    let b = serve(
        Service::builder("b")
            // Synchronous part of the handler: it too runs inside the call's trace.
            .method(SEEN, |ctx, _req: Message<()>| {
                let s = seen(&ctx);
                async move { Ok::<Seen, Status>(s) }
            })
            .build(),
    );
    let client_b = Client::new(b);
    serve(
        Service::builder("a")
            .method(FORWARD, move |ctx, _req: Message<()>| {
                let client_b = client_b.clone();
                async move {
                    let mine = seen(&ctx);
                    let theirs = client_b
                        .call::<(), Seen>(SEEN, &(), CallOptions::default())
                        .await
                        .map_err(|e| Status::internal(e.to_string()))?;
                    Ok::<(Seen, Seen), Status>((mine, theirs.to_owned().unwrap()))
                }
            })
            .build(),
    )
}
