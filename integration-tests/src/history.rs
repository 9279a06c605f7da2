//! The history a workload run leaves: one line per event, appended by every process of the
//! run to one file, stamped with the machine's monotonic clock so processes agree on order.
//!
//! A line is `MICROS<TAB>CLIENT<TAB>KIND<TAB>TOKEN<TAB>DETAIL`; `TOKEN` is `-` when the event
//! has none. Lines are written with one `write(2)` on a file opened with `O_APPEND`, so lines
//! of concurrent processes never interleave.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

/// The name under which the nemesis (the test's fault schedule) writes its events.
pub const NEMESIS: &str = "nemesis";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A client starts to acquire.
    Start,
    /// A client got the lock, with this token.
    Acquired,
    /// An acquire failed (detail: the error).
    Failed,
    /// A client entered its critical section (the unfenced log append); detail `held` or
    /// `lost`: its guard's view right after the stamp.
    Enter,
    /// A fenced write the register accepted.
    WriteOk,
    /// A fenced write the register refused: a larger token had written before.
    WriteRefused,
    /// A client left its critical section; detail `held` or `lost` (the guard's own view).
    Exit,
    /// Release finished; detail `ok`, `not-held` or the error.
    Released,
    /// A client finished its work and stays connected, idle.
    Idle,
    /// The nemesis started a fault (detail: which).
    Fault,
    /// The nemesis ended a fault: from here on a live client must get the lock within the
    /// lease plus the backend's crash release bound (P3).
    Heal,
    /// The nemesis killed a client (the client named in the detail is dead from here on).
    Killed,
}

impl EventKind {
    const NAMES: [(EventKind, &'static str); 12] = [
        (EventKind::Start, "start"),
        (EventKind::Acquired, "acquired"),
        (EventKind::Failed, "failed"),
        (EventKind::Enter, "enter"),
        (EventKind::WriteOk, "write-ok"),
        (EventKind::WriteRefused, "write-refused"),
        (EventKind::Exit, "exit"),
        (EventKind::Released, "released"),
        (EventKind::Idle, "idle"),
        (EventKind::Fault, "fault"),
        (EventKind::Heal, "heal"),
        (EventKind::Killed, "killed"),
    ];
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::NAMES
            .iter()
            .find(|(kind, _)| kind == self)
            .map_or("?", |(_, name)| name);
        f.write_str(name)
    }
}

impl FromStr for EventKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::NAMES
            .iter()
            .find(|(_, name)| *name == text)
            .map(|(kind, _)| *kind)
            .ok_or_else(|| format!("unknown event kind {text:?}"))
    }
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Microseconds on the machine's monotonic clock ([`now_micros`]).
    pub micros: u64,
    /// The client (or [`NEMESIS`]).
    pub client: String,
    /// What happened.
    pub kind: EventKind,
    /// The fencing token it concerns, if any.
    pub token: Option<u64>,
    /// Free text: an error, `held`/`lost`, a fault's description.
    pub detail: String,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = self.token.map_or("-".to_owned(), |t| t.to_string());
        let detail: String = self
            .detail
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        write!(
            f,
            "{}\t{}\t{}\t{}\t{}",
            self.micros, self.client, self.kind, token, detail
        )
    }
}

impl FromStr for Event {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        let mut fields = line.splitn(5, '\t');
        let mut next = |what: &str| {
            fields
                .next()
                .ok_or_else(|| format!("history line without {what}: {line:?}"))
        };
        let micros = next("time")?
            .parse()
            .map_err(|e| format!("bad time in {line:?}: {e}"))?;
        let client = next("client")?.to_owned();
        let kind = next("kind")?.parse()?;
        let token = match next("token")? {
            "-" => None,
            token => Some(
                token
                    .parse()
                    .map_err(|e| format!("bad token in {line:?}: {e}"))?,
            ),
        };
        let detail = fields.next().unwrap_or("").to_owned();
        Ok(Event {
            micros,
            client,
            kind,
            token,
            detail,
        })
    }
}

/// Now on the machine's monotonic clock (CLOCK_MONOTONIC), in microseconds: the same clock in
/// every process, unaffected by wall-clock jumps.
pub fn now_micros() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
    }
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// A history file open for appending, shared by the threads and tasks of one process.
#[derive(Debug)]
pub struct HistoryWriter {
    path: PathBuf,
    file: Mutex<File>,
}

impl HistoryWriter {
    /// Opens (creating it if needed) the history at `path` for appending.
    pub fn open(path: impl AsRef<Path>) -> std::io::Result<HistoryWriter> {
        let path = path.as_ref().to_owned();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(HistoryWriter {
            path,
            file: Mutex::new(file),
        })
    }

    /// Where it writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event stamped now.
    pub fn record(&self, client: &str, kind: EventKind, token: Option<u64>, detail: &str) {
        self.record_checked(client, kind, token, || detail.to_owned());
    }

    /// Appends one event stamped now, with a detail read after the stamp: a detail that is a
    /// check (is the lock still ours?) then held at the stamp too, whatever pause comes
    /// between the two.
    pub fn record_checked(
        &self,
        client: &str,
        kind: EventKind,
        token: Option<u64>,
        detail: impl FnOnce() -> String,
    ) {
        let micros = now_micros();
        let event = Event {
            micros,
            client: client.to_owned(),
            kind,
            token,
            detail: detail(),
        };
        let line = format!("{event}\n");
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // One write per line: O_APPEND keeps lines of concurrent writers whole. A history
        // that cannot be written makes the check fail later (events missing), loudly.
        if let Err(error) = file.write_all(line.as_bytes()) {
            eprintln!("cannot append to {}: {error}", self.path.display());
        }
    }

    /// Appends a nemesis event.
    pub fn nemesis(&self, kind: EventKind, detail: &str) {
        self.record(NEMESIS, kind, None, detail);
    }
}

/// Reads a whole history, in time order (ties keep file order).
pub fn read_history(path: impl AsRef<Path>) -> Result<Vec<Event>, String> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut events = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        events.push(line.parse::<Event>()?);
    }
    events.sort_by_key(|event| event.micros);
    Ok(events)
}
