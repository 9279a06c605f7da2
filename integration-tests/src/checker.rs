//! The checker: reads a workload history and reports each property's violations by class.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use crate::history::{Event, EventKind, NEMESIS};

/// What the checker needs to know about the run.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// The lease (for ZooKeeper the session timeout).
    pub lease: Duration,
    /// The backend's declared `crash_release_bound`.
    pub crash_release_bound: Duration,
    /// Extra time allowed on top of lease + bound for the machine itself (scheduling, a
    /// reconnect); say in the test why it is what it is.
    pub slack: Duration,
    /// How many clients may be inside at once: 1 for a mutex or an election, N for a
    /// semaphore of N permits.
    pub capacity: usize,
}

/// One acquisition, as the history shows it.
#[derive(Debug, Clone, Default)]
pub struct Acquisition {
    /// Who.
    pub client: String,
    /// Its token.
    pub token: u64,
    /// When its acquire started.
    pub started: u64,
    /// When acquire returned.
    pub acquired: u64,
    /// When it entered (logged) its critical section.
    pub entered: Option<u64>,
    /// When it left; for a client killed inside, the kill.
    pub exited: Option<u64>,
    /// Whether the register accepted its write (`None`: it never wrote).
    pub write_accepted: Option<bool>,
    /// Whether its guard said "held" when it entered (`None`: the history does not say).
    pub held_at_enter: Option<bool>,
    /// Whether its guard said "held" when it left.
    pub held_at_exit: Option<bool>,
    /// Release's outcome (`ok`, `not-held`, an error).
    pub released: Option<String>,
    /// When release finished.
    pub released_at: Option<u64>,
}

impl Acquisition {
    /// The holder learned it had lost the lock (guard not held at exit, or release refused).
    pub fn signalled_loss(&self) -> bool {
        self.held_at_exit == Some(false)
            || self
                .released
                .as_deref()
                .is_some_and(|outcome| outcome != "ok")
    }

    fn end(&self) -> u64 {
        self.released_at.or(self.exited).unwrap_or(u64::MAX)
    }
}

/// The checker's findings, by property and class.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Acquisitions seen.
    pub acquisitions: usize,
    /// Failed acquire attempts (timeouts, connection errors) — not violations by themselves.
    pub failed_attempts: usize,
    /// Writes the register refused: fencing caught a stale holder.
    pub refused_writes: usize,
    /// Faults the nemesis started.
    pub faults: usize,
    /// P2: a token repeated, or not greater than one of an acquisition released before.
    pub p2_violations: Vec<String>,
    /// P1: two holders inside at once, both sure they held it, and fencing caught nothing.
    pub p1_violations: Vec<String>,
    /// Two holders inside at once, and fencing refused one's write (safe for fenced storage).
    pub overlaps_fenced: Vec<String>,
    /// Two holders inside at once, and one was told by its guard that it had lost the lock
    /// (a pause past the lease: P5 did its job, P1 does not promise more).
    pub overlaps_signalled: Vec<String>,
    /// A client entered with a token smaller than one that had already entered: it was
    /// handed a superseded grant (issue 9 item 6).
    pub stale_grants: Vec<String>,
    /// P3: after a heal, nobody got the lock within lease + bound + slack.
    pub p3_violations: Vec<String>,
    /// Microseconds from the first to the last event.
    pub span_micros: u64,
}

impl Report {
    /// Safety and liveness violations, all classes together (overlaps that fencing caught or
    /// the guard signalled are excluded: there the contract did its job).
    pub fn violations(&self) -> usize {
        self.p1_violations.len()
            + self.p2_violations.len()
            + self.p3_violations.len()
            + self.stale_grants.len()
    }

    /// Panics with the summary and every violation if there is any.
    pub fn assert_clean(&self) {
        assert!(
            self.violations() == 0,
            "the checker found violations:\n{self}"
        );
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} acquisitions in {:.1} s, {} failed attempts, {} faults, {} writes refused by fencing",
            self.acquisitions,
            self.span_micros as f64 / 1e6,
            self.failed_attempts,
            self.faults,
            self.refused_writes
        )?;
        let classes = [
            ("P1 (unfenced, unsignalled overlap)", &self.p1_violations),
            ("P2 (token order)", &self.p2_violations),
            ("P3 (liveness after heal)", &self.p3_violations),
            ("stale grant", &self.stale_grants),
            (
                "overlap signalled by the guard (ok)",
                &self.overlaps_signalled,
            ),
            ("overlap caught by fencing (ok)", &self.overlaps_fenced),
        ];
        for (name, found) in classes {
            writeln!(f, "{name}: {}", found.len())?;
            for line in found.iter().take(10) {
                writeln!(f, "  {line}")?;
            }
            if found.len() > 10 {
                writeln!(f, "  … {} more", found.len() - 10)?;
            }
        }
        Ok(())
    }
}

