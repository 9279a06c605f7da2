//! # Choosing a backend
//!
//! Every backend keeps the same contract (mutual exclusion, fencing tokens, keepalive, loss
//! signals, safe release, bounded waits; [`crate::contract`]) and passes the same
//! conformance suite on a real server. They differ in what they assume and in what happens
//! when the server fails.
//!
//! | | memory | Redis (single) | Redlock | ZooKeeper | etcd |
//! |---|---|---|---|---|---|
//! | exclusion holds while | the process lives | the server keeps its data (no failover to a replica that missed the write) | a majority of instances keep their data, clocks drift little, pauses are short | the ensemble has a quorum | the cluster has a quorum |
//! | fencing token | a process-wide counter | `max(per-key counter + 1, server clock in ms × 1000)` in the acquire script, so tokens keep growing when the server lost or rolled back the counter (restart, reload, failover), as long as its clock does not step back by more than the restart takes | the same on each instance; the highest of the granting majority, raised on the others | the lock node's creation zxid | the lock key's create revision; `dlock_etcd::fence` makes your own etcd writes conditional on it |
//! | lease | per lock (`lease`) | per lock (`lease`, PEXPIRE) | per lock, minus elapsed time and drift | the client's session timeout (`?session_timeout=`, default 30 s) | one etcd lease per client and lease length (whole seconds, ≥ etcd's minimum TTL) |
//! | renewal cost | none | one script call per client per interval, however many locks | one per instance per interval | the session heartbeat, nothing per lock | the lease keepalive stream, plus one check of the lease's keys per interval |
//! | waiters woken by | an in-process notification | the release script hands the lock to the first live waiter and publishes to its own channel | a message on the waiter's own channel, per instance | a watch on the predecessor node | a watch on the predecessor key |
//! | order for a contended key | FIFO | FIFO (a line kept in Redis; a releasing holder queues behind the waiters) | no order promised, but no barging | FIFO (sequence) | FIFO (create revision) |
//! | server unreachable | — | held locks are signalled lost when their lease runs out unrenewed; waiters retry, then report `Connection` | fine while a majority answers; a frozen or slow minority costs no time (below) | locks survive a disconnection shorter than the session; after that, lost on the client's own clock | locks survive an outage shorter than the TTL; after that, lost |
//! | server restart | — | a restart that loses writes (no persistence, RDB snapshots, AOF `everysec`; a failover to a lagging replica) forgets or rolls back locks: fencing tokens keep growing, so fenced writes stay safe, and a reloaded waiting line stalls nobody (gone waiters' entries are skipped). Configure `appendonly yes` + `appendfsync always` to keep exclusion itself across restarts | one instance restarting is covered by the majority | sessions survive a restart shorter than their timeout | the lease survives a restart shorter than its TTL (same data dir) |
//! | TLS and authentication (the TLS files are `?ca=&cert=&key=` for every backend) | — | `rediss://` (`?ca=`, client `cert`/`key`); `user:password@` (ACL users) | `rediss+redlock://`, the same per instance | `zookeepers://` (`?ca=` required, client `cert`/`key`) to the `secureClientPort`; `user:password@` by the `digest` scheme, or by SASL DIGEST-MD5 with `?auth=sasl`; nodes carry the creator's ACL (with a client certificate, its `x509` identity too) | `etcds://` (`?ca=&cert=&key=&domain=`); `user:password@` (etcd users) |
//! | a lock name after release costs | nothing | nothing a few seconds later: the fence counter expires 5 s after the lock, an idle line's keys go with its last entry | the same on each instance | nothing once the server removes the empty container node | nothing (the key is deleted; its revisions stay until compaction, but a client reuses one key name per lock, so the history a read walks grows with clients, not with acquisitions) |
//!
//! ## When to choose which
//! - **memory**: unit tests of code that takes locks, single-process tools, examples.
//! - **Redis**: you already run Redis and want the fastest locks (a handoff takes about three
//!   round trips); accept that a failover or a restart that loses writes (the defaults: RDB
//!   snapshots, or AOF `everysec`) can hand a lock out twice, and let fencing tokens catch it
//!   — or run Redis with `appendfsync always`. Tokens rely on the server clock not stepping
//!   back by more than a restart takes.
//! - **Redlock**: several independent Redis instances and no single point of failure; it
//!   relies on bounded clock drift and short process pauses, so fence the writes anyway.
//! - **ZooKeeper** or **etcd**: correctness first, consensus-backed, FIFO and watch-based; the
//!   lease is the client's session, so one heartbeat keeps all of a client's locks, and a
//!   crashed client's locks go when its session does.
//!
//! ## Redis under faults
//! - **Restart that loses or rolls back writes** (no persistence, an RDB snapshot, AOF
//!   `everysec`, a failover to a lagging replica): locks may be forgotten or come back stale;
//!   tokens still grow (floored by the server clock), and a reloaded waiting line stalls
//!   nobody: an entry counts only while its waiter listens on its own channel.
//! - **Holder or waiter paused past its lease**: the guard is signalled lost on the holder's
//!   clock and its key is given back (owner-checked); a grant that reached a stopped waiter is
//!   never handed out once its lease ran out (it names the request it answers, and the locker
//!   refuses a grant whose deadline passed), and `dlock run` exits 70 if the lock was not held
//!   throughout the command.
//! - **Cancelled acquire**, at any await: it leaves the line, stops listening, and gives back
//!   a grant its in-flight request may still receive.
//! - **Crashed host with half-open connections**: its entries stop counting at most 30 s
//!   after the waiter last asked (live waiters ask again every 10 s).
//!
//! ## Redis behind Sentinel (`redis+sentinel://s1:p,s2:p,s3:p/<master-name>`)
//! One primary, replicas, and sentinels that promote a replica when the primary fails. The
//! client asks the sentinels for the primary (`SENTINEL get-master-addr-by-name`, the first
//! that answers) when it connects, every second, and whenever the primary fails a call
//! (connection error, `READONLY` from a demoted primary); it then connects to the new primary,
//! and its waiters listen and stand in line there anew. Everything else is the single
//! instance's: same scripts, same FIFO line, same keys.
//!
//! | | Redis behind Sentinel |
//! |---|---|
//! | exclusion holds while | no failover happens. Replication is asynchronous: a failover can lose the latest writes (a lock granted, released or renewed just before it), and the old primary keeps taking writes until the sentinels demote it, so **a lock can be granted twice across a failover** |
//! | fencing token | the single instance's; the promoted replica has the counter up to what it received, and the server clock floor (`ms × 1000`) carries tokens past what it missed: tokens keep growing across the failover (tested), so fenced writes stay safe |
//! | after a failover | the client follows within about a second of the sentinels' switch (tested: 1.8 s after `SENTINEL FAILOVER`); calls in between fail with `Connection` (a waiting acquire retries); held locks that reached the replica stay held and are renewed on the new primary, others are signalled lost when their lease runs out unrenewed; a waiter re-joins the line on the new primary and is handed the lock there |
//! | who holds what (`status`, `list`) | as for a single instance, read on the current primary |
//! | not covered | sentinels with a password (the URL's credentials go to the primary only); checking the named instance's `ROLE` before use (a sentinel still naming the old primary is asked again on the next error or second) |
//!
//! ## Redis Cluster (`redis+cluster://h1:p,h2:p,…`)
//! Primaries that each own a share of the 16384 slots, each with replicas that take over its
//! slots when it fails. The URL lists seed nodes (any of them is enough to find the rest).
//! The client is the redis crate's cluster client: it sends each call to the primary that
//! owns the call's slot, follows `MOVED` and `ASK`, and finds the promoted replica after a
//! failover. A lock's keys (value, fence counter, line, holders, watchers) share one hash
//! tag, `dlock:{<namespace>|<prefix>/<key>}:…`, so every script runs on one slot, and locks
//! spread over the primaries by key. Everything else is the single instance's: same scripts,
//! same FIFO line, same fencing tokens. Needs Redis 7 (sharded pub/sub).
//!
//! | | Redis Cluster |
//! |---|---|
//! | exclusion holds while | the primary owning the lock's slot does not fail over. Replication is asynchronous, as behind Sentinel: a failover can lose the latest writes, so **a lock can be granted twice across a failover**. A slot moved by resharding loses nothing: its keys move with it, each served by one node at a time |
//! | fencing token | the single instance's, issued by the slot's primary; across a failover the server clock floor carries tokens past what the promoted replica missed (tested) |
//! | waiters woken by | the slot's primary: a waiter listens on a sharded channel in the lock's slot (`SSUBSCRIBE dlock:{…}:wake:<waiter id>`), the scripts publish there with `SPUBLISH` and count a waiter alive with `PUBSUB SHARDNUMSUB`, all on that one node (a plain `PUBLISH` would go to every node, and `PUBSUB NUMSUB` counts one node's listeners) |
//! | renewal cost | one script call per slot a client holds locks in, per interval, all sent at once (a script may touch one slot only) |
//! | after a failover | the client finds the promoted replica when calls to the dead primary fail (tested with `cluster-node-timeout 1000`); calls in between fail with `Connection` (a waiting acquire retries); held locks that reached the replica stay held, others are signalled lost when their lease runs out unrenewed; waiters subscribe again on the new primary, look again and re-join the line there |
//! | after a slot move (`redis-cli --cluster reshard`) | the old owner drops the slot's sharded subscriptions; the client subscribes again on the new owner, each waiter looks again, and finds its place in the line that moved with the slot (tested: the holder keeps its lock, its release hands it to the waiter). A script that runs while the slot's keys are half moved gets `TRYAGAIN`, retried by the client, then `Connection` |
//! | who holds what | `status` as for a single instance, read on the slot's primary; no `list` (`Unsupported`): the index of a prefix would live in another slot than its locks |
//! | not covered | `layout=redis-standard` waiters poll (keyspace events are each node's own); its keys with a `}` but no hash tag cannot be locked (their fence counter falls in another slot: the scripts fail with `CROSSSLOT`); reading from replicas (every call goes to the primary) |
//!
//! ## Who holds what (`dlock status`, `dlock list`) on Redis and Redlock
//! The lock's value is `<owner id>\n<acquired at, server ms>\n<owner description>`, so the
//! owner and acquisition time cost no key and expire with the lock; a hand-over takes the new
//! holder's description from its entry in the line. `list` reads a per-prefix sorted set of
//! held lock names (`dlock:{namespace|prefix}:index`, added to on acquire, removed from on
//! release, expiring with its longest lock): `ZRANGEBYLEX` from the cursor, O(log n + page),
//! plus one inspect script per listed lock; entries of holders that vanished are dropped when
//! a list meets them. Redlock: each instance keeps its own; the holder is the owner id a
//! majority holds the lock under, listed if a majority holds it.
//!
//! These faults, and those below for the other backends, are exercised by the fault harness
//! (`integration-tests/tests/faults_harness.rs`: a workload of processes with a fenced
//! register and a checker of its history, under process, network, server and cancellation
//! faults).
//!
//! ## Redlock with a failed minority
//! Up to `(N − 1) / 2` of the N instances may be down, restarting, slow, or frozen (stopped
//! with SIGSTOP, a paused VM, a partition that leaves TCP connections open: the instance
//! accepts connections and commands but never answers), and the client goes on with the
//! others, at the speed of the slowest instance of the fastest majority:
//! - **connecting** needs a majority; the others join in the background (a failed instance
//!   is tried again at most once a second);
//! - **every call** (acquire, try, renewal, extend, release, status) returns as soon as the
//!   instances that answered decide it, and at the latest once a majority has answered and the
//!   rest had as long again (at least 20 ms). The lock is trusted for
//!   `lease − time until the majority granted − drift` (drift: `lease × drift_factor + 2 ms`);
//!   the frozen instance's timeouts never count;
//! - **what a frozen instance was sent** stays queued on its connection and runs, in order,
//!   when it continues: a grant it gives late is followed by the release sent after it, and
//!   renewals reach it. Whatever it still holds (say its connection was replaced meanwhile)
//!   expires with the lease: a resumed instance keeps a lock key for at most one lease;
//! - **mutual exclusion and fencing** hold: any two majorities share an instance.
//!
//! What to choose: a lease well above a majority's round trip plus drift, so that the
//! keepalive (every lease / 3) can miss a renewal or two. The lease does not need to cover an
//! instance's freeze, which the majority outvotes; it must cover the **holder's** own pauses
//! (GC, a stopped process): a holder paused past its validity is signalled the loss, and only
//! fencing stops its late writes. When a majority fails, nothing can be granted, renewed or
//! extended: calls fail with `Connection` after the validity or the instances' timeouts
//! (`?response_timeout=`, default 3 s; `?connect_timeout=` while reconnecting), whichever
//! comes first, and held locks are signalled lost when their validity passes. Restarted instances must keep their data (`appendfsync always`) or stay
//! down for one lease.
//!
//! ## ZooKeeper under faults
//! The lease is the session: `?session_timeout=` (bounded by the server's `minSessionTimeout`
//! and `maxSessionTimeout`). Make it longer than the worst pause (GC, swap, SIGSTOP) plus
//! network blip the holder must survive, and as short as the crash release you can wait for.
//! - **Holder paused, clock jump, starved event loop** (shorter than the server's session
//!   expiry): if the guard's deadline ran out meanwhile, the guard is signalled lost
//!   (`LeaseExpired`) and, on waking, the client deletes the lock node and, if the session's
//!   own deadline passed too, closes the session on the server; nothing new is ever queued in a
//!   session given up on. Waiters and the holder's own re-acquire go on at once (P3, P5).
//!   If the server expired the session first, its nodes are gone and the next holder's zxid
//!   token is greater: writes fenced with the token stay safe (P1 via P2).
//! - **Server outage**: shorter than the session, locks are kept; longer, they are signalled
//!   lost on the client's clock within the session timeout plus a third, and the old session
//!   is closed as soon as a server answers, so waiters acquire right after the restart.
//! - **Holder killed**: its locks go when the server expires the session (session timeout plus
//!   the server's tick). A session closed or expired from outside: the guard hears it at once.
//! - **Lost replies**: a create whose answer was lost is looked for by its unique name after a
//!   `sync` (a follower the client reconnects to may lag), never made twice; a delete whose
//!   answer was lost counts as released; a waiter's withdrawal cut off by its wait limit during
//!   a restart goes on in the background.
//!
//! ## Layouts: sharing a lock with another library
//! `layout=` in the URL picks whose keys or nodes a client reads and writes; the default is
//! dlock's own. In a foreign layout the lock key is the other library's lock name exactly as
//! that library is given it (no dlock prefix or escaping unless the URL gives a `prefix`), and
//! dlock and the other library exclude each other both ways. Only exclusive locks (and
//! elections, which are exclusive locks with an owner) are offered in a foreign layout:
//! semaphores and read-write locks are refused with `Unsupported`, and `list` is
//! `Unsupported` (`introspection().list` is false). `Capabilities` says what else weakens, and
//! the conformance suite runs in every layout with only what the layout gives up on purpose
//! left out.
//!
//! ### ZooKeeper: kazoo and Curator
//! A foreign layout makes
//! dlock one more contender in the other library's own line, so the two exclude each other
//! both ways, wait for each other in one FIFO line, and a crashed holder on either side frees
//! the lock when its session expires. The lock key is the other library's lock path exactly
//! (`k` and `/k` are the same node); only the URL's `prefix`, or a lock options' prefix other
//! than the default `dlock`, is put in front.
//!
//! | URL | shares locks with | nodes | line order | parents | tested against |
//! |---|---|---|---|---|---|
//! | `zookeeper://…` (`layout=dlock`, default) | other dlock clients | `/{prefix}/lock={escaped key}/_c_{uuid}-lock-{seq}`, data = owner | by sequence, `_c_…-lock-{10 digits}` only | containers | the conformance suite |
//! | `zookeeper://…?layout=kazoo` | kazoo `client.Lock(path)` (Python) | `{path}/{uuid hex}__lock__{seq}`, data = owner (kazoo's `identifier`) | kazoo's: children matching `__lock__(-?\d{10})$`, by that text | persistent (kazoo's `ensure_path` trusts they stay) | kazoo 2.8 from `python3-kazoo`; the conformance suite but its two key-collision properties |
//! | `zookeeper://…?layout=curator` | Curator `InterProcessMutex(client, path)` (Java) | `{path}/_c_{uuid}-lock-{seq}` (the names of dlock's own layout), data = owner (Curator writes the client's IP) | Curator's: every child, by the text after its last `lock-` | containers | Curator 5.4 from `libcurator-recipes-java`; the conformance suite but its two key-collision properties |
//!
//! What a foreign layout keeps: mutual exclusion with the other library, FIFO, one waiter
//! woken per release, fencing tokens (the lock node's `czxid`, growing for dlock holders;
//! the other library does not see them), the session as the lease, `inspect` (holder = first
//! in line, whoever made it; owner = its node's data). What it gives up: keys are paths, not
//! escaped names (`a//b` and `a/b` are one lock, `.` and `..` segments are refused, a lock
//! path may be the parent of another); `list` (locks are anywhere in the tree: `Unsupported`,
//! and `introspection().list` is false); kazoo's persistent lock path stays after use.
//!
//! ### Redis: the standard `SET NX PX` layout (redsync, node-redlock, rslock, redis-py)
//!
//! | URL | shares locks with | keys | order and wake-up | tested against |
//! |---|---|---|---|---|
//! | `redis://…?layout=redis-standard` (also `rediss://`, `redis+sentinel://`, `redis+redlock://a,b,c`) | redsync (Go), node-redlock (Node), rslock (Rust), redis-py `Lock` (Python), hand-written `SET NX PX` scripts | the key itself: `SET {key} {owner id}\n{acquired ms}\n{owner} NX PX {lease}`, released by compare-and-delete, extended by compare-and-pexpire; on Redlock the same on each instance, a majority wins; dlock's fence counter `{<key>}:dlock-fence` beside it, in the key's cluster slot, expiring 5 s after the lock | no line, not FIFO; every dlock waiter tries again on each change of the key, woken by its keyspace events when the server publishes them (`notify-keyspace-events` with `K`, `g`, `$`, `x`, e.g. `KA`; dlock never changes server config), else by polling every 10–200 ms; also at the holder's expiry | redis-py 4.3.4 (`python3-redis`) and a Redlock on it written as redsync takes it; the conformance suite but its one-waiter-per-release and prefix/key properties, with and without notifications, on Redlock and behind Sentinel |
//!
//! What it keeps: mutual exclusion with the other libraries; fencing tokens that grow among
//! dlock holders (the others ignore the counter); a lost lock signalled when the keepalive's
//! compare-and-pexpire finds another value; `inspect` (held, remaining lease; owner and token
//! of dlock holders only: a foreign holder's value is its secret token). What it gives up:
//! FIFO and waiter counts (no line among libraries that have none), one-waiter-per-release
//! (`server_wakeup` is true only while every instance publishes keyspace events), `list`.
//! A `prefix` is put in front of the key as it is, without a separator (`prefix=app:` and key
//! `job` is `app:job`).
//!
//! ### etcd: `concurrency.Mutex`, `etcdctl lock`, the Lock RPC
//!
//! | URL | shares locks with | keys | order and wake-up | tested against |
//! |---|---|---|---|---|
//! | `etcd://…?layout=etcd-concurrency` (also `etcds://`) | etcd's Go `concurrency.Mutex` and `concurrency.Election`, `etcdctl lock NAME` and `etcdctl elect`, the server's Lock RPC (`v3lock`) | `{name}/{lease id, hex as Go's %x}`, put under the contender's lease only if absent, value = owner (an election's value; Go's Mutex writes `""`); a URL `prefix` goes in front with a `/`, as Go's `namespace.NewKV(kv, "p/")` | by create revision, every key under `{name}/` whoever wrote it; each waiter watches the newest key created before its own (Go's `waitDeletes`): FIFO across both sides, one waiter woken per release | `etcdctl` 3.4.23 (`etcd-client`) and etcd 3.4.23's Lock RPC; the conformance suite but `p12_prefix_and_key_never_run_together` |
//!
//! What it keeps: mutual exclusion and one FIFO line with the Go side, fencing tokens (the
//! holder key's create revision, as Go users take from `Header.Revision`), the lease as the
//! session, `inspect` (the holder is named by its value, or by its key when the value is empty
//! as Go's Mutex leaves it); a dlock election in this layout is a Go `concurrency.Election`.
//! Go's Mutex has one key per lease and name, so a second task of one dlock client
//! contending for a name it already queues for takes an etcd lease of its own (kept for
//! reuse); dlock's own layout keeps one lease per client. What it gives up: keys are names,
//! not escaped segments (a held `a/b` keeps `a` from being granted, as in Go), `list`, the
//! grant time (`acquired_at`).
//!
//! ## etcd under faults
//! The lease is one etcd lease per client and lease length (whole seconds, at least etcd's
//! minimum TTL). List every member in the URL, so a client can go round one that fails
//! (see [Clusters](#clusters) for what a request already sent to a dead member costs).
//! - **Holder paused, clock jump, keepalive and lease heartbeat out of step**: when the
//!   guard's deadline runs out on the holder's clock, the guard is signalled lost and the
//!   client deletes the lock key (owner-checked by its create revision); a lease past its
//!   validity on the client's clock is revoked and never used again. Waiters and the holder's
//!   own re-acquire go on at once (P3, P5). If etcd expired the lease first, the next holder's
//!   revision is greater, and `dlock_etcd::fence` refuses the stale holder's writes.
//! - **Lease gone on the server before the client noticed** (expired during a pause, revoked):
//!   `acquire` and `try_acquire` start a new session at once instead of failing.
//! - **Member cut off from the quorum**: every request and watch requires a leader, so the
//!   member fails them (etcd ends open watches when it loses its leader) and waiters look
//!   again through a member that has one, instead of waiting until their lease ends.
//! - **Server outage**: shorter than the TTL, locks are kept; longer, they are signalled lost.
//!   **Holder killed**: its keys go when etcd expires the lease (the TTL plus up to 3 s).
//!
//! Who holds what (`Locker::inspect`, `Locker::list`, `dlock status`, `dlock list`): the owner
//! description and the client's queue/grant times are the value of the contender key (the
//! grant time of a waiter that got the lock is written just after the grant); the token is
//! the key's create revision, the waiters the other keys of the lock's queue.
//!
//! ## Clusters
//! List every member in the URL: `etcd://h1:2379,h2:2379,h3:2379`,
//! `zookeeper://h1:2181,h2:2181,h3:2181[/chroot]` (or `zk://…`),
//! `redis+sentinel://s1,s2,s3/<master-name>`, `redis+cluster://n1,n2,…` (seed nodes). What
//! each topology keeps, as tested on local members (`integration-tests/tests/etcd_cluster.rs`,
//! `zookeeper_ensemble.rs`, `redis_sentinel.rs`, `redis_cluster.rs`: the whole conformance
//! suite, then the faults below; etcd and ZooKeeper under the workload's checker). For Redis
//! the "leader" is the primary (of the lock's slot, on a cluster):
//!
//! | topology | leader killed | the member a client talks to dies or stops | a minority cut off | the majority lost |
//! |---|---|---|---|---|
//! | etcd, 3 members | a new leader in 1–2 s; locks whose lease outlives the election are kept, tokens grow, no two holders; a waiter whose request went to the dead leader or hung in the election tries again within its wait (at the back of the line); a release caught the same way answers `Connection` after the request timeout (`?timeout=`, default 5 s) and is retried in the background, so the lock may stay taken that long | the client goes on through the other members; a holder that only reaches a stopped member is signalled lost when its lease runs out on its own clock, before anyone else gets the lock | a member without a leader fails every request at once and ends its watches (`require-leader`), so neither holders nor waiters wait on it in false hope: its holders are signalled lost when their lease runs out | nobody acquires; held locks are signalled lost when their lease runs out unrenewed |
//! | ZooKeeper, 3 servers | a new leader within `syncLimit` ticks plus an election; sessions, and with them locks and waiters' places, survive if that is shorter than the session timeout; tokens (zxids) grow | the client reconnects to another server within its session and keeps its locks and its place in line | its servers stop serving, their clients move to the majority within their session | no server serves; locks are signalled lost on the client's clock after the session timeout |
//! | Redis behind Sentinel (primary, replica, 3 sentinels) | the sentinels promote the replica once the primary is down for `down-after-milliseconds` (1 s in the tests); the client follows within about a second; locks the replica had received are kept, the others are lost and **may be granted twice**; tokens grow (tested, killed and `SENTINEL FAILOVER`); the waiter is handed the lock on the new primary | the same: the client talks to the primary only | not tested (no network split): a primary cut off from the sentinels takes writes until it is demoted, so a lock may be granted twice; tokens grow | no primary: nobody acquires; held locks are signalled lost when their lease runs out unrenewed |
//! | Redis Cluster, 3 primaries with a replica each | the primary that owns the lock's slot killed: its replica is promoted after `cluster-node-timeout` (2.2–2.9 s with 1 s in the tests); locks it had received are kept, others lost and **may be granted twice**; tokens grow; the waiter is handed the lock (tested); locks in other slots are untouched | the client talks to every primary; a dead one stalls only its own slots' locks until the failover | not tested (no network split): a primary cut off from the majority stops taking writes after `cluster-node-timeout`, while the majority may promote its replica sooner or later: a lock may be granted twice; tokens grow | slots without a primary answer `CLUSTERDOWN` (a `Connection` error; waiters retry); held locks there are signalled lost when their lease runs out unrenewed |
//!
//! A Redis Cluster slot moved to another primary (`redis-cli --cluster reshard`) loses
//! nothing: the lock, its line and its fence counter move with the slot, the holder keeps
//! renewing it there, and the waiters listen again on the slot's new primary and are handed
//! the lock by the next release (tested).
//!
//! Whatever the backend, pass [`LockGuard::fencing_token`](crate::LockGuard::fencing_token)
//! to the storage the lock protects, and race long work against
//! [`LockGuard::lost`](crate::LockGuard::lost).
