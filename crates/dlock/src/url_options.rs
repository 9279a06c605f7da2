//! The part of a backend URL every backend shares: the scheme and the lock options in the
//! query. What remains goes to the backend's own `connect`.

use std::time::Duration;

use dlock_core::{redact_url, LockError, LockOptions, Result};

/// A URL split into what the facade reads and what the backend reads.
pub(crate) struct ParsedUrl {
    /// The scheme, lower-cased.
    pub(crate) scheme: String,
    /// The URL without the facade's query parameters.
    pub(crate) backend_url: String,
    /// Lock options from the query, on top of the defaults.
    pub(crate) options: LockOptions,
    /// The URL with its password replaced by `***`, for messages.
    redacted: String,
}

impl ParsedUrl {
    /// An [`LockError::InvalidUrl`] about this URL.
    pub(crate) fn invalid(&self, reason: impl Into<String>) -> LockError {
        invalid(&self.redacted, reason)
    }

    /// The error for a scheme whose cargo feature is off.
    #[allow(dead_code)] // unused when every backend feature is on
    pub(crate) fn feature_off(&self, feature: &str) -> LockError {
        self.invalid(format!(
            "the `{}` scheme needs dlock's `{feature}` feature: \
             dlock = {{ version = \"0.1\", features = [\"{feature}\"] }}",
            self.scheme
        ))
    }
}

/// Splits `url` into scheme, backend URL and lock options.
pub(crate) fn split(url: &str) -> Result<ParsedUrl> {
    let redacted = redact_url(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(invalid(
            &redacted,
            "expected SCHEME://…, e.g. redis://127.0.0.1:6379",
        ));
    };
    if url.contains('#') {
        return Err(invalid(&redacted, "a fragment (#…) means nothing here"));
    }
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut options = LockOptions::default();
    let mut kept = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if !seen.insert(name.to_string()) {
            return Err(invalid(
                &redacted,
                format!("query parameter `{name}` is given twice"),
            ));
        }
        let duration = || parse_duration(&redacted, &name, &value);
        match name.as_ref() {
            "prefix" => options.prefix = value.to_string(),
            "lease" | "ttl" => options.lease = duration()?,
            "wait" => options.wait = Some(duration()?),
            "keepalive_interval" => options.keepalive_interval = Some(duration()?),
            "keepalive" => {
                options.keepalive = match value.as_ref() {
                    "true" | "on" | "1" => true,
                    "false" | "off" | "0" => false,
                    other => {
                        return Err(invalid(
                            &redacted,
                            format!("keepalive must be true or false, not `{other}`"),
                        ))
                    }
                }
            }
            _ => kept.push((name.into_owned(), value.into_owned())),
        }
    }
    options
        .validate()
        .map_err(|error| invalid(&redacted, error.to_string()))?;
    let scheme = scheme.to_ascii_lowercase();
    let mut backend_url = format!("{scheme}://{location}");
    if !kept.is_empty() {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(kept)
            .finish();
        backend_url.push('?');
        backend_url.push_str(&query);
    }
    Ok(ParsedUrl {
        scheme,
        backend_url,
        options,
        redacted,
    })
}

fn parse_duration(redacted: &str, name: &str, value: &str) -> Result<Duration> {
    humantime::parse_duration(value).map_err(|error| {
        invalid(
            redacted,
            format!("`{name}={value}` is not a duration like 500ms, 10s or 2m: {error}"),
        )
    })
}

fn invalid(redacted: &str, reason: impl Into<String>) -> LockError {
    LockError::InvalidUrl {
        url: redacted.to_owned(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lock_options_and_keeps_the_rest_for_the_backend() {
        let parsed =
            split("zk://h1:2181,h2:2181/app?prefix=jobs&lease=10s&session_timeout=5s").unwrap();
        assert_eq!(parsed.scheme, "zk");
        assert_eq!(parsed.options.prefix, "jobs");
        assert_eq!(parsed.options.lease, Duration::from_secs(10));
        assert_eq!(
            parsed.backend_url,
            "zk://h1:2181,h2:2181/app?session_timeout=5s"
        );
    }

    #[test]
    fn errors_never_show_the_password() {
        let error = split("redis://u:hunter2@h:1?lease=0s")
            .err()
            .unwrap()
            .to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn rejects_bad_urls_with_typed_errors() {
        for url in [
            "no-scheme",
            "memory://?lease=forever",
            "memory://?lease=0s",
            "memory://?wait=1s&wait=2s",
            "memory://?keepalive=maybe",
            "memory://#frag",
        ] {
            assert!(
                matches!(split(url), Err(LockError::InvalidUrl { .. })),
                "{url} must be rejected"
            );
        }
    }
}
