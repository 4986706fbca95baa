//! How domain values become compact integer columns, and back. The integer codes are part of
//! the file format: append new codes, never renumber.

use flowcredits_core::{Alert, BlockKind, BlockUsage, CloudRun, Credits, ExecutionId, Location, MicroUsd, PlanId, RunContext, RunId, RunStatus, Timestamp, Trigger};

use crate::error::{Result, StoreError};

pub(crate) fn plan_code(plan: PlanId) -> i64 {
    index_of(&PlanId::ALL, &plan)
}

pub(crate) fn plan_from(code: i64) -> Result<PlanId> {
    from_index(&PlanId::ALL, code, "plan")
}

pub(crate) fn kind_code(kind: BlockKind) -> i64 {
    index_of(BlockKind::ALL, &kind)
}

pub(crate) fn kind_from(code: i64) -> Result<BlockKind> {
    from_index(BlockKind::ALL, code, "block kind")
}

pub(crate) fn trigger_code(trigger: Trigger) -> i64 {
    index_of(&Trigger::ALL, &trigger)
}

pub(crate) fn trigger_from(code: i64) -> Result<Trigger> {
    from_index(&Trigger::ALL, code, "trigger")
}

const LOCATIONS: [Location; 3] = [Location::Local, Location::Cloud, Location::Private];
const STATUSES: [RunStatus; 4] = [RunStatus::Running, RunStatus::Paused, RunStatus::Completed, RunStatus::Cancelled];

pub(crate) fn location_code(location: Location) -> i64 {
    index_of(&LOCATIONS, &location)
}

pub(crate) fn status_code(status: RunStatus) -> i64 {
    index_of(&STATUSES, &status)
}

pub(crate) fn status_from(code: i64) -> Result<RunStatus> {
    from_index(&STATUSES, code, "run status")
}

/// Rebuilds a run context from its stored trigger and location codes.
pub(crate) fn context_from(trigger: i64, location: i64) -> Result<RunContext> {
    let trigger = trigger_from(trigger)?;
    let location = from_index(&LOCATIONS, location, "location")?;
    let context = match (trigger, location) {
        (Trigger::Manual, Location::Local) => Ok(RunContext::manual(CloudRun::Off)),
        (Trigger::Manual, Location::Cloud) => Ok(RunContext::manual(CloudRun::On)),
        (_, Location::Cloud) => RunContext::automated(trigger),
        (_, Location::Private) => RunContext::private_runner(trigger),
        (_, Location::Local) => return Err(StoreError::Corrupt(format!("an {trigger} run cannot be local"))),
    };
    context.map_err(|err| StoreError::Corrupt(err.to_string()))
}

/// Alerts as `(kind, value)`: 1 is a pay-as-you-go amount in micro-dollars; 1000 plus a
/// percentage is that percentage of an allowance of `value` included credits. (Kind 0, a bare
/// percentage, was written before the allowance was part of the threshold; migration 3 turned
/// those rows into the new kind.)
pub(crate) fn alert_code(alert: Alert) -> (i64, i64) {
    match alert {
        Alert::IncludedPercent { percent, of } => (INCLUDED_ALERT_KIND + i64::from(percent), to_i64(of.0)),
        Alert::PaygAmount(amount) => (1, to_i64(amount.0)),
    }
}

const INCLUDED_ALERT_KIND: i64 = 1000;

pub(crate) fn alert_from(kind: i64, value: i64) -> Result<Alert> {
    match kind {
        1 => Ok(Alert::PaygAmount(MicroUsd(to_u64(value)?))),
        1001..=1100 => Ok(Alert::IncludedPercent { percent: u8::try_from(kind - INCLUDED_ALERT_KIND).map_err(|_| corrupt("alert kind", kind))?, of: Credits(to_u64(value)?) }),
        _ => Err(corrupt("alert kind", kind)),
    }
}

/// Amounts are bounded far below `i64::MAX` by the core's limits; SQLite integers are signed.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).expect("ledger amounts stay below 2^63")
}

pub(crate) fn to_u64(value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| corrupt("amount", value))
}

pub(crate) fn ms(at: Timestamp) -> i64 {
    at.as_millisecond()
}

pub(crate) fn instant(ms: i64) -> Result<Timestamp> {
    Timestamp::from_millisecond(ms).map_err(|_| corrupt("instant (ms)", ms))
}

fn corrupt(what: &str, value: i64) -> StoreError {
    StoreError::Corrupt(format!("{what} {value} is out of range"))
}

fn index_of<T: PartialEq>(all: &[T], value: &T) -> i64 {
    all.iter().position(|item| item == value).expect("every value is in its ALL list") as i64
}

fn from_index<T: Copy>(all: &[T], code: i64, what: &str) -> Result<T> {
    usize::try_from(code).ok().and_then(|index| all.get(index).copied()).ok_or_else(|| corrupt(what, code))
}

/// The execution id as stored: a canonical lowercase UUID becomes its 16 bytes, so that
/// time-ordered (v7) ids make compact keys that are appended at the end of the index. Any other
/// id is `0xFF` followed by its UTF-8 bytes, plus a trailing `0xFF` when that would make it 16
/// bytes long: UTF-8 never contains `0xFF`, and only UUIDs are exactly 16 bytes, so two
/// different ids never share a key.
pub(crate) fn execution_key(execution: &ExecutionId) -> Vec<u8> {
    if let Some(bytes) = parse_uuid(execution.as_str()) {
        return bytes.to_vec();
    }
    let mut key = Vec::with_capacity(execution.as_str().len() + 2);
    key.push(0xFF);
    key.extend_from_slice(execution.as_str().as_bytes());
    if key.len() == 16 {
        key.push(0xFF);
    }
    key
}

