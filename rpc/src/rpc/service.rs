//! Services: a name and a table of method id → handler. Generated skeletons (stubgen) build
//! the same table with [`ServiceBuilder::method`] and [`ServiceBuilder::one_way`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::poll_fn;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;

use super::dgram::DgramEndpoint;
use super::error::Status;
use super::server::ServerConn;
use crate::buf::{Message, Payload, Validate};
use crate::metrics::MethodCell;
use crate::proto::frame::{ErrorCode, Header};
use crate::runtime::time::timeout_at;
use crate::runtime::{spawn, JoinHandle};
use crate::trace::TraceContext;

/// What a handler knows about the call it serves.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The method id called.
    pub method_id: u32,
    /// The caller's request id on its connection (0 for one-way calls).
    pub request_id: u64,
    /// When the caller stops waiting, converted to local time on arrival. Nested calls made
    /// by the handler inherit it.
    pub deadline: Option<Instant>,
    /// The caller's address.
    pub peer: Option<SocketAddr>,
    /// The caller's verified identity (mutual TLS); `None` on plain TCP and one-way UDP.
    pub principal: Option<crate::tls::Principal>,
    /// The trace the call came in with (the trace, and the caller's span), if any. While the
    /// handler runs, [`crate::trace::current`] is a new span of this trace.
    pub trace: Option<crate::trace::TraceContext>,
}

/// The deadline of the handler running on this core right now, if any (nested calls use it).
pub fn current_deadline() -> Option<Instant> {
    crate::trace::ambient().deadline
}

/// Where a handler's result goes: a connection's outbox, or a datagram endpoint (which
/// also keeps it for retransmissions). One-way calls have none.
pub(crate) struct Reply {
    to: ReplyTo,
    request_id: u64,
}

enum ReplyTo {
    Stream(Rc<ServerConn>),
    Datagram { endpoint: Rc<DgramEndpoint>, peer: SocketAddr, session: u64 },
}

impl Reply {
    pub(crate) fn stream(conn: Rc<ServerConn>, request_id: u64) -> Reply {
        Reply { to: ReplyTo::Stream(conn), request_id }
    }

    pub(crate) fn datagram(endpoint: Rc<DgramEndpoint>, peer: SocketAddr, session: u64, request_id: u64) -> Reply {
        Reply { to: ReplyTo::Datagram { endpoint, peer, session }, request_id }
    }

    fn ok<T: Payload>(&self, method_id: u32, value: &T) {
        let id = self.request_id;
        let conn = match &self.to {
            ReplyTo::Stream(conn) => conn,
            ReplyTo::Datagram { endpoint, peer, session } => {
                return endpoint.reply_value(*peer, *session, id, method_id, value);
            }
        };
        conn.finish(id);
        let outbox = &conn.outbox;
        if let Err(e) = outbox.push(value, |len| Header::response(id, method_id, len)) {
            tracing::warn!(method_id, error = %e, "response could not be encoded");
            let code = match e {
                crate::buf::EncodeError::TooLarge { .. } => ErrorCode::TooLarge,
                _ => ErrorCode::Internal,
            };
            outbox.push_error(id, method_id, code, &e.to_string());
        }
    }

    pub(crate) fn err(&self, method_id: u32, status: &Status) {
        match &self.to {
            ReplyTo::Stream(conn) => {
                conn.finish(self.request_id);
                conn.outbox.push_error(self.request_id, method_id, status.code(), status.wire_detail());
            }
            ReplyTo::Datagram { endpoint, peer, session } => {
                endpoint.reply_error(*peer, *session, self.request_id, method_id, status.code(), status.wire_detail())
            }
        }
    }
}

/// Method id → handler; looked up on every call, so hashed with a fast (seeded) hasher.
type MethodMap = HashMap<u32, Rc<Dispatch>, foldhash::fast::RandomState>;

/// Starts one call; `None` when it already finished inline.
type Dispatch = dyn Fn(CallContext, Bytes, Option<Reply>) -> Option<JoinHandle<()>>;

/// What became of a dispatched call.
pub(crate) enum Dispatched {
    /// No such method in this service.
    Unknown,
    /// The handler finished during dispatch (its reply, if any, is queued).
    Done,
    /// The handler is waiting on something and continues as this task.
    Running(JoinHandle<()>),
}

/// Recycled slots for one method's call futures.
type Pool<F> = Rc<RefCell<Vec<Pin<Box<Option<F>>>>>>;

