//! End-to-end tests of the `dlock` binary: usage errors, exit codes, the child's environment,
//! signal passing, and exclusion between parallel `dlock run` processes on real servers.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn dlock() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dlock"));
    command.env_remove("DLOCK_URL").env_remove("RUST_LOG");
    command
}

fn output(args: &[&str]) -> Output {
    dlock().args(args).output().expect("dlock runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_usage_exits_64_with_one_line() {
    for args in [
        &["run", "--url", "memory://", "--", "true"][..],
        &["run", "--url", "nosuch://x", "--key", "k", "--", "true"],
        &[
            "run",
            "--url",
            "memory://",
            "--key",
            "k",
            "--ttl",
            "soon",
            "--",
            "true",
        ],
        &["run", "--url", "memory://", "--key", "k"],
        &["run", "--url", "memory://", "--key", "", "--", "true"],
        &["status", "--url", "memory://?lease=0s", "--key", "k"],
        &["frobnicate"],
        &[
            "run",
            "--url",
            "memory://",
            "--key",
            "k",
            "--permits",
            "0",
            "--",
            "true",
        ],
        &[
            "run",
            "--url",
            "memory://",
            "--key",
            "k",
            "--permits",
            "1025",
            "--",
            "true",
        ],
        &["elect", "--url", "memory://", "--", "true"],
        &["elect", "--url", "memory://", "--name", "n"],
        &["elect", "--url", "memory://", "--name", "", "--", "true"],
        &[
            "elect",
            "--url",
            "memory://",
            "--name",
            "n",
            "--value",
            "a\nb",
            "--",
            "true",
        ],
        &["observe", "--url", "memory://"],
        &[
            "observe",
            "--url",
            "memory://",
            "--name",
            "n",
            "--count",
            "0",
        ],
    ] {
        let output = output(args);
        assert_eq!(
            output.status.code(),
            Some(64),
            "{args:?}: {}",
            stderr(&output)
        );
        let message = stderr(&output);
        assert_eq!(message.trim_end().lines().count(), 1, "{args:?}: {message}");
    }
}

#[test]
fn a_scheme_whose_feature_is_off_or_unknown_names_the_fix() {
    let output = output(&["status", "--url", "gopher://h", "--key", "k"]);
    assert_eq!(output.status.code(), Some(64));
    assert!(
        stderr(&output).contains("unknown scheme"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn the_child_gets_key_and_token_and_its_exit_code_passes_through() {
    let output = dlock()
        .args(["run", "--url", "memory://", "--key", "jobs/a", "--"])
        .args([
            "sh",
            "-c",
            "echo \"$DLOCK_KEY $DLOCK_FENCING_TOKEN\"; exit 3",
        ])
        .output()
        .expect("dlock runs");
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "jobs/a 1");
    assert!(
        stderr(&output).contains("memory://"),
        "the memory note is shown"
    );
}

#[test]
fn a_permit_holder_gets_key_and_token_and_its_exit_code_passes_through() {
    for permits in ["1", "3"] {
        let output = dlock()
            .args(["run", "--url", "memory://", "--key", "jobs/a"])
            .args(["--permits", permits, "--"])
            .args([
                "sh",
                "-c",
                "echo \"$DLOCK_KEY $DLOCK_FENCING_TOKEN\"; exit 3",
            ])
            .output()
            .expect("dlock runs");
        assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "jobs/a 1");
    }
}

#[test]
fn the_leader_gets_name_and_term_and_its_exit_code_passes_through() {
    let output = dlock()
        .args(["elect", "--url", "memory://", "--name", "scheduler"])
        .args(["--value", "10.0.0.7:8080", "--"])
        .args([
            "sh",
            "-c",
            "echo \"$DLOCK_KEY $DLOCK_FENCING_TOKEN\"; exit 4",
        ])
        .output()
        .expect("dlock runs");
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "scheduler 1"
    );
}

#[test]
fn observe_on_memory_prints_nobody_then_stops_at_count() {
    let plain = output(&[
        "observe",
        "--url",
        "memory://",
        "--name",
        "n",
        "--count",
        "1",
    ]);
    assert_eq!(plain.status.code(), Some(0), "{}", stderr(&plain));
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "-\n");
    let json = output(&[
        "observe",
        "--url",
        "memory://",
        "--name",
        "n",
        "--count",
        "1",
        "--json",
    ]);
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let line: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(
        line,
        serde_json::json!({"name": "n", "leader": false, "term": null, "value": null})
    );
}

#[test]
fn a_child_killed_by_a_signal_gives_128_plus_the_signal() {
    let output = dlock()
        .args([
            "run",
            "--url",
            "memory://",
            "--key",
            "k",
            "--",
            "sh",
            "-c",
            "kill -9 $$",
        ])
        .output()
        .expect("dlock runs");
    assert_eq!(output.status.code(), Some(128 + 9), "{}", stderr(&output));
}

#[test]
fn a_command_that_cannot_start_exits_127() {
    let output = output(&[
        "run",
        "--url",
        "memory://",
        "--key",
        "k",
        "--",
        "/nonexistent/cmd",
    ]);
    assert_eq!(output.status.code(), Some(127), "{}", stderr(&output));
}

#[test]
fn sigterm_reaches_the_child_and_dlock_exits_with_its_code() {
    let mut child = dlock()
        .args(["run", "--url", "memory://", "--key", "k", "--", "sh", "-c"])
        .arg("trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.05; done")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dlock runs");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().expect("a line").expect("utf-8"), "ready");
    signal(&child, libc::SIGTERM);
    assert_eq!(lines.next().expect("a line").expect("utf-8"), "got-term");
    assert_eq!(wait(&mut child, Duration::from_secs(10)), Some(0));
}

#[test]
fn status_of_a_free_memory_key_exits_1_and_json_is_one_object() {
    let output = output(&["status", "--url", "memory://", "--key", "k", "--json"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.trim().starts_with('{') && text.contains("\"held\":false"),
        "{text}"
    );
}

#[test]
fn list_on_memory_exits_0_and_json_is_one_object() {
    let json = output(&["list", "--url", "memory://", "--prefix", "jobs/", "--json"]);
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let text = String::from_utf8_lossy(&json.stdout);
    assert_eq!(text.trim(), r#"{"locks":[],"next":null}"#);
    let plain = output(&["list", "--url", "memory://"]);
    assert_eq!(plain.status.code(), Some(0), "{}", stderr(&plain));
    assert!(plain.stdout.is_empty());
}

#[test]
fn status_json_has_owner_and_acquired_at() {
    let output = output(&["status", "--url", "memory://", "--key", "k", "--json"]);
    let text = String::from_utf8_lossy(&output.stdout);
    for field in [r#""owner":null"#, r#""acquired_at":null"#] {
        assert!(text.contains(field), "{field} missing: {text}");
    }
}

#[test]
fn bad_owners_and_list_limits_exit_64() {
    for args in [
        &[
            "run",
            "--url",
            "memory://",
            "--key",
            "k",
            "--owner",
            "a\nb",
            "--",
            "true",
        ][..],
        &[
            "run",
            "--url",
            "memory://",
            "--key",
            "k",
            "--owner",
            "",
            "--",
            "true",
        ],
        &[
            "run",
            "--url",
            "memory://?owner=%1B%5B2J",
            "--key",
            "k",
            "--",
            "true",
        ],
        &["list", "--url", "memory://", "--limit", "0"],
        &["list", "--url", "memory://", "--limit", "1001"],
        &["list", "--url", "memory://", "--prefix", "a\tb"],
    ] {
        let output = output(args);
        assert_eq!(
            output.status.code(),
            Some(64),
            "{args:?}: {}",
            stderr(&output)
        );
        assert_eq!(stderr(&output).lines().count(), 1, "{args:?}: one line");
    }
    let long = "x".repeat(257);
    let output = output(&[
        "run",
        "--url",
        "memory://",
        "--key",
        "k",
        "--owner",
        &long,
        "--",
        "true",
    ]);
    assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));
}

