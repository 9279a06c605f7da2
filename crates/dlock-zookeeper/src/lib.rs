//! The zookeeper backend of dlock (work in progress).
#![deny(missing_docs)]
