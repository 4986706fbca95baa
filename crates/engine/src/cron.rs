//! Cron expressions for schedules (a `schedule` block's `cron`, a deployment's `schedule_cron`): five fields (minute, hour, day of month, month,
//! day of week), read in UTC, so a schedule fires at most once a minute. Each field is `*`, a
//! number, a range `a-b`, any of those with a step (`*/15`, `8-18/2`, `5/10` meaning `5-max/10`),
//! or a comma-separated list of them. Day of week runs 0–7, both 0 and 7 being Sunday; months
//! and days of week may also be named by their first three letters (`JAN`, `MON-FRI`). As in
//! every common cron, when both day fields are restricted a day matches either of them.

use jiff::Timestamp;
use jiff::civil::{Date, Time};
use jiff::tz::Offset;

/// Longest a cron expression may be, in bytes.
pub const CRON_BYTES_MAX: usize = 256;
/// How far ahead the next firing is looked for: eight years covers the rarest real schedule
/// (29 February on a given weekday is rarer still, and is reported as never firing).
const SEARCH_DAYS_MAX: u32 = 8 * 366;

/// A parsed cron expression: one bit per allowed value of each field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// Whether the day-of-month / day-of-week field was `*` (it then does not restrict days).
    any_day_of_month: bool,
    any_day_of_week: bool,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names of the values from `min` on, for the fields that have them.
    names: &'static [&'static str],
}

const FIELDS: [Field; 5] = [
    Field { name: "minute", min: 0, max: 59, names: &[] },
    Field { name: "hour", min: 0, max: 23, names: &[] },
    Field { name: "day of month", min: 1, max: 31, names: &[] },
    Field { name: "month", min: 1, max: 12, names: &["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"] },
    Field { name: "day of week", min: 0, max: 7, names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"] },
];

impl Cron {
    /// Parses `text`; the error names the field and what is wrong with it.
    pub fn parse(text: &str) -> Result<Cron, String> {
        if text.len() > CRON_BYTES_MAX {
            return Err(format!("is longer than {CRON_BYTES_MAX} bytes"));
        }
        let parts: Vec<&str> = text.split_whitespace().collect();
        if parts.len() != FIELDS.len() {
            return Err(format!("has {} fields; a cron expression has 5: minute hour day-of-month month day-of-week (e.g. `0 9 * * 1-5`)", parts.len()));
        }
        let mut masks = [0u64; 5];
        for ((mask, part), field) in masks.iter_mut().zip(&parts).zip(&FIELDS) {
            *mask = parse_field(part, field).map_err(|problem| format!("{} field `{part}`: {problem}", field.name))?;
        }
        // Sunday is both 0 and 7.
        let days_of_week = (masks[4] | (masks[4] >> 7)) & 0x7f;
        // Days of the month alone (any day of the week) that no chosen month has, such as
        // `30 2`, never come; `29 2` comes once in four years. Schedules run at least yearly.
        if parts[4] == "*" {
            // Days every year has, by month (February without its leap day).
            const DAYS_IN_MONTH: [u32; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
            let yearly = (1..=12).any(|month: u32| masks[3] & (1 << month) != 0 && (1..=DAYS_IN_MONTH[month as usize - 1]).any(|day| masks[2] & (1 << day) != 0));
            if !yearly {
                return Err("names days of the month that the chosen months do not have every year (such as 30 February, or 29 February, once in four years); a schedule runs at least once a year".into());
            }
        }
        Ok(Cron { minutes: masks[0], hours: masks[1], days_of_month: masks[2], months: masks[3], days_of_week, any_day_of_month: parts[2] == "*", any_day_of_week: parts[4] == "*" })
    }

    /// The first whole minute strictly after `after` that the expression matches; `None` when
    /// it matches no day in the next eight years (`parse` refuses the expressions known to).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = Offset::UTC.to_datetime(after);
        // The minute after `after`'s minute: seconds are dropped, so the result is strictly later.
        let (mut date, mut from_hour, mut from_minute) = (start.date(), start.hour() as u32, start.minute() as u32 + 1);
        for _ in 0..SEARCH_DAYS_MAX {
            if self.day_matches(date) {
                for hour in from_hour..24 {
                    if self.hours & (1 << hour) == 0 {
                        continue;
                    }
                    let first_minute = if hour == from_hour { from_minute } else { 0 };
                    if let Some(minute) = (first_minute..60).find(|minute| self.minutes & (1 << minute) != 0) {
                        let time = Time::new(hour as i8, minute as i8, 0, 0).ok()?;
                        return Offset::UTC.to_timestamp(date.to_datetime(time)).ok();
                    }
                }
            }
            date = date.tomorrow().ok()?;
            (from_hour, from_minute) = (0, 0);
        }
        None
    }

    fn day_matches(&self, date: Date) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let by_month_day = self.days_of_month & (1 << date.day()) != 0;
        let by_week_day = self.days_of_week & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        match (self.any_day_of_month, self.any_day_of_week) {
            (true, true) => true,
            (false, true) => by_month_day,
            (true, false) => by_week_day,
            (false, false) => by_month_day || by_week_day,
        }
    }
}

