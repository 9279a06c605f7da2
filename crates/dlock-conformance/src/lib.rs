//! The conformance suite of **dlock**: one test per property of the lock contract
//! ([`dlock_core::contract`], P1 … P16), run unchanged against every backend.
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
//! against one server and in any order. Most of them wait on timers (leases running out), so
//! more test threads than cores pay off: on a 2-core machine `cargo test -- --test-threads 8`
//! runs the Redis, ZooKeeper and etcd suites in 4–7 s instead of 11–17 s.
//!
//! A backend that cannot keep a property declares it in its
//! [`Capabilities`](dlock_core::Capabilities), and the test then checks the weaker promise
//! declared instead: nothing is skipped silently.
//!
//! Two optional hooks let the suite check more. [`ConformanceTarget::server_requests`]
//! counts the requests your clients send (a counting TCP proxy per target in front of the
//! server does it for any protocol; [`RequestCounting`] for an in-process server): without
//! it the cost tests (P4 batched renewal, P8 one wake-up per release) check only what the
//! core sees, and say so. [`ConformanceTarget::stop_heartbeats`] lets a session backend's
//! test watch a session run out under a live guard (P5). A test that has nothing to check
//! for a backend (no `inspect`, no `ping`, no hook) prints why and passes.
//!
//! # What a passing run proves
//!
//! On one healthy server (or one healthy Redlock quorum) reached over loopback, with every
//! client on one machine and one clock:
//!
//! - **Exclusion and fencing** (P1, P2): contending clients never overlap, tokens grow, also
//!   across client restarts and after a loss.
//! - **The holder's view is never later than the server's** (P5): `valid_until` is at most
//!   the send time plus the lease, a guard whose lock another client took already says it
//!   is not held, an `extend` to a shorter lease moves the deadline back, and a lock the
//!   server forgot is signalled lost, alone among the client's others, within a renewal
//!   interval plus lease/3.
//! - **Liveness with declared bounds** (P3, P7, P9): a crashed holder's lock is free within
//!   the lease plus the declared `crash_release_bound` plus a small measured slack; dropped
//!   guards and acquires cancelled at any poll (in line, or still in their first round
//!   trips) leave nothing that delays the next client; the backend's own `acquire` returns
//!   `Timeout` at its deadline and `try_acquire` never waits for the holder.
//! - **Costs** (P4, P8, P11): the server wakes waiters (a handover takes a few of the
//!   backend's own round trips, in the median), one waiter per release (requests counted),
//!   renewal of many locks costs O(1) requests per interval, one client holds 1,000 locks.
//! - **Introspection** (P13, as far as the backend's
//!   [`introspection`](dlock_core::LockBackend::introspection) promises): `report` names the
//!   holder's owner description and acquisition time and counts the waiters, `list` pages
//!   through the locks under a prefix in key order.
//! - **Semaphores, read-write locks, elections** (P14–P16, for the modes the backend
//!   [`supports`](dlock_core::LockBackend::supports)): at most N permit holders, disagreeing
//!   permit counts refused, readers sharing and writers excluding, a waiting writer never
//!   overtaken by new readers, tokens in grant order, one leader at a time with growing terms,
//!   `proclaim` visible to everyone, observers woken while they wait, lost leadership
//!   signalled.
//! - **Names** (P12): keys that differ in case, slashes, percent- or plus-like spellings,
//!   Unicode normalisation, whitespace or only after a long common start are distinct
//!   locks, a prefix never runs into its key, bad input is a typed error, an unreachable
//!   server a connection error; `inspect` and `ping` tell the truth.
//!
//! `tests/catches_broken_backends.rs` keeps the suite honest: for each of these checks, an
//! in-memory backend with one deliberate flaw must fail it.
//!
//! # What it cannot prove
//!
//! - **Safety under faults.** Network partitions, process pauses (GC, `SIGSTOP`), server
//!   restarts and failovers, lost or delayed replies, clock jumps and drift between machines
//!   are not exercised: the suite runs against a healthy server on loopback. The fault tests
//!   in `integration-tests` (`*_faults.rs`) cover those, per backend.
//! - **Durability.** Whether a lock or the fencing counter survives a server crash depends
//!   on the server's persistence, which the suite does not configure or test.
//! - **Absence of rare races.** Passing shows the properties held in the interleavings that
//!   happened; timing-dependent bugs (like a cancellation landing at one particular point
//!   of a round trip) may need many runs, or the fault harness, to show.
//! - **Performance.** Bounds are correctness limits with generous slack for a loaded CI
//!   machine, not latency targets; the benchmarks measure speed.
//! - **Multi-node deployments** (replicated ZooKeeper or etcd, Redis with replicas): only
//!   one server, or independent Redlock instances, are used.
#![deny(missing_docs)]

pub mod bench;
mod counting;
mod primitives;
pub mod server_stats;
pub mod suite;

/// Writing a backend, from nothing to the facade and the command: the repository's
/// `crates/dlock-conformance/GUIDE.md`, whose example backend
/// (`tests/guide_backend.rs`) passes this suite.
pub mod guide {
    #![doc = include_str!("../GUIDE.md")]
}

