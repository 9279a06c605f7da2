//! `dlock status`: is a lock held, by which token, for how long.

use dlock::{LockError, LockInfo};

use crate::cli::StatusArgs;
use crate::exit;

/// Prints the lock's state; exit 0 when held, 1 when free.
pub async fn status(args: StatusArgs) -> u8 {
    let locker = match dlock::connect(&args.url).await {
        Ok(locker) => locker,
        Err(error) => return exit::report(&error),
    };
    let key = match dlock::LockKey::new(args.key.as_str()) {
        Ok(key) => key,
        Err(error) => return exit::report(&error),
    };
    let options = locker.options().clone();
    let (info, probed) = match locker.backend().inspect(&key, &options).await {
        Ok(info) => (info, false),
        Err(LockError::Unsupported { .. }) => match probe(&locker, &key).await {
            Ok(info) => (info, true),
            Err(error) => return exit::report(&error),
        },
        Err(error) => return exit::report(&error),
    };
    if args.json {
        let json = serde_json::json!({
            "key": key.as_str(),
            "held": info.held,
            "fencing_token": info.fencing_token.map(|t| t.get()),
            "remaining_lease_ms": info.remaining_lease.map(|d| d.as_millis() as u64),
            "waiters": info.waiters,
        });
        println!("{json}");
    } else {
        println!("{}", describe(&key, &info, probed));
    }
    if info.held {
        0
    } else {
        1
    }
}

/// For backends that cannot inspect: try once, and give the lock straight back if we got it.
async fn probe(locker: &dlock::Locker, key: &dlock::LockKey) -> Result<LockInfo, LockError> {
    let options = locker.options().clone().keepalive(false);
    let held = match locker.try_acquire_with(key, &options).await? {
        Some(guard) => {
            guard.release().await?;
            false
        }
        None => true,
    };
    Ok(LockInfo {
        held,
        ..LockInfo::default()
    })
}

fn describe(key: &dlock::LockKey, info: &LockInfo, probed: bool) -> String {
    if !info.held {
        return format!("{key}: free");
    }
    let mut details = Vec::new();
    if let Some(token) = info.fencing_token {
        details.push(format!("fencing token {token}"));
    }
    if let Some(remaining) = info.remaining_lease {
        let rounded = std::time::Duration::from_millis(remaining.as_millis() as u64);
        details.push(format!(
            "lease {} left",
            humantime::format_duration(rounded)
        ));
    }
    if let Some(waiters) = info.waiters {
        details.push(format!("{waiters} waiting"));
    }
    if probed {
        details.push("found by a try-acquire; the backend cannot inspect locks".to_owned());
    }
    if details.is_empty() {
        format!("{key}: held")
    } else {
        format!("{key}: held ({})", details.join(", "))
    }
}