/// Checks a history (events in time order, as [`read_history`](crate::read_history) gives
/// them) of one key.
pub fn check(events: &[Event], config: &CheckConfig) -> Report {
    let mut report = Report {
        span_micros: match (events.first(), events.last()) {
            (Some(first), Some(last)) => last.micros - first.micros,
            _ => 0,
        },
        ..Report::default()
    };
    let acquisitions = acquisitions(events, &mut report);
    report.acquisitions = acquisitions.len();
    check_tokens(&acquisitions, &mut report);
    if config.capacity > 1 {
        check_capacity(&acquisitions, config.capacity, &mut report);
    } else {
        check_overlaps(&acquisitions, &mut report);
    }
    check_liveness(events, &acquisitions, config, &mut report);
    report
}

/// Rebuilds each acquisition from its client's events.
fn acquisitions(events: &[Event], report: &mut Report) -> Vec<Acquisition> {
    let mut done = Vec::new();
    let mut open: HashMap<&str, Acquisition> = HashMap::new();
    let mut started: HashMap<&str, u64> = HashMap::new();
    for event in events {
        let client = event.client.as_str();
        match event.kind {
            EventKind::Start => {
                started.insert(client, event.micros);
            }
            EventKind::Failed if event.token.is_none() => report.failed_attempts += 1,
            EventKind::Acquired => {
                if let Some(previous) = open.remove(client) {
                    done.push(previous);
                }
                open.insert(
                    client,
                    Acquisition {
                        client: client.to_owned(),
                        token: event.token.unwrap_or(0),
                        started: started.get(client).copied().unwrap_or(event.micros),
                        acquired: event.micros,
                        ..Acquisition::default()
                    },
                );
            }
            EventKind::Enter => {
                if let Some(a) = open.get_mut(client) {
                    a.entered = Some(event.micros);
                    a.held_at_enter = match event.detail.as_str() {
                        "held" => Some(true),
                        "lost" => Some(false),
                        _ => None,
                    };
                }
            }
            EventKind::WriteOk | EventKind::WriteRefused => {
                let accepted = event.kind == EventKind::WriteOk;
                if !accepted {
                    report.refused_writes += 1;
                }
                if let Some(a) = open.get_mut(client) {
                    a.write_accepted = Some(accepted);
                }
            }
            EventKind::Exit => {
                if let Some(a) = open.get_mut(client) {
                    a.exited = Some(event.micros);
                    a.held_at_exit = Some(event.detail == "held");
                }
            }
            EventKind::Released => {
                if let Some(mut a) = open.remove(client) {
                    a.released = Some(event.detail.clone());
                    a.released_at = Some(event.micros);
                    done.push(a);
                }
            }
            EventKind::Killed => {
                // The detail names the killed client: whatever it held ends now.
                if let Some(mut a) = open.remove(event.detail.as_str()) {
                    a.exited.get_or_insert(event.micros);
                    done.push(a);
                }
            }
            EventKind::Fault if client == NEMESIS => report.faults += 1,
            _ => {}
        }
    }
    done.extend(open.into_values());
    done.sort_by_key(|a| a.acquired);
    done
}

