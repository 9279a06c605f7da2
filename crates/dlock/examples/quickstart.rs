//! Several workers contend for one lock on the in-memory backend. The output shows that only
//! one is inside at a time and that fencing tokens grow with every acquisition.
//!
//! `cargo run -p dlock --example quickstart` (set `DLOCK_URL` to run it on a server instead,
//! with that backend's feature on).

mod app;

#[tokio::main]
async fn main() -> Result<(), dlock::LockError> {
    let locker = dlock::connect(&app::url_or("memory://?lease=10s")).await?;
    app::contend(locker, 4, 3).await
}
