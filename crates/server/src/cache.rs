//! A small map whose entries expire: for lookups that every request repeats (an API key's user,
//! a team's plan, a hook's deployment and parsed flow). Entries live briefly, so a change made
//! on another server node shows within the time to live; this node removes what it changes.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    ttl: Duration,
    /// When full, the map is emptied: simpler than eviction order, and the entries come back on
    /// the next lookups.
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration, capacity: usize) -> TtlCache<K, V> {
        TtlCache { entries: Mutex::new(HashMap::new()), ttl, capacity }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (V, Instant)>> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self.lock();
        entries.get(key).filter(|(_, stored)| stored.elapsed() < self.ttl).map(|(value, _)| value.clone())
    }

    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(key, (value, Instant::now()));
    }

    pub fn remove(&self, key: &K) {
        self.lock().remove(key);
    }

    /// Removes every entry whose key matches.
    pub fn remove_where(&self, matches: impl Fn(&K) -> bool) {
        self.lock().retain(|key, _| !matches(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_capacity_is_kept() {
        let cache = TtlCache::new(Duration::from_millis(50), 2);
        cache.insert("a", 1);
        assert_eq!(cache.get(&"a"), Some(1));
        cache.insert("b", 2);
        cache.insert("c", 3);
        assert_eq!((cache.get(&"a"), cache.get(&"c")), (None, Some(3)), "a full map starts over");
        cache.remove(&"c");
        assert_eq!(cache.get(&"c"), None);
        cache.insert("d", 4);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get(&"d"), None, "expired");
    }
}
