//! The conformance suite of **dlock**: one test per property of the lock contract
//! ([`dlock_core::contract`], P1 … P12), run unchanged against every backend.
//!
//! # Proving a new backend
//!
//! Implement [`ConformanceTarget`] for a small factory type that knows how to reach your
//! server, then expand [`conformance_tests!`] in a test file. Each property becomes a named
//! `#[test]` (`p01_mutual_exclusion_across_clients`, …), so `cargo test` shows exactly which
//! promise a backend breaks:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use dlock_conformance::{async_trait, ConformanceTarget};
//! use dlock_core::{LockBackend, LockError, LockGuard, MemoryServer};
//!
//! struct Memory(Arc<MemoryServer>);
//!
//! #[async_trait]
//! impl ConformanceTarget for Memory {
//!     fn short_lease(&self) -> Duration {
//!         Duration::from_millis(300)
//!     }
//!     async fn connect(&self, _lease: Duration) -> Result<Arc<dyn LockBackend>, LockError> {
//!         Ok(Arc::new(self.0.client()))
//!     }
//!     async fn connect_unreachable(&self) -> Result<Arc<dyn LockBackend>, LockError> {
//!         let server = MemoryServer::new();
//!         server.set_reachable(false);
//!         Ok(Arc::new(server.client()))
//!     }
//!     async fn forget(&self, guard: &LockGuard) -> Result<(), LockError> {
//!         self.0.forget(&guard.lease().options().prefix, guard.key());
//!         Ok(())
//!     }
//! }
//!
//! // In `tests/conformance.rs`:
//! dlock_conformance::conformance_tests!(async { Memory(MemoryServer::new()) });
//! # fn main() {}
//! ```
//!
//! Every test uses its own random key prefix and its own clients, so tests run in parallel
//! against one server and in any order. A backend that cannot keep a property declares it in
//! its [`Capabilities`](dlock_core::Capabilities), and the test then checks the weaker promise
//! declared instead: nothing is skipped silently.
#![deny(missing_docs)]

mod counting;
pub mod suite;

use std::sync::Arc;
use std::time::Duration;

pub use async_trait::async_trait;
use dlock_core::{LockBackend, LockError, LockGuard, Locker};

/// How a backend's tests reach its server; one value per test.
#[async_trait]
pub trait ConformanceTarget: Send + Sync {
    /// A lease short enough for tests that wait for one to run out, and long enough that a
    /// healthy client renews it without fail (a few hundred milliseconds to a few seconds).
    fn short_lease(&self) -> Duration;

    /// A new, independent client, as another process would have: its own connection and, for
    /// session backends, its own session whose lease (timeout, TTL) is `lease`.
    async fn connect(&self, lease: Duration) -> Result<Arc<dyn LockBackend>, LockError>;

    /// A client of a server that cannot be reached (a closed loopback port, say). Failing
    /// here with [`LockError::Connection`] is as good as failing on first use.
    async fn connect_unreachable(&self) -> Result<Arc<dyn LockBackend>, LockError>;

    /// Makes the server forget the lock `guard` holds, from outside its client: delete its
    /// key, expire its session, revoke its lease.
    async fn forget(&self, guard: &LockGuard) -> Result<(), LockError>;

    /// Makes the holder vanish as a crashed process would: no release, no more renewals, no
    /// goodbye to the server. The default fits backends with a lease per lock; session
    /// backends must also end the session's heartbeat without closing it.
    async fn crash(&self, locker: Locker, guard: LockGuard) {
        guard.abandon();
        drop(locker);
    }
}

/// Expands to one `#[test]` per property of the lock contract, each running against the
/// target that `$target` (a future, awaited once per test) produces.
///
/// See the [crate documentation](crate) for an example.
#[macro_export]
macro_rules! conformance_tests {
    ($target:expr) => {
        $crate::conformance_tests!(@each $target;
            p01_mutual_exclusion_across_clients,
            p01_mutual_exclusion_with_try_acquire,
            p01_held_lock_excludes_other_clients,
            p02_tokens_grow_across_clients,
            p02_tokens_grow_across_client_restarts,
            p02_new_holder_after_loss_gets_a_greater_token,
            p03_crashed_holder_frees_the_lock_within_the_lease,
            p04_keepalive_holds_the_lock_beyond_its_lease,
            p04_renewal_is_batched_per_client,
            p04_without_keepalive_the_lease_runs_out,
            p05_forgotten_lock_is_signalled,
            p05_extend_after_loss_is_not_held,
            p05_lost_future_stays_pending_while_held,
            p06_release_twice_is_not_held,
            p06_stale_release_leaves_the_new_holder_alone,
            p06_stale_extend_leaves_the_new_holder_alone,
            p07_dropped_guard_is_released_promptly,
            p07_cancelled_acquire_leaves_nothing_behind,
            p08_waiter_is_woken_by_release,
            p08_each_release_hands_over_to_one_waiter,
            p09_acquire_times_out_within_its_wait_limit,
            p09_try_acquire_never_waits,
            p10_waiters_are_served_in_arrival_order,
            p11_locks_on_different_keys_are_independent,
            p11_one_client_holds_many_locks,
            p12_invalid_keys_are_rejected,
            p12_invalid_options_are_rejected,
            p12_unreachable_server_is_a_connection_error,
            p12_distinct_keys_never_collide,
            p12_prefixes_isolate_namespaces,
        );
    };
    (@each $target:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::__private::run(stringify!($name), async {
                    let target = $target.await;
                    $crate::suite::$name(&target).await;
                });
            }
        )*
    };
}

#[doc(hidden)]
pub mod __private {
    use std::future::Future;
    use std::time::Duration;

    /// The longest any one conformance test may run before it counts as hung.
    const TEST_LIMIT: Duration = Duration::from_secs(180);

    /// Runs one test on its own multi-threaded runtime, failing it if it hangs.
    pub fn run(name: &str, test: impl Future<Output = ()>) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("a tokio runtime for the conformance test");
        runtime.block_on(async {
            if tokio::time::timeout(TEST_LIMIT, test).await.is_err() {
                panic!("{name} hung: no result after {TEST_LIMIT:?}");
            }
        });
    }
}
