//! `dlock observe`: an election's leader, then one line per leader change.

use std::io::{ErrorKind, Write};

use dlock::{Leader, LeaderChanges, LockKey};

use crate::cli::ObserveArgs;
use crate::exit;
use crate::supervise::Signals;

/// Prints the leader and its changes until `--count` lines or a signal; returns the exit code.
pub async fn observe(args: ObserveArgs) -> u8 {
    let name = match LockKey::new(args.name.as_str()) {
        Ok(name) => name,
        Err(error) => return exit::report(&error),
    };
    let locker = match dlock::connect(&args.url).await {
        Ok(locker) => locker,
        Err(error) => return exit::report(&error),
    };
    let mut changes = match locker.election(&name) {
        Ok(election) => election.observe(),
        Err(error) => return exit::report(&error),
    };
    let mut signals = match Signals::listen() {
        Ok(signals) => signals,
        Err(code) => return code,
    };
    let mut out = std::io::stdout();
    tokio::select! {
        code = follow(&mut changes, &name, args.json, args.count, &mut out) => code,
        code = signals.stopped() => code,
    }
}

/// Writes the leader and then each change to `out`, one line each, until `count` lines (or
/// forever); the exit code when it stops.
pub async fn follow(
    changes: &mut LeaderChanges,
    name: &LockKey,
    json: bool,
    count: Option<u64>,
    out: &mut impl Write,
) -> u8 {
    let mut printed = 0;
    while count.is_none_or(|count| printed < count) {
        let leader = match changes.next().await {
            Ok(leader) => leader,
            Err(error) => return exit::report(&error),
        };
        let line = if json {
            to_json(name, leader.as_ref()).to_string()
        } else {
            describe(leader.as_ref())
        };
        // One line at a time, flushed, so that a script reading the pipe acts on each change
        // as it happens.
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Ok(()) => printed += 1,
            // Whoever read the changes has stopped reading (`| head -1`): done, not a failure.
            Err(error) if error.kind() == ErrorKind::BrokenPipe => return 0,
            Err(error) => {
                eprintln!("dlock: cannot write the leader: {error}");
                return exit::SOFTWARE;
            }
        }
    }
    0
}

/// `TERM VALUE` (`?` for a term the backend cannot read back), or `-` when nobody leads.
pub fn describe(leader: Option<&Leader>) -> String {
    match leader {
        Some(Leader {
            value,
            term: Some(term),
        }) => format!("{term} {value}"),
        Some(Leader { value, term: None }) => format!("? {value}"),
        None => "-".to_owned(),
    }
}

/// One leader as a JSON object: every field always present, `null` where unknown.
pub fn to_json(name: &LockKey, leader: Option<&Leader>) -> serde_json::Value {
    serde_json::json!({
        "name": name.as_str(),
        "leader": leader.is_some(),
        "term": leader.and_then(|leader| leader.term).map(|term| term.get()),
        "value": leader.map(|leader| leader.value.as_str()),
    })
}

#[cfg(test)]
mod tests {
    use dlock::{Locker, MemoryServer};

    use super::*;

    /// The next `count` lines `follow` prints.
    async fn next_lines(
        changes: &mut LeaderChanges,
        name: &LockKey,
        json: bool,
        count: u64,
    ) -> Vec<String> {
        let mut out = Vec::new();
        assert_eq!(follow(changes, name, json, Some(count), &mut out).await, 0);
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn prints_the_leader_then_each_change_and_stops_after_count() {
        let server = MemoryServer::new();
        let name = LockKey::new("scheduler").unwrap();
        let election = Locker::new(server.client()).election(&name).unwrap();
        let mut changes = Locker::new(server.client())
            .election(&name)
            .unwrap()
            .observe();
        let first = election.campaign("10.0.0.7:8080").await.unwrap();
        let term = first.term();
        let lines = next_lines(&mut changes, &name, false, 1).await;
        assert_eq!(lines, [format!("{term} 10.0.0.7:8080")]);
        first.resign().await.unwrap();
        assert_eq!(next_lines(&mut changes, &name, false, 1).await, ["-"]);
    }

    #[tokio::test]
    async fn json_lines_have_every_field() {
        let server = MemoryServer::new();
        let name = LockKey::new("scheduler").unwrap();
        let election = Locker::new(server.client()).election(&name).unwrap();
        let mut changes = Locker::new(server.client())
            .election(&name)
            .unwrap()
            .observe();
        let nobody = next_lines(&mut changes, &name, true, 1).await;
        let nobody: serde_json::Value = serde_json::from_str(&nobody[0]).unwrap();
        assert_eq!(
            nobody,
            serde_json::json!({"name": "scheduler", "leader": false, "term": null, "value": null})
        );
        let leadership = election.campaign("web-2").await.unwrap();
        let leader = next_lines(&mut changes, &name, true, 1).await;
        let leader: serde_json::Value = serde_json::from_str(&leader[0]).unwrap();
        assert_eq!(
            leader,
            serde_json::json!({
                "name": "scheduler",
                "leader": true,
                "term": leadership.term().get(),
                "value": "web-2",
            })
        );
        leadership.resign().await.unwrap();
    }

    #[test]
    fn nobody_and_an_unknown_term_read_plainly() {
        assert_eq!(describe(None), "-");
        let leader = Leader {
            value: "a b".to_owned(),
            term: None,
        };
        assert_eq!(describe(Some(&leader)), "? a b");
    }
}
