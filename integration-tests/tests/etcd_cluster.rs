//! A three-member etcd cluster (one per test binary, local processes): the whole conformance
//! suite unchanged, with clients given every member (`etcd://h1:p1,h2:p2,h3:p3`), and the
//! faults a cluster adds, under the workload and its checker.
//!
//! What is promised under each fault, and asserted by the checker: no two holders at once
//! unless the earlier one's guard said the lock was lost (P1), every token greater than the
//! tokens before it (P2), and after each heal a live client gets the lock within lease +
//! crash release bound + slack (P3). Fault tests hold [`GATE`] alone, so conformance tests
//! never run on a hurt cluster, and leave every member running before they let go.

use std::time::{Duration, Instant};

use dlock_test_servers::{
    shared_etcd_cluster, Direction, EtcdCluster, FaultProxy, Report, WorkloadRun,
};

mod cluster_support;
mod conformance_support;
mod etcd_support;

use cluster_support::{
    direct_run, proxied_run, stop_and_finish, wait_for_acquisition, Kind, Target, FIND, GATE,
};
use etcd_support::EtcdTarget;

/// A conformance target on the shared cluster, holding the gate shared.
async fn cluster_target() -> EtcdTarget {
    let pass = GATE.read().await;
    let cluster = shared_etcd_cluster();
    let addresses = cluster.addresses().join(",");
    EtcdTarget::new(&cluster.url(), &addresses)
        .await
        .holding(pass)
}

dlock_conformance::conformance_tests!(cluster_target());

/// etcd leases are whole seconds, at least 2 (its minimum TTL).
const LEASE: Duration = Duration::from_secs(2);