/// Most handlers finish without waiting, so a call is first polled inline, in a slot
/// recycled from `pool`: then it costs no task and no allocation. A call that must wait moves
/// on as a task owning its slot (the box moves, the pinned future inside does not). The
/// inline poll uses a no-op waker; that is sound because the task polls again at once and
/// every future re-registers its waker on each poll.
fn run_pooled<F: Future<Output = ()> + 'static>(pool: &Pool<F>, fut: F) -> Option<JoinHandle<()>> {
    let mut slot = pool.borrow_mut().pop().unwrap_or_else(|| Box::pin(None));
    slot.as_mut().set(Some(fut));
    let mut cx = Context::from_waker(Waker::noop());
    if slot.as_mut().as_pin_mut().expect("just set").poll(&mut cx).is_ready() {
        recycle(pool, slot);
        return None;
    }
    let pool = pool.clone();
    Some(spawn(async move {
        let mut slot = slot;
        poll_fn(|cx| slot.as_mut().as_pin_mut().expect("set until done").poll(cx)).await;
        recycle(&pool, slot);
    }))
}

fn recycle<F>(pool: &Pool<F>, mut slot: Pin<Box<Option<F>>>) {
    slot.as_mut().set(None);
    let mut pool = pool.borrow_mut();
    // Enough for bursts of waiting calls; beyond it slots are freed.
    if pool.len() < 64 {
        pool.push(slot);
    }
}

/// Who may call which methods of a service, by [principal](crate::Principal). A pattern is
/// a principal's exact name, a prefix ending in `*` (`node-*`), or `*` (any authenticated
/// caller). Callers without a principal (plain TCP, one-way UDP) match nothing, so a service
/// with an access list is closed to them.
#[derive(Debug, Clone, Default)]
pub struct AccessList {
    every_method: Vec<Box<str>>,
    per_method: HashMap<u32, Vec<Box<str>>>,
}

impl AccessList {
    /// A list that allows no one until rules are added.
    pub fn new() -> AccessList {
        AccessList::default()
    }

    /// Allow `pattern` to call every method.
    pub fn allow(mut self, pattern: &str) -> AccessList {
        self.every_method.push(pattern.into());
        self
    }

    /// Allow `pattern` to call `method_id`.
    pub fn allow_method(mut self, method_id: u32, pattern: &str) -> AccessList {
        self.per_method.entry(method_id).or_default().push(pattern.into());
        self
    }

    /// Whether `principal` may call `method_id`.
    pub fn permits(&self, method_id: u32, principal: Option<&str>) -> bool {
        let Some(who) = principal else { return false };
        let matches = |p: &str| match p.strip_suffix('*') {
            Some(prefix) => who.starts_with(prefix),
            None => p == who,
        };
        self.every_method.iter().any(|p| matches(p))
            || self.per_method.get(&method_id).is_some_and(|ps| ps.iter().any(|p| matches(p)))
    }
}

/// A set of methods served under one name.
#[derive(Clone)]
pub struct Service {
    name: Rc<str>,
    methods: Rc<MethodMap>,
    access: Option<Rc<AccessList>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("name", &self.name).field("methods", &self.methods.len()).finish()
    }
}

impl Service {
    /// Start building a service called `name`.
    pub fn builder(name: &str) -> ServiceBuilder {
        ServiceBuilder { name: name.into(), methods: MethodMap::default(), method_names: &[] }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The method ids served.
    pub fn method_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.methods.keys().copied()
    }

    /// True if `method_id` is served.
    pub fn has_method(&self, method_id: u32) -> bool {
        self.methods.contains_key(&method_id)
    }

    /// This service restricted to the callers `access` allows; checked before a request is
    /// validated or its handler runs. Without one, every caller may call every method.
    pub fn with_access(mut self, access: AccessList) -> Service {
        self.access = Some(Rc::new(access));
        self
    }

