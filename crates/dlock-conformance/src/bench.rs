//! The workloads every dlock benchmark runs, written once: `dlock bench` and each backend
//! crate's `cargo bench` measure the same things the same way, so their numbers compare.
//!
//! Latencies are recorded in microseconds in HDR histograms; read them against the same
//! server's round trip ([`round_trips`]) measured in the same run.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dlock_core::LockError> {
//! use std::time::Duration;
//! use dlock_conformance::bench;
//! use dlock_core::{LockOptions, Locker, MemoryServer};
//!
//! let server = MemoryServer::new();
//! let clients: Vec<Locker> = (0..4).map(|_| Locker::new(server.client())).collect();
//! let options = LockOptions::default().prefix("bench-doc");
//! let alone = bench::uncontended(&clients[0], &options, 50).await?;
//! let run = bench::contended(&clients, &options, 1, Duration::from_millis(100), &|_| {}).await?;
//! println!("uncontended p50 {} µs, {:.0} handoffs/s", alone.value_at_quantile(0.5), run.handoffs_per_second());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock_core::{Lease, LockError, LockGuard, LockMode, LockOptions, Locker};
pub use hdrhistogram::Histogram;
use tokio::time::Instant;

/// The server round trip the backend's lock operations travel (`LockBackend::ping`), `samples`
/// times; `None` if the backend cannot measure it.
pub async fn round_trips(
    client: &Locker,
    samples: usize,
) -> Result<Option<Histogram<u64>>, LockError> {
    let mut histogram = histogram();
    for _ in 0..samples {
        match client.backend().ping().await {
            Ok(rtt) => record(&mut histogram, rtt),
            Err(LockError::Unsupported { .. }) => return Ok(None),
            Err(error) => return Err(error),
        }
    }
    Ok(Some(histogram))
}

/// `rounds` acquire + release pairs of a key nobody else wants.
pub async fn uncontended(
    client: &Locker,
    options: &LockOptions,
    rounds: usize,
) -> Result<Histogram<u64>, LockError> {
    let mut histogram = histogram();
    for _ in 0..rounds {
        let started = Instant::now();
        let guard = client.acquire_with("uncontended", options).await?;
        guard.release().await?;
        record(&mut histogram, started.elapsed());
    }
    Ok(histogram)
}

/// What [`contended`] measured.
#[derive(Debug, Clone)]
pub struct Contended {
    /// From asking for a lock to holding it.
    pub acquire: Histogram<u64>,
    /// From one holder starting its release to another client holding the lock.
    pub handoff: Histogram<u64>,
    /// Acquisitions per client, in the order the clients were given.
    pub per_client: Vec<u64>,
    /// How long the run took.
    pub elapsed: Duration,
}

impl Contended {
    /// Acquisitions by every client.
    pub fn acquisitions(&self) -> u64 {
        self.per_client.iter().sum()
    }

    /// Acquisitions per second.
    pub fn acquisitions_per_second(&self) -> f64 {
        self.acquisitions() as f64 / self.elapsed.as_secs_f64()
    }