/// Runs `fault` with the cluster to itself, and leaves it whole again afterwards, also if
/// the test fails.
fn with_cluster(test: &str, fault: impl FnOnce(&EtcdCluster, &Target)) {
    struct Mend(&'static EtcdCluster);
    impl Drop for Mend {
        fn drop(&mut self) {
            self.0.mend();
        }
    }
    let _alone = GATE.blocking_write();
    let cluster = shared_etcd_cluster();
    let _mend = Mend(cluster);
    let target = Target::new(Kind::Etcd, cluster.addresses(), test, LEASE);
    fault(cluster, &target);
}

/// Kill -9 the leader while a lock is held and others wait in line; a new leader is
/// elected among the two left, and the lock goes on from there. Then the old leader comes
/// back. Twice. Beyond the checker's promises, no acquire fails: a try whose request went to
/// the dead member, or hung in the election, is tried again within the wait (before that,
/// 3 to 6 of a run's acquires failed with `Connection`).
#[test]
fn leader_killed_while_held_and_awaited() {
    with_cluster("leader-killed", |cluster, target| {
        let report = leader_kills(cluster, target);
        assert_eq!(report.failed_attempts, 0, "{report}");
    });
}

fn leader_kills(cluster: &EtcdCluster, target: &Target) -> Report {
    let run = direct_run(target, 3);
    for round in 0..2 {
        let holder = run.wait_for(FIND, WorkloadRun::inside).expect("a holder");
        run.wait_for(FIND, WorkloadRun::waiting).expect("a waiter");
        let leader = cluster.leader().expect("a leader");
        run.fault(&format!(
            "kill -9 leader m{leader} ({} holds) round {round}",
            run.name(holder)
        ));
        cluster.kill(leader);
        let new_leader = cluster
            .wait_leader(Duration::from_secs(20))
            .expect("a new leader among the two left");
        run.heal(&format!("m{new_leader} leads"));
        assert!(
            wait_for_acquisition(&run, target.liveness_limit() + FIND),
            "nobody acquired with two members of three"
        );
        run.fault(&format!("m{leader} restarts"));
        cluster.restart(leader);
        run.heal(&format!("m{leader} back"));
    }
    stop_and_finish(run, target)
}

/// One member stopped (SIGSTOP) for two leases, while it is the only member a holder talks
/// to: cut off from the quorum and from its clients, it must not let that holder believe it
/// still holds the lock when the others, through the quorum, take it. First a follower,
/// then the leader (the others elect a new one).
#[test]
fn member_a_holder_talks_to_is_stopped() {
    with_cluster("member-stopped", |cluster, target| {
        let mut run = WorkloadRun::new(cluster_support::WORKLOAD);
        // Client i talks to member i only; client 3 to every member.
        for i in 0..3 {
            run.spawn(&target.spec_via(&[cluster.address(i)]));
        }
        run.spawn(&target.spec_via(&target.addresses));
        for leader in [false, true] {
            let current = cluster.leader().expect("a leader");
            let member = if leader { current } else { (current + 1) % 3 };
            let holder = run.wait_for(FIND, |run| {
                run.inside().into_iter().filter(|&c| c == member).collect()
            });
            let role = if leader { "leader" } else { "follower" };
            run.fault(&format!(
                "SIGSTOP {role} m{member} (its client {} inside: {})",
                run.name(member),
                holder.is_some()
            ));
            cluster.pause(member);
            // The others still have a quorum: they are owed the lock within the lease and
            // the crash bound from now, as if the cut-off holder had crashed.
            run.heal("a quorum still answers the others");
            std::thread::sleep(LEASE * 2);
            cluster.resume(member);
            run.heal(&format!("m{member} continued"));
            cluster.wait_healthy(Duration::from_secs(60));
            assert!(
                wait_for_acquisition(&run, target.liveness_limit() + FIND),
                "nobody acquired after m{member} continued"
            );
        }
        stop_and_finish(run, target);
    });
}

/// A holder's link to one member blackholed for two leases (the member itself is fine):
/// the holder must go on through the other members or say it lost the lock; each member in
/// turn.
#[test]
fn holders_link_to_one_member_blackholed() {
    with_cluster("link-blackholed", |_cluster, target| {
        let (run, links) = proxied_run(target, 3);
        for (member, _) in target.addresses.iter().enumerate() {
            let holder = run.wait_for(FIND, WorkloadRun::inside).expect("a holder");
            run.fault(&format!(
                "blackhole {}'s link to m{member}",
                run.name(holder)
            ));
            let link = &links[holder][member];
            link.blackhole();
            run.heal("the other members answer");
            std::thread::sleep(LEASE * 2);
            link.heal();
            run.heal(&format!("{}'s link to m{member} healed", run.name(holder)));
            assert!(
                wait_for_acquisition(&run, FIND),
                "nobody acquired after the link healed"
            );
        }
        stop_and_finish(run, target);
        drop(links);
    });
}

/// The two other members stopped, so the member a holder talks to is cut off from the
/// quorum: alive and answering, without a leader. The holder hears that its lock is lost
/// when its lease runs out, not later, and its new requests fail promptly (`require_leader`)
/// instead of hanging on a member that cannot commit them; once the majority is back, the
/// lock is free again, with a greater token.
#[test]
fn member_cut_off_from_the_quorum_keeps_no_false_hope() {
    with_cluster("cut-off", |cluster, _target| {
        let runtime = dlock_test_servers::test_runtime();
        runtime.block_on(async {
            let member = (cluster.leader().expect("a leader") + 1) % 3;
            let url = format!(
                "etcd://{}?prefix=cut-off-{}&timeout=5s",
                cluster.address(member),
                std::process::id()
            );
            let options = dlock::LockOptions::default()
                .lease(LEASE)
                .wait(Duration::from_secs(20));
            let locker = dlock::connect(&url)
                .await
                .expect("connect")
                .with_options(options)
                .unwrap();
            let guard = locker.acquire("k").await.expect("acquire");
            let token = guard.fencing_token();
            let lost = guard.lost();
            let others: Vec<usize> = (0..3).filter(|&i| i != member).collect();
            tokio::task::block_in_place(|| others.iter().for_each(|&i| cluster.pause(i)));
            // The lease's length plus scheduling slack on a loaded machine.
            let reason = tokio::time::timeout(LEASE + Duration::from_secs(2), lost)
                .await
                .expect("the holder hears of the loss within its lease");
            println!("holder lost its lock: {reason}");
            assert!(!guard.is_held());
            // By now the member has noticed it has no leader: it refuses at once.
            let started = Instant::now();
            let tried = locker.try_acquire("other").await;
            let took = started.elapsed();
            assert!(
                matches!(tried, Err(dlock::LockError::Connection { .. })),
                "{tried:?}"
            );
            assert!(
                took < Duration::from_secs(3),
                "a request to a member without a leader took {took:?} (request timeout 5 s)"
            );
            tokio::task::block_in_place(|| {
                others.iter().for_each(|&i| cluster.resume(i));
                cluster.wait_healthy(Duration::from_secs(60));
            });
            let again = locker.acquire("k").await.expect("acquire after the heal");
            assert!(again.fencing_token() > token);
            again.release().await.expect("release");
            let _ = guard.release().await;
        });
    });
}

/// An `extend` answers from the quorum's state, not from a member's own copy: a member a
/// request reaches may not have applied the latest writes yet (a client with several
/// endpoints sends its requests to any of them). A lock taken through the leader while the
/// member lagged is still held; a lock released through the leader while it lagged is not.
/// The member is made to lag by freezing it (SIGSTOP) while the leader writes, and the
/// `extend` reaches it (bytes handed to its socket, seen at a proxy) before it continues.
/// Before the fix, etcd answered the `extend`'s transaction, a comparison without a read,
/// from the member's own copy: `NotHeld` for the held lock (the `p05` failures), `Ok` for
/// the released one.
#[test]
fn extend_through_a_lagging_member_answers_from_the_quorum() {
    with_cluster("lagging-extend", |cluster, _target| {
        let runtime = dlock_test_servers::test_runtime();
        runtime.block_on(async {
            let leader = cluster.leader().expect("a leader");
            let member = (leader + 1) % 3;
            let proxy = FaultProxy::start(cluster.address(member));
            let prefix = format!("lagging-extend-{}", std::process::id());
            let options = dlock::LockOptions::default().lease(LEASE);
            let connect = |address: String| {
                let (url, options) = (format!("etcd://{address}?prefix={prefix}"), &options);
                async move {
                    dlock::connect(&url)
                        .await
                        .expect("connect")
                        .with_options(options.clone())
                        .unwrap()
                }
            };
            let holder = connect(cluster.address(leader)).await;
            let lagging = connect(proxy.address().to_string()).await;
            cluster.pause(member);
            let guard = holder
                .acquire("k")
                .await
                .expect("acquire through the leader");
            let extended = extend_as_it_continues(cluster, member, &proxy, &lagging, &guard).await;
            assert!(extended.is_ok(), "a held lock: {extended:?}");
            // A read through the quorum: the member has applied the lock's key once it answers.
            lagging
                .backend()
                .ping()
                .await
                .expect("the member caught up");
            cluster.pause(member);
            holder
                .backend()
                .release(guard.lease())
                .await
                .expect("release through the leader");
            let extended = extend_as_it_continues(cluster, member, &proxy, &lagging, &guard).await;
            assert!(
                matches!(extended, Err(dlock::LockError::NotHeld { .. })),
                "a released lock: {extended:?}"
            );
        });
    });
}

/// Sends an `extend` of `guard`'s lock through `lagging` (whose only endpoint is `proxy`,
/// in front of the frozen `member`), lets the member continue once the request is in its
/// socket, and returns the answer.
async fn extend_as_it_continues(
    cluster: &EtcdCluster,
    member: usize,
    proxy: &FaultProxy,
    lagging: &dlock::Locker,
    guard: &dlock::LockGuard,
) -> dlock::Result<tokio::time::Instant> {
    let before = proxy.forwarded_bytes(Direction::ToServer);
    let continued = async {
        // The request carries the key, so at least that many bytes go out for it.
        let limit = Instant::now() + Duration::from_secs(10);
        while proxy.forwarded_bytes(Direction::ToServer) < before + 40 {
            assert!(Instant::now() < limit, "the extend never reached the proxy");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        cluster.resume(member);
    };
    let (extended, ()) = tokio::join!(lagging.backend().extend(guard.lease(), LEASE), continued);
    extended
}
