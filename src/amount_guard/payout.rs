//! Reading a payout from its canonical body: the amount (exactly, in
//! minor units), the currency, the per-request caps, and the refusal
//! messages, which name a cap and its value, never a total.

use super::{AmountGuard, Bucket, Refusal};
use crate::config::{AmountGuardConfig, AmountPer};
use crate::money::{self, AmountError};

/// What a request asks to pay out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payout {
    /// Minor units.
    pub amount: u64,
    /// Upper-cased; empty when the guard has no `currency` pointer.
    pub currency: String,
}

/// Longest currency code accepted (ISO 4217 codes have 3 letters).
const MAX_CURRENCY_LEN: usize = 16;

/// `105.50 INR`, or `105.50` without a currency, with the guard's
/// `minor_units`.
pub(super) fn money(c: &AmountGuardConfig, minor: u64, currency: &str) -> String {
    let amount = money::format_minor(minor, c.minor_units);
    if currency.is_empty() {
        amount
    } else {
        format!("{amount} {currency}")
    }
}

/// The amount and currency of a canonical body, as the guard `c` reads
/// them (pure: also what `signgate explain` shows).
pub fn read(c: &AmountGuardConfig, body: &[u8]) -> Result<Payout, Refusal> {
    let amount = money::amount_from_json(crate::canonical::pointer(body, &c.amount), c.minor_units).map_err(|e| {
        let why = match e {
            AmountError::Decimal(money::DecimalError::TooPrecise { .. }) => format!(
                "{e} (this route takes amounts like {})",
                money::format_minor(10_550 * 10u64.pow(u32::from(c.minor_units)) / 100, c.minor_units)
            ),
            _ => e.to_string(),
        };
        Refusal::Invalid(format!("invalid amount at {}: {why}", c.amount))
    })?;
    let currency = match &c.currency {
        None => String::new(),
        Some(pointer) => currency(crate::canonical::pointer(body, pointer))
            .map_err(|why| Refusal::Invalid(format!("invalid currency at {pointer}: {why}")))?,
    };
    Ok(Payout { amount, currency })
}

/// A single payout over a cap: `max_per_request`, or the whole
/// `max_per_day` (it can never fit the day). Pure, like [`read`].
pub fn check_request(c: &AmountGuardConfig, p: &Payout) -> Result<(), Refusal> {
    if let Some(max) = c.max_per_request.filter(|&max| p.amount > max) {
        return Err(Refusal::OverRequest(format!(
            "amount {} is over this route's max_per_request ({})",
            money(c, p.amount, &p.currency),
            money(c, max, &p.currency)
        )));
    }
    if let Some(max) = c.max_per_day.filter(|&max| p.amount > max) {
        return Err(Refusal::OverDay(format!(
            "amount {} is over this route's max_per_day ({})",
            money(c, p.amount, &p.currency),
            money(c, max, &p.currency)
        )));
    }
    Ok(())
}

impl AmountGuard {
    /// Read the amount and currency of a canonical body (counted when
    /// refused).
    pub fn payout(&self, body: &[u8]) -> Result<Payout, Refusal> {
        let result = read(&self.inner.config, body);
        if let Err(why) = &result {
            self.inner.counters.refused(why);
        }
        result
    }

    fn money(&self, minor: u64, currency: &str) -> String {
        money(&self.inner.config, minor, currency)
    }

    fn whose(&self) -> String {
        match self.inner.config.per {
            AmountPer::Client => "your".to_string(),
            AmountPer::Route => format!("route {}'s", self.inner.route),
        }
    }

    pub(super) fn over_day(&self, b: &Bucket) -> String {
        let max = self.inner.config.max_per_day.unwrap_or_default();
        format!(
            "this payout would take {} total for {} (UTC) past max_per_day ({})",
            self.whose(),
            b.day.label(),
            self.money(max, &b.currency)
        )
    }

    pub(super) fn over_count(&self, b: &Bucket) -> String {
        let max = self.inner.config.max_count_per_day.unwrap_or_default();
        let currency = if b.currency.is_empty() {
            String::new()
        } else {
            format!(" in {}", b.currency)
        };
        format!(
            "{} payouts for {} (UTC){currency} have reached max_count_per_day ({max})",
            self.whose(),
            b.day.label()
        )
    }
}

/// A currency code from its JSON text: a string of 1-16 ASCII letters or
/// digits, upper-cased (`"inr"` and `"INR"` are one currency, so a caller
/// cannot split a cap by spelling).
fn currency(text: Option<&str>) -> Result<String, &'static str> {
    let text = match text {
        None | Some("null") => return Err("missing"),
        Some(t) => t,
    };
    let code: String = if text.starts_with('"') {
        serde_json::from_str(text).map_err(|_| "not a currency code")?
    } else {
        return Err("not a string");
    };
    if code.is_empty() || code.len() > MAX_CURRENCY_LEN || !code.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("not a currency code (1-16 letters or digits, e.g. \"INR\")");
    }
    Ok(code.to_ascii_uppercase())
}
