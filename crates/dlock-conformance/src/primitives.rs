//! The sections for the primitives beyond the mutex: semaphores (P14), read-write locks
//! (P15) and leader election (P16). Each first asks whether the backend declares the
//! primitive ([`LockBackend::supports`](dlock_core::LockBackend::supports), owner
//! introspection for elections); if not, it checks that the locker refuses it with
//! `Unsupported` and says so.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dlock_core::{Leader, LeaderChanges, LockError, LockGuard, LockMode, LockOptions, Locker};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::counting::{counting, CountingBackend};
use crate::suite::{measured, ms, queued_with, within, Fixture, CRASH_SLACK, LONG_LEASE, PROMPTLY};
use crate::ConformanceTarget;

/// A semaphore of N permits admits N holders at once, refuses the next without waiting, and
/// hands a returned permit to a waiter, woken by the server (P14).
pub async fn p14_semaphore_admits_exactly_its_permits(target: &dyn ConformanceTarget) {
    const PERMITS: u32 = 3;
    let fixture = Fixture::new(target, "p14-permits").await;
    let clients: [Locker; 5] = fixture.lockers(LONG_LEASE).await;
    if !supported(&fixture, &clients[0], LockMode::Permit(PERMITS)).await {
        return;
    }
    let semaphores: Vec<_> = clients
        .iter()
        .map(|client| client.semaphore("k", PERMITS).expect("semaphore"))
        .collect();
    let mut held = Vec::new();
    for semaphore in &semaphores[..PERMITS as usize] {
        let permit = semaphore.try_acquire().await.expect("try_acquire");
        held.push(permit.expect("a free permit is granted at once"));
    }
    let tokens: Vec<_> = held.iter().map(LockGuard::fencing_token).collect();
    assert!(
        tokens.windows(2).all(|pair| pair[0] < pair[1]),
        "permit tokens do not grow in grant order: {tokens:?}"
    );
    let extra = &semaphores[PERMITS as usize];
    assert!(
        extra.try_acquire().await.expect("try_acquire").is_none(),
        "a semaphore of {PERMITS} permits granted a fourth"
    );
    let waiter = queued(
        &clients[PERMITS as usize],
        &fixture.options(LONG_LEASE).mode(LockMode::Permit(PERMITS)),
    )
    .await;
    held.remove(1)
        .release()
        .await
        .expect("a holder returns its permit");
    let permit = within(PROMPTLY, waiter, "the waiter to get the returned permit")
        .await
        .expect("waiter task")
        .expect("the waiter acquires");
    assert!(permit.fencing_token() > tokens[PERMITS as usize - 1]);
    assert!(
        semaphores[4].try_acquire().await.expect("try").is_none(),
        "the returned permit was granted twice"
    );
}

/// Many clients taking and returning permits never hold more than N at once (P14).
pub async fn p14_semaphore_holders_never_exceed_its_permits(target: &dyn ConformanceTarget) {
    const PERMITS: u32 = 2;
    const ROUNDS: usize = 4;
    let fixture = Fixture::new(target, "p14-never-exceed").await;
    let clients: [Locker; 4] = fixture.lockers(LONG_LEASE).await;
    if !supported(&fixture, &clients[0], LockMode::Permit(PERMITS)).await {
        return;
    }
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for client in &clients {
        for _ in 0..2 {
            let semaphore = client.semaphore("k", PERMITS).expect("semaphore");
            let (inside, most) = (Arc::clone(&inside), Arc::clone(&most));
            tasks.push(tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    let permit = semaphore.acquire().await.expect("acquire a permit");
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    permit.release().await.expect("release the permit");
                }
            }));
        }
    }
    for task in tasks {
        within(PROMPTLY * 4, task, "the contenders to finish")
            .await
            .expect("contender task");
    }
    let most = most.load(Ordering::SeqCst);
    measured("p14 most permit holders at once", most);
    assert!(
        most <= PERMITS as usize,
        "{most} holders at once on a semaphore of {PERMITS}"
    );
}

