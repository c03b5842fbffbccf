//! Distributed tracing: which trace the code running now belongs to, and how calls carry it.
//!
//! A call made while a trace is current sends its [`TraceContext`] in the request (see
//! [`crate::proto::trace`] for the wire block); the server runs the handler in a new span of
//! the same trace, current while the handler runs, so the calls the handler makes carry the
//! trace on to the next hop. Each served call gets one `tracing` span, `rpc`, with fields
//! `method`, `trace_id`, `span_id` and `parent_id` (INFO level for traced calls, DEBUG for the
//! rest) and ends with a `served` event, so grepping every host's log for a trace id shows
//! the whole operation.
//!
//! A trace starts where the caller says ([`start`] with [`in_trace`] or [`scope`]), or for a
//! sampled fraction of calls made outside any trace ([`set_sample_rate`]). Untraced calls
//! send nothing extra: the block costs 32 bytes on the wire only when a trace is on.
//!
//! The current trace is per thread and set around each poll of the future that owns it, as
//! a handler's deadline is: a task spawned from a handler starts outside the trace unless
//! it is wrapped in [`in_trace`] too.

use std::cell::Cell;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

pub use crate::proto::trace::{SpanId, TraceContext, TraceId};
pub use crate::rpc::service::CALLS_TARGET;

/// The state of the call the code on this thread runs for: its trace, and the deadline that
/// nested calls inherit. One cell, so a handler's poll sets and restores it in one go.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ambient {
    pub(crate) deadline: Option<std::time::Instant>,
    pub(crate) trace: Option<TraceContext>,
}

thread_local! {
    static AMBIENT: Cell<Ambient> = const { Cell::new(Ambient { deadline: None, trace: None }) };
    static RNG: Cell<u64> = Cell::new(seed());
}

/// This thread's call state.
pub(crate) fn ambient() -> Ambient {
    AMBIENT.with(Cell::get)
}

/// Set this thread's call state, returning the previous one.
pub(crate) fn replace_ambient(a: Ambient) -> Ambient {
    AMBIENT.with(|c| c.replace(a))
}

/// Fraction of untraced calls that start a trace, in units of 2^-32 (0 = none).
static SAMPLE: AtomicU32 = AtomicU32::new(0);

fn seed() -> u64 {
    // Distinct per thread and process; trace ids need to be unique, not unpredictable.
    let h = std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id());
    h | 1
}

/// A random nonzero 64-bit value (xorshift64*; per thread, no locks).
pub(crate) fn next_u64() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d).max(1)
    })
}

/// A new trace with a new root span.
pub fn start() -> TraceContext {
    let id = (u128::from(next_u64()) << 64) | u128::from(next_u64());
    TraceContext { trace_id: TraceId::new(id), span_id: SpanId(next_u64()) }
}

/// A new span in `parent`'s trace.
pub fn child(parent: TraceContext) -> TraceContext {
    TraceContext { trace_id: parent.trace_id, span_id: SpanId(next_u64()) }
}

/// The trace (and span) the code running on this thread belongs to, if any.
pub fn current() -> Option<TraceContext> {
    ambient().trace
}

/// Set the current trace, returning the previous one.
fn replace(ctx: Option<TraceContext>) -> Option<TraceContext> {
    AMBIENT.with(|c| {
        let mut a = c.get();
        let prev = std::mem::replace(&mut a.trace, ctx);
        c.set(a);
        prev
    })
}

/// Run `f` with `ctx` current on this thread (calls it makes through [`crate::ClientHandle`]
/// or on this core carry the trace).
pub fn scope<R>(ctx: TraceContext, f: impl FnOnce() -> R) -> R {
    let _restore = Restore(replace(Some(ctx)));
    f()
}

struct Restore(Option<TraceContext>);

impl Drop for Restore {
    fn drop(&mut self) {
        replace(self.0);
    }
}

/// Start tracing this fraction (0.0 to 1.0) of the calls made outside any trace, process
/// wide. Default 0: only calls made inside a trace carry one.
pub fn set_sample_rate(rate: f64) {
    let units = (rate.clamp(0.0, 1.0) * f64::from(u32::MAX)).round() as u32;
    SAMPLE.store(units, Ordering::Relaxed);
}

/// The context an outgoing call carries: the current trace, or a new one if this call is
/// sampled. One relaxed load when neither applies.
pub(crate) fn outgoing() -> Option<TraceContext> {
    current().or_else(|| {
        let rate = SAMPLE.load(Ordering::Relaxed);
        (rate > 0 && (next_u64() >> 32) as u32 <= rate).then(start)
    })
}

/// `fut`, with `ctx` current whenever it runs (`None`: as it is).
pub fn in_trace<F: Future>(ctx: Option<TraceContext>, fut: F) -> InTrace<F> {
    InTrace { ctx, fut }
}

pin_project_lite::pin_project! {
    /// A future running inside a trace; made by [`in_trace`].
    #[derive(Debug)]
    pub struct InTrace<F> {
        ctx: Option<TraceContext>,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for InTrace<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        match *this.ctx {
            Some(ctx) => scope(ctx, || this.fut.poll(cx)),
            None => this.fut.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_restore() {
        assert_eq!(current(), None);
        let a = start();
        let b = child(a);
        assert_eq!(b.trace_id, a.trace_id);
        assert_ne!(b.span_id, a.span_id);
        scope(a, || {
            assert_eq!(current(), Some(a));
            scope(b, || assert_eq!(current(), Some(b)));
            assert_eq!(current(), Some(a));
        });
        assert_eq!(current(), None);
    }

    #[test]
    fn ids_are_nonzero_and_distinct() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| start().trace_id).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|t| t.get() != 0));
    }

    #[test]
    fn outgoing_uses_the_current_trace_and_samples_only_when_asked() {
        // SAMPLE is process wide: this is the only test that sets it, and it resets it.
        assert_eq!(outgoing(), None, "sampling is off by default");
        let a = start();
        scope(a, || assert_eq!(outgoing(), Some(a)));
        set_sample_rate(1.0);
        let sampled = outgoing();
        set_sample_rate(0.0);
        assert!(sampled.is_some());
        assert_eq!(outgoing(), None);
    }
}
