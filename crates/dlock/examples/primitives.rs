//! Leader election, a semaphore and a read-write lock on one locker, on the in-memory backend.
//! The output shows one leader at a time with growing terms, at most two permit holders at
//! once, and readers sharing while the writer waits.
//!
//! `cargo run -p dlock --example primitives` (set `DLOCK_URL` to run it on a server instead,
//! with that backend's feature on and its support for each mode).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dlock::{LockError, Locker};

#[tokio::main]
async fn main() -> Result<(), LockError> {
    let url = std::env::var("DLOCK_URL").unwrap_or_else(|_| "memory://?lease=10s".to_owned());
    let locker = dlock::connect(&url).await?;
    election(&locker).await?;
    semaphore(&locker).await?;
    rw_lock(&locker).await
}

/// Two candidates take turns leading; an observer prints every change.
async fn election(locker: &Locker) -> Result<(), LockError> {
    let mut changes = locker.election("examples/scheduler")?.observe();
    let (seen, mut seen_by_observer) = tokio::sync::mpsc::unbounded_channel();
    let observer = tokio::spawn(async move {
        loop {
            match changes.next().await? {
                Some(leader) => {
                    let term = leader.term.map_or("?".to_owned(), |t| t.to_string());
                    println!("observer: leader {} (term {term})", leader.value);
                    if seen.send(leader.value).is_err() {
                        return Ok::<(), LockError>(()); // the candidates are done
                    }
                }
                None => println!("observer: nobody leads"),
            }
        }
    });
    for address in ["10.0.0.7:8080", "10.0.0.8:8080"] {
        let leadership = locker
            .election("examples/scheduler")?
            .campaign(address)
            .await?;
        println!("{address}: leading, term {}", leadership.term());
        // Lead until the observer has seen it, then step down for the next candidate.
        loop {
            match seen_by_observer.recv().await {
                Some(value) if value == address => break,
                Some(_) => {}
                // The observer stopped on an error: report it.
                None => return observer.await.expect("the observer ran"),
            }
        }
        leadership.resign().await?;
    }
    drop(seen_by_observer);
    observer.abort();
    Ok(())
}

/// Five workers share a semaphore of two permits.
async fn semaphore(locker: &Locker) -> Result<(), LockError> {
    let downloads = locker.semaphore("examples/downloads", 2)?;
    let inside = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for worker in 1..=5 {
        let (downloads, inside) = (downloads.clone(), inside.clone());
        workers.push(tokio::spawn(async move {
            let permit = downloads.acquire().await?;
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            println!(
                "worker {worker}: permit with token {}, {now} of 2 inside",
                permit.fencing_token()
            );
            assert!(now <= 2, "more holders than permits");
            tokio::time::sleep(Duration::from_millis(50)).await; // the download
            inside.fetch_sub(1, Ordering::SeqCst);
            permit.release().await
        }));
    }
    for worker in workers {
        worker.await.expect("the worker ran")?;
    }
    Ok(())
}

/// Two readers share the lock; the writer gets it when both are done.
async fn rw_lock(locker: &Locker) -> Result<(), LockError> {
    let config = locker.rw_lock("examples/config")?;
    let first = config.read().await?;
    let second = config.read().await?;
    println!(
        "two readers at once, tokens {} and {}",
        first.fencing_token(),
        second.fencing_token()
    );
    assert!(
        config.try_write().await?.is_none(),
        "the writer waits for the readers"
    );
    first.release().await?;
    second.release().await?;
    let writer = config.write().await?;
    println!("the writer, token {}", writer.fencing_token());
    writer.release().await
}