/// Clients must agree on a semaphore's count: a different count, or a mutex on the
/// semaphore's name, is `IncompatibleMode` at once, even for a waiting acquire, and leaves
/// nothing behind that delays the semaphore's own users (P14).
pub async fn p14_semaphore_permit_counts_must_agree(target: &dyn ConformanceTarget) {
    let fixture = Fixture::new(target, "p14-agree").await;
    let [alice, bob, carol] = fixture.lockers(LONG_LEASE).await;
    if !supported(&fixture, &alice, LockMode::Permit(2)).await {
        return;
    }
    let first = alice
        .semaphore("k", 2)
        .expect("semaphore")
        .acquire()
        .await
        .expect("alice takes a permit");
    let three = bob.semaphore("k", 3).expect("semaphore");
    for outcome in [
        three.try_acquire().await.map(|_| ()),
        three
            .acquire_with(&fixture.options(LONG_LEASE).wait(PROMPTLY))
            .await
            .map(|_| ()),
        bob.acquire_with("k", &fixture.options(LONG_LEASE).wait(PROMPTLY))
            .await
            .map(|_| ()),
    ] {
        assert!(
            matches!(
                outcome,
                Err(LockError::IncompatibleMode {
                    found: LockMode::Permit(2),
                    ..
                })
            ),
            "a request disagreeing with a semaphore of 2 got {outcome:?}"
        );
    }
    first.release().await.expect("alice releases");
    let two = carol.semaphore("k", 2).expect("semaphore");
    let again = [two.try_acquire().await, two.try_acquire().await];
    assert!(
        again.iter().all(|permit| matches!(permit, Ok(Some(_)))),
        "the refused requests left something behind: {again:?}"
    );
}

/// A crashed permit holder's permit comes back within its lease and the declared bound, and
/// the next grant's token is greater (P14, P3).
pub async fn p14_crashed_permit_holder_frees_its_permit(target: &dyn ConformanceTarget) {
    let fixture = Fixture::new(target, "p14-crash").await;
    let lease = target.short_lease();
    let holder = fixture.locker(lease).await;
    if !supported(&fixture, &holder, LockMode::Permit(1)).await {
        return;
    }
    let bound = holder.capabilities().crash_release_bound;
    let permit = holder
        .semaphore("k", 1)
        .expect("semaphore")
        .acquire()
        .await
        .expect("acquire");
    let token = permit.fencing_token();
    let waiter = fixture.locker(LONG_LEASE).await;
    let crashed = Instant::now();
    target.crash(holder, permit).await;
    let limit = lease + bound + CRASH_SLACK;
    let next = waiter
        .semaphore("k", 1)
        .expect("semaphore")
        .acquire_with(&fixture.options(LONG_LEASE).wait(limit))
        .await
        .unwrap_or_else(|e| panic!("the crashed holder's permit was not freed in {limit:?}: {e}"));
    measured(
        "p14 crash to free, beyond the lease",
        crashed.elapsed().saturating_sub(lease),
    );
    assert!(next.fencing_token() > token);
}

/// A permit waiter cancelled in line leaves nothing behind: the next permit returned goes
/// to the next client at once (P14, P7).
pub async fn p14_cancelled_permit_waiter_leaves_nothing_behind(target: &dyn ConformanceTarget) {
    let fixture = Fixture::new(target, "p14-cancel").await;
    let [alice, bob, carol] = fixture.lockers(LONG_LEASE).await;
    if !supported(&fixture, &alice, LockMode::Permit(1)).await {
        return;
    }
    let options = fixture.options(LONG_LEASE).mode(LockMode::Permit(1));
    let permit = alice.acquire_with("k", &options).await.expect("alice");
    let waiting = queued(&bob, &options).await;
    waiting.abort();
    assert!(waiting.await.is_err(), "bob's acquire was cancelled");
    permit.release().await.expect("alice releases");
    carol
        .acquire_with("k", &options.clone().wait(PROMPTLY))
        .await
        .expect("the cancelled waiter left nothing behind");
}

