//! `dlock status`: is a lock held, by whom, since when, with which token, for how long.

use std::io::Write;
use std::time::{Duration, SystemTime};

use dlock::{LockError, LockInfo, LockKey, LockReport, Locker};

use crate::cli::StatusArgs;
use crate::exit;

/// Prints the lock's state; exit 0 when held, 1 when free.
pub async fn status(args: StatusArgs) -> u8 {
    let locker = match dlock::connect(&args.url).await {
        Ok(locker) => locker,
        Err(error) => return exit::report(&error),
    };
    let key = match LockKey::new(args.key.as_str()) {
        Ok(key) => key,
        Err(error) => return exit::report(&error),
    };
    show(&locker, &key, args.json, &mut std::io::stdout().lock()).await
}

/// Writes what `locker` knows of `key` to `out`, as text or JSON; the exit code.
pub async fn show(locker: &Locker, key: &LockKey, json: bool, out: &mut impl Write) -> u8 {
    let (report, probed) = match locker.inspect(key).await {
        Ok(report) => (report, false),
        Err(LockError::Unsupported { .. }) => match probe(locker, key).await {
            Ok(info) => (LockReport::from(info), true),
            Err(error) => return exit::report(&error),
        },
        Err(error) => return exit::report(&error),
    };
    let written = if json {
        writeln!(out, "{}", to_json(key, &report))
    } else {
        writeln!(out, "{}", describe(key, &report, probed))
    };
    if let Err(error) = written {
        eprintln!("dlock: cannot write the status: {error}");
        return exit::SOFTWARE;
    }
    if report.info.held {
        0
    } else {
        1
    }
}

/// One lock as a JSON object: every field always present, `null` where unknown.
pub fn to_json(key: &LockKey, report: &LockReport) -> serde_json::Value {
    let info = &report.info;
    serde_json::json!({
        "key": key.as_str(),
        "held": info.held,
        "fencing_token": info.fencing_token.map(|t| t.get()),
        "remaining_lease_ms": info.remaining_lease.map(|d| d.as_millis() as u64),
        "waiters": info.waiters,
        "owner": report.owner,
        "acquired_at": report.acquired_at.map(rfc3339),
    })
}

/// One lock in a line: `jobs/a: held by web-3/4711/dlock since 2026-11-27T20:30:01.250Z
/// (fencing token 5, lease 29s left, 1 waiting)`.
pub fn describe(key: &LockKey, report: &LockReport, probed: bool) -> String {
    let info = &report.info;
    if !info.held {
        return match info.waiters {
            // Between a release and the next grant, a line without a holder.
            Some(waiters) if waiters > 0 => format!("{key}: free ({waiters} waiting)"),
            _ => format!("{key}: free"),
        };
    }
    let mut holder = String::new();
    if let Some(owner) = &report.owner {
        holder.push_str(&format!(" by {owner}"));
    }
    if let Some(at) = report.acquired_at {
        let ago = SystemTime::now().duration_since(at).unwrap_or_default();
        holder.push_str(&format!(" since {} ({} ago)", rfc3339(at), rounded(ago)));
    }
    let mut details = Vec::new();
    if let Some(token) = info.fencing_token {
        details.push(format!("fencing token {token}"));
    }
    if let Some(remaining) = info.remaining_lease {
        details.push(format!("lease {} left", rounded(remaining)));
    }
    if let Some(waiters) = info.waiters {
        details.push(format!("{waiters} waiting"));
    }
    if probed {
        details.push("found by a try-acquire; the backend cannot inspect locks".to_owned());
    }
    if details.is_empty() {
        format!("{key}: held{holder}")
    } else {
        format!("{key}: held{holder} ({})", details.join(", "))
    }
}

/// For backends that cannot inspect: try once, and give the lock straight back if we got it.
async fn probe(locker: &Locker, key: &LockKey) -> Result<LockInfo, LockError> {
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

/// Milliseconds are what an operator can act on; finer is noise.
fn rounded(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(duration.as_millis() as u64))
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use dlock::{LockOptions, MemoryServer};

    use super::*;

    async fn shown(locker: &Locker, key: &str, json: bool) -> (u8, String) {
        let mut out = Vec::new();
        let code = show(locker, &LockKey::new(key).unwrap(), json, &mut out).await;
        (code, String::from_utf8(out).unwrap())
    }

    #[tokio::test]
    async fn a_held_lock_shows_owner_since_token_lease_and_waiters() {
        let server = MemoryServer::new();
        let holder = Locker::new(server.client())
            .with_options(LockOptions::default().owner("cron@web-3"))
            .unwrap();
        let operator = Locker::new(server.client());
        let guard = holder.acquire("jobs/a").await.unwrap();
        let (queued, in_line) = tokio::sync::oneshot::channel();
        let waiter = Locker::new(server.client());
        let waiting = tokio::spawn(async move {
            waiter
                .acquire_observed("jobs/a", &LockOptions::default(), Some(queued))
                .await
        });
        in_line.await.unwrap();

        let (code, text) = shown(&operator, "jobs/a", false).await;
        assert_eq!(code, 0);
        let token = guard.fencing_token();
        assert!(
            text.starts_with("jobs/a: held by cron@web-3 since 20"),
            "{text}"
        );
        for part in [
            &format!("fencing token {token}"),
            "s left",
            "1 waiting",
            "ago)",
        ] {
            assert!(text.contains(part), "{part:?} missing in {text}");
        }

        let (code, json) = shown(&operator, "jobs/a", true).await;
        assert_eq!(code, 0);
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(json["key"], "jobs/a");
        assert_eq!(json["held"], true);
        assert_eq!(json["owner"], "cron@web-3");
        assert_eq!(json["fencing_token"], token.get());
        assert_eq!(json["waiters"], 1);
        assert!(json["remaining_lease_ms"].as_u64().unwrap() <= 30_000);
        let at = json["acquired_at"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(at).is_ok(), "{at}");

        guard.release().await.unwrap();
        waiting.await.unwrap().unwrap().release().await.unwrap();
        let (code, text) = shown(&operator, "jobs/a", false).await;
        assert_eq!((code, text.trim()), (1, "jobs/a: free"));
        let (_, json) = shown(&operator, "jobs/a", true).await;
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(json["owner"], serde_json::Value::Null);
        assert_eq!(json["acquired_at"], serde_json::Value::Null);
    }
}
