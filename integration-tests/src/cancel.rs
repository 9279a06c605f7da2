//! Cancellation at a chosen await point: a wrapper that drops a future at its Nth poll.
//!
//! Every `.await` that returns `Pending` is one poll boundary, so sweeping `n` from 1 upward
//! drops an operation at each of its await points in turn, from before its first request to
//! after its last reply. Which await point the Nth poll falls on depends on when replies
//! arrive; a [`FaultProxy`](crate::FaultProxy) latency spaces them out so that each sweep
//! step lands on a different one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Runs `future` but drops it instead of polling it for the `n`th time (`n` ≥ 1; `n == 1`
/// drops it before it ever runs). Returns `Some(output)` if it finished within `n - 1` polls,
/// `None` if it was cancelled.
pub async fn cancel_at_poll<F: Future>(future: F, n: u32) -> Option<F::Output> {
    CancelAtPoll {
        future: Some(Box::pin(future)),
        polls_left: n.saturating_sub(1),
    }
    .await
}

/// How many polls `future` needs to finish, with the result: the upper end of a
/// [`cancel_at_poll`] sweep.
pub async fn count_polls<F: Future>(future: F) -> (u32, F::Output) {
    let mut future = Box::pin(future);
    let mut polls = 0;
    let output = std::future::poll_fn(|cx| {
        polls += 1;
        future.as_mut().poll(cx)
    })
    .await;
    (polls, output)
}

struct CancelAtPoll<F: Future> {
    future: Option<Pin<Box<F>>>,
    polls_left: u32,
}

impl<F: Future> Future for CancelAtPoll<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Only the boxed future is pinned; the wrapper itself is Unpin.
        let this = self.get_mut();
        let Some(future) = this.future.as_mut() else {
            return Poll::Ready(None);
        };
        if this.polls_left == 0 {
            this.future = None;
            return Poll::Ready(None);
        }
        this.polls_left -= 1;
        match future.as_mut().poll(cx) {
            Poll::Ready(output) => {
                this.future = None;
                Poll::Ready(Some(output))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
