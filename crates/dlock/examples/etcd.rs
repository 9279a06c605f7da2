//! The quick-start's application code on etcd: only the URL differs.
//!
//! `cargo run -p dlock --features etcd --example etcd` (set `DLOCK_URL` to point elsewhere than
//! `etcd://127.0.0.1:2379`; `docker compose up -d --wait` starts one there).

mod app;

#[tokio::main]
async fn main() -> Result<(), dlock::LockError> {
    let locker = dlock::connect(&app::url_or("etcd://127.0.0.1:2379")).await?;
    app::contend(locker, 4, 3).await
}