/// One field's allowed values as bits.
fn parse_field(text: &str, field: &Field) -> Result<u64, String> {
    let mut mask = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(number(step, "step")?)),
            None => (item, None),
        };
        let (low, high) = match range {
            "*" => (field.min, field.max),
            _ => match range.split_once('-') {
                Some((low, high)) => (value(low, "range start", field)?, value(high, "range end", field)?),
                // `5/10` steps from 5 to the field's end.
                None => {
                    let value = value(range, "value", field)?;
                    (value, if step.is_some() { field.max } else { value })
                }
            },
        };
        if low < field.min || high > field.max {
            return Err(format!("values must be from {} to {}", field.min, field.max));
        }
        if low > high {
            return Err(format!("the range {low}-{high} runs backwards"));
        }
        let step = step.unwrap_or(1);
        if step == 0 {
            return Err("a step must be at least 1".into());
        }
        for value in (low..=high).step_by(step as usize) {
            mask |= 1 << value;
        }
    }
    Ok(mask)
}

/// A field's value: a number, or its name where the field has names (any case).
fn value(text: &str, what: &str, field: &Field) -> Result<u32, String> {
    match field.names.iter().position(|name| name.eq_ignore_ascii_case(text)) {
        Some(index) => Ok(field.min + index as u32),
        None if !field.names.is_empty() && text.bytes().any(|byte| byte.is_ascii_alphabetic()) => {
            Err(format!("the {what} `{text}` is not a number or one of {}", field.names.join(", ")))
        }
        None => number(text, what),
    }
}