/// The keys of the executions named `{run}/…`, as a half-open range `[from, to)`: such an id
/// is never a UUID, so its key is `0xFF` and its bytes (a 16-byte pad only adds a last byte),
/// and every id that starts with `run/` sorts below `run0` (`'0'` follows `'/'`).
pub(crate) fn run_execution_keys(run: &RunId) -> (Vec<u8>, Vec<u8>) {
    let key = |last: u8| {
        let mut key = Vec::with_capacity(run.as_str().len() + 2);
        key.push(0xFF);
        key.extend_from_slice(run.as_str().as_bytes());
        key.push(last);
        key
    };
    (key(b'/'), key(b'0'))
}

/// 16 bytes of `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in lowercase hex; `None` otherwise.
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 || [8, 13, 18, 23].iter().any(|&dash| bytes[dash] != b'-') {
        return None;
    }
    let mut out = [0u8; 16];
    let mut digits = bytes.iter().filter(|&&b| b != b'-');
    for byte in &mut out {
        *byte = hex(*digits.next()?)? << 4 | hex(*digits.next()?)?;
    }
    digits.next().is_none().then_some(out)
}

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

/// A fingerprint of what an execution did beyond its run and kind (model and tools), to tell a
/// retry from a conflicting event: FNV-style over 64-bit words, each step a bijection of the
/// state, so inputs that differ in one word always differ. Written out here because the value
/// is stored and must never change between builds (std's hasher may).
pub(crate) fn detail_hash(run: &RunId, usage: &BlockUsage) -> i64 {
    let mut hash = Fnv(0xcbf2_9ce4_8422_2325);
    hash.field(run.as_str().as_bytes());
    hash.field(usage.model.as_deref().unwrap_or("").as_bytes());
    hash.field(&[usage.model.is_some() as u8]);
    for tools in [&usage.external_mcp_tools, &usage.internal_mcp_tools] {
        hash.field(&(tools.len() as u64).to_le_bytes());
        for tool in tools {
            hash.field(tool.as_bytes());
        }
    }
    hash.0 as i64
}

struct Fnv(u64);

impl Fnv {
    const PRIME: u64 = 0x0100_0000_01b3;

    /// Hashes the length first, so that field boundaries count; then the bytes eight at a time.
    fn field(&mut self, bytes: &[u8]) {
        self.word(bytes.len() as u64);
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.word(u64::from_le_bytes(word.try_into().expect("chunks of eight bytes")));
        }
        let mut tail = [0u8; 8];
        tail[..words.remainder().len()].copy_from_slice(words.remainder());
        self.word(u64::from_le_bytes(tail));
    }

    fn word(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(Self::PRIME);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> Vec<u8> {
        execution_key(&ExecutionId::new(text).unwrap())
    }

    #[test]
    fn uuid_ids_become_16_bytes_and_others_never_do() {
        let uuid = "0190d5b2-7c1e-7abc-8def-0123456789ab";
        assert_eq!(key(uuid).len(), 16);
        assert_eq!(key(uuid)[..2], [0x01, 0x90]);
        for other in ["0190D5B2-7C1E-7ABC-8DEF-0123456789AB", "r1/step-3", "fifteen-bytes!!", "sixteen-bytes!!!", "x"] {
            assert_ne!(key(other).len(), 16, "{other}");
        }
        assert_ne!(key("fifteen-bytes!!"), key("fifteen-bytes!!\u{7f}"));
    }

    #[test]
    fn codes_round_trip() {
        for plan in PlanId::ALL {
            assert_eq!(plan_from(plan_code(plan)).unwrap(), plan);
        }
        for kind in BlockKind::ALL {
            assert_eq!(kind_from(kind_code(*kind)).unwrap(), *kind);
        }
        for status in STATUSES {
            assert_eq!(status_from(status_code(status)).unwrap(), status);
        }
        let contexts = [RunContext::manual(CloudRun::Off), RunContext::manual(CloudRun::On), RunContext::automated(Trigger::Mcp).unwrap(), RunContext::private_runner(Trigger::Api).unwrap()];
        for context in contexts {
            assert_eq!(context_from(trigger_code(context.trigger()), location_code(context.location())).unwrap(), context);
        }
        for alert in [Alert::IncludedPercent { percent: 75, of: Credits(100) }, Alert::IncludedPercent { percent: 100, of: Credits(500) }, Alert::PaygAmount(MicroUsd(5_000_000))] {
            let (kind, value) = alert_code(alert);
            assert_eq!(alert_from(kind, value).unwrap(), alert);
        }
        assert!(kind_from(99).is_err());
    }

    #[test]
    fn detail_hash_tells_content_apart() {
        let run = RunId::new("r1").unwrap();
        let agent = BlockUsage { external_mcp_tools: vec!["ab".into()], ..BlockUsage::with_model(BlockKind::AiAgent, "gpt-5") };
        let split = BlockUsage { external_mcp_tools: vec!["a".into(), "b".into()], ..agent.clone() };
        let moved = BlockUsage { external_mcp_tools: vec![], internal_mcp_tools: vec!["ab".into()], ..agent.clone() };
        assert_eq!(detail_hash(&run, &agent), detail_hash(&run, &agent.clone()));
        assert_ne!(detail_hash(&run, &agent), detail_hash(&run, &split));
        assert_ne!(detail_hash(&run, &agent), detail_hash(&run, &moved));
        assert_ne!(detail_hash(&run, &agent), detail_hash(&RunId::new("r2").unwrap(), &agent));
        // The value is stored, so it is pinned: a change here breaks every existing database.
        assert_eq!(detail_hash(&run, &BlockUsage::of_kind(BlockKind::If)), -3_453_946_937_957_700_324);
    }
}