#[test]
fn run_verbose_logs_owner_wait_and_hold_times() {
    let output = output(&[
        "-v",
        "run",
        "--url",
        "memory://",
        "--key",
        "k",
        "--owner",
        "ci runner 7",
        "--",
        "true",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let log = stderr(&output);
    for part in ["ci runner 7", "waited=", "held_for=", "token=1"] {
        assert!(log.contains(part), "{part:?} missing in:\n{log}");
    }
}

#[test]
fn bench_on_memory_reports_json() {
    let output = output(&[
        "bench",
        "--url",
        "memory://",
        "--clients",
        "3",
        "--duration",
        "300ms",
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    for field in ["acquisitions_per_s", "handoff", "round_trip", "per_client"] {
        assert!(text.contains(field), "{field} missing: {text}");
    }
}

#[test]
fn bench_hold_on_memory_reports_json() {
    let output = output(&[
        "bench",
        "--url",
        "memory://?lease=1s",
        "--hold",
        "50",
        "--duration",
        "100ms",
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(json["mode"], "hold");
    assert_eq!(json["locks"], 50);
    assert_eq!(json["keepalive"], true, "keepalive on, as users get it");
    assert_eq!(json["lost_while_held"], 0);
    assert_eq!(json["lost_at_release"], 0);
    for field in [
        "take_all_ms",
        "client_bytes_per_lock",
        "renewal_round_ms",
        "release_all_ms",
    ] {
        assert!(json[field].is_number(), "{field} missing: {json}");
    }
    assert!(
        json["server_bytes_per_lock"].is_null(),
        "memory:// has no server to read"
    );
}

#[test]
fn bench_hold_prints_a_table_and_excludes_contention_options() {
    let printed = output(&[
        "bench",
        "--url",
        "memory://",
        "--hold",
        "20",
        "--duration",
        "10ms",
    ]);
    assert_eq!(printed.status.code(), Some(0), "{}", stderr(&printed));
    let table = String::from_utf8_lossy(&printed.stdout);
    for row in [
        "holding 20 locks",
        "client memory per lock",
        "one renewal round",
        "lost while held",
    ] {
        assert!(table.contains(row), "{row:?} missing:\n{table}");
    }
    for clash in ["--clients", "--keys"] {
        let refused = output(&["bench", "--url", "memory://", "--hold", "5", clash, "2"]);
        assert_eq!(
            refused.status.code(),
            Some(64),
            "{clash}: {}",
            stderr(&refused)
        );
    }
    let zero = output(&["bench", "--url", "memory://", "--hold", "0"]);
    assert_eq!(zero.status.code(), Some(64), "{}", stderr(&zero));
}

/// Checks, for one backend URL, what `crates/dlock-cli/CLI.md` promises across processes.
#[allow(dead_code)] // used by the backend tests below, each behind its feature
mod across_processes {
    use dlock_test_servers::ServerProcess;

    use super::*;

    /// Issue 14 (scale): `dlock bench --hold 50` on a real server holds its 50 locks through
    /// the keepalive's rounds without losing one, and reports the server's own figures
    /// (memory, requests) beside the client's. Only presence is checked: speed belongs to
    /// the benchmark, not to a test.
    pub fn bench_hold_reports_no_lost_lock_and_server_figures(url: &str) {
        let url = format!("{url}?lease=2s");
        let output = output(&[
            "bench",
            "--url",
            &url,
            "--hold",
            "50",
            "--duration",
            "1s",
            "--json",
        ]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        let json: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("one JSON object");
        assert_eq!(json["mode"], "hold", "{json}");
        assert_eq!(json["locks"], 50, "{json}");
        assert_eq!(json["keepalive"], true, "{json}");
        assert_eq!(json["lost_while_held"], 0, "{json}");
        assert_eq!(json["lost_at_release"], 0, "{json}");
        for field in [
            "round_trip_p50_us",
            "take_all_ms",
            "locks_per_s",
            "server_requests_per_lock",
            "rss_kib_before",
            "rss_kib_held",
            "client_bytes_per_lock",
            "server_bytes_per_lock",
            "renewal_round_ms",
            "renewal_round_server_requests",
            "keepalive_server_requests_per_interval",
            "keepalive_interval_ms",
            "release_all_ms",
        ] {
            assert!(json[field].is_number(), "{field} missing: {json}");
        }
        assert!(json["server_memory_measure"].is_string(), "{json}");
    }

    /// ZooKeeper `layout=kazoo` and `layout=curator` (issue 16) against the real kazoo and
    /// Curator: while the other library holds the path, `dlock run --wait 0` exits 75 and
    /// `dlock status` names the holder's node data; while `dlock run` holds it, the other
    /// library's non-blocking acquire fails.
    #[cfg(feature = "zookeeper")]
    #[test]
    fn zookeeper_foreign_layouts_exclude_the_other_library_both_ways() {
        use dlock_test_servers::{foreign_try_lock, Foreign, ForeignLock};

        let base = &dlock_test_servers::shared_zookeeper().url;
        let hosts = base.trim_start_matches("zookeeper://");
        for (foreign, layout) in [(Foreign::Kazoo, "kazoo"), (Foreign::Curator, "curator")] {
            let url = format!("{base}?layout={layout}");
            let path = format!("/dlock-cli-interop/{layout}-{:016x}/lock", rand_id());
            let theirs =
                ForeignLock::hold(foreign, hosts, &path, Duration::from_secs(10), "their cron");
            let tried = output(&[
                "run", "--url", &url, "--key", &path, "--wait", "0", "--", "true",
            ]);
            assert_eq!(
                tried.status.code(),
                Some(75),
                "{layout}: {}",
                stderr(&tried)
            );
            let status = output(&["status", "--url", &url, "--key", &path, "--json"]);
            assert_eq!(
                status.status.code(),
                Some(0),
                "{layout}: {}",
                stderr(&status)
            );
            let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
            if foreign == Foreign::Kazoo {
                assert_eq!(json["owner"], "their cron", "{json}");
            }
            theirs.release();
            let mut holder = hold_with_dlock_run(&["--url", &url, "--key", &path]);
            assert!(
                !foreign_try_lock(foreign, hosts, &path),
                "{layout} took the lock dlock run holds"
            );
            drop(holder.stdin.take());
            assert_eq!(wait(&mut holder, Duration::from_secs(30)), Some(0));
            assert!(
                foreign_try_lock(foreign, hosts, &path),
                "{layout} cannot take the lock dlock released"
            );
        }
    }

    /// Redis `layout=redis-standard` (issue 16) against the real redis-py `Lock`: while
    /// redis-py holds the key, `dlock run --wait 0` exits 75; while `dlock run` holds it,
    /// redis-py's non-blocking acquire fails, and succeeds once dlock released.
    #[cfg(feature = "redis")]
    #[test]
    fn redis_standard_layout_excludes_redis_py_both_ways() {
        use dlock_test_servers::{redis_py_hold, redis_py_try_lock};

        let server = dlock_test_servers::shared_redis();
        let url = format!("{}?layout=redis-standard", server.url);
        let key = format!("dlock-cli-interop:{:016x}", rand_id());
        let theirs = redis_py_hold(&server.address, &key, Duration::from_secs(30));
        let tried = output(&[
            "run", "--url", &url, "--key", &key, "--wait", "0", "--", "true",
        ]);
        assert_eq!(tried.status.code(), Some(75), "{}", stderr(&tried));
        theirs.release();
        let mut holder = hold_with_dlock_run(&["--url", &url, "--key", &key]);
        assert!(
            !redis_py_try_lock(&server.address, &key),
            "redis-py took the lock dlock run holds"
        );
        drop(holder.stdin.take());
        assert_eq!(wait(&mut holder, Duration::from_secs(30)), Some(0));
        assert!(
            redis_py_try_lock(&server.address, &key),
            "redis-py cannot take the lock dlock released"
        );
    }

    /// etcd `layout=etcd-concurrency` (issue 16) against the real `etcdctl lock`: while it
    /// holds the name, `dlock run --wait 0` exits 75 and `dlock status` names its key; an
    /// `etcdctl lock` started while `dlock run` holds the name queues behind it (status
    /// counts it as a waiter and still names dlock's owner) and gets the lock once dlock
    /// released.
    #[cfg(feature = "etcd")]
    #[test]
    fn etcd_concurrency_layout_excludes_etcdctl_lock_both_ways() {
        use dlock_test_servers::EtcdctlLock;

        let server = dlock_test_servers::shared_etcd();
        let url = format!("{}?layout=etcd-concurrency", server.url);
        let name = format!("dlock-cli-interop-{:016x}", rand_id());
        let (theirs, their_key) =
            EtcdctlLock::hold(&server.address, &name, Duration::from_secs(10));
        let tried = output(&[
            "run", "--url", &url, "--key", &name, "--wait", "0", "--", "true",
        ]);
        assert_eq!(tried.status.code(), Some(75), "{}", stderr(&tried));
        let status = output(&["status", "--url", &url, "--key", &name, "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
        assert_eq!(json["owner"], their_key.as_str(), "{json}");
        theirs.release();

        let mut holder =
            hold_with_dlock_run(&["--url", &url, "--key", &name, "--owner", "dlock cron"]);
        let mut waiting = EtcdctlLock::start(&server.address, &name, Duration::from_secs(10));
        let queued = poll(Duration::from_secs(30), || {
            let status = output(&["status", "--url", &url, "--key", &name, "--json"]);
            let json: serde_json::Value = serde_json::from_slice(&status.stdout).ok()?;
            (json["waiters"] == 1).then_some(json)
        })
        .expect("etcdctl lock queues behind dlock run");
        assert_eq!(queued["owner"], "dlock cron", "{queued}");
        drop(holder.stdin.take());
        assert_eq!(wait(&mut holder, Duration::from_secs(30)), Some(0));
        let key = waiting.wait_held();
        assert!(key.starts_with(&format!("{name}/")), "{key}");
        waiting.release();
    }

    /// ZooKeeper (issue 13): `dlock status` and `dlock list`, run as other processes, name
    /// the owner a `dlock run --owner` stored, its fencing token, when it took the lock and
    /// the `dlock run` waiting behind it; after the release both say free.
    #[cfg(feature = "zookeeper")]
    #[test]
    fn zookeeper_status_and_list_name_the_owner() {
        let url = format!(
            "{}?prefix=cli-owner-{:016x}",
            dlock_test_servers::shared_zookeeper().url,
            rand_id()
        );
        let key = "jobs/a";
        let mut holder = dlock()
            .args([
                "run",
                "--url",
                &url,
                "--key",
                key,
                "--owner",
                "cli holder 1",
            ])
            .args([
                "--",
                "sh",
                "-c",
                "echo ready $DLOCK_FENCING_TOKEN; read line || true",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("dlock runs");
        let mut lines = BufReader::new(holder.stdout.take().expect("stdout")).lines();
        let ready = lines.next().expect("a line").expect("utf-8");
        let token: u64 = ready
            .strip_prefix("ready ")
            .and_then(|token| token.parse().ok())
            .unwrap_or_else(|| panic!("ready and a token: {ready}"));
        let mut waiter = dlock()
            .args(["run", "--url", &url, "--key", key, "--owner", "cli waiter"])
            .args(["--wait", "60s", "--", "true"])
            .spawn()
            .expect("dlock runs");
        let status_json = || {
            let status = output(&["status", "--url", &url, "--key", key, "--json"]);
            let json: serde_json::Value =
                serde_json::from_slice(&status.stdout).expect("status --json is JSON");
            (status.status.code(), json)
        };
        // The waiter is a process of its own: poll until it stands in line.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let (code, status) = loop {
            let (code, status) = status_json();
            if status["waiters"] == 1 || std::time::Instant::now() >= deadline {
                break (code, status);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(code, Some(0), "held: {status}");
        assert_eq!(status["held"], true, "{status}");
        assert_eq!(status["owner"], "cli holder 1", "{status}");
        assert_eq!(status["fencing_token"], token, "{status}");
        assert_eq!(status["waiters"], 1, "{status}");
        assert!(status["acquired_at"].is_string(), "{status}");
        let listed = output(&["list", "--url", &url, "--prefix", "jobs/", "--json"]);
        assert_eq!(listed.status.code(), Some(0), "{}", stderr(&listed));
        let page: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
        assert_eq!(page["next"], serde_json::Value::Null, "{page}");
        let locks = page["locks"].as_array().expect("locks");
        assert_eq!(locks.len(), 1, "{page}");
        for field in ["key", "held", "owner", "fencing_token", "waiters"] {
            assert_eq!(locks[0][field], status[field], "{field}: {page}");
        }
        let text = output(&["list", "--url", &url]);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("jobs/a: held by cli holder 1")
                && text.contains(&format!("fencing token {token}")),
            "{text}"
        );
        drop(holder.stdin.take());
        assert_eq!(wait(&mut holder, Duration::from_secs(30)), Some(0));
        assert_eq!(wait(&mut waiter, Duration::from_secs(30)), Some(0));
        let (code, status) = status_json();
        assert_eq!(code, Some(1), "free after both ran: {status}");
        assert_eq!(status["owner"], serde_json::Value::Null, "{status}");
        let listed = output(&["list", "--url", &url, "--json"]);
        let page: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
        assert_eq!(page["locks"], serde_json::json!([]), "{page}");
    }

    /// ZooKeeper over TLS with a SASL user (issue 12): `dlock run` and `dlock status` with a
    /// `zookeepers://alice:…@host?ca=…&cert=…&key=…&auth=sasl` URL, through the facade:
    /// while one `dlock run` holds, `status` says held and another `run --wait 0` exits 75;
    /// after it, `status` says free.
    #[cfg(feature = "zookeeper")]
    #[test]
    fn zookeeper_tls_and_sasl_urls_run_and_status() {
        let server = dlock_test_servers::shared_secure_zookeeper();
        let (user, password) = dlock_test_servers::SASL_USERS[0];
        let url = format!(
            "zookeepers://{user}:{password}@{}?{}&auth=sasl&prefix=cli-tls-{:016x}",
            server.secure_address,
            server.tls_params(),
            rand_id()
        );
        let key = "jobs/tls";
        let mut holder =
            hold_with_dlock_run(&["--url", &url, "--key", key, "--owner", "tls holder"]);
        let status = output(&["status", "--url", &url, "--key", key, "--json"]);
        assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
        let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
        assert_eq!(json["held"], true, "{json}");
        assert_eq!(json["owner"], "tls holder", "{json}");
        let tried = output(&[
            "run", "--url", &url, "--key", key, "--wait", "0", "--", "true",
        ]);
        assert_eq!(tried.status.code(), Some(75), "{}", stderr(&tried));
        assert!(!stderr(&tried).contains(password), "{}", stderr(&tried));
        drop(holder.stdin.take());
        assert_eq!(wait(&mut holder, Duration::from_secs(30)), Some(0));
        let status = output(&["status", "--url", &url, "--key", key]);
        assert_eq!(status.status.code(), Some(1), "free: {}", stderr(&status));
    }

    /// The critical sections the commands logged to `log`, one `token start end` line each.
    fn sections(log: &std::path::Path) -> Vec<(u64, u128, u128)> {
        std::fs::read_to_string(log)
            .expect("the commands wrote their sections")
            .lines()
            .map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                (
                    f[0].parse().unwrap(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                )
            })
            .collect()
    }

    /// Several `dlock run` on one key: critical sections never overlap and tokens grow in
    /// the order the sections start.
    pub fn parallel_runs_exclude_each_other(url: &str) {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("sections");
        let key = format!("cli-parallel-{:016x}", rand_id());
        let script = format!(
            "s=$(date +%s%N); sleep 0.05; e=$(date +%s%N); echo \"$DLOCK_FENCING_TOKEN $s $e\" >> {}",
            log.display()
        );
        let runs: Vec<Child> = (0..5)
            .map(|_| {
                dlock()
                    .args(["run", "--url", url, "--key", &key, "--wait", "60s", "--"])
                    .args(["sh", "-c", &script])
                    .spawn()
                    .expect("dlock runs")
            })
            .collect();
        for mut run in runs {
            assert_eq!(wait(&mut run, Duration::from_secs(90)), Some(0));
        }
        let mut sections = sections(&log);
        assert_eq!(sections.len(), 5);
        sections.sort_by_key(|s| s.1);
        for pair in sections.windows(2) {
            assert!(
                pair[1].1 >= pair[0].2,
                "critical sections overlap: {pair:?}"
            );
            assert!(pair[1].0 > pair[0].0, "tokens out of order: {pair:?}");
        }
    }

    /// `--wait 0` on a held key exits 75 at once; `status` says held, then free.
    pub fn wait_zero_on_a_held_key_exits_75(url: &str) {
        let key = format!("cli-held-{:016x}", rand_id());
        let mut holder = hold_with_dlock_run(&["--url", url, "--key", &key]);
        let tried = output(&[
            "run", "--url", url, "--key", &key, "--wait", "0", "--", "true",
        ]);
        assert_eq!(tried.status.code(), Some(75), "{}", stderr(&tried));
        let status = output(&["status", "--url", url, "--key", &key]);
        assert_eq!(status.status.code(), Some(0), "held: {}", stderr(&status));
        drop(holder.stdin.take());
        assert_eq!(wait(&mut holder, Duration::from_secs(30)), Some(0));
        let status = output(&["status", "--url", url, "--key", &key]);
        assert_eq!(
            status.status.code(),
            Some(1),
            "free after release: {}",
            stderr(&status)
        );
    }

    /// SIGTERM to dlock reaches the command; the lock is released after it exits.
    pub fn sigterm_reaches_the_command_then_the_lock_is_released(url: &str) {
        let key = format!("cli-sigterm-{:016x}", rand_id());
        let mut run = dlock()
            .args(["run", "--url", url, "--key", &key, "--", "sh", "-c"])
            .arg("trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.05; done")
            .stdout(Stdio::piped())
            .spawn()
            .expect("dlock runs");
        let mut lines = BufReader::new(run.stdout.take().expect("stdout")).lines();
        assert_eq!(lines.next().expect("a line").expect("utf-8"), "ready");
        let held = output(&["status", "--url", url, "--key", &key]);
        assert_eq!(held.status.code(), Some(0), "held: {}", stderr(&held));
        signal(&run, libc::SIGTERM);
        assert_eq!(lines.next().expect("a line").expect("utf-8"), "got-term");
        assert_eq!(wait(&mut run, Duration::from_secs(30)), Some(0));
        let free = output(&["status", "--url", url, "--key", &key]);
        assert_eq!(free.status.code(), Some(1), "free: {}", stderr(&free));
    }

    /// An unreachable backend exits 69 with a clear message.
    pub fn unreachable_backend_exits_69(url: &str) {
        let output = output(&[
            "run", "--url", url, "--key", "k", "--wait", "5s", "--", "true",
        ]);
        assert_eq!(output.status.code(), Some(69), "{}", stderr(&output));
        assert!(stderr(&output).contains("reach"), "{}", stderr(&output));
    }

    /// Issue 11: one URL names one lock through `dlock::connect`, the backend crate's own
    /// `connect` and `dlock --url`: a lock taken through the first is held for the other two.
    pub fn one_url_is_one_lock_everywhere<B, F>(base: &str, backend_connect: impl Fn(String) -> F)
    where
        B: dlock::LockBackend,
        F: std::future::Future<Output = Result<B, dlock::LockError>>,
    {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let key = format!("url-identity-{:016x}", rand_id());
        let url = format!("{base}?prefix=identity-{:08x}&lease=20s", rand_id() as u32);
        runtime.block_on(async {
            let facade = dlock::connect(&url).await.expect("the facade connects");
            let guard = facade.acquire(key.as_str()).await.expect("acquired");
            let backend = backend_connect(url.clone())
                .await
                .expect("the crate connects");
            let direct = dlock::Locker::new(backend);
            assert!(
                direct
                    .try_acquire(key.as_str())
                    .await
                    .expect("asked")
                    .is_none(),
                "the backend crate's connect reads {url} as another lock"
            );
            let status = output(&["status", "--url", &url, "--key", &key]);
            assert_eq!(
                status.status.code(),
                Some(0),
                "dlock --url: {}",
                stderr(&status)
            );
            guard.release().await.expect("released");
        });
    }

    /// A command still running when its lock is lost (the server froze past the lease) is
    /// terminated and dlock exits 70.
    pub fn lost_lock_terminates_the_command_with_70(url: &str, ttl: &str, server: &ServerProcess) {
        lost_terminates_the_command_with_70(&["run", "--key"], url, ttl, server);
    }

    /// Issue 15: the same for `dlock elect` when its leadership is lost.
    pub fn lost_leadership_terminates_the_command_with_70(
        url: &str,
        ttl: &str,
        server: &ServerProcess,
    ) {
        lost_terminates_the_command_with_70(&["elect", "--name"], url, ttl, server);
    }

    /// `how` is the subcommand and the flag that names the lock.
    fn lost_terminates_the_command_with_70(
        how: &[&str],
        url: &str,
        ttl: &str,
        server: &ServerProcess,
    ) {
        let key = format!("cli-lost-{:016x}", rand_id());
        let mut run = dlock()
            .arg(how[0])
            .args([
                "--url", url, how[1], &key, "--ttl", ttl, "--grace", "2s", "--",
            ])
            .args([
                "sh",
                "-c",
                "trap 'echo terminated; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dlock runs");
        let mut lines = BufReader::new(run.stdout.take().expect("stdout")).lines();
        assert_eq!(lines.next().expect("a line").expect("utf-8"), "ready");
        server.pause();
        let code = wait(&mut run, Duration::from_secs(60));
        server.resume();
        assert_eq!(code, Some(70));
        assert_eq!(lines.next().expect("a line").expect("utf-8"), "terminated");
    }

    /// A `dlock` process in a process group of its own, with its command: killing the group
    /// is the machine dying (dlock and its command at once). Killed on drop, so a failing
    /// test leaves nothing running.
    struct Group(Child);

    impl Group {
        fn spawn(command: &mut Command) -> Group {
            use std::os::unix::process::CommandExt;
            Group(command.process_group(0).spawn().expect("dlock runs"))
        }

        fn kill(&mut self) {
            // SAFETY: kill(2) on the process group of our own child.
            unsafe {
                libc::kill(-(self.0.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = self.0.wait();
        }
    }

    impl Drop for Group {
        fn drop(&mut self) {
            if self.0.try_wait().ok().flatten().is_none() {
                self.kill();
            }
        }
    }

    /// Issue 15: three `dlock elect` on one name. One leads; killed with its command
    /// (SIGKILL to both), the next takes over once the lease has run out; the leaders after
    /// it follow one another as each command ends. Each command takes a marker file with
    /// O_EXCL while it runs, so two at once would show; terms grow.
    pub fn killed_leader_is_replaced_within_the_lease(url: &str, ttl: &str) {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("log");
        let marker = dir.path().join("leader");
        let name = format!("cli-elect-{:016x}", rand_id());
        // `set -C` (noclobber) creates the marker with O_EXCL: it fails if another leader's
        // command still has it.
        let script = format!(
            r#"set -C
if ! true > "{marker}"; then echo overlap >> "{log}"; fi
echo "start $$ $DLOCK_FENCING_TOKEN" >> "{log}"
trap 'rm -f "{marker}"; echo "end $$" >> "{log}"; exit 0' TERM
echo "leading $DLOCK_FENCING_TOKEN"
while :; do sleep 0.05; done"#,
            marker = marker.display(),
            log = log.display()
        );
        let (lines, leading) = std::sync::mpsc::channel();
        let mut candidates: Vec<Group> = (0..3)
            .map(|index| {
                let value = format!("candidate-{index}");
                let mut group = Group::spawn(
                    dlock()
                        .args(["elect", "--url", url, "--name", &name, "--value", &value])
                        .args(["--ttl", ttl, "--wait", "60s", "--grace", "2s", "--"])
                        .args(["sh", "-c", &script])
                        .stdout(Stdio::piped()),
                );
                let stdout = group.0.stdout.take().expect("stdout");
                let lines = lines.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                        let _ = lines.send((index, line));
                    }
                });
                group
            })
            .collect();
        let next_leader = || -> (usize, u64) {
            let (index, line) = leading
                .recv_timeout(Duration::from_secs(60))
                .expect("a candidate leads");
            let term = line
                .strip_prefix("leading ")
                .and_then(|term| term.parse().ok())
                .unwrap_or_else(|| panic!("`leading TERM`: {line}"));
            (index, term)
        };

        let (first, first_term) = next_leader();
        candidates[first].kill();
        let killed = std::time::Instant::now();
        // Its command was killed with it; the marker it leaves is not a leader's.
        std::fs::remove_file(&marker).expect("the first leader's marker");
        let (second, second_term) = next_leader();
        let took_over = killed.elapsed();
        eprintln!("{url}: the next leader took over {took_over:?} after the kill");
        let lease = humantime::parse_duration(ttl).expect("a duration");
        assert_ne!(second, first);
        assert!(second_term > first_term, "{second_term} after {first_term}");
        // The lease, then the waiter's wake-up and a process start on a loaded machine.
        assert!(
            took_over < lease + Duration::from_secs(4),
            "the next leader took {took_over:?} with a {lease:?} lease"
        );

        signal(&candidates[second].0, libc::SIGTERM);
        assert_eq!(
            wait(&mut candidates[second].0, Duration::from_secs(30)),
            Some(0)
        );
        let (third, third_term) = next_leader();
        assert!(third != first && third != second);
        assert!(third_term > second_term, "{third_term} after {second_term}");
        signal(&candidates[third].0, libc::SIGTERM);
        assert_eq!(
            wait(&mut candidates[third].0, Duration::from_secs(30)),
            Some(0)
        );

        let log = std::fs::read_to_string(&log).expect("the commands wrote");
        let entries: Vec<Vec<&str>> = log.lines().map(|l| l.split(' ').collect()).collect();
        let shape: Vec<&str> = entries.iter().map(|entry| entry[0]).collect();
        // No overlap line; the killed leader never ended, each later one ended before the next
        // started.
        assert_eq!(shape, ["start", "start", "end", "start", "end"], "{log}");
        assert_eq!(entries[1][1], entries[2][1], "{log}");
        assert_eq!(entries[3][1], entries[4][1], "{log}");
        let terms: Vec<u64> = [0, 1, 3]
            .map(|i| entries[i][2].parse().expect("a term"))
            .to_vec();
        assert_eq!(terms, [first_term, second_term, third_term], "{log}");
    }

    /// Issue 15: `dlock observe --count 2` prints the leader a `dlock elect` process
    /// published, then `-` once it resigned, and exits 0.
    pub fn observe_prints_the_leader_then_its_change(url: &str) {
        let name = format!("cli-observe-{:016x}", rand_id());
        let mut leader = dlock()
            .args(["elect", "--url", url, "--name", &name, "--value", "web 1"])
            .args([
                "--",
                "sh",
                "-c",
                "echo $DLOCK_FENCING_TOKEN; read line || true",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("dlock runs");
        let term: u64 = BufReader::new(leader.stdout.take().expect("stdout"))
            .lines()
            .next()
            .expect("a line")
            .expect("utf-8")
            .parse()
            .expect("the term");
        let mut observer = dlock()
            .args(["observe", "--url", url, "--name", &name, "--count", "2"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("dlock runs");
        let mut lines = BufReader::new(observer.stdout.take().expect("stdout")).lines();
        assert_eq!(
            lines.next().expect("a line").expect("utf-8"),
            format!("{term} web 1")
        );
        drop(leader.stdin.take());
        assert_eq!(wait(&mut leader, Duration::from_secs(30)), Some(0));
        assert_eq!(lines.next().expect("a line").expect("utf-8"), "-");
        assert_eq!(wait(&mut observer, Duration::from_secs(30)), Some(0));
        assert!(lines.next().is_none(), "two lines, then the end");

        let json = output(&[
            "observe", "--url", url, "--name", &name, "--count", "1", "--json",
        ]);
        assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
        let line: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
        assert_eq!(line["leader"], false, "{line}");
    }

    /// Issue 15: `dlock run --permits 3`. Three holders block a fourth (`--wait 0` exits
    /// 75), a mismatched count or a plain lock on the key is bad usage (64); then ten runs
    /// at once never have more than three commands inside, by the commands' own clocks.
    pub fn permits_admit_at_most_n_at_once(url: &str) {
        let key = format!("cli-permits-{:016x}", rand_id());
        let run = |extra: &[&str]| {
            let mut command = dlock();
            command
                .args(["run", "--url", url, "--key", &key])
                .args(extra);
            command
        };
        let mut holders: Vec<Child> = (0..3)
            .map(|_| {
                run(&["--permits", "3", "--", "sh", "-c"])
                    .arg("echo ready; read line || true")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("dlock runs")
            })
            .collect();
        for holder in &mut holders {
            let mut lines = BufReader::new(holder.stdout.take().expect("stdout")).lines();
            if let Some(line) = lines.next() {
                assert_eq!(line.expect("utf-8"), "ready");
            } else {
                let code = wait(holder, Duration::from_secs(30));
                panic!("a permit holder exited {code:?} before its command ran (stderr above)");
            }
        }
        for (extra, code) in [
            (&["--permits", "3"][..], 75),
            (&["--permits", "2"], 64),
            (&[], 64),
        ] {
            let tried = run(extra)
                .args(["--wait", "0", "--", "true"])
                .output()
                .expect("dlock runs");
            assert_eq!(
                tried.status.code(),
                Some(code),
                "{extra:?}: {}",
                stderr(&tried)
            );
        }
        for mut holder in holders {
            drop(holder.stdin.take());
            assert_eq!(wait(&mut holder, Duration::from_secs(30)), Some(0));
        }

        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("sections");
        let script = format!(
            "s=$(date +%s%N); sleep 0.2; e=$(date +%s%N); echo \"$DLOCK_FENCING_TOKEN $s $e\" >> {}",
            log.display()
        );
        let runs: Vec<Child> = (0..10)
            .map(|_| {
                run(&[
                    "--permits",
                    "3",
                    "--wait",
                    "120s",
                    "--",
                    "sh",
                    "-c",
                    &script,
                ])
                .spawn()
                .expect("dlock runs")
            })
            .collect();
        for mut run in runs {
            assert_eq!(wait(&mut run, Duration::from_secs(150)), Some(0));
        }
        let sections = sections(&log);
        assert_eq!(sections.len(), 10);
        // The most sections inside at once: at some section's start, those begun and not
        // ended (each section lies within its command's hold of a permit).
        let most = sections
            .iter()
            .map(|&(_, at, _)| {
                sections
                    .iter()
                    .filter(|&&(_, start, end)| start <= at && at < end)
                    .count()
            })
            .max()
            .unwrap_or(0);
        eprintln!("{url}: at most {most} of 10 `dlock run --permits 3` inside at once");
        assert!(most <= 3, "{most} commands inside at once: {sections:?}");
        let mut tokens: Vec<u64> = sections.iter().map(|s| s.0).collect();
        tokens.sort_unstable();
        tokens.dedup();
        assert_eq!(tokens.len(), 10, "each permit its own token: {sections:?}");
    }

    /// Issue 13 on etcd, across processes: `dlock run --owner` holds, a second `dlock run`
    /// waits, and `dlock status --json` / `dlock list --json` from other processes name the
    /// holder's owner, its token, its acquisition time and the one waiter.
    #[cfg(feature = "etcd")]
    mod etcd {
        use super::*;

        fn json(args: &[&str]) -> serde_json::Value {
            let out = output(args);
            assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
            serde_json::from_slice(&out.stdout).expect("one JSON value")
        }

        #[test]
        fn status_and_list_name_the_owner_token_and_waiters() {
            let url = format!(
                "{}?prefix=cli-p13-{:016x}",
                dlock_test_servers::shared_etcd().url,
                rand_id()
            );
            let url = url.as_str();
            let mut holder =
                hold_with_dlock_run(&["--url", url, "--key", "jobs/a", "--owner", "etcd holder 1"]);
            let mut waiter = dlock()
                .args([
                    "run",
                    "--url",
                    url,
                    "--key",
                    "jobs/a",
                    "--owner",
                    "etcd waiter",
                ])
                .args(["--wait", "60s", "--", "true"])
                .spawn()
                .expect("dlock runs");
            // The waiter's process takes a moment to queue: poll, with a deadline.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let status = loop {
                let status = json(&["status", "--url", url, "--key", "jobs/a", "--json"]);
                if status["waiters"] == 1 {
                    break status;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the waiter never queued: {status}"
                );
                std::thread::sleep(Duration::from_millis(50));
            };
            assert_eq!(status["held"], true, "{status}");
            assert_eq!(status["owner"], "etcd holder 1", "{status}");
            assert!(status["fencing_token"].as_u64().is_some(), "{status}");
            assert!(status["acquired_at"].is_string(), "{status}");
            assert!(status["remaining_lease_ms"].as_u64().is_some(), "{status}");

            let text = output(&["status", "--url", url, "--key", "jobs/a"]);
            let text = String::from_utf8_lossy(&text.stdout).into_owned();
            assert!(text.contains("held by etcd holder 1 since"), "{text}");

            let listed = json(&["list", "--url", url, "--prefix", "jobs/", "--json"]);
            let locks = listed["locks"].as_array().expect("a list");
            assert_eq!(locks.len(), 1, "{listed}");
            assert_eq!(locks[0]["key"], "jobs/a", "{listed}");
            assert_eq!(locks[0]["owner"], "etcd holder 1", "{listed}");
            assert_eq!(
                locks[0]["fencing_token"], status["fencing_token"],
                "{listed}"
            );
            assert_eq!(locks[0]["waiters"], 1, "{listed}");
            assert_eq!(listed["next"], serde_json::Value::Null, "{listed}");
            let elsewhere = json(&["list", "--url", url, "--prefix", "mail/", "--json"]);
            assert_eq!(elsewhere["locks"], serde_json::json!([]), "{elsewhere}");

            drop(holder.stdin.take());
            assert_eq!(wait(&mut holder, Duration::from_secs(30)), Some(0));
            assert_eq!(wait(&mut waiter, Duration::from_secs(30)), Some(0));
            let free = output(&["status", "--url", url, "--key", "jobs/a", "--json"]);
            assert_eq!(free.status.code(), Some(1), "free: {}", stderr(&free));
            let listed = json(&["list", "--url", url, "--json"]);
            assert_eq!(listed["locks"], serde_json::json!([]), "{listed}");
        }
    }
}

/// The completions and the man page come from the same definition as the options.
#[test]
fn completions_and_man_page_are_generated() {
    let bash = output(&["completions", "bash"]);
    assert_eq!(bash.status.code(), Some(0), "{}", stderr(&bash));
    let script = String::from_utf8_lossy(&bash.stdout);
    for word in [
        "--ttl",
        "status",
        "elect",
        "observe",
        "--permits",
        "--value",
    ] {
        assert!(script.contains(word), "{word} missing: {script}");
    }
    let man = output(&["manpage"]);
    assert_eq!(man.status.code(), Some(0), "{}", stderr(&man));
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH dlock"),
        "{page}"
    );
    assert_eq!(output(&["completions", "tcsh"]).status.code(), Some(64));
}

/// Issue 9 item 6: a command that ends after the lock was lost, before dlock noticed (here the
/// server forgot every key while the command ran, and the next renewal is far off), did not
/// run under the lock throughout: dlock exits 70, not with the command's 0.
#[cfg(feature = "redis")]
#[test]
fn a_lock_lost_before_the_command_ends_exits_70() {
    let server = dlock_test_servers::RedisServer::start();
    let key = format!("cli-unnoticed-{:016x}", rand_id());
    let flush = format!("redis-cli -p {} FLUSHALL >/dev/null", server.port());
    let output = dlock()
        .args(["run", "--url", &server.url(), "--key", &key, "--ttl", "30s"])
        .args(["--", "sh", "-c", &flush])
        .output()
        .expect("dlock runs");
    assert_eq!(output.status.code(), Some(70), "{}", stderr(&output));
    assert!(stderr(&output).contains("lost"), "{}", stderr(&output));
}

/// Issue 11: the URL's `lease` and `wait` hold unless the user gave `--ttl` or `--wait`; the
/// command's defaults never override them. The child asks `dlock status` for the remaining
/// lease, and a second run with `?wait=` in its URL gives up instead of waiting forever.
#[cfg(feature = "redis")]
#[test]
fn url_options_hold_unless_a_flag_is_given() {
    let url = &dlock_test_servers::shared_redis().url;
    let key = format!("cli-url-options-{:016x}", rand_id());
    let dlock_path = env!("CARGO_BIN_EXE_dlock");
    let with_lease = format!("{url}?lease=5s");
    let probe = format!(
        "{dlock_path} status --url '{url}' --key {key} --json; echo ready; read line || true"
    );
    let mut holder = dlock()
        .args([
            "run",
            "--url",
            &with_lease,
            "--key",
            &key,
            "--",
            "sh",
            "-c",
            &probe,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("dlock runs");
    let mut lines = BufReader::new(holder.stdout.take().expect("stdout")).lines();
    let status = lines.next().expect("a line").expect("utf-8");
    let remaining: u64 = status
        .split("\"remaining_lease_ms\":")
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no remaining lease in {status}"));
    assert!(
        remaining <= 5_000,
        "the URL's 5 s lease was overridden: {status}"
    );
    assert_eq!(lines.next().expect("a line").expect("utf-8"), "ready");

    let with_wait = format!("{url}?wait=300ms");
    let tried = output(&["run", "--url", &with_wait, "--key", &key, "--", "true"]);
    assert_eq!(tried.status.code(), Some(75), "{}", stderr(&tried));
    let flag_wins = output(&[
        "run",
        "--url",
        &with_lease,
        "--key",
        &key,
        "--wait",
        "0",
        "--",
        "true",
    ]);
    assert_eq!(flag_wins.status.code(), Some(75), "{}", stderr(&flag_wins));

    drop(holder.stdin.take());
    assert_eq!(wait(&mut holder, Duration::from_secs(30)), Some(0));
}

/// The tests of [`across_processes`] for one backend, on the harness's real servers.
macro_rules! backend_tests {
    ($module:ident, feature = $feature:literal, shared = $shared:path,
     unreachable = $unreachable:literal, private = $private:path, url_suffix = $suffix:literal,
     ttl = $ttl:literal, connect = $connect:path, permits = [$(#[$permits:meta])*]) => {
        #[cfg(feature = $feature)]
        mod $module {
            use dlock_test_servers::free_port;

            use super::across_processes;

            #[test]
            fn parallel_runs_exclude_each_other() {
                across_processes::parallel_runs_exclude_each_other(&$shared().url);
            }

            #[test]
            fn wait_zero_on_a_held_key_exits_75() {
                across_processes::wait_zero_on_a_held_key_exits_75(&$shared().url);
            }

            #[test]
            fn sigterm_reaches_the_command_then_the_lock_is_released() {
                across_processes::sigterm_reaches_the_command_then_the_lock_is_released(
                    &$shared().url,
                );
            }

            #[test]
            fn unreachable_backend_exits_69() {
                across_processes::unreachable_backend_exits_69(&format!($unreachable, free_port()));
            }

            #[test]
            fn one_url_is_one_lock_everywhere() {
                across_processes::one_url_is_one_lock_everywhere(
                    &$shared().url,
                    |url| async move { $connect(&url).await },
                );
            }

            #[test]
            fn killed_leader_is_replaced_within_the_lease() {
                across_processes::killed_leader_is_replaced_within_the_lease(
                    &format!("{}{}", $shared().url, $suffix),
                    $ttl,
                );
            }

            #[test]
            fn observe_prints_the_leader_then_its_change() {
                across_processes::observe_prints_the_leader_then_its_change(&$shared().url);
            }

            #[test]
            $(#[$permits])*
            fn permits_admit_at_most_n_at_once() {
                across_processes::permits_admit_at_most_n_at_once(&$shared().url);
            }

            #[test]
            fn bench_hold_reports_no_lost_lock_and_server_figures() {
                across_processes::bench_hold_reports_no_lost_lock_and_server_figures(
                    &$shared().url,
                );
            }

            #[test]
            fn lost_lock_terminates_the_command_with_70() {
                let mut server = $private();
                let url = format!("{}{}", server.url(), $suffix);
                across_processes::lost_lock_terminates_the_command_with_70(
                    &url,
                    $ttl,
                    server.process(),
                );
            }

            #[test]
            fn lost_leadership_terminates_the_command_with_70() {
                let mut server = $private();
                let url = format!("{}{}", server.url(), $suffix);
                across_processes::lost_leadership_terminates_the_command_with_70(
                    &url,
                    $ttl,
                    server.process(),
                );
            }
        }
    };
}

backend_tests!(
    redis,
    feature = "redis",
    shared = dlock_test_servers::shared_redis,
    unreachable = "redis://127.0.0.1:{}",
    private = dlock_test_servers::RedisServer::start,
    url_suffix = "",
    ttl = "1s",
    connect = dlock::redis::connect,
    permits = []
);
backend_tests!(
    zookeeper,
    feature = "zookeeper",
    shared = dlock_test_servers::shared_zookeeper,
    unreachable = "zookeeper://127.0.0.1:{}?connect_timeout=2s",
    private = dlock_test_servers::ZooKeeperServer::start,
    url_suffix = "?session_timeout=2s",
    ttl = "2s",
    connect = dlock::zookeeper::connect,
    permits = []
);
backend_tests!(
    etcd,
    feature = "etcd",
    shared = dlock_test_servers::shared_etcd,
    unreachable = "etcd://127.0.0.1:{}?connect_timeout=2s",
    private = dlock_test_servers::EtcdServer::start,
    url_suffix = "",
    ttl = "2s",
    connect = dlock::etcd::connect,
    permits = []
);

/// Regression (issue 9): Redlock over three instances, one frozen with SIGSTOP (it accepts
/// connections but never answers): `dlock run` with a 2 s lease gets the lock from the other
/// two, runs the command and exits 0, promptly.
#[cfg(feature = "redis")]
#[test]
fn redlock_run_with_a_frozen_instance_exits_0() {
    let mut servers: Vec<_> = (0..3)
        .map(|_| dlock_test_servers::RedisServer::start())
        .collect();
    let hosts: Vec<String> = servers
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port()))
        .collect();
    let url = format!("redis+redlock://{}", hosts.join(","));
    let key = format!("cli-redlock-frozen-{:016x}", rand_id());
    servers[2].process().pause();
    let started = std::time::Instant::now();
    let mut run = dlock()
        .args(["run", "--url", &url, "--key", &key, "--ttl", "2s", "--"])
        .args(["sh", "-c", "sleep 3"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("dlock runs");
    let code = wait(&mut run, Duration::from_secs(60));
    servers[2].process().resume();
    let mut errors = String::new();
    std::io::Read::read_to_string(&mut run.stderr.take().expect("stderr"), &mut errors)
        .expect("stderr");
    assert_eq!(code, Some(0), "{errors}");
    // The command sleeps 3 s (more than a lease, so renewals must get through); the frozen
    // instance's timeouts (2-4 s each) would add several seconds. 3 s of slack for a
    // loaded 2-core machine starting a process.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
}

/// Issue 13 on Redis and Redlock: `dlock status` and `dlock list`, run as their own processes,
/// name the holder a `dlock run --owner` stored, its token and the waiter behind it, and list
/// nothing once both are done.
#[cfg(feature = "redis")]
mod redis_introspection {
    use super::*;

    fn json_of(output: &Output) -> serde_json::Value {
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stderr(output)))
    }

    /// `dlock status` (and, where the backend `lists`, `dlock list`) name the holder of a
    /// lock `dlock run` holds while another waits; where it does not list, `dlock list`
    /// says so (exit 69, `Unsupported`).
    fn status_and_list_name_the_holder(base: &str, lists: bool) {
        let url = format!("{base}?prefix=cli-introspect-{:08x}", rand_id() as u32);
        let key = "jobs/report";
        let owner = "ops@cli-test/4711/nightly";
        let mut holder = dlock()
            .args(["run", "--url", &url, "--key", key, "--owner", owner, "--"])
            .args(["sh", "-c", "echo $DLOCK_FENCING_TOKEN; read line || true"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("dlock runs");
        let mut lines = BufReader::new(holder.stdout.take().expect("stdout")).lines();
        let token: u64 = lines
            .next()
            .expect("a line")
            .expect("utf-8")
            .parse()
            .expect("the token");
        let mut waiter = dlock()
            .args([
                "run", "--url", &url, "--key", key, "--wait", "60s", "--", "true",
            ])
            .spawn()
            .expect("dlock runs");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            let status = output(&["status", "--url", &url, "--key", key, "--json"]);
            assert_eq!(status.status.code(), Some(0), "held: {}", stderr(&status));
            let json = json_of(&status);
            if json["waiters"] == 1 {
                break json;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the waiter never stood in line: {json}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status["held"], true, "{status}");
        assert_eq!(status["owner"], owner, "{status}");
        assert_eq!(status["fencing_token"], token, "{status}");
        assert!(status["acquired_at"].is_string(), "{status}");
        assert!(status["remaining_lease_ms"].is_u64(), "{status}");
        let text = output(&["status", "--url", &url, "--key", key]);
        assert!(
            String::from_utf8_lossy(&text.stdout).contains(&format!("held by {owner} since")),
            "{text:?}"
        );
        let listed = output(&["list", "--url", &url, "--prefix", "jobs/", "--json"]);
        if !lists {
            assert_eq!(listed.status.code(), Some(69), "{}", stderr(&listed));
            assert!(
                stderr(&listed).contains("not support"),
                "{}",
                stderr(&listed)
            );
            drop(holder.stdin.take());
            assert_eq!(wait(&mut holder, Duration::from_secs(30)), Some(0));
            assert_eq!(wait(&mut waiter, Duration::from_secs(30)), Some(0));
            return;
        }
        assert_eq!(listed.status.code(), Some(0), "{}", stderr(&listed));
        let listed = json_of(&listed);
        let locks = listed["locks"].as_array().expect("locks");
        assert_eq!(locks.len(), 1, "{listed}");
        assert_eq!(locks[0]["key"], key, "{listed}");
        assert_eq!(locks[0]["owner"], owner, "{listed}");
        assert_eq!(locks[0]["fencing_token"], token, "{listed}");
        assert_eq!(locks[0]["waiters"], 1, "{listed}");
        assert_eq!(listed["next"], serde_json::Value::Null, "{listed}");
        let elsewhere = output(&["list", "--url", &url, "--prefix", "mail/", "--json"]);
        assert_eq!(json_of(&elsewhere)["locks"], serde_json::json!([]));
        drop(holder.stdin.take());
        assert_eq!(wait(&mut holder, Duration::from_secs(30)), Some(0));
        assert_eq!(wait(&mut waiter, Duration::from_secs(30)), Some(0));
        let after = output(&["list", "--url", &url, "--json"]);
        assert_eq!(
            json_of(&after)["locks"],
            serde_json::json!([]),
            "nothing held"
        );
    }

    #[test]
    fn single_instance() {
        status_and_list_name_the_holder(&dlock_test_servers::shared_redis().url, true);
    }

    #[test]
    fn redlock() {
        let servers: Vec<_> = (0..3)
            .map(|_| dlock_test_servers::RedisServer::start())
            .collect();
        let hosts: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        status_and_list_name_the_holder(&format!("redis+redlock://{}", hosts.join(",")), true);
    }

    /// Issue 12: the same through Sentinel (`redis+sentinel://s1,s2,s3/<master>`).
    #[test]
    fn sentinel() {
        let deployment = dlock_test_servers::SentinelDeployment::start(Duration::from_secs(1));
        status_and_list_name_the_holder(&deployment.url(), true);
    }

    /// Issue 12: the same on a Redis Cluster (`redis+cluster://seed1,seed2,…`), which has no
    /// `list`.
    #[test]
    fn cluster() {
        let cluster = dlock_test_servers::RedisCluster::start();
        status_and_list_name_the_holder(&cluster.url(), false);
    }
}

fn rand_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    nanos ^ (std::process::id() as u64) << 32
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

/// Starts `dlock run ARGS -- sh -c 'echo ready; read line || true'` and returns once the
/// command runs, so the lock is held; closing the child's stdin ends the command, and
/// `dlock run` then releases the lock.
fn hold_with_dlock_run(args: &[&str]) -> Child {
    let mut holder = dlock()
        .arg("run")
        .args(args)
        .args(["--", "sh", "-c", "echo ready; read line || true"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("dlock runs");
    let mut lines = BufReader::new(holder.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().expect("a line").expect("utf-8"), "ready");
    holder
}

/// Calls `probe` every 20 ms until it gives something, up to `limit`.
fn poll<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` up to `limit`, killing it after that; returns its exit code.
fn wait(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("dlock did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