    /// Handoffs (a lock passing from one client to another) per second.
    pub fn handoffs_per_second(&self) -> f64 {
        self.handoff.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The least and the most any client got, as fractions of an even share.
    pub fn shares(&self) -> (f64, f64) {
        let even = self.acquisitions() as f64 / self.per_client.len().max(1) as f64;
        if even == 0.0 {
            return (0.0, 0.0);
        }
        let least = self.per_client.iter().min().copied().unwrap_or(0) as f64;
        let most = self.per_client.iter().max().copied().unwrap_or(0) as f64;
        (least / even, most / even)
    }
}

/// Every client loops acquire → release over `keys` keys (`k0` … under `options.prefix`)
/// until `duration` ends, starting at different keys; `progress` is told the running total
/// of acquisitions about every 100 ms.
pub async fn contended(
    clients: &[Locker],
    options: &LockOptions,
    keys: u32,
    duration: Duration,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Contended, LockError> {
    contended_in_modes(clients, options, &[options.mode], keys, duration, progress).await
}

/// Like [`contended`], client `i` taking the keys in `modes[i % modes.len()]`: a semaphore
/// (`[Permit(n)]`), readers and writers (`[Shared, Shared, Shared, Exclusive]`). A handoff is
/// then a grant to another client than the key's previous grantee.
pub async fn contended_in_modes(
    clients: &[Locker],
    options: &LockOptions,
    modes: &[LockMode],
    keys: u32,
    duration: Duration,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Contended, LockError> {
    let keys = keys.max(1);
    let started = Instant::now();
    let deadline = started + duration;
    let last_release: Arc<Mutex<HashMap<u32, (usize, Instant)>>> = Arc::default();
    let total = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(clients.len());
    for (index, client) in clients.iter().enumerate() {
        let mode = modes.get(index % modes.len().max(1)).copied();
        let options = options.clone().mode(mode.unwrap_or(options.mode));
        let client = client.clone();
        let (last_release, total) = (Arc::clone(&last_release), Arc::clone(&total));
        tasks.push(tokio::spawn(async move {
            let (mut acquire, mut handoff, mut count) = (histogram(), histogram(), 0u64);
            let mut key = index as u32 % keys;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let wait = options.clone().wait(deadline - now);
                let guard = match client.acquire_with(format!("k{key}"), &wait).await {
                    Ok(guard) => guard,
                    Err(LockError::Timeout { .. }) => break,
                    Err(error) => return Err(error),
                };
                let acquired = Instant::now();
                record(&mut acquire, acquired - now);
                {
                    let mut releases = dlock_core::support::lock(&last_release);
                    if let Some((holder, released)) = releases.get(&key) {
                        if *holder != index {
                            record(&mut handoff, acquired.saturating_duration_since(*released));
                        }
                    }
                    releases.insert(key, (index, Instant::now()));
                }
                guard.release().await?;
                count += 1;
                total.fetch_add(1, Ordering::Relaxed);
                key = (key + 1) % keys;
            }
            Ok::<_, LockError>((acquire, handoff, count))
        }));
    }
    let collecting = async {
        let (mut acquire, mut handoff, mut per_client) = (histogram(), histogram(), Vec::new());
        let mut failure = None;
        for task in tasks {
            match task.await {
                Ok(Ok((a, h, count))) => {
                    acquire.add(a).ok();
                    handoff.add(h).ok();
                    per_client.push(count);
                }
                Ok(Err(error)) => failure = Some(error),
                Err(panic) => failure = Some(LockError::backend("bench", panic.to_string())),
            }
        }
        (acquire, handoff, per_client, failure)
    };
    let mut collecting = std::pin::pin!(collecting);
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    let (acquire, handoff, per_client, failure) = loop {
        tokio::select! {
            collected = &mut collecting => break collected,
            _ = ticks.tick() => progress(total.load(Ordering::Relaxed)),
        }
    };
    if let Some(error) = failure {
        return Err(error);
    }
    Ok(Contended {
        acquire,
        handoff,
        per_client,
        elapsed: started.elapsed(),
    })
}

/// How long an observer takes to see leader changes: `rounds` times, `leader` campaigns
/// (the time until `observer`'s [`observe`](dlock_core::Election::observe) reports it is
/// recorded) and resigns (likewise, until it reports nobody). One histogram of both.
pub async fn observed_leader_changes(
    leader: &Locker,
    observer: &Locker,
    rounds: usize,
) -> Result<Histogram<u64>, LockError> {
    let mut histogram = histogram();
    let election = leader.election("election")?;
    let mut changes = observer.election("election")?.observe();
    changes.next().await?;
    for round in 0..rounds {
        let started = Instant::now();
        let leadership = election.campaign(&format!("leader-{round}")).await?;
        while changes.next().await?.is_none() {}
        record(&mut histogram, started.elapsed());
        let started = Instant::now();
        leadership.resign().await?;
        while changes.next().await?.is_some() {}
        record(&mut histogram, started.elapsed());
    }
    Ok(histogram)
}

/// What [`many_keys`] measured.
#[derive(Debug, Clone)]
pub struct ManyKeys {
    /// How many locks one client held.
    pub count: usize,
    /// How long taking them took.
    pub taken_in: Duration,
    /// How much this process's resident memory grew while taking them, in KiB.
    pub memory_kib: u64,
    /// How long one `renew` of all of them took.
    pub renewed_in: Duration,
    /// How long releasing them took.
    pub released_in: Duration,
}

/// Locks taken or released this many at a time by [`take_many`] and [`release_many`].
const BATCH: usize = 200;

/// One client takes `count` keys (`many/0` …), 200 at a time, renews them all in one
/// `renew` call, then releases them.
pub async fn many_keys(
    client: &Locker,
    options: &LockOptions,
    count: usize,
) -> Result<ManyKeys, LockError> {
    let memory_before = rss_kib();
    let (guards, taken_in) = take_many(client, options, count).await?;
    let memory_kib = rss_kib().saturating_sub(memory_before);
    let renewed_in = renew_all(client, &guards).await?;
    let (released_in, not_held) = release_many(guards).await?;
    if not_held > 0 {
        return Err(LockError::backend(
            "bench",
            format!("{not_held} of {count} locks were lost before their release"),
        ));
    }
    Ok(ManyKeys {
        count,
        taken_in,
        memory_kib,
        renewed_in,
        released_in,
    })
}

/// `count` fresh keys (`many/0` …) taken by `client`, 200 at a time (`BATCH`), with how
/// long it took.
pub async fn take_many(
    client: &Locker,
    options: &LockOptions,
    count: usize,
) -> Result<(Vec<LockGuard>, Duration), LockError> {
    let started = Instant::now();
    let mut guards = Vec::with_capacity(count);
    for first in (0..count).step_by(BATCH) {
        let batch = first..(first + BATCH).min(count);
        let taken = futures::future::join_all(
            batch.map(|i| client.try_acquire_with(format!("many/{i}"), options)),
        )
        .await;
        for guard in taken {
            guards.push(guard?.ok_or_else(|| LockError::backend("bench", "a fresh key was held"))?);
        }
    }
    Ok((guards, started.elapsed()))
}

/// How long one `renew` call of every lock in `guards` takes: the round the keepalive makes
/// each interval for a client holding them all.
pub async fn renew_all(client: &Locker, guards: &[LockGuard]) -> Result<Duration, LockError> {
    let leases: Vec<&Lease> = guards.iter().map(|guard| guard.lease()).collect();
    let started = Instant::now();
    client.backend().renew(&leases).await?;
    Ok(started.elapsed())
}

/// Releases every lock in `guards`, 200 at a time (`BATCH`): how long it took, and how many
/// were found no longer held ([`LockError::NotHeld`]: lost before their release).
pub async fn release_many(mut guards: Vec<LockGuard>) -> Result<(Duration, usize), LockError> {
    let started = Instant::now();
    let mut not_held = 0;
    while !guards.is_empty() {
        let batch: Vec<_> = guards.drain(..guards.len().min(BATCH)).collect();
        for released in futures::future::join_all(batch.into_iter().map(|g| g.release())).await {
            match released {
                Ok(()) => {}
                Err(LockError::NotHeld { .. }) => not_held += 1,
                Err(error) => return Err(error),
            }
        }
    }
    Ok((started.elapsed(), not_held))
}

/// What a server says about itself, read by the caller of [`hold`] between its phases (each
/// `None` where that server cannot tell cheaply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerSample {
    /// The server's memory (or data size) in bytes.
    pub memory_bytes: Option<u64>,
    /// Requests the server has handled since it started.
    pub requests: Option<u64>,
}

/// What [`hold`] measured: one client holding `count` locks.
#[derive(Debug, Clone)]
pub struct Hold {
    /// How many locks the client held.
    pub count: usize,
    /// The keepalive's renewal interval for these locks.
    pub keepalive_interval: Duration,
    /// How long taking them all took.
    pub taken_in: Duration,
    /// This process's resident memory before taking them and while holding them, in KiB.
    pub rss_kib: (u64, u64),
    /// How long the locks were held with the keepalive renewing them.
    pub held_for: Duration,
    /// How long one renewal round of all of them (one `renew` call, as the keepalive makes
    /// it) took, timed after the hold.
    pub renewal_round: Duration,
    /// Locks no longer held at the end of the hold (lost, or run out).
    pub lost: usize,
    /// Locks the release found no longer held (lost after the hold, or not seen as lost
    /// by the client before).
    pub lost_at_release: usize,
    /// How long releasing them all took.
    pub released_in: Duration,
    /// The server before taking, after taking, halfway through the hold, at its end, after
    /// the timed renewal round and after the release.
    pub server: [ServerSample; 6],
    /// How long the second half of the hold took (between the middle and last samples of
    /// the hold): the steady state, after whatever the acquisitions left in flight.
    pub second_half: Duration,
    /// Requests the server counts for one [`ServerSample`] read itself (two reads in a row),
    /// taken out of every request count below.
    pub probe_requests: Option<u64>,
}

impl Hold {
    /// Resident memory of this process per held lock, in bytes.
    pub fn rss_bytes_per_lock(&self) -> f64 {
        self.rss_kib.1.saturating_sub(self.rss_kib.0) as f64 * 1024.0 / self.count.max(1) as f64
    }

