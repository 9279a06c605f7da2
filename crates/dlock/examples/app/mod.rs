//! The application code every example shares: it only sees a `Locker`, so the backend is
//! whatever the URL names.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock::{LockError, Locker};

/// Several workers contend for one lock; each checks that it is alone inside and that
/// fencing tokens grow, and prints what it saw.
pub async fn contend(locker: Locker, workers: usize, rounds: usize) -> Result<(), LockError> {
    println!(
        "{workers} workers, {rounds} rounds each, one lock, backend {}",
        locker.capabilities().name
    );
    let inside = Arc::new(AtomicUsize::new(0));
    let last_token = Arc::new(Mutex::new(0u64));
    let mut tasks = Vec::new();
    for worker in 1..=workers {
        let (locker, inside, last_token) = (locker.clone(), inside.clone(), last_token.clone());
        tasks.push(tokio::spawn(async move {
            for round in 1..=rounds {
                let guard = locker.acquire("examples/report").await?;
                let token = guard.fencing_token().get();
                let holders = inside.fetch_add(1, Ordering::SeqCst) + 1;
                {
                    let mut last = last_token.lock().unwrap();
                    assert!(token > *last, "fencing tokens must grow");
                    *last = token;
                }
                println!(
                    "worker {worker} round {round}: acquired, fencing token {token:>2}, \
                     holders inside now: {holders}"
                );
                assert_eq!(holders, 1, "mutual exclusion broken");
                tokio::time::sleep(Duration::from_millis(20)).await; // the protected work
                inside.fetch_sub(1, Ordering::SeqCst);
                guard.release().await?;
            }
            Ok::<_, LockError>(())
        }));
    }
    for task in tasks {
        task.await.expect("worker task")?;
    }
    println!(
        "done: {} acquisitions, never two holders at once, tokens strictly growing",
        workers * rounds
    );
    Ok(())
}

/// `DLOCK_URL` if set, else `default`.
pub fn url_or(default: &str) -> String {
    std::env::var("DLOCK_URL").unwrap_or_else(|_| default.to_owned())
}
