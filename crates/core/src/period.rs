//! Billing periods: the one place that decides where a month of credits starts and ends.

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::Offset;

use crate::CoreError;

/// The day of the month (1 to 28) on which a team's billing period starts, at 00:00 UTC.
///
/// Capped at 28 so that every month has the day and a period is always one calendar month.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AnchorDay(u8);

impl AnchorDay {
    pub const FIRST: AnchorDay = AnchorDay(1);
    pub const MAX: u8 = 28;

    pub fn new(day: i64) -> Result<AnchorDay, CoreError> {
        if (1..=i64::from(Self::MAX)).contains(&day) {
            Ok(AnchorDay(day as u8))
        } else {
            Err(CoreError::AnchorDayOutOfRange { day })
        }
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl Default for AnchorDay {
    fn default() -> Self {
        AnchorDay::FIRST
    }
}

/// A half-open interval `[start, end)` of one billing period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    pub start: Timestamp,
    pub end: Timestamp,
}

/// The first instant flowcredits refuses, 9999-01-01T00:00:00Z: the period of any earlier instant
/// ends inside the calendar the date library represents (its last year is 9999), so no period
/// arithmetic can step off its end. Inputs are checked against it where they enter.
pub const LATEST_INSTANT: Timestamp = Timestamp::constant(253_370_764_800, 0);

/// Refuses an instant at or after [`LATEST_INSTANT`].
pub fn check_supported(at: Timestamp) -> Result<(), CoreError> {
    if at >= LATEST_INSTANT {
        return Err(CoreError::AfterLatestInstant { at, latest: LATEST_INSTANT });
    }
    Ok(())
}

impl Period {
    /// The billing period that contains `at` for a team anchored on `anchor`. `at` must be
    /// before [`LATEST_INSTANT`] ([`check_supported`]).
    pub fn containing(anchor: AnchorDay, at: Timestamp) -> Period {
        let date = Offset::UTC.to_datetime(at).date();
        let month_index = i32::from(date.year()) * 12 + i32::from(date.month()) - 1;
        let start_month_index = if date.day() >= anchor.get() as i8 { month_index } else { month_index - 1 };
        Period { start: month_start(start_month_index, anchor), end: month_start(start_month_index + 1, anchor) }
    }

    /// The period right after this one.
    pub fn next(self, anchor: AnchorDay) -> Period {
        Period::containing(anchor, self.end)
    }

    pub fn contains(self, at: Timestamp) -> bool {
        self.start <= at && at < self.end
    }

    /// `YYYY-MM` of the period's start, the name people use for it.
    pub fn label(self) -> String {
        let date = Offset::UTC.to_datetime(self.start).date();
        format!("{:04}-{:02}", date.year(), date.month())
    }
}

/// 00:00 UTC on the anchor day of the month numbered `month_index` (year * 12 + month - 1).
fn month_start(month_index: i32, anchor: AnchorDay) -> Timestamp {
    let year = month_index.div_euclid(12) as i16;
    let month = (month_index.rem_euclid(12) + 1) as i8;
    let date = Date::new(year, month, anchor.get() as i8).expect("an anchor day of at most 28 exists in every month");
    Offset::UTC.to_timestamp(date.to_datetime(jiff::civil::Time::midnight())).expect("UTC midnight of a real date is in range")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn periods_from_the_anchor_day() {
        let cases = [
            (1, "2026-03-02T10:00:00Z", "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z"),
            (1, "2026-03-01T00:00:00Z", "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z"),
            (1, "2026-02-28T23:59:59.999Z", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"),
            (15, "2026-03-14T23:59:59Z", "2026-02-15T00:00:00Z", "2026-03-15T00:00:00Z"),
            (15, "2026-03-15T00:00:00Z", "2026-03-15T00:00:00Z", "2026-04-15T00:00:00Z"),
            (28, "2026-01-05T00:00:00Z", "2025-12-28T00:00:00Z", "2026-01-28T00:00:00Z"),
            (28, "2026-12-31T12:00:00Z", "2026-12-28T00:00:00Z", "2027-01-28T00:00:00Z"),
            (1, "2028-02-29T12:00:00Z", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"),
        ];
        for (anchor, at, start, end) in cases {
            let period = Period::containing(AnchorDay::new(anchor).unwrap(), ts(at));
            assert_eq!((period.start, period.end), (ts(start), ts(end)), "anchor {anchor}, at {at}");
        }
    }

    #[test]
    fn anchor_day_must_be_1_to_28() {
        for day in [0, 29, 31, -1] {
            assert!(AnchorDay::new(day).is_err(), "{day}");
        }
        assert_eq!(AnchorDay::new(28).unwrap().get(), 28);
    }

    proptest! {
        #[test]
        fn every_instant_is_in_exactly_one_period(seconds in 0i64..4_000_000_000, anchor in 1i64..=28) {
            let anchor = AnchorDay::new(anchor).unwrap();
            let at = Timestamp::from_second(seconds).unwrap();
            let period = Period::containing(anchor, at);
            prop_assert!(period.contains(at));
            // Periods tile time: the next one starts where this one ends, and both ends are
            // midnight UTC on the anchor day.
            let next = period.next(anchor);
            prop_assert_eq!(next.start, period.end);
            let before = Period::containing(anchor, period.start.checked_sub(jiff::SignedDuration::from_millis(1)).unwrap());
            prop_assert_eq!(before.end, period.start);
            for edge in [period.start, period.end] {
                let zoned = Offset::UTC.to_datetime(edge);
                prop_assert_eq!(zoned.day(), anchor.get() as i8);
                prop_assert_eq!((zoned.hour(), zoned.minute(), zoned.second()), (0, 0, 0));
            }
            // One calendar month: between 28 and 31 days long.
            let days = (period.end.as_second() - period.start.as_second()) / 86_400;
            prop_assert!((28..=31).contains(&days));
        }
    }
}
