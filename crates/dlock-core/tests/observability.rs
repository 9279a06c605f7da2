//! Issue 13: the metrics a scripted scenario records match what it did.
//!
//! Each test runs on a current-thread runtime with time paused, inside a local recorder:
//! every task of the runtime, keepalive included, runs on the test's thread, so it records
//! into the test's own recorder, and durations are exact.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use dlock_core::metrics as names;
use dlock_core::{LockError, LockOptions, Locker, LossReason, MemoryServer};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::sync::oneshot;

/// Runs `scenario` with `recorder` installed for this thread, and time paused.
fn record<F: Future<Output = ()>>(scenario: F) -> Recorded {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || paused_runtime().block_on(scenario));
    let mut recorded = Recorded::default();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: BTreeMap<String, String> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        recorded
            .0
            .push((key.name().to_owned(), labels, Value::from(value)));
    }
    recorded
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

#[derive(Debug, Clone)]
enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(Vec<f64>),
}

impl From<DebugValue> for Value {
    fn from(value: DebugValue) -> Self {
        match value {
            DebugValue::Counter(n) => Value::Counter(n),
            DebugValue::Gauge(g) => Value::Gauge(g.into_inner()),
            DebugValue::Histogram(h) => Value::Histogram(h.into_iter().map(|v| v.0).collect()),
        }
    }
}

#[derive(Debug, Default)]
struct Recorded(Vec<(String, BTreeMap<String, String>, Value)>);

