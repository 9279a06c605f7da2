//! What the cluster test binaries (`etcd_cluster.rs`, `zookeeper_ensemble.rs`) share: a gate
//! that keeps the conformance tests off the shared cluster while a fault test hurts it, and
//! the workload runs their fault tests check (a lean copy of `faults_harness.rs`'s `Target`,
//! for a cluster's members rather than single servers).

#![allow(dead_code)]

use std::time::{Duration, Instant};

use dlock_test_servers::{
    etcd_leftovers, now_micros, zookeeper_leftovers, CheckConfig, ClientSpec, EventKind,
    FaultProxy, Report, WorkloadRun, NEMESIS,
};

/// Conformance tests hold it shared while they run; a fault test holds it alone, and leaves
/// the cluster whole before letting go. Fair: once a fault test waits, new conformance
/// tests queue behind it.
pub static GATE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The workload binary of this package.
pub const WORKLOAD: &str = env!("CARGO_BIN_EXE_dlock-workload");

/// Slack on top of lease + crash release bound before the checker counts a liveness
/// violation: a new leader's election plus a reconnect on a loaded 2-core machine.
pub const SLACK: Duration = Duration::from_secs(3);

/// How long the nemesis looks for a holder, a waiter or an acquisition before giving up.
pub const FIND: Duration = Duration::from_secs(20);

/// Which backend a run uses.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `etcd://`.
    Etcd,
    /// `zookeeper://`.
    ZooKeeper,
}

/// What the clients of a fault test run against.
pub struct Target {
    /// The members' addresses.
    pub addresses: Vec<String>,
    kind: Kind,
    prefix: String,
    /// The lease (etcd) or session timeout (ZooKeeper) of every client.
    pub lease: Duration,
    bound: Duration,
}

impl Target {
    /// A target for a cluster whose members are at `addresses`, with a prefix of its own.
    pub fn new(kind: Kind, addresses: Vec<String>, test: &str, lease: Duration) -> Target {
        // Each backend's declared crash release bound (as in faults_harness.rs).
        let bound = match kind {
            Kind::ZooKeeper => Duration::from_secs(2),
            Kind::Etcd => Duration::from_secs(3),
        };
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        Target {
            addresses,
            kind,
            prefix: format!("cl-{test}-{:08x}", hasher.finish() as u32),
            lease,
            bound,
        }
    }

    /// The URL of a client reaching the cluster at `addresses` (members or proxies).
    pub fn url_via(&self, addresses: &[String]) -> String {
        let lease = format!("{}ms", self.lease.as_millis());
        let hosts = addresses.join(",");
        match self.kind {
            Kind::ZooKeeper => format!(
                "zookeeper://{hosts}?prefix={}&session_timeout={lease}",
                self.prefix
            ),
            Kind::Etcd => format!("etcd://{hosts}?prefix={}&lease={lease}", self.prefix),
        }
    }

    /// Clients that contend until the run is stopped, holding long enough for the nemesis
    /// to find a holder inside, waiting long enough to outlast every fault.
    pub fn spec_via(&self, addresses: &[String]) -> ClientSpec {
        ClientSpec {
            url: self.url_via(addresses),
            key: "contended".to_owned(),
            hold: Duration::from_millis(40),
            wait: Duration::from_secs(30),
            iterations: None,
            duration: None,
            primitive: dlock_test_servers::Primitive::Mutex,
        }
    }

    /// The longest a live client may go without the lock after a heal.
    pub fn liveness_limit(&self) -> Duration {
        self.lease + self.bound + SLACK
    }

    fn check_config(&self) -> CheckConfig {
        CheckConfig {
            lease: self.lease,
            crash_release_bound: self.bound,
            slack: SLACK,
            capacity: 1,
        }
    }

    /// What the cluster still holds under this target's prefix, read through its first
    /// member (reads are linearizable in etcd; ZooKeeper's may lag, so callers poll).
    fn leftovers(&self) -> Vec<String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let address = &self.addresses[0];
        runtime
            .block_on(async {
                match self.kind {
                    Kind::ZooKeeper => zookeeper_leftovers(address, &self.prefix).await,
                    Kind::Etcd => etcd_leftovers(address, &self.prefix).await,
                }
            })
            .unwrap_or_else(|e| panic!("reading {address}: {e}"))
    }
}

/// A run of `clients` processes, each reaching every member directly.
pub fn direct_run(target: &Target, clients: usize) -> WorkloadRun {
    let mut run = WorkloadRun::new(WORKLOAD);
    for _ in 0..clients {
        run.spawn(&target.spec_via(&target.addresses));
    }
    run
}

/// A run of `clients` processes, each through a [`FaultProxy`] of its own per member
/// (`links[client][member]`).
pub fn proxied_run(target: &Target, clients: usize) -> (WorkloadRun, Vec<Vec<FaultProxy>>) {
    let mut run = WorkloadRun::new(WORKLOAD);
    let mut links = Vec::new();
    for _ in 0..clients {
        let proxies: Vec<FaultProxy> = target
            .addresses
            .iter()
            .map(|a| FaultProxy::start(a.as_str()))
            .collect();
        let via: Vec<String> = proxies.iter().map(|p| p.address().to_string()).collect();
        run.spawn(&target.spec_via(&via));
        links.push(proxies);
    }
    (run, links)
}

/// Waits until someone acquires after now (or `limit` passes); true if someone did.
pub fn wait_for_acquisition(run: &WorkloadRun, limit: Duration) -> bool {
    let since = now_micros();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if run
            .events()
            .iter()
            .any(|e| e.kind == EventKind::Acquired && e.micros > since)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Lets the run go on until someone acquired after the last heal (or the liveness limit
/// passed, so the checker can judge it), stops the clients, checks the history and what
/// the cluster still holds, and panics on any violation or leftover.
pub fn stop_and_finish(mut run: WorkloadRun, target: &Target) -> Report {
    let limit = target.liveness_limit();
    let last_heal = run
        .events()
        .iter()
        .rev()
        .find(|e| e.client == NEMESIS && e.kind == EventKind::Heal)
        .map(|e| e.micros);
    if let Some(heal) = last_heal {
        let deadline = Instant::now() + limit + Duration::from_millis(500);
        while Instant::now() < deadline
            && !run
                .events()
                .iter()
                .any(|e| e.kind == EventKind::Acquired && e.micros > heal)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    run.stop();
    let idle = run.wait_idle(limit + Duration::from_secs(30));
    let report = run.check(&target.check_config());
    // The cluster may need the crash release bound to drop a killed client's entries.
    let deadline = Instant::now() + limit;
    let leftovers = loop {
        let found = target.leftovers();
        if found.is_empty() || Instant::now() >= deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    run.finish();
    println!("{report}");
    if std::env::var_os("DLOCK_HARNESS_KEEP").is_some() {
        println!("history kept in {}", run.keep().display());
    }
    if !(idle && report.violations() == 0 && leftovers.is_empty()) {
        let kept = run.keep();
        panic!(
            "all idle: {idle}; leftovers on the cluster: {leftovers:?}\n{report}\
             history kept in {}",
            kept.display()
        );
    }
    report
}
