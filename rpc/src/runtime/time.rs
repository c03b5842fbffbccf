//! Timers on the current core's timer wheel (1 ms ticks, never early).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::core::with_core;
use super::wheel::TimerKey;

/// A future that completes at `deadline`.
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Sleep {
    deadline: Instant,
    key: Option<TimerKey>,
}

/// Sleep until `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep { deadline, key: None }
}

/// Sleep for `d`.
pub fn sleep(d: Duration) -> Sleep {
    sleep_until(Instant::now() + d)
}

impl Sleep {
    /// When this sleep completes.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            if let Some(key) = self.key.take() {
                with_core(|c| c.timers().remove(key));
            }
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        let key = self.key;
        self.key = Some(with_core(|c| {
            let mut timers = c.timers();
            if let Some(key) = key {
                if let Some(w) = timers.get_mut(key) {
                    if !w.will_wake(cx.waker()) {
                        *w = cx.waker().clone();
                    }
                    return key;
                }
            }
            timers.insert(c.tick_ceil(deadline), cx.waker().clone())
        }));
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            // Outside a core (runtime gone) there is no wheel left to clean.
            super::core::try_with_core(|c| {
                c.timers().remove(key);
            });
        }
    }
}

/// The future did not finish before its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline elapsed")]
pub struct Elapsed;

/// Run `fut` until `deadline`; the future is dropped (cancelled) if the deadline passes first.
pub async fn timeout_at<F: Future>(deadline: Instant, fut: F) -> Result<F::Output, Elapsed> {
    let mut fut = std::pin::pin!(fut);
    let mut sleep = sleep_until(deadline);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(&mut sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Run `fut` for at most `d`.
pub async fn timeout<F: Future>(d: Duration, fut: F) -> Result<F::Output, Elapsed> {
    timeout_at(Instant::now() + d, fut).await
}
