//! The store's behaviour through its public API, on real database files.

mod support;

mod ledger {
    pub mod bad_input;
    pub mod billing;
    pub mod concurrency;
    pub mod crash;
    pub mod idempotency;
    pub mod lifecycle;
    pub mod wal;
}
