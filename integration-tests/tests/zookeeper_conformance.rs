//! The conformance suite against a real ZooKeeper server (one per test binary).

use dlock_test_servers::shared_zookeeper;

mod conformance_support;
mod zookeeper_support;

use zookeeper_support::ZooKeeperTarget;

dlock_conformance::conformance_tests!(ZooKeeperTarget::new(&shared_zookeeper().url));