/// Readers share a read-write lock; a writer excludes readers and other writers, waits for
/// the readers to leave and is woken when the last one does (P15).
pub async fn p15_readers_share_and_writers_exclude(target: &dyn ConformanceTarget) {
    let fixture = Fixture::new(target, "p15-share").await;
    let [alice, bob, carol] = fixture.lockers(LONG_LEASE).await;
    if !supported(&fixture, &alice, LockMode::Shared).await {
        return;
    }
    let rw = |client: &Locker| client.rw_lock("k").expect("rw lock");
    let first = rw(&alice).read().await.expect("alice reads");
    let second = rw(&bob)
        .try_read()
        .await
        .expect("try_read")
        .expect("a second reader shares the lock");
    assert!(
        rw(&carol).try_write().await.expect("try_write").is_none(),
        "a writer got the lock while two readers held it"
    );
    let writer = queued(&carol, &fixture.options(LONG_LEASE)).await;
    first.release().await.expect("alice stops reading");
    still_waiting(&writer, "the writer got the lock while a reader held it");
    second.release().await.expect("bob stops reading");
    let write = within(
        PROMPTLY,
        writer,
        "the writer to be woken by the last reader",
    )
    .await
    .expect("writer task")
    .expect("carol writes");
    assert!(
        rw(&alice).try_read().await.expect("try_read").is_none(),
        "a reader got the lock while a writer held it"
    );
    assert!(
        rw(&bob).try_write().await.expect("try_write").is_none(),
        "two writers held the lock"
    );
    write.release().await.expect("carol stops writing");
}

/// A reader that arrives while a writer waits queues behind the writer (writers are not
/// starved), enters right after it, and the tokens follow the grant order: earlier reader <
/// writer < later reader (P15).
pub async fn p15_waiting_writer_is_not_starved_by_new_readers(target: &dyn ConformanceTarget) {
    let fixture = Fixture::new(target, "p15-starve").await;
    let [alice, bob, carol] = fixture.lockers(LONG_LEASE).await;
    if !supported(&fixture, &alice, LockMode::Shared).await {
        return;
    }
    let read = fixture.options(LONG_LEASE).mode(LockMode::Shared);
    let first = alice.acquire_with("k", &read).await.expect("alice reads");
    let first_token = first.fencing_token();
    let writer = queued(&bob, &fixture.options(LONG_LEASE)).await;
    assert!(
        carol
            .try_acquire_with("k", &read)
            .await
            .expect("try_read")
            .is_none(),
        "a new reader overtook a waiting writer"
    );
    let reader = queued(&carol, &read).await;
    first.release().await.expect("alice stops reading");
    let write = within(PROMPTLY, writer, "the writer to get the lock")
        .await
        .expect("writer task")
        .expect("bob writes");
    still_waiting(&reader, "the reader entered while the writer held the lock");
    let write_token = write.fencing_token();
    write.release().await.expect("bob stops writing");
    let later = within(PROMPTLY, reader, "the reader behind the writer")
        .await
        .expect("reader task")
        .expect("carol reads");
    let tokens = (first_token, write_token, later.fencing_token());
    assert!(
        tokens.0 < tokens.1 && tokens.1 < tokens.2,
        "tokens are not in grant order (reader, writer, reader): {tokens:?}"
    );
}

/// Readers and writers hammering one name never overlap: at most one writer, and never a
/// writer with readers (P15).
pub async fn p15_readers_and_writers_never_overlap(target: &dyn ConformanceTarget) {
    const ROUNDS: usize = 4;
    let fixture = Fixture::new(target, "p15-overlap").await;
    let clients: [Locker; 3] = fixture.lockers(LONG_LEASE).await;
    if !supported(&fixture, &clients[0], LockMode::Shared).await {
        return;
    }
    let readers = Arc::new(AtomicUsize::new(0));
    let writers = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (index, client) in clients.iter().enumerate() {
        for task in 0..2 {
            let rw = client.rw_lock("k").expect("rw lock");
            let writes = (index + task) % 2 == 0;
            let (readers, writers, overlaps) = (readers.clone(), writers.clone(), overlaps.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    let (mine, other) = if writes {
                        (&writers, &readers)
                    } else {
                        (&readers, &writers)
                    };
                    let guard = if writes {
                        rw.write().await
                    } else {
                        rw.read().await
                    }
                    .expect("acquire");
                    let together = mine.fetch_add(1, Ordering::SeqCst) + 1;
                    if other.load(Ordering::SeqCst) > 0 || (writes && together > 1) {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::task::yield_now().await;
                    mine.fetch_sub(1, Ordering::SeqCst);
                    guard.release().await.expect("release");
                }
            }));
        }
    }
    for task in tasks {
        within(PROMPTLY * 4, task, "the readers and writers to finish")
            .await
            .expect("task");
    }
    let overlaps = overlaps.load(Ordering::SeqCst);
    assert_eq!(
        overlaps, 0,
        "a writer overlapped another holder {overlaps} times"
    );
}

