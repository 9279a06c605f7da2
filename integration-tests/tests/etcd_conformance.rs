//! The conformance suite against a real etcd (one server shared by this test binary).

use dlock_test_servers::shared_etcd;

mod conformance_support;
mod etcd_support;

use etcd_support::EtcdTarget;

dlock_conformance::conformance_tests!(EtcdTarget::new(&shared_etcd().url, &shared_etcd().address));
