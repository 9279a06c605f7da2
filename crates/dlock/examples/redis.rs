//! The quick-start's application code on redis: only the URL differs.
//!
//! `cargo run -p dlock --features redis --example redis` (set `DLOCK_URL` to point elsewhere than
//! `redis://127.0.0.1:6379`; `docker compose up -d --wait` starts one there).

mod app;

#[tokio::main]
async fn main() -> Result<(), dlock::LockError> {
    let locker = dlock::connect(&app::url_or("redis://127.0.0.1:6379")).await?;
    app::contend(locker, 4, 3).await
}
