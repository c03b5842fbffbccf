//! Task spawning on the current core, built on `async-task` (one allocation per task holding
//! its header and future together; wakers are `Send` and route back to the owning core).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_task::Runnable;

use super::core::{schedule, with_core};

/// Handle to a spawned task. Awaiting it yields the task's output; dropping it cancels the
/// task (use [`JoinHandle::detach`] to let it run on).
pub type JoinHandle<T> = async_task::Task<T>;

/// Spawn a task on the current core.
///
/// # Panics
/// If called outside a multispace runtime core.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let shared = with_core(|c| c.shared.clone());
    let (runnable, task) = async_task::spawn_local(future, move |r: Runnable| schedule(&shared, r));
    runnable.schedule();
    task
}

/// Let other ready tasks run before continuing.
pub async fn yield_now() {
    struct YieldNow(bool);
    impl Future for YieldNow {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
    YieldNow(false).await
}