/// A reader cancelled while waiting behind a writer leaves nothing behind (P15, P7).
pub async fn p15_cancelled_reader_leaves_nothing_behind(target: &dyn ConformanceTarget) {
    let fixture = Fixture::new(target, "p15-cancel").await;
    let [alice, bob, carol] = fixture.lockers(LONG_LEASE).await;
    if !supported(&fixture, &alice, LockMode::Shared).await {
        return;
    }
    let write = alice.acquire("k").await.expect("alice writes");
    let reader = queued(&bob, &fixture.options(LONG_LEASE).mode(LockMode::Shared)).await;
    reader.abort();
    assert!(reader.await.is_err(), "bob's read was cancelled");
    write.release().await.expect("alice stops writing");
    carol
        .acquire_with("k", &fixture.options(LONG_LEASE).wait(PROMPTLY))
        .await
        .expect("the cancelled reader left nothing behind");
}

/// One leader at a time: a second candidate waits, leads when the first resigns, and its
/// term is greater (P16).
pub async fn p16_one_leader_at_a_time_and_terms_grow(target: &dyn ConformanceTarget) {
    let fixture = Fixture::new(target, "p16-one").await;
    let [alice, bob] = fixture.lockers(LONG_LEASE).await;
    let first = alice
        .election("k")
        .expect("election")
        .campaign("alice")
        .await
        .expect("alice leads");
    let (queued_tx, in_line) = oneshot::channel();
    let candidate = {
        let bob = bob.clone();
        let options = fixture.options(LONG_LEASE).owner("bob");
        tokio::spawn(async move { bob.acquire_observed("k", &options, Some(queued_tx)).await })
    };
    within(PROMPTLY, in_line, "bob to stand in line")
        .await
        .expect("bob queued");
    assert!(first.is_leader());
    let term = first.term();
    first.resign().await.expect("alice resigns");
    let second = within(PROMPTLY, candidate, "bob to lead after alice resigned")
        .await
        .expect("candidate task")
        .expect("bob leads");
    assert!(second.fencing_token() > term, "terms do not grow");
}

/// Everyone reads the leader's value and term; `proclaim` replaces the value; nobody leads
/// after a resignation (P16).
pub async fn p16_leader_and_its_value_are_visible(target: &dyn ConformanceTarget) {
    let fixture = Fixture::new(target, "p16-visible").await;
    let [alice, bob] = fixture.lockers(LONG_LEASE).await;
    let Some(observer) = election_of(&bob, "p16_leader_and_its_value_are_visible").await else {
        return;
    };
    assert_eq!(observer.leader().await.expect("leader"), None);
    let mut leadership = alice
        .election("k")
        .expect("election")
        .campaign("alice@10.0.0.1")
        .await
        .expect("alice leads");
    let leader = observer.leader().await.expect("leader").expect("a leader");
    assert_eq!(leader.value, "alice@10.0.0.1");
    if let Some(term) = leader.term {
        assert_eq!(term, leadership.term(), "the leader's term is its token");
    }
    match leadership.proclaim("alice@10.0.0.2").await {
        Ok(()) => {
            let leader = observer.leader().await.expect("leader").expect("a leader");
            assert_eq!(leader.value, "alice@10.0.0.2", "proclaim was not stored");
        }
        Err(LockError::Unsupported { .. }) => {
            eprintln!("p16: the backend cannot update a held lock's owner: proclaim unchecked");
        }
        Err(other) => panic!("proclaim failed: {other}"),
    }
    leadership.resign().await.expect("alice resigns");
    assert_eq!(observer.leader().await.expect("leader"), None);
}

