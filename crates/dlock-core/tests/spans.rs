//! Issue 13: one tracing span per acquisition, with the lock's events inside it.
//!
//! Alone in its binary: tracing caches whether a call site is enabled across threads, so a
//! test without a subscriber running beside it can switch the span off for this one.

use std::sync::{Arc, Mutex};

use dlock_core::{LockOptions, Locker, MemoryServer};

/// A writer the test reads back: what a log file would show.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One span per acquisition, carrying key, backend and the token once granted, with the
/// lock's events (grant, release, loss) inside it, and nothing of the owner in any field.
#[test]
fn each_acquisition_has_a_span_with_its_events() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .without_time()
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let server = MemoryServer::new();
            let locker = Locker::new(server.client())
                .with_options(LockOptions::default().owner("secret-free owner"))
                .unwrap();
            let guard = locker.acquire("reports/daily").await.unwrap();
            let token = guard.fencing_token();
            guard.release().await.unwrap();
            let guard = locker.acquire("reports/weekly").await.unwrap();
            server.forget("dlock", guard.key());
            guard.lost().await;
            assert_eq!(token.get(), 1);
        });
    });
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let daily = "dlock.lock{key=reports/daily backend=\"memory\" prefix=dlock token=1}";
    let weekly = "dlock.lock{key=reports/weekly backend=\"memory\" prefix=dlock token=2}";
    for (span, event) in [
        (daily, "lock acquired"),
        (daily, "lock released"),
        (weekly, "lock acquired"),
        (weekly, "lock lost"),
    ] {
        assert!(
            log.lines()
                .any(|line| line.contains(span) && line.contains(event)),
            "no `{event}` inside `{span}` in:\n{log}"
        );
    }
    assert!(!log.contains("secret-free owner"), "{log}");
}