    /// `Err` with the reason if `principal` may not call `method_id`.
    pub(crate) fn check_access(&self, method_id: u32, principal: Option<&str>) -> Result<(), String> {
        match &self.access {
            Some(acl) if !acl.permits(method_id, principal) => Err(match principal {
                Some(p) => format!("`{p}` may not call method {method_id:#010x} of service `{}`", self.name),
                None => format!(
                    "service `{}` requires an authenticated caller (mutual TLS); this connection has none",
                    self.name
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Run method `ctx.method_id` on `payload`. `reply` is `None` for one-way calls.
    pub(crate) fn dispatch(&self, ctx: CallContext, payload: Bytes, reply: Option<Reply>) -> Dispatched {
        match self.methods.get(&ctx.method_id) {
            None => Dispatched::Unknown,
            Some(handler) => match handler(ctx, payload, reply) {
                None => Dispatched::Done,
                Some(task) => Dispatched::Running(task),
            },
        }
    }
}

/// Builds a [`Service`].
pub struct ServiceBuilder {
    name: Rc<str>,
    methods: MethodMap,
    /// Names of method ids, for metrics (generated stubs give them).
    method_names: &'static [(u32, &'static str)],
}

impl std::fmt::Debug for ServiceBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBuilder").field("name", &self.name).finish()
    }
}

impl ServiceBuilder {
    /// Names for the method ids registered after this, as metrics label them (generated
    /// services pass their interface's names; without one, a method is labelled by its id).
    pub fn method_names(mut self, names: &'static [(u32, &'static str)]) -> Self {
        self.method_names = names;
        self
    }

    fn metrics(&self, method_id: u32) -> Rc<crate::metrics::MethodCell> {
        let name = self.method_names.iter().find(|(id, _)| *id == method_id).map(|(_, n)| *n);
        crate::metrics::register(self.name.clone(), method_id, name)
    }

    /// Register a request/response method. The handler gets the validated, archived request
    /// in place; its `Ok` value is archived straight into the connection's outgoing buffer.
    ///
    /// # Panics
    /// If `method_id` is already registered (a programming error that stubgen rules out at
    /// build time).
    pub fn method<Req, Resp, F, Fut>(mut self, method_id: u32, handler: F) -> Self
    where
        Req: Validate + 'static,
        Resp: Payload + 'static,
        F: Fn(CallContext, Message<Req>) -> Fut + 'static,
        Fut: Future<Output = Result<Resp, Status>> + 'static,
    {
        let handler = Rc::new(handler);
        let pool = Rc::new(RefCell::new(Vec::new()));
        let metrics = self.metrics(method_id);
        let dispatch = move |ctx: CallContext, payload: Bytes, reply: Option<Reply>| {
            let (handler, metrics) = (handler.clone(), metrics.clone());
            run_pooled(&pool, async move {
                // The loop's clock: the call's time counts from the turn that read its request.
                let (method_id, started) = (ctx.method_id, crate::runtime::turn_now());
                let result = run_handler(ctx, payload, &metrics, started, |ctx, msg| handler(ctx, msg)).await;
                let outcome = result.as_ref().map(|_| ()).map_err(Status::code);
                // Reply first: the caller is waiting, the metrics are not.
                if let Some(reply) = reply {
                    match &result {
                        Ok(v) => reply.ok(method_id, v),
                        Err(s) => reply.err(method_id, s),
                    }
                }
                metrics.record(started, outcome);
            })
        };
        self.insert(method_id, Rc::new(dispatch));
        self
    }

    /// Register a one-way method (no result). Callable by one-way UDP, multicast, or a reliable
    /// call (which then gets an empty acknowledgement).
    pub fn one_way<Req, F, Fut>(mut self, method_id: u32, handler: F) -> Self
    where
        Req: Validate + 'static,
        F: Fn(CallContext, Message<Req>) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let handler = Rc::new(handler);
        let pool = Rc::new(RefCell::new(Vec::new()));
        let metrics = self.metrics(method_id);
        let dispatch = move |ctx: CallContext, payload: Bytes, reply: Option<Reply>| {
            let (handler, metrics) = (handler.clone(), metrics.clone());
            run_pooled(&pool, async move {
                // The loop's clock: the call's time counts from the turn that read its request.
                let (method_id, started) = (ctx.method_id, crate::runtime::turn_now());
                let result = run_handler(ctx, payload, &metrics, started, |ctx, msg| {
                    let fut = handler(ctx, msg);
                    async move {
                        fut.await;
                        Ok(())
                    }
                })
                .await;
                metrics.record(started, result.as_ref().map(|_| ()).map_err(Status::code));
                if let Some(reply) = reply {
                    match result {
                        Ok(()) => reply.ok(method_id, &()),
                        Err(s) => reply.err(method_id, &s),
                    }
                }
            })
        };
        self.insert(method_id, Rc::new(dispatch));
        self
    }

    fn insert(&mut self, method_id: u32, d: Rc<Dispatch>) {
        if self.methods.insert(method_id, d).is_some() {
            panic!("service {}: method id {method_id:#010x} registered twice", self.name);
        }
    }

    /// Finish.
    pub fn build(self) -> Service {
        Service { name: self.name, methods: Rc::new(self.methods), access: None }
    }
}

/// The `tracing` target of the per-call spans and events: `RUST_LOG=multispace_rpc::calls=info`
/// logs traced calls, `=debug` every call.
pub const CALLS_TARGET: &str = "multispace_rpc::calls";