/// P2: no token twice; a token greater than every token of acquisitions that ended before
/// this one started.
fn check_tokens(acquisitions: &[Acquisition], report: &mut Report) {
    let mut seen: BTreeMap<u64, &Acquisition> = BTreeMap::new();
    for a in acquisitions {
        if let Some(other) = seen.insert(a.token, a) {
            report.p2_violations.push(format!(
                "token {} issued twice: to {} at {} and to {} at {}",
                a.token, other.client, other.acquired, a.client, a.acquired
            ));
        }
    }
    let mut by_end: Vec<&Acquisition> = acquisitions.iter().collect();
    by_end.sort_by_key(|a| a.end());
    let mut by_start: Vec<&Acquisition> = acquisitions.iter().collect();
    by_start.sort_by_key(|a| a.started);
    let mut ended = 0;
    let mut highest: Option<&Acquisition> = None;
    for a in by_start {
        while ended < by_end.len() && by_end[ended].end() < a.started {
            if highest.is_none_or(|h| by_end[ended].token > h.token) {
                highest = Some(by_end[ended]);
            }
            ended += 1;
        }
        if let Some(h) = highest {
            if a.token < h.token {
                report.p2_violations.push(format!(
                    "token {} (to {} at {}) is below token {} of {}, released at {} before it started",
                    a.token, a.client, a.acquired, h.token, h.client, h.end()
                ));
            }
        }
    }
}

/// P1 by the log, each overlap classed by what fencing and the guards made of it; and
/// stale grants.
fn check_overlaps(acquisitions: &[Acquisition], report: &mut Report) {
    let mut inside: Vec<(&Acquisition, u64, u64)> = acquisitions
        .iter()
        .filter_map(|a| Some((a, a.entered?, a.exited.unwrap_or(u64::MAX))))
        .collect();
    inside.sort_by_key(|(_, entered, _)| *entered);
    let mut highest_entered: Option<&Acquisition> = None;
    for (i, (b, b_in, _)) in inside.iter().enumerate() {
        if let Some(h) = highest_entered {
            // A client whose guard already said "lost" as it entered was paused between its
            // grant and its entry (the nemesis stopped it there): no superseded grant was
            // handed out, and its fenced write is skipped; overlaps still count below.
            if b.token < h.token && b.held_at_enter != Some(false) {
                report.stale_grants.push(format!(
                    "{} entered at {} with token {}, after {} had entered with token {}",
                    b.client, b_in, b.token, h.client, h.token
                ));
            }
        }
        if highest_entered.is_none_or(|h| b.token > h.token) {
            highest_entered = Some(b);
        }
        for (a, _, a_out) in &inside[..i] {
            if *a_out <= *b_in || a.client == b.client {
                continue;
            }
            let line = format!(
                "{} (token {}) entered at {} while {} (token {}) was inside until {}",
                b.client,
                b.token,
                b_in,
                a.client,
                a.token,
                if *a_out == u64::MAX {
                    "the end".to_owned()
                } else {
                    a_out.to_string()
                }
            );
            if a.write_accepted == Some(false) || b.write_accepted == Some(false) {
                report.overlaps_fenced.push(line);
            } else if a.signalled_loss() || b.signalled_loss() {
                report.overlaps_signalled.push(line);
            } else {
                report.p1_violations.push(line);
            }
        }
    }
}

