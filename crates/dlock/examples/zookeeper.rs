//! The quick-start's application code on zookeeper: only the URL differs.
//!
//! `cargo run -p dlock --features zookeeper --example zookeeper` (set `DLOCK_URL` to point elsewhere than
//! `zookeeper://127.0.0.1:2181`; `docker compose up -d --wait` starts one there).

mod app;

#[tokio::main]
async fn main() -> Result<(), dlock::LockError> {
    let locker = dlock::connect(&app::url_or("zookeeper://127.0.0.1:2181")).await?;
    app::contend(locker, 4, 3).await
}
