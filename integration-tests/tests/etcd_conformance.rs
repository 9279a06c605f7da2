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

    dlock_conformance::conformance_tests!(
        EtcdTarget::with_layout(
            &shared_etcd().url,
            &shared_etcd().address,
            Layout::EtcdConcurrency,
        ),
        except[p12_prefix_and_key_never_run_together]
    );
}
