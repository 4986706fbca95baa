//! Integer amounts: credits and money. Never floats.

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Sub, SubAssign};

/// A whole number of Flows credits.
///
/// Unsigned on purpose: a negative balance is unrepresentable. Subtraction panics on underflow
/// in every build, because an underflow here is a ledger bug, never user input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(transparent)]
pub struct Credits(pub u64);

impl Credits {
    pub const ZERO: Credits = Credits(0);

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// The amount with its unit, for people: "1 credit", "25 credits".
    pub fn with_unit(self) -> String {
        if self.0 == 1 { "1 credit".to_owned() } else { format!("{} credits", self.0) }
    }

    /// Money owed for these credits at the pay-as-you-go rate.
    pub fn payg_price(self) -> MicroUsd {
        MicroUsd(self.0.checked_mul(MICRO_USD_PER_CREDIT).expect("credit amounts are bounded far below overflow"))
    }

    pub fn saturating_sub(self, other: Credits) -> Credits {
        Credits(self.0.saturating_sub(other.0))
    }

    pub fn min(self, other: Credits) -> Credits {
        Credits(self.0.min(other.0))
    }
}

impl Add for Credits {
    type Output = Credits;
    fn add(self, rhs: Credits) -> Credits {
        Credits(self.0.checked_add(rhs.0).expect("credit sum overflow"))
    }
}

impl AddAssign for Credits {
    fn add_assign(&mut self, rhs: Credits) {
        *self = *self + rhs;
    }
}

impl Sub for Credits {
    type Output = Credits;
    fn sub(self, rhs: Credits) -> Credits {
        Credits(self.0.checked_sub(rhs.0).expect("credit subtraction underflow"))
    }
}

impl SubAssign for Credits {
    fn sub_assign(&mut self, rhs: Credits) {
        *self = *self - rhs;
    }
}

impl Sum for Credits {
    fn sum<I: Iterator<Item = Credits>>(iter: I) -> Credits {
        iter.fold(Credits::ZERO, Add::add)
    }
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Pay-as-you-go price: $1 per 1,000 credits, so one credit is $0.001 = 1,000 micro-dollars.
pub const MICRO_USD_PER_CREDIT: u64 = 1_000;
const MICRO_USD_PER_USD: u64 = 1_000_000;

/// Money in millionths of a US dollar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MicroUsd(pub u64);

impl MicroUsd {
    pub const ZERO: MicroUsd = MicroUsd(0);

    /// Whole credits this much money buys at the pay-as-you-go rate (rounded down: a credit is
    /// never billed partly).
    pub fn whole_credits(self) -> Credits {
        Credits(self.0 / MICRO_USD_PER_CREDIT)
    }

    /// Parses a dollar amount written as a decimal ("12", "1.5", "0.001"), at most six places.
    pub fn parse_usd(text: &str) -> Option<MicroUsd> {
        let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty() || frac.len() > 6 || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if !frac.bytes().all(|b| b.is_ascii_digit()) || (text.contains('.') && frac.is_empty()) {
            return None;
        }
        let whole: u64 = whole.parse().ok()?;
        let frac_micro: u64 = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse().ok()? };
        whole.checked_mul(MICRO_USD_PER_USD)?.checked_add(frac_micro).map(MicroUsd)
    }
}

impl Add for MicroUsd {
    type Output = MicroUsd;
    fn add(self, rhs: MicroUsd) -> MicroUsd {
        MicroUsd(self.0.checked_add(rhs.0).expect("money sum overflow"))
    }
}

/// Dollars with three decimal places ("1.001"), the precision of one credit; six places only
/// when an amount (say a cap an admin typed) has a fraction of a tenth of a cent.
impl fmt::Display for MicroUsd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / MICRO_USD_PER_USD;
        let frac = self.0 % MICRO_USD_PER_USD;
        if frac.is_multiple_of(MICRO_USD_PER_CREDIT) {
            write!(f, "{whole}.{:03}", frac / MICRO_USD_PER_CREDIT)
        } else {
            write!(f, "{whole}.{frac:06}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payg_price_is_a_tenth_of_a_cent_per_credit() {
        for (credits, usd) in [(0, "0.000"), (1, "0.001"), (999, "0.999"), (1_000, "1.000"), (1_001, "1.001"), (123_456_789, "123456.789")] {
            assert_eq!(Credits(credits).payg_price().to_string(), usd, "{credits} credits");
        }
    }

    #[test]
    fn parses_dollar_amounts_exactly() {
        for (text, micro) in [("0", Some(0)), ("12", Some(12_000_000)), ("1.5", Some(1_500_000)), ("0.001", Some(1_000)), ("0.000001", Some(1))] {
            assert_eq!(MicroUsd::parse_usd(text), micro.map(MicroUsd), "{text}");
        }
        for bad in ["", ".5", "1.", "-1", "1.0000001", "1e3", "abc", "1.2.3"] {
            assert_eq!(MicroUsd::parse_usd(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sub_tenth_cent_amounts_show_six_places() {
        assert_eq!(MicroUsd(1_500).to_string(), "0.001500");
        assert_eq!(MicroUsd(1_500).whole_credits(), Credits(1));
    }
}