/// `observe` reports the current leader, then each change (a new leader, a proclaimed
/// value, nobody leading), waking an observer that already waits (P16).
pub async fn p16_observe_follows_leader_changes(target: &dyn ConformanceTarget) {
    let fixture = Fixture::new(target, "p16-observe").await;
    let alice = fixture.locker(LONG_LEASE).await;
    let watched = counting(target.connect(LONG_LEASE).await.expect("connect"));
    let bob = Locker::from_backend(watched.clone())
        .with_options(fixture.options(LONG_LEASE))
        .expect("options");
    let Some(observer) = election_of(&bob, "p16_observe_follows_leader_changes").await else {
        return;
    };
    let mut changes = observer.observe();
    let first = within(PROMPTLY, changes.next(), "the first read").await;
    assert_eq!(first.expect("observe"), None);
    // Each change happens while the observer waits for one, so only a wake-up finds it.
    let observing = next_change(changes, &watched).await;
    let mut leadership = alice
        .election("k")
        .expect("election")
        .campaign("v1")
        .await
        .expect("alice leads");
    let started = Instant::now();
    let (changes, seen) = within(PROMPTLY, observing, "the new leader to be observed")
        .await
        .expect("observer task");
    measured("p16 campaign to observed", started.elapsed());
    assert_eq!(seen.expect("observe").expect("a leader").value, "v1");
    let mut observing = next_change(changes, &watched).await;
    if leadership.proclaim("v2").await.is_ok() {
        let (changes, seen) = within(PROMPTLY, observing, "the new value to be observed")
            .await
            .expect("observer task");
        assert_eq!(seen.expect("observe").expect("a leader").value, "v2");
        observing = next_change(changes, &watched).await;
    }
    leadership.resign().await.expect("alice resigns");
    let (_, seen) = within(PROMPTLY, observing, "the resignation to be observed")
        .await
        .expect("observer task");
    assert_eq!(seen.expect("observe"), None);
}

/// A leader whose lock the server forgot is told, like a lock's holder, and the next leader
/// has a greater term (P16, P5).
pub async fn p16_lost_leadership_is_signalled(target: &dyn ConformanceTarget) {
    let fixture = Fixture::new(target, "p16-lost").await;
    let lease = target.short_lease();
    let [alice, bob] = fixture.lockers(lease).await;
    let leadership = alice
        .election("k")
        .expect("election")
        .campaign("alice")
        .await
        .expect("alice leads");
    target.forget(leadership.guard()).await.expect("forget");
    within(
        lease + PROMPTLY,
        leadership.lost(),
        "the loss of leadership",
    )
    .await;
    assert!(!leadership.is_leader());
    let next = bob
        .election("k")
        .expect("election")
        .campaign_with("bob", &fixture.options(lease).wait(PROMPTLY))
        .await
        .expect("bob leads");
    assert!(next.term() > leadership.term());
}

/// The observer's next change, awaited in a task, returned once the observer waits for the
/// server to tell it of one (its backend, `watched`, entered `wait_for_change`).
async fn next_change(
    mut changes: LeaderChanges,
    watched: &CountingBackend,
) -> tokio::task::JoinHandle<(LeaderChanges, Result<Option<Leader>, LockError>)> {
    let mut waits = watched.layer().change_waits.subscribe();
    let waited = *waits.borrow_and_update();
    let task = tokio::spawn(async move {
        let seen = changes.next().await;
        (changes, seen)
    });
    within(
        PROMPTLY,
        waits.wait_for(|n| *n > waited),
        "the observer to wait",
    )
    .await
    .expect("the counter lives");
    task
}

/// Whether `client`'s backend takes locks in `mode`; if not, checks that the locker refuses
/// with `Unsupported` (not a silent exclusive lock) and says the section is not checked.
async fn supported(fixture: &Fixture<'_>, client: &Locker, mode: LockMode) -> bool {
    if client.backend().supports(mode) {
        return true;
    }
    let options = fixture.options(LONG_LEASE).mode(mode).wait(ms(0));
    let outcome = client.acquire_with("k", &options).await;
    assert!(
        matches!(outcome, Err(LockError::Unsupported { .. })),
        "the backend does not declare {mode} locks, yet the locker answered {outcome:?}"
    );
    eprintln!(
        "the {} backend does not support {mode} locks (refused as Unsupported): section not \
         checked",
        client.capabilities().name
    );
    false
}

/// An election on `client`, if its backend can read leaders back.
async fn election_of(client: &Locker, test: &str) -> Option<dlock_core::Election> {
    let election = client.election("k").expect("election");
    match election.leader().await {
        Ok(_) => Some(election),
        Err(LockError::Unsupported { .. }) => {
            eprintln!("{test}: the backend cannot read a lock's owner back: not checked");
            None
        }
        Err(other) => panic!("reading the leader failed: {other}"),
    }
}

/// A task taking `k` on `client` with `options`, returned once it stands in line.
async fn queued(
    client: &Locker,
    options: &LockOptions,
) -> tokio::task::JoinHandle<Result<LockGuard, LockError>> {
    queued_with(client, "k", options).await
}

/// Fails the test with `what` if the waiter `task` has already finished.
fn still_waiting<T>(task: &tokio::task::JoinHandle<T>, what: &str) {
    assert!(!task.is_finished(), "{what}");
}