fn number(text: &str, what: &str) -> Result<u32, String> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) || text.len() > 2 {
        return Err(format!("the {what} `{text}` is not a number of one or two digits"));
    }
    text.parse().map_err(|_| format!("the {what} `{text}` is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn the_next_firing_is_the_first_matching_minute_after() {
        // (expression, after, next): 2026-03-02 is a Monday.
        let cases = [
            ("* * * * *", "2026-03-02T10:00:00Z", "2026-03-02T10:01:00Z"),
            ("* * * * *", "2026-03-02T10:00:59.999Z", "2026-03-02T10:01:00Z"),
            ("*/15 * * * *", "2026-03-02T10:07:00Z", "2026-03-02T10:15:00Z"),
            ("*/15 * * * *", "2026-03-02T10:45:00Z", "2026-03-02T11:00:00Z"),
            ("0 9 * * 1-5", "2026-03-02T08:59:00Z", "2026-03-02T09:00:00Z"),
            ("0 9 * * 1-5", "2026-03-02T09:00:00Z", "2026-03-03T09:00:00Z"),
            // Friday evening to Monday morning.
            ("0 9 * * 1-5", "2026-03-06T10:00:00Z", "2026-03-09T09:00:00Z"),
            ("30 8-18/2 * * *", "2026-03-02T09:00:00Z", "2026-03-02T10:30:00Z"),
            ("5/20 * * * *", "2026-03-02T10:06:00Z", "2026-03-02T10:25:00Z"),
            ("0 0 1 * *", "2026-03-02T00:00:00Z", "2026-04-01T00:00:00Z"),
            ("0 0 1,15 * *", "2026-03-02T00:00:00Z", "2026-03-15T00:00:00Z"),
            ("0 12 * 12 *", "2026-03-02T00:00:00Z", "2026-12-01T12:00:00Z"),
            // Sunday as 7 and as 0.
            ("0 0 * * 7", "2026-03-02T00:00:00Z", "2026-03-08T00:00:00Z"),
            ("0 0 * * 0", "2026-03-02T00:00:00Z", "2026-03-08T00:00:00Z"),
            // Both day fields restricted: the 13th or any Friday, whichever comes first.
            ("0 0 13 * 5", "2026-03-02T00:00:00Z", "2026-03-06T00:00:00Z"),
            ("0 0 13 * 5", "2026-03-07T00:00:00Z", "2026-03-13T00:00:00Z"),
            // The last minute of a year rolls into the next.
            ("0 0 * * *", "2026-12-31T23:59:00Z", "2027-01-01T00:00:00Z"),
            // 29 February where a leap year has it, 29 March every year.
            ("0 0 29 2,3 *", "2026-03-02T00:00:00Z", "2026-03-29T00:00:00Z"),
            ("0 0 29 2,3 *", "2027-04-01T00:00:00Z", "2028-02-29T00:00:00Z"),
            // Names for months and days of week, any case, in ranges and lists too.
            ("0 9 * * MON-FRI", "2026-03-06T10:00:00Z", "2026-03-09T09:00:00Z"),
            ("0 0 * * sun", "2026-03-02T00:00:00Z", "2026-03-08T00:00:00Z"),
            ("0 12 1 jan,Jul *", "2026-03-02T00:00:00Z", "2026-07-01T12:00:00Z"),
        ];
        for (expression, after, next) in cases {
            let cron = Cron::parse(expression).unwrap_or_else(|err| panic!("{expression}: {err}"));
            assert_eq!(cron.next_after(ts(after)), Some(ts(next)), "{expression} after {after}");
        }
    }

    #[test]
    fn a_date_that_does_not_come_every_year_is_refused() {
        for never in ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 29 2 *", "0 0 30-31 FEB *"] {
            let err = Cron::parse(never).expect_err(never);
            assert!(err.contains("a schedule runs at least once a year"), "{never}: {err}");
        }
        // Some chosen month has the day, or the days of the week decide too.
        for yearly in ["0 0 29 2,3 *", "0 0 31 * *", "0 0 31 2 1", "0 0 28 2 *"] {
            let cron = Cron::parse(yearly).unwrap_or_else(|err| panic!("{yearly}: {err}"));
            assert!(cron.next_after(ts("2026-03-02T00:00:00Z")).is_some(), "{yearly}");
        }
    }

    #[test]
    fn bad_expressions_name_the_field_and_the_problem() {
        let cases = [
            ("* * * *", "has 4 fields"),
            ("* * * * * *", "has 6 fields"),
            ("60 * * * *", "minute field `60`: values must be from 0 to 59"),
            ("* 24 * * *", "hour field `24`: values must be from 0 to 23"),
            ("* * 0 * *", "day of month field `0`: values must be from 1 to 31"),
            ("* * * 13 *", "month field `13`: values must be from 1 to 12"),
            ("* * * * 8", "day of week field `8`: values must be from 0 to 7"),
            ("*/0 * * * *", "minute field `*/0`: a step must be at least 1"),
            ("5-1 * * * *", "minute field `5-1`: the range 5-1 runs backwards"),
            ("a * * * *", "minute field `a`: the value `a` is not a number"),
            ("* * * JANUARY *", "month field `JANUARY`: the value `JANUARY` is not a number or one of JAN, FEB"),
            ("* * * * MON-XYZ", "day of week field `MON-XYZ`: the range end `XYZ` is not a number or one of SUN, MON"),
            ("* * MON * *", "day of month field `MON`: the value `MON` is not a number"),
            ("1,,2 * * * *", "minute field `1,,2`: the value `` is not a number"),
        ];
        for (expression, expected) in cases {
            let err = Cron::parse(expression).expect_err(expression);
            assert!(err.contains(expected), "{expression}: {err}");
        }
        assert!(Cron::parse(&"1,".repeat(200)).unwrap_err().contains("longer than"));
    }
}