    /// Server memory per held lock, in bytes (after taking against before).
    pub fn server_bytes_per_lock(&self) -> Option<f64> {
        let (before, after) = (self.server[0].memory_bytes?, self.server[1].memory_bytes?);
        Some((after as f64 - before as f64) / self.count.max(1) as f64)
    }

    /// Server requests between samples `from` and `to`, less the probe's own.
    fn requests_between(&self, from: usize, to: usize) -> Option<u64> {
        let requests = self.server[to]
            .requests?
            .checked_sub(self.server[from].requests?)?;
        Some(requests.saturating_sub(self.probe_requests.unwrap_or(0)))
    }

    /// Server requests the keepalive sent per renewal interval while holding (requests
    /// counted in the second half of the hold, scaled to one interval).
    pub fn requests_per_interval(&self) -> Option<f64> {
        let requests = self.requests_between(2, 3)? as f64;
        let intervals = self.second_half.as_secs_f64() / self.keepalive_interval.as_secs_f64();
        (intervals > 0.0).then(|| requests / intervals)
    }

    /// Server requests of the one timed renewal round.
    pub fn requests_per_round(&self) -> Option<u64> {
        self.requests_between(3, 4)
    }

    /// Server requests per lock taken.
    pub fn requests_per_acquire(&self) -> Option<f64> {
        Some(self.requests_between(0, 1)? as f64 / self.count.max(1) as f64)
    }
}

/// One client takes `count` fresh keys with `options` (keepalive as given there), holds them
/// for `duration` while its keepalive renews them, times one more renewal round of all of
/// them, counts the ones lost, and releases them all. `sample` reads the server between the
/// phases (return the default where it cannot).
pub async fn hold<F, Fut>(
    client: &Locker,
    options: &LockOptions,
    count: usize,
    duration: Duration,
    mut sample: F,
) -> Result<Hold, LockError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ServerSample>,
{
    let first = sample().await;
    let second = sample().await;
    let probe_requests = second
        .requests
        .zip(first.requests)
        .map(|(b, a)| b.saturating_sub(a));
    let rss_before = rss_kib();
    let (guards, taken_in) = take_many(client, options, count).await?;
    let rss_held = rss_kib();
    let taken = sample().await;
    let started = Instant::now();
    tokio::time::sleep(duration / 2).await;
    let halfway = sample().await;
    let middle = Instant::now();
    tokio::time::sleep_until(started + duration).await;
    let held_for = started.elapsed();
    let lost = guards.iter().filter(|guard| !guard.is_held()).count();
    let after_hold = sample().await;
    let second_half = middle.elapsed();
    let renewal_round = renew_all(client, &guards).await?;
    let after_round = sample().await;
    let (released_in, lost_at_release) = release_many(guards).await?;
    let released = sample().await;
    Ok(Hold {
        count,
        keepalive_interval: options.effective_keepalive_interval(),
        taken_in,
        rss_kib: (rss_before, rss_held),
        held_for,
        renewal_round,
        lost,
        lost_at_release,
        released_in,
        server: [second, taken, halfway, after_hold, after_round, released],
        second_half,
        probe_requests,
    })
}

/// An empty histogram of microseconds, from 1 µs to an hour, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Records `elapsed` in `histogram`, in microseconds.
pub fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    histogram.saturating_record(elapsed.as_micros().max(1) as u64);
}

/// `micros` for people: `850 µs`, `12.3 ms`.
pub fn micros(micros: u64) -> String {
    if micros >= 10_000 {
        format!("{:.1} ms", micros as f64 / 1000.0)
    } else {
        format!("{micros} µs")
    }
}

/// This process's resident memory, in KiB (0 where `/proc` cannot tell).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}
