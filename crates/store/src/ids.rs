//! Time-ordered execution ids (UUID version 7): a millisecond prefix keeps the store's
//! execution index appended at its end instead of split at random places.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use flowcredits_core::{ExecutionId, Timestamp};

/// Makes UUIDv7 execution ids: 48 bits of milliseconds, then a per-generator random value plus a
/// counter, so ids from one generator never repeat and ids from two generators do not collide.
#[derive(Debug)]
pub struct ExecutionIds {
    seed: u64,
    counter: AtomicU64,
}

impl Default for ExecutionIds {
    fn default() -> Self {
        ExecutionIds::new()
    }
}

impl ExecutionIds {
    pub fn new() -> ExecutionIds {
        // std's per-process random hasher keys are the only randomness needed here.
        ExecutionIds { seed: RandomState::new().hash_one(std::process::id()), counter: AtomicU64::new(0) }
    }

    /// The next id, for an execution at `at`.
    pub fn next(&self, at: Timestamp) -> ExecutionId {
        let millis = u64::try_from(at.as_millisecond()).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
        let count = self.counter.fetch_add(1, Ordering::Relaxed);
        let low = self.seed.wrapping_add(count);
        let high = (millis << 16) | 0x7000 | ((count >> 52) & 0x0FFF);
        let low = (low & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
        let text = format!("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", high >> 32, (high >> 16) & 0xFFFF, high & 0xFFFF, low >> 48, low & 0xFFFF_FFFF_FFFF);
        ExecutionId::new(text).expect("a UUID is 36 bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_ordered_by_millisecond() {
        let ids = ExecutionIds::new();
        let early: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        let late: Timestamp = "2026-03-01T00:00:00.001Z".parse().unwrap();
        let batch: Vec<String> = (0..1_000).map(|_| ids.next(early).to_string()).collect();
        let mut unique = batch.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), batch.len());
        let later = ids.next(late).to_string();
        assert!(batch.iter().all(|id| *id < later));
        assert_eq!(later.len(), 36);
        assert_eq!(&later[14..15], "7", "version 7");
    }
}