/// P14 by the log: never more than `capacity` clients inside at once, unless one of them was
/// told by its guard that it had lost its permit. (Permit holders write nothing fenced, and
/// enter in any order, so neither fencing nor stale grants apply.)
fn check_capacity(acquisitions: &[Acquisition], capacity: usize, report: &mut Report) {
    let mut inside: Vec<(&Acquisition, u64, u64)> = acquisitions
        .iter()
        .filter_map(|a| Some((a, a.entered?, a.exited.unwrap_or(u64::MAX))))
        .collect();
    inside.sort_by_key(|(_, entered, _)| *entered);
    for (i, (b, b_in, _)) in inside.iter().enumerate() {
        let together: Vec<&Acquisition> = inside[..i]
            .iter()
            .filter(|(a, _, a_out)| *a_out > *b_in && a.client != b.client)
            .map(|(a, _, _)| *a)
            .chain(std::iter::once(*b))
            .collect();
        if together.len() <= capacity {
            continue;
        }
        let line = format!(
            "{} clients inside at {} with {capacity} permits: {}",
            together.len(),
            b_in,
            together
                .iter()
                .map(|a| format!("{} (token {})", a.client, a.token))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if together.iter().any(|a| a.signalled_loss()) {
            report.overlaps_signalled.push(line);
        } else {
            report.p1_violations.push(line);
        }
    }
}

/// P3: after every heal, some client acquires within lease + bound + slack, unless the run
/// ended sooner.
fn check_liveness(
    events: &[Event],
    acquisitions: &[Acquisition],
    config: &CheckConfig,
    report: &mut Report,
) {
    let bound = (config.lease + config.crash_release_bound + config.slack).as_micros() as u64;
    let last = events.last().map_or(0, |e| e.micros);
    for heal in events
        .iter()
        .filter(|e| e.client == NEMESIS && e.kind == EventKind::Heal)
    {
        let limit = heal.micros + bound;
        let served = acquisitions
            .iter()
            .any(|a| a.acquired >= heal.micros && a.acquired <= limit);
        // Only a heal with a live client still at work owes anyone the lock.
        let mut active: std::collections::HashSet<&str> = events
            .iter()
            .filter(|e| e.client != NEMESIS)
            .map(|e| e.client.as_str())
            .collect();
        for e in events.iter().take_while(|e| e.micros <= heal.micros) {
            match e.kind {
                EventKind::Idle => {
                    active.remove(e.client.as_str());
                }
                EventKind::Killed => {
                    active.remove(e.detail.as_str());
                }
                _ => {}
            }
        }
        if !served && limit <= last && !active.is_empty() {
            let next = acquisitions
                .iter()
                .find(|a| a.acquired >= heal.micros)
                .map_or("never".to_owned(), |a| {
                    format!("{:.2} s later", (a.acquired - heal.micros) as f64 / 1e6)
                });
            report.p3_violations.push(format!(
                "after heal '{}' at {}, nobody acquired within {:?}; next acquisition {next}",
                heal.detail,
                heal.micros,
                Duration::from_micros(bound)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CheckConfig {
        CheckConfig {
            lease: Duration::from_secs(1),
            crash_release_bound: Duration::ZERO,
            slack: Duration::ZERO,
            capacity: 1,
        }
    }

    /// `client kind token detail` at `micros`, one per line.
    fn history(lines: &[(u64, &str, EventKind, Option<u64>, &str)]) -> Vec<Event> {
        lines
            .iter()
            .map(|(micros, client, kind, token, detail)| Event {
                micros: *micros,
                client: client.to_string(),
                kind: *kind,
                token: *token,
                detail: detail.to_string(),
            })
            .collect()
    }

    /// One full round of `client` with `token` from `t` to `t + 50`.
    fn round(
        t: u64,
        client: &'static str,
        token: u64,
        write: EventKind,
        held: &'static str,
    ) -> Vec<(u64, &'static str, EventKind, Option<u64>, &'static str)> {
        vec![
            (t, client, EventKind::Start, None, ""),
            (t + 10, client, EventKind::Acquired, Some(token), ""),
            (t + 11, client, EventKind::Enter, Some(token), ""),
            (t + 30, client, write, Some(token), ""),
            (t + 31, client, EventKind::Exit, Some(token), held),
            (t + 50, client, EventKind::Released, Some(token), "ok"),
        ]
    }

    fn sorted(mut lines: Vec<(u64, &str, EventKind, Option<u64>, &str)>) -> Vec<Event> {
        lines.sort_by_key(|l| l.0);
        history(&lines)
    }

    #[test]
    fn a_clean_history_is_clean() {
        let mut lines = round(0, "a", 1, EventKind::WriteOk, "held");
        lines.extend(round(100, "b", 2, EventKind::WriteOk, "held"));
        let report = check(&sorted(lines), &config());
        assert_eq!(report.acquisitions, 2);
        assert_eq!(report.violations(), 0, "{report}");
    }

    #[test]
    fn repeated_and_shrinking_tokens_break_p2() {
        let mut lines = round(0, "a", 5, EventKind::WriteOk, "held");
        lines.extend(round(100, "b", 5, EventKind::WriteOk, "held"));
        lines.extend(round(200, "c", 4, EventKind::WriteRefused, "held"));
        let report = check(&sorted(lines), &config());
        assert_eq!(report.p2_violations.len(), 2, "{report}");
    }

    #[test]
    fn overlaps_are_classed_by_fencing_and_signals() {
        // b enters while a is inside: a's later write is refused (fenced).
        let mut lines = round(0, "a", 1, EventKind::WriteRefused, "lost");
        lines.extend(round(5, "b", 2, EventKind::WriteOk, "held"));
        let report = check(&sorted(lines), &config());
        assert_eq!(report.overlaps_fenced.len(), 1, "{report}");
        assert_eq!(report.violations(), 0, "{report}");

        // Both writes accepted, a knew it lost: signalled.
        let mut lines = round(0, "a", 1, EventKind::WriteOk, "lost");
        lines.extend(round(5, "b", 2, EventKind::WriteOk, "held"));
        let report = check(&sorted(lines), &config());
        assert_eq!(report.overlaps_signalled.len(), 1, "{report}");

        // Both sure they held it and both writes went through: P1.
        let mut lines = round(0, "a", 1, EventKind::WriteOk, "held");
        lines.extend(round(5, "b", 2, EventKind::WriteOk, "held"));
        let report = check(&sorted(lines), &config());
        assert_eq!(report.p1_violations.len(), 1, "{report}");
    }

    #[test]
    fn more_holders_than_permits_break_p14() {
        let permits = CheckConfig {
            capacity: 2,
            ..config()
        };
        // Two permit holders at once: allowed.
        let mut lines = round(0, "a", 1, EventKind::Idle, "held");
        lines.extend(round(5, "b", 2, EventKind::Idle, "held"));
        let report = check(&sorted(lines.clone()), &permits);
        assert_eq!(report.violations(), 0, "{report}");
        // A third inside with them, everybody sure: a violation.
        lines.extend(round(8, "c", 3, EventKind::Idle, "held"));
        let report = check(&sorted(lines), &permits);
        assert_eq!(report.p1_violations.len(), 1, "{report}");
        // The same, but one of them knew it had lost its permit: signalled.
        let mut lines = round(0, "a", 1, EventKind::Idle, "lost");
        lines.extend(round(5, "b", 2, EventKind::Idle, "held"));
        lines.extend(round(8, "c", 3, EventKind::Idle, "held"));
        let report = check(&sorted(lines), &permits);
        assert_eq!(report.overlaps_signalled.len(), 1, "{report}");
        assert_eq!(report.violations(), 0, "{report}");
    }

    #[test]
    fn a_superseded_grant_is_stale() {
        let mut lines = round(0, "a", 2, EventKind::WriteOk, "held");
        lines.extend(round(100, "b", 1, EventKind::WriteRefused, "held"));
        let report = check(&sorted(lines), &config());
        assert_eq!(report.stale_grants.len(), 1, "{report}");
    }

    #[test]
    fn an_entry_the_guard_already_called_lost_is_no_stale_grant() {
        let entered_as = |view: &'static str| {
            let mut lines = round(0, "a", 2, EventKind::WriteOk, "held");
            lines.extend(round(100, "b", 1, EventKind::Idle, "lost"));
            for line in &mut lines {
                if line.1 == "b" && line.2 == EventKind::Enter {
                    line.4 = view;
                }
            }
            check(&sorted(lines), &config())
        };
        let report = entered_as("lost");
        assert_eq!(report.stale_grants.len(), 0, "{report}");
        let report = entered_as("held");
        assert_eq!(report.stale_grants.len(), 1, "{report}");
    }

    #[test]
    fn no_acquisition_after_a_heal_breaks_p3() {
        let mut lines = round(0, "a", 1, EventKind::WriteOk, "held");
        lines.push((100, NEMESIS, EventKind::Heal, None, "restart"));
        lines.push((200, "b", EventKind::Start, None, ""));
        lines.push((2_000_000, "b", EventKind::Failed, None, "timeout"));
        let report = check(&sorted(lines.clone()), &config());
        assert_eq!(report.p3_violations.len(), 1, "{report}");
        lines.extend(round(500_000, "b", 2, EventKind::WriteOk, "held"));
        let report = check(&sorted(lines), &config());
        assert_eq!(report.p3_violations.len(), 0, "{report}");
    }

    #[test]
    fn history_lines_round_trip() {
        let event = Event {
            micros: 12,
            client: "c1".into(),
            kind: EventKind::WriteRefused,
            token: Some(7),
            detail: "a\tb".into(),
        };
        let parsed: Event = event.to_string().parse().unwrap();
        assert_eq!(parsed.detail, "a b");
        assert_eq!(
            (parsed.micros, parsed.kind, parsed.token),
            (12, EventKind::WriteRefused, Some(7))
        );
    }
}
