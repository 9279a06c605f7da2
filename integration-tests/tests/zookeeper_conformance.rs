//! The conformance suite against a real ZooKeeper server (one per test binary).

use dlock_test_servers::shared_zookeeper;
use dlock_zookeeper::Layout;

mod conformance_support;
mod zookeeper_support;

use zookeeper_support::ZooKeeperTarget;

dlock_conformance::conformance_tests!(ZooKeeperTarget::new(&shared_zookeeper().url));

/// The suite in a foreign layout (issue 16), but for the two properties a foreign layout gives
/// up on purpose, because its keys are the other library's lock paths: distinct keys never
/// collide (`.` and `..` are refused, `a//b` is `a/b`) and a prefix never runs into its key
/// (prefix `p/x` with key `k` is key `x/k` under prefix `p`). Readers and permits are not
/// mapped onto the other library's recipes: the semaphore and read-write sections check that
/// they are refused; an election is a mutex with an owner, and runs.
macro_rules! foreign_layout_suite {
    ($layout:expr) => {
        dlock_conformance::conformance_tests!(
            ZooKeeperTarget::with_layout(&shared_zookeeper().url, $layout),
            except [
                p12_distinct_keys_never_collide,
                p12_prefix_and_key_never_run_together,
            ]
        );
    };
}

/// The suite in kazoo's layout.
mod kazoo_layout {
    use super::*;

    foreign_layout_suite!(Layout::Kazoo);
}

/// The suite in Curator's layout.
mod curator_layout {
    use super::*;

    foreign_layout_suite!(Layout::Curator);
}
