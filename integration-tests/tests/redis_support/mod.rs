//! A minimal RESP client for tampering with Redis from outside a dlock client (deleting a
//! lock's key, flushing scripts, reading `INFO`), so the tests need no second Redis library;
//! and the conformance suite's properties in the standard layout (`standard_layout_suite!`).

#![allow(dead_code)]

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One reply, simplified: errors become `Err`, arrays are flattened into lines.
pub async fn command(address: &str, args: &[&str]) -> Result<String, String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect {address}: {e}"))?;
    let mut stream = BufReader::new(stream);
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    stream
        .get_mut()
        .write_all(&request)
        .await
        .map_err(|e| e.to_string())?;
    read_reply(&mut stream).await
}

fn read_reply<'a>(
    stream: &'a mut BufReader<TcpStream>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + 'a>> {
    Box::pin(async move {
        let mut line = String::new();
        stream
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        let line = line.trim_end().to_owned();
        let (kind, rest) = line.split_at(1.min(line.len()));
        match kind {
            "+" | ":" => Ok(rest.to_owned()),
            "-" => Err(rest.to_owned()),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| format!("bad length {rest}"))?;
                if len < 0 {
                    return Ok(String::new());
                }
                let mut data = vec![0; len as usize + 2];
                stream
                    .read_exact(&mut data)
                    .await
                    .map_err(|e| e.to_string())?;
                data.truncate(len as usize);
                Ok(String::from_utf8_lossy(&data).into_owned())
            }
            "*" => {
                let count: i64 = rest.parse().map_err(|_| format!("bad count {rest}"))?;
                let mut items = Vec::new();
                for _ in 0..count.max(0) {
                    items.push(read_reply(stream).await?);
                }
                Ok(items.join("\n"))
            }
            other => Err(format!("unexpected reply type {other:?}")),
        }
    })
}

/// The number of calls of `command` (lower case, e.g. `evalsha`) in `INFO commandstats`.
pub async fn command_calls(address: &str, name: &str) -> u64 {
    let info = command(address, &["INFO", "commandstats"])
        .await
        .expect("INFO commandstats");
    let prefix = format!("cmdstat_{name}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// The suite in the standard layout of redsync, node-redlock, rslock and redis-py
/// (`layout=redis-standard`, issue 16), but for what that layout gives up on purpose:
///
/// - `p08_each_release_hands_over_to_one_waiter`: there is no line to hand the key to, so a
///   release wakes every dlock waiter of the key (each hears the `del` event, or polls) and
///   each tries once: a release costs one request per waiter (a herd, bounded by the crowd).
/// - `p12_prefix_and_key_never_run_together`: the key is the other library's name exactly, and
///   a prefix goes in front of it as it is (`P/x` + `k` and `P` + `/xk`… are one Redis key).
/// - The semaphore and read-write sections beyond the ones below: only exclusive locks are
///   supported (the sections kept check that the others are refused, `Unsupported`).
///
/// What the layout weakens is checked as weakened, through `Capabilities` and
/// `Introspection`: no FIFO (`p10` checks that every waiter is served), server wake-up only
/// with keyspace notifications (without, `p08_handover_takes_a_few_round_trips` reports the
/// polling handover instead of bounding it), no waiter counts and no `list` (`p13`).
#[allow(unused_macros)]
macro_rules! standard_layout_suite {
    ($target:expr) => {
        dlock_conformance::conformance_tests!(@each $target;
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
            // Semaphores and readers are not mapped onto the standard layout: these check
            // that they are refused. An election is a mutex with an owner: it runs.
            p14_semaphore_admits_exactly_its_permits,
            p14_semaphore_permit_counts_must_agree,
            p15_readers_share_and_writers_exclude,
            p16_one_leader_at_a_time_and_terms_grow,
            p16_leader_and_its_value_are_visible,
            p16_observe_follows_leader_changes,
            p16_lost_leadership_is_signalled,
        );
    };
}
