//! Reading OmniChat's time fields, once, as the webhook is parsed.
//!
//! OmniChat's example sends epoch milliseconds; senders also use epoch seconds (possibly with a
//! fraction), digit strings, RFC 3339 / ISO-8601 strings with any offset, and Parse's date
//! object (`{"__type": "Date", "iso": "..."}`). A value none of these describes is unreadable,
//! which makes the time `null`, never the event an error.

use serde::Deserialize;
use serde_json::value::RawValue;
use time::format_description::well_known::{Iso8601, Rfc3339};
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// A time field as sent, and the instant it names when it is readable. Event ids hash the
/// instant when there is one and the sent text when not, so both are kept.
#[derive(Debug, Clone, Copy)]
pub struct SentTime<'a> {
    pub raw: &'a RawValue,
    pub instant: Option<OffsetDateTime>,
}

impl<'a> SentTime<'a> {
    pub fn read(raw: &'a RawValue) -> Self {
        Self {
            raw,
            instant: parse(raw),
        }
    }
}

/// Numbers below this are epoch seconds, above it epoch milliseconds: 1e11 seconds is the year
/// 5138, 1e11 milliseconds is March 1973, before any chat platform sent a webhook.
const SECONDS_BELOW: f64 = 1e11;

/// Reads an instant from a JSON value, or `None` when it is absent or unreadable.
pub fn parse(raw: &RawValue) -> Option<OffsetDateTime> {
    let text = raw.get().trim();
    match text.as_bytes().first()? {
        b'"' => parse_str(&super::as_str(raw)?),
        b'{' => {
            #[derive(Deserialize)]
            struct ParseDate<'a> {
                #[serde(borrow)]
                iso: Option<&'a RawValue>,
            }
            let date: ParseDate<'_> = serde_json::from_str(text).ok()?;
            parse_str(&super::as_str(date.iso?)?)
        }
        b'-' | b'0'..=b'9' => parse_epoch(text),
        _ => None,
    }
}

fn parse_epoch(text: &str) -> Option<OffsetDateTime> {
    let millis = if let Ok(whole) = text.parse::<i64>() {
        if (whole as f64) < SECONDS_BELOW {
            i128::from(whole) * 1000
        } else {
            i128::from(whole)
        }
    } else {
        let value = text.parse::<f64>().ok().filter(|v| v.is_finite())?;
        let millis = if value < SECONDS_BELOW {
            value * 1000.0
        } else {
            value
        };
        millis.round() as i128
    };
    from_millis(millis)
}

fn from_millis(millis: i128) -> Option<OffsetDateTime> {
    // Years 1970 to 9999: negative epochs are mistakes, and RFC 3339 has four-digit years.
    const MAX: i128 = 253_402_300_799_999;
    if !(0..=MAX).contains(&millis) {
        return None;
    }
    OffsetDateTime::from_unix_timestamp_nanos(millis * 1_000_000).ok()
}

fn parse_str(text: &str) -> Option<OffsetDateTime> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_epoch(text);
    }
    if let Ok(instant) = OffsetDateTime::parse(text, &Rfc3339) {
        return in_range(instant);
    }
    // RFC 3339 allows a space for the `T`; ISO-8601 allows basic formats and offsets like +0300.
    let normalized = match text.as_bytes().get(10) {
        Some(b' ') => format!("{}T{}", &text[..10], &text[11..]),
        _ => text.to_owned(),
    };
    if let Ok(instant) = OffsetDateTime::parse(&normalized, &Rfc3339) {
        return in_range(instant);
    }
    if let Ok(instant) = OffsetDateTime::parse(&normalized, &Iso8601::DEFAULT) {
        return in_range(instant);
    }
    // Without an offset the time is taken as UTC, as OmniChat's own times are.
    PrimitiveDateTime::parse(&normalized, &Iso8601::DEFAULT)
        .ok()
        .and_then(|t| in_range(t.assume_utc()))
}

fn in_range(instant: OffsetDateTime) -> Option<OffsetDateTime> {
    let instant = instant.to_offset(UtcOffset::UTC);
    (1970..=9999).contains(&instant.year()).then_some(instant)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> Option<String> {
        let raw: Box<RawValue> = serde_json::from_str(json).expect("test input is JSON");
        parse(&raw).map(crate::event::rfc3339::format)
    }

    #[test]
    fn reads_every_timestamp_form_as_utc_milliseconds() {
        let expected = Some("2023-04-18T13:47:35.283Z".to_owned());
        for form in [
            "1681825655283",
            "1681825655.283",
            "\"1681825655283\"",
            "\"2023-04-18T13:47:35.283Z\"",
            "\"2023-04-18T13:47:35.283+00:00\"",
            "\"2023-04-18T10:47:35.283-03:00\"",
            "\"2023-04-18T16:17:35.283+02:30\"",
            "\"2023-04-18 13:47:35.283Z\"",
            "\"2023-04-18T13:47:35.283\"",
            "\"2023-04-18T10:47:35.283-0300\"",
            "\"2023-04-18t13:47:35.283z\"",
            "{\"__type\": \"Date\", \"iso\": \"2023-04-18T13:47:35.283Z\"}",
        ] {
            assert_eq!(read(form), expected, "{form}");
        }
        assert_eq!(
            read("1681825655").as_deref(),
            Some("2023-04-18T13:47:35.000Z")
        );
        assert_eq!(
            read("\"2023-04-18T13:47:35.28391Z\"").as_deref(),
            Some("2023-04-18T13:47:35.283Z"),
            "sub-millisecond digits are truncated"
        );
    }

    #[test]
    fn unreadable_times_are_none() {
        for form in [
            "null",
            "true",
            "\"\"",
            "\"yesterday\"",
            "\"2023-13-45T99:00:00Z\"",
            "-5",
            "1e400",
            "[1681825655283]",
            "{}",
            "{\"iso\": 5}",
            "\"99999-01-01T00:00:00Z\"",
            "1e20",
        ] {
            assert_eq!(read(form), None, "{form}");
        }
    }
}
