//! The conformance suite against a real etcd (one server shared by this test binary).

use dlock_etcd::Layout;
use dlock_test_servers::shared_etcd;

mod conformance_support;
mod etcd_support;

use etcd_support::EtcdTarget;

dlock_conformance::conformance_tests!(EtcdTarget::new(&shared_etcd().url, &shared_etcd().address));

/// The suite in etcd's `concurrency.Mutex` layout (issue 16), but for the one property that
/// layout gives up on purpose: `p12_prefix_and_key_never_run_together`. A lock's key there
/// is the name Go's Mutex is given, unescaped, with the prefix in front and a `/` between
/// (as Go's `namespace` + `NewMutex` do), so prefix `p/x` with key `k` and prefix `p` with
/// key `x/k` are both the name `p/x/k`: one lock. Readers and permits are not taken in that
/// layout (Go's Mutex has none): the P14/P15 properties check that they are refused as
/// `Unsupported` and say the section is not checked.
mod concurrency_layout {
    use super::*;

    dlock_conformance::conformance_tests!(@each EtcdTarget::with_layout(
        &shared_etcd().url,
        &shared_etcd().address,
        Layout::EtcdConcurrency,
    );
        p01_mutual_exclusion_across_clients,
        p01_mutual_exclusion_with_try_acquire,
        p01_held_lock_excludes_other_clients,
        p02_tokens_grow_across_clients,
        p02_tokens_grow_across_client_restarts,
        p02_new_holder_after_loss_gets_a_greater_token,
        p03_crashed_holder_frees_the_lock_within_the_declared_bound,
        p04_keepalive_holds_the_lock_beyond_its_lease,
        p04_renewal_is_batched_per_client,
        p04_without_keepalive_the_lease_runs_out,
        p05_forgotten_lock_is_signalled,
        p05_extend_after_loss_is_not_held,
        p05_lost_future_stays_pending_while_held,
        p05_valid_until_is_no_later_than_the_servers_expiry,
        p05_extend_to_a_shorter_lease_moves_the_deadline,
        p05_losing_one_of_many_locks_signals_only_that_one,
        p06_release_twice_is_not_held,
        p06_stale_release_leaves_the_new_holder_alone,
        p06_stale_extend_leaves_the_new_holder_alone,
        p07_dropped_guard_is_released_promptly,
        p07_cancelled_acquire_leaves_nothing_behind,
        p07_acquire_cancelled_in_its_first_round_trips_leaves_nothing_behind,
        p08_waiter_is_woken_by_release,
        p08_each_release_hands_over_to_one_waiter,
        p08_handover_takes_a_few_round_trips,
        p09_acquire_times_out_within_its_wait_limit,
        p09_try_acquire_never_waits,
        p09_backend_acquire_honours_its_deadline,
        p10_waiters_are_served_in_arrival_order,
        p11_locks_on_different_keys_are_independent,
        p11_one_client_holds_many_locks,
        p12_invalid_keys_are_rejected,
        p12_invalid_options_are_rejected,
        p12_unreachable_server_is_a_connection_error,
        p12_distinct_keys_never_collide,
        p12_prefixes_isolate_namespaces,
        p12_inspect_reports_what_the_server_holds,
        p12_ping_times_a_round_trip,
        p13_report_names_the_holder,
        p13_list_pages_through_held_locks,
        p14_semaphore_admits_exactly_its_permits,
        p14_semaphore_holders_never_exceed_its_permits,
        p14_semaphore_permit_counts_must_agree,
        p14_crashed_permit_holder_frees_its_permit,
        p14_cancelled_permit_waiter_leaves_nothing_behind,
        p15_readers_share_and_writers_exclude,
        p15_waiting_writer_is_not_starved_by_new_readers,
        p15_readers_and_writers_never_overlap,
        p15_cancelled_reader_leaves_nothing_behind,
        p16_one_leader_at_a_time_and_terms_grow,
        p16_leader_and_its_value_are_visible,
        p16_observe_follows_leader_changes,
        p16_lost_leadership_is_signalled,
    );
}
