//! Backend wrappers that count and watch calls, so tests can check how the core uses a
//! backend and how a backend uses its server.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dlock_core::{BackendCall, BackendLayer, Layered, LockBackend};

/// Counts every call into a client as one request to the server, for targets whose backend
/// makes exactly one request per call (an in-process server, say) and so can implement
/// [`ConformanceTarget::server_requests`](crate::ConformanceTarget::server_requests) without
/// a proxy. Wrap every client of one target around the same counter with
/// [`RequestCounting::wrap`].
#[derive(Debug)]
pub struct RequestCounting {
    requests: Arc<AtomicU64>,
}

impl RequestCounting {
    /// `inner`, counting each of its calls in `requests`.
    pub fn wrap(inner: Arc<dyn LockBackend>, requests: &Arc<AtomicU64>) -> Arc<dyn LockBackend> {
        Arc::new(Layered::new(
            inner,
            RequestCounting {
                requests: Arc::clone(requests),
            },
        ))
    }
}

impl BackendLayer for RequestCounting {
    fn on_call(&self, call: BackendCall) {
        // A wait for a change is a wait on the server's notification, not a request.
        if call != BackendCall::WaitForChange {
            self.requests.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A client that counts `renew` and `extend` calls, and the calls to `wait_for_change` that
/// have begun (read them through [`Layered::layer`]).
pub(crate) type CountingBackend = Layered<CallCounts>;

/// `inner`, with its calls counted.
pub(crate) fn counting(inner: Arc<dyn LockBackend>) -> Arc<CountingBackend> {
    Arc::new(Layered::new(
        inner,
        CallCounts {
            renew_calls: AtomicUsize::new(0),
            extend_calls: AtomicUsize::new(0),
            change_waits: tokio::sync::watch::Sender::new(0),
        },
    ))
}

/// What [`CountingBackend`] counts.
#[derive(Debug)]
pub(crate) struct CallCounts {
    pub(crate) renew_calls: AtomicUsize,
    pub(crate) extend_calls: AtomicUsize,
    pub(crate) change_waits: tokio::sync::watch::Sender<usize>,
}

impl BackendLayer for CallCounts {
    fn on_call(&self, call: BackendCall) {
        match call {
            BackendCall::Renew => {
                self.renew_calls.fetch_add(1, Ordering::Relaxed);
            }
            BackendCall::Extend => {
                self.extend_calls.fetch_add(1, Ordering::Relaxed);
            }
            BackendCall::WaitForChange => self.change_waits.send_modify(|waits| *waits += 1),
            _ => {}
        }
    }
}