impl Recorded {
    /// The series of `name` whose labels include every pair of `labels`.
    fn series<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Value> + 'a {
        self.0
            .iter()
            .filter(move |(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, value)| value)
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.series(name, labels)
            .map(|value| match value {
                Value::Counter(n) => *n,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .sum()
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(name, labels)
            .map(|value| match value {
                Value::Gauge(g) => *g,
                other => panic!("{name} is not a gauge: {other:?}"),
            })
            .sum()
    }

    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let mut all: Vec<f64> = self
            .series(name, labels)
            .flat_map(|value| match value {
                Value::Histogram(h) => h.clone(),
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .collect();
        all.sort_by(f64::total_cmp);
        all
    }

    fn label_sets(&self) -> Vec<&BTreeMap<String, String>> {
        self.0.iter().map(|(_, labels, _)| labels).collect()
    }
}

const MEMORY: (&str, &str) = ("backend", "memory");

/// The scenario: N = 4 acquisitions (one of them a handoff), M = 2 timeouts, one
/// try that finds the lock held, one loss. Alice's locker labels by prefix, Bob's does not.
#[test]
fn a_scripted_scenario_is_recorded_exactly() {
    let recorded = record(async {
        let server = MemoryServer::new();
        let alice = Locker::new(server.client()).with_prefix_label(true);
        let bob = Locker::new(server.client());
        let options = LockOptions::default().lease(Duration::from_secs(30));

        // 1: uncontended, held 2 s.
        let a = alice.acquire_with("a", &options).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        a.release().await.unwrap();

        // 2 and 3: Alice holds `b` for 1 s while Bob waits in line, then hands it to him.
        let b = alice.acquire_with("b", &options).await.unwrap();
        let (queued, in_line) = oneshot::channel();
        let waiting = {
            let (bob, options) = (bob.clone(), options.clone().wait(Duration::from_secs(10)));
            tokio::spawn(async move { bob.acquire_observed("b", &options, Some(queued)).await })
        };
        in_line.await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        b.release().await.unwrap();
        let handed = waiting.await.unwrap().unwrap();
        handed.release().await.unwrap();

        // Two timeouts and one busy try on `c`, which Alice holds.
        let c = alice.acquire_with("c", &options).await.unwrap();
        let timeout = bob
            .acquire_with("c", &options.clone().wait(Duration::from_millis(500)))
            .await;
        assert!(matches!(timeout, Err(LockError::Timeout { .. })));
        let at_once = bob
            .acquire_with("c", &options.clone().wait(Duration::ZERO))
            .await;
        assert!(matches!(at_once, Err(LockError::Timeout { .. })));
        assert!(bob.try_acquire_with("c", &options).await.unwrap().is_none());

        // One loss: the server forgets Alice's `c`, as an operator deleting the key would.
        let lost = c.lost();
        assert!(server.forget(&options.prefix, c.key()));
        assert_eq!(lost.await, LossReason::NotOwner);
        drop(c);
    });

    let alice = [MEMORY, ("prefix", "dlock")];
    assert_eq!(recorded.counter(names::ACQUISITIONS, &[MEMORY]), 4);
    assert_eq!(recorded.counter(names::ACQUISITIONS, &alice), 3);
    assert_eq!(recorded.counter(names::HANDOFFS, &[MEMORY]), 1);
    assert_eq!(recorded.counter(names::TIMEOUTS, &[MEMORY]), 2);
    assert_eq!(recorded.counter(names::BUSY, &[MEMORY]), 1);
    assert_eq!(recorded.counter(names::ACQUIRE_ERRORS, &[MEMORY]), 0);
    assert_eq!(recorded.counter(names::LOSSES, &[MEMORY]), 1);
    assert_eq!(
        recorded.counter(names::LOSSES, &[MEMORY, ("reason", "not_owner")]),
        1
    );
    assert_eq!(
        recorded.gauge(names::HELD, &[MEMORY]),
        0.0,
        "nothing is held"
    );
    assert_eq!(recorded.counter(names::RENEWAL_FAILURES, &[MEMORY]), 0);

    // Time is paused: the only waits are the ones the scenario made.
    assert_eq!(
        recorded.histogram(names::ACQUIRE_WAIT, &[MEMORY]),
        [0.0, 0.0, 0.0, 1.0],
        "three grants at once, one after Alice's second"
    );
    assert_eq!(
        recorded.histogram(names::HOLD, &[MEMORY, ("outcome", "released")]),
        [0.0, 1.0, 2.0]
    );
    assert_eq!(
        recorded.histogram(names::HOLD, &[MEMORY, ("outcome", "lost")]),
        [0.5],
        "`c` was lost after Bob's 500 ms wait for it"
    );

    // Bounded labels: the backend, the opted-in prefix, outcome and reason, never the key.
    for labels in recorded.label_sets() {
        for name in labels.keys() {
            assert!(
                ["backend", "prefix", "outcome", "reason"].contains(&name.as_str()),
                "unexpected label {name} in {labels:?}"
            );
        }
        assert!(!labels
            .values()
            .any(|v| ["a", "b", "c"].contains(&v.as_str())));
    }
}

/// The keepalive's renewals are counted per lease, its failures too, and a lease that runs
/// out while the server is unreachable is a loss by `lease_expired`.
#[test]
fn renewals_failures_and_an_expiry_are_recorded() {
    let recorded = record(async {
        let server = MemoryServer::new();
        let locker = Locker::new(server.client());
        let options = LockOptions::default()
            .lease(Duration::from_secs(3))
            .keepalive_interval(Duration::from_secs(1));
        let first = locker.acquire_with("one", &options).await.unwrap();
        let second = locker.acquire_with("two", &options).await.unwrap();
        // Two leases renewed together at 1 s, 2 s, 3 s and 4 s.
        tokio::time::sleep(Duration::from_millis(4_500)).await;
        server.set_reachable(false);
        let lost = first.lost();
        assert_eq!(lost.await, LossReason::LeaseExpired);
        assert!(!second.is_held());
    });

    assert_eq!(recorded.counter(names::ACQUISITIONS, &[MEMORY]), 2);
    assert_eq!(recorded.counter(names::RENEWALS, &[MEMORY]), 8);
    let failures = recorded.counter(names::RENEWAL_FAILURES, &[MEMORY]);
    assert!(
        failures >= 2 && failures % 2 == 0,
        "both leases fail to renew, in the same batches: {failures}"
    );
    assert_eq!(
        recorded.counter(names::LOSSES, &[MEMORY, ("reason", "lease_expired")]),
        2
    );
    assert_eq!(recorded.gauge(names::HELD, &[MEMORY]), 0.0);
}
