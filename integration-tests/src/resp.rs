//! Just enough of the Redis protocol (RESP2) for the harness to talk to servers itself: one
//! command on a fresh connection, its reply read whole.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A parsed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Option<String>),
    Array(Vec<Reply>),
}

impl Reply {
    /// The text of a status or bulk reply.
    pub(crate) fn text(&self) -> Option<&str> {
        match self {
            Reply::Status(s) | Reply::Bulk(Some(s)) => Some(s),
            _ => None,
        }
    }
}

/// One command on a fresh connection; the raw reply text.
pub(crate) fn command(address: &str, args: &[&str]) -> Option<String> {
    exchange(address, args, Duration::from_secs(2)).map(|(raw, _)| raw)
}

/// One command on a fresh connection; the parsed reply, waiting up to `timeout` for it.
pub(crate) fn call(address: &str, args: &[&str], timeout: Duration) -> Option<Reply> {
    exchange(address, args, timeout).and_then(|(_, reply)| reply)
}

/// Sends `args`, reads until a whole reply is in (or the server pauses for `timeout`).
fn exchange(address: &str, args: &[&str], timeout: Duration) -> Option<(String, Option<Reply>)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes()).ok()?;
    let mut reply = Vec::new();
    let mut buffer = [0u8; 16384];
    loop {
        if let Some((parsed, _)) = parse(&reply) {
            return Some((String::from_utf8_lossy(&reply).into_owned(), Some(parsed)));
        }
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buffer[..n]),
            Err(_) if !reply.is_empty() => break,
            Err(_) => return None,
        }
    }
    Some((String::from_utf8(reply).ok()?, None))
}

/// The first whole reply in `input` and how many bytes it took; `None` while incomplete.
fn parse(input: &[u8]) -> Option<(Reply, usize)> {
    let end = input.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&input[1..end]).into_owned();
    let rest = end + 2;
    match input.first()? {
        b'+' => Some((Reply::Status(line), rest)),
        b'-' => Some((Reply::Error(line), rest)),
        b':' => Some((Reply::Integer(line.parse().ok()?), rest)),
        b'$' => {
            let Ok(len) = usize::try_from(line.parse::<i64>().ok()?) else {
                return Some((Reply::Bulk(None), rest));
            };
            let body = input.get(rest..rest + len)?;
            input.get(rest + len..rest + len + 2)?;
            let text = String::from_utf8_lossy(body).into_owned();
            Some((Reply::Bulk(Some(text)), rest + len + 2))
        }
        b'*' => {
            let count = line.parse::<i64>().ok()?;
            let mut items = Vec::new();
            let mut at = rest;
            for _ in 0..count.max(0) {
                let (item, used) = parse(&input[at..])?;
                items.push(item);
                at += used;
            }
            Some((Reply::Array(items), at))
        }
        _ => None,
    }
}