pub use counting::RequestCounting;

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

    /// How many requests the clients this target connected have sent to the server so far,
    /// if the target can count them: a counting proxy in front of the server, or a
    /// [`RequestCounting`] wrapper around an in-process one. Only differences are read, so
    /// the count may start anywhere; it must only cover this target's own clients, so that
    /// tests running in parallel do not disturb it.
    ///
    /// The tests of request costs (P4 batched renewal, P8 one wake-up per release) need it.
    /// The default, `None`, says the target cannot count: those tests then say so and check
    /// only what the core sees.
    fn server_requests(&self) -> Option<u64> {
        None
    }

    /// Stops the heartbeat of `client`'s session as a hung process would, without ending the
    /// session or releasing anything, and keeps its guards alive; returns whether it could.
    ///
    /// Only backends whose lease is the session ([`Capabilities::session_lease`]) need it:
    /// it lets a test watch a session run out while the old guard is still around (P5).
    /// Backends with a lease per lock are tested with keepalive turned off instead. The
    /// default, `false`, makes that test say it has nothing more to check.
    ///
    /// [`Capabilities::session_lease`]: dlock_core::Capabilities::session_lease
    async fn stop_heartbeats(&self, client: &Locker) -> bool {
        let _ = client;
        false
    }
}

/// Expands to one `#[test]` per property of the lock contract, each running against the
/// target that `$target` (a future, awaited once per test) produces.
///
/// `conformance_tests!(target, except [p12_distinct_keys_never_collide, …])` leaves out the
/// properties a configuration gives up on purpose (a foreign layout whose keys are another
/// library's lock names, say); say why next to the list. A name that is not a property of the
/// suite does not compile.
///
/// See the [crate documentation](crate) for an example.
#[macro_export]
macro_rules! conformance_tests {
    ($target:expr) => {
        $crate::conformance_tests!($target, except []);
    };
    ($target:expr, except [$($skip:ident),* $(,)?]) => {
        $crate::conformance_tests!(@except ($) $target; [$($skip),*]);
    };
    // `$d` is a `$`, for the rules of the helper macro defined here: one rule per property
    // left out (it expands to nothing), and one that makes the test of any other property.
    (@except ($d:tt) $target:expr; [$($skip:ident),*]) => {
        $(
            const _: () = {
                let _ = $crate::suite::$skip;
            };
        )*
        macro_rules! __dlock_conformance_test {
            $( ($skip) => {}; )*
            ($d name:ident) => {
                $crate::conformance_tests!(@each $target; $d name);
            };
        }
        $crate::conformance_tests!(@properties __dlock_conformance_test);
    };
    // Every property of the contract, once: `$callback!(name)` for each.
    (@properties $callback:ident) => {
        $callback!(p01_mutual_exclusion_across_clients);
        $callback!(p01_mutual_exclusion_with_try_acquire);
        $callback!(p01_held_lock_excludes_other_clients);
        $callback!(p02_tokens_grow_across_clients);
        $callback!(p02_tokens_grow_across_client_restarts);
        $callback!(p02_new_holder_after_loss_gets_a_greater_token);
        $callback!(p03_crashed_holder_frees_the_lock_within_the_declared_bound);
        $callback!(p04_keepalive_holds_the_lock_beyond_its_lease);
        $callback!(p04_renewal_is_batched_per_client);
        $callback!(p04_without_keepalive_the_lease_runs_out);
        $callback!(p05_forgotten_lock_is_signalled);
        $callback!(p05_extend_after_loss_is_not_held);
        $callback!(p05_lost_future_stays_pending_while_held);
        $callback!(p05_valid_until_is_no_later_than_the_servers_expiry);
        $callback!(p05_extend_to_a_shorter_lease_moves_the_deadline);
        $callback!(p05_losing_one_of_many_locks_signals_only_that_one);
        $callback!(p06_release_twice_is_not_held);
        $callback!(p06_stale_release_leaves_the_new_holder_alone);
        $callback!(p06_stale_extend_leaves_the_new_holder_alone);
        $callback!(p07_dropped_guard_is_released_promptly);
        $callback!(p07_cancelled_acquire_leaves_nothing_behind);
        $callback!(p07_acquire_cancelled_in_its_first_round_trips_leaves_nothing_behind);
        $callback!(p08_waiter_is_woken_by_release);
        $callback!(p08_each_release_hands_over_to_one_waiter);
        $callback!(p08_handover_takes_a_few_round_trips);
        $callback!(p09_acquire_times_out_within_its_wait_limit);
        $callback!(p09_try_acquire_never_waits);
        $callback!(p09_backend_acquire_honours_its_deadline);
        $callback!(p10_waiters_are_served_in_arrival_order);
        $callback!(p11_locks_on_different_keys_are_independent);
        $callback!(p11_one_client_holds_many_locks);
        $callback!(p12_invalid_keys_are_rejected);
        $callback!(p12_invalid_options_are_rejected);
        $callback!(p12_unreachable_server_is_a_connection_error);
        $callback!(p12_distinct_keys_never_collide);
        $callback!(p12_prefixes_isolate_namespaces);
        $callback!(p12_prefix_and_key_never_run_together);
        $callback!(p12_inspect_reports_what_the_server_holds);
        $callback!(p12_ping_times_a_round_trip);
        $callback!(p13_report_names_the_holder);
        $callback!(p13_list_pages_through_held_locks);
        $callback!(p14_semaphore_admits_exactly_its_permits);
        $callback!(p14_semaphore_holders_never_exceed_its_permits);
        $callback!(p14_semaphore_permit_counts_must_agree);
        $callback!(p14_crashed_permit_holder_frees_its_permit);
        $callback!(p14_cancelled_permit_waiter_leaves_nothing_behind);
        $callback!(p15_readers_share_and_writers_exclude);
        $callback!(p15_waiting_writer_is_not_starved_by_new_readers);
        $callback!(p15_readers_and_writers_never_overlap);
        $callback!(p15_cancelled_reader_leaves_nothing_behind);
        $callback!(p16_one_leader_at_a_time_and_terms_grow);
        $callback!(p16_leader_and_its_value_are_visible);
        $callback!(p16_observe_follows_leader_changes);
        $callback!(p16_lost_leadership_is_signalled);
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
