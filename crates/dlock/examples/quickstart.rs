//! Several workers contend for one lock. The output shows that only one is inside at a time
//! and that fencing tokens grow with every acquisition.
//!
//! Runs on the in-memory backend; set `DLOCK_URL` (e.g. `redis://127.0.0.1:6379`, with the
//! matching feature on) to run the same code against a server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const WORKERS: usize = 4;
const ROUNDS: usize = 3;

#[tokio::main]
async fn main() -> Result<(), dlock::LockError> {
    let url = std::env::var("DLOCK_URL").unwrap_or_else(|_| "memory://".to_owned());
    let locker = dlock::connect(&format!(
        "{url}{}lease=10s",
        if url.contains('?') { "&" } else { "?" }
    ))
    .await?;
    println!(
        "{WORKERS} workers, {ROUNDS} rounds each, one lock, backend {}",
        locker.capabilities().name
    );

    let inside = Arc::new(AtomicUsize::new(0));
    let last_token = Arc::new(std::sync::Mutex::new(0u64));
    let mut workers = Vec::new();
    for worker in 1..=WORKERS {
        let (locker, inside, last_token) = (locker.clone(), inside.clone(), last_token.clone());
        workers.push(tokio::spawn(async move {
            for round in 1..=ROUNDS {
                let guard = locker.acquire("quickstart/report").await?;
                let token = guard.fencing_token().get();
                let others_inside = inside.fetch_add(1, Ordering::SeqCst);
                {
                    let mut last = last_token.lock().unwrap();
                    assert!(token > *last, "fencing tokens must grow");
                    *last = token;
                }
                println!(
                    "worker {worker} round {round}: acquired, fencing token {token:>2}, \
                     holders inside now: {}",
                    others_inside + 1
                );
                assert_eq!(others_inside, 0, "mutual exclusion broken");
                tokio::time::sleep(Duration::from_millis(20)).await; // the protected work
                inside.fetch_sub(1, Ordering::SeqCst);
                guard.release().await?;
            }
            Ok::<_, dlock::LockError>(())
        }));
    }
    for worker in workers {
        worker.await.expect("worker task")?;
    }
    println!(
        "done: {} acquisitions, never two holders at once, tokens strictly growing",
        WORKERS * ROUNDS
    );
    Ok(())
}
