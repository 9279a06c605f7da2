//! The etcd backend of dlock (work in progress).
#![deny(missing_docs)]