/// The call's `rpc` span — INFO with trace ids if the call came with a trace, else DEBUG (a
/// no-op unless debug logging is on) — and the trace context the handler runs in: a new span
/// of the caller's trace.
fn call_span(cell: &MethodCell, ctx: &CallContext) -> (tracing::Span, Option<TraceContext>) {
    let (service, method, method_id) = (cell.service(), cell.method().unwrap_or(""), ctx.method_id);
    match ctx.trace {
        Some(caller) => {
            let mine = crate::trace::child(caller);
            let span = tracing::info_span!(
                target: CALLS_TARGET,
                "rpc",
                service,
                method,
                method_id,
                trace_id = %caller.trace_id,
                span_id = %mine.span_id,
                parent_id = %caller.span_id,
            );
            (span, Some(mine))
        }
        // Checked first (one atomic load) so that untraced calls cost nothing when no one
        // logs at DEBUG: even a disabled span is not free (tracing's `log` fallback).
        None if tracing::level_filters::LevelFilter::current() >= tracing::Level::DEBUG => {
            (tracing::debug_span!(target: CALLS_TARGET, "rpc", service, method, method_id), None)
        }
        None => (tracing::Span::none(), None),
    }
}

/// Run one call: validate, enforce the deadline, run the handler with its deadline, trace
/// and span current (for nested calls and logs), turn a panic into an `Internal` status, and
/// log the outcome on the span. One async layer, so the call's future stays small: it is
/// moved into a pooled slot on every call.
async fn run_handler<Req, Resp, F, Fut>(
    ctx: CallContext,
    payload: Bytes,
    cell: &MethodCell,
    started: Instant,
    handler: F,
) -> Result<Resp, Status>
where
    Req: Validate,
    F: FnOnce(CallContext, Message<Req>) -> Fut,
    Fut: Future<Output = Result<Resp, Status>>,
{
    let (span, trace) = call_span(cell, &ctx);
    let deadline = ctx.deadline;
    let method_id = ctx.method_id;
    let res = 'run: {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            // Expired while queued: the caller has given up, do not run it.
            break 'run Err(Status::new(ErrorCode::DeadlineExceeded, "deadline expired before the handler ran"));
        }
        let msg = match Message::<Req>::new(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(method_id, error = %e, "request failed validation");
                break 'run Err(Status::new(ErrorCode::InvalidPayload, format!("request failed validation: {e}")));
            }
        };
        // The handler's synchronous part, and then each poll of its future, runs with the
        // call's state current; a panic in either becomes a status instead of unwinding
        // through the core.
        let created =
            in_call(deadline, trace, &span, || std::panic::catch_unwind(AssertUnwindSafe(|| handler(ctx, msg))));
        let Ok(fut) = created else { break 'run Err(panicked(method_id)) };
        let mut fut = pin!(fut);
        let guarded = poll_fn(|cx| {
            match in_call(deadline, trace, &span, || {
                std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx)))
            }) {
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(v)) => Poll::Ready(v),
                Err(_) => Poll::Ready(Err(panicked(method_id))),
            }
        });
        match deadline {
            Some(d) => timeout_at(d, guarded)
                .await
                .unwrap_or_else(|_| Err(Status::new(ErrorCode::DeadlineExceeded, "handler ran past the deadline"))),
            None => guarded.await,
        }
    };
    if !span.is_disabled() {
        let elapsed_us = started.elapsed().as_micros() as u64;
        let status = res.as_ref().err().map(|s| s.code().to_string());
        let status = status.as_deref().unwrap_or("ok");
        if trace.is_some() {
            tracing::info!(target: CALLS_TARGET, parent: &span, elapsed_us, status, "served");
        } else {
            tracing::debug!(target: CALLS_TARGET, parent: &span, elapsed_us, status, "served");
        }
    }
    res
}

fn panicked(method_id: u32) -> Status {
    tracing::error!(method_id, "handler panicked");
    Status::internal("handler panicked")
}

/// Run `f` with a call's deadline and trace current on this thread (untraced calls run
/// outside any trace, whatever the polling task's is) and its span entered.
fn in_call<R>(
    deadline: Option<Instant>,
    trace: Option<TraceContext>,
    span: &tracing::Span,
    f: impl FnOnce() -> R,
) -> R {
    let _entered = span.enter();
    let prev = crate::trace::replace_ambient(crate::trace::Ambient { deadline, trace });
    let r = f();
    crate::trace::replace_ambient(prev);
    r
}
