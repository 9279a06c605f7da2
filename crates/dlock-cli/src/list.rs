//! `dlock list`: the locks held or waited for under a key prefix, with their holders.

use std::io::Write;

use dlock::{ListRequest, Locker};

use crate::cli::ListArgs;
use crate::exit;
use crate::status::{describe, to_json};

/// Prints one page of locks, one per line (or one JSON object); exit 0, whatever it found.
pub async fn list(args: ListArgs) -> u8 {
    let locker = match dlock::connect(&args.url).await {
        Ok(locker) => locker,
        Err(error) => return exit::report(&error),
    };
    let mut request = ListRequest::new(args.prefix).limit(args.limit as usize);
    if let Some(after) = args.after {
        request = request.after(after);
    }
    show(&locker, &request, args.json, &mut std::io::stdout().lock()).await
}

/// Writes the page `request` asks for to `out`; the exit code.
pub async fn show(locker: &Locker, request: &ListRequest, json: bool, out: &mut impl Write) -> u8 {
    let page = match locker.list(request).await {
        Ok(page) => page,
        Err(error) => return exit::report(&error),
    };
    let written = if json {
        let locks: Vec<_> = page
            .locks
            .iter()
            .map(|lock| to_json(&lock.key, &lock.report))
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::json!({ "locks": locks, "next": page.next })
        )
    } else {
        page.locks
            .iter()
            .try_for_each(|lock| writeln!(out, "{}", describe(&lock.key, &lock.report, false)))
    };
    if let Err(error) = written {
        eprintln!("dlock: cannot write the list: {error}");
        return exit::SOFTWARE;
    }
    if let (Some(next), false) = (&page.next, json) {
        // On stderr, so that stdout stays one lock per line for scripts.
        eprintln!("dlock: more locks follow; the next page: --after {next:?}");
    }
    0
}

#[cfg(test)]
mod tests {
    use dlock::{LockOptions, MemoryServer};

    use super::*;

    async fn listed(locker: &Locker, request: ListRequest, json: bool) -> (u8, String) {
        let mut out = Vec::new();
        let code = show(locker, &request, json, &mut out).await;
        (code, String::from_utf8(out).unwrap())
    }

    #[tokio::test]
    async fn lists_holders_under_a_prefix_page_by_page() {
        let server = MemoryServer::new();
        let holder = Locker::new(server.client())
            .with_options(LockOptions::default().owner("batch@host-1"))
            .unwrap();
        let mut guards = Vec::new();
        for key in ["jobs/b", "jobs/a", "mail/x"] {
            guards.push(holder.acquire(key).await.unwrap());
        }
        let operator = Locker::new(server.client());

        let (code, text) = listed(&operator, ListRequest::new("jobs/"), false).await;
        assert_eq!(code, 0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("jobs/a: held by batch@host-1 since "));
        assert!(lines[1].starts_with("jobs/b: held by batch@host-1 since "));
        assert!(lines[1].contains(&format!("fencing token {}", guards[0].fencing_token())));

        let (code, json) = listed(&operator, ListRequest::new("").limit(2), true).await;
        assert_eq!(code, 0);
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        let locks = json["locks"].as_array().unwrap();
        assert_eq!(locks.len(), 2);
        assert_eq!(locks[0]["key"], "jobs/a");
        assert_eq!(locks[0]["owner"], "batch@host-1");
        assert_eq!(locks[0]["waiters"], 0);
        assert_eq!(json["next"], "jobs/b");
        let rest = ListRequest::new("").limit(2).after("jobs/b");
        let (_, json) = listed(&operator, rest, true).await;
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(json["locks"][0]["key"], "mail/x");
        assert_eq!(json["next"], serde_json::Value::Null);

        for guard in guards {
            guard.release().await.unwrap();
        }
        let (code, text) = listed(&operator, ListRequest::new(""), false).await;
        assert_eq!((code, text.as_str()), (0, ""));
    }
}
