//! Writing instants as RFC 3339 UTC with milliseconds: the only time format an event carries.
//! Reading OmniChat's many forms happens once, at the edge (see [`crate::omnichat::sent_time`]).

use time::{OffsetDateTime, UtcOffset};

/// `2023-04-18T13:47:35.283Z`. Written digit by digit: this runs up to four times per event,
/// and `time`'s format-description interpreter showed up in the profile.
pub fn format(instant: OffsetDateTime) -> String {
    let utc = instant.to_offset(UtcOffset::UTC);
    let (year, month, day) = utc.to_calendar_date();
    let fields: [(u32, u32); 7] = [
        (year.clamp(0, 9999) as u32, 4),
        (u8::from(month).into(), 2),
        (day.into(), 2),
        (utc.hour().into(), 2),
        (utc.minute().into(), 2),
        (utc.second().into(), 2),
        (utc.millisecond().into(), 3),
    ];
    let mut out = String::with_capacity(24);
    for ((value, width), separator) in fields.into_iter().zip(["", "-", "-", "T", ":", ":", "."]) {
        out.push_str(separator);
        for position in (0..width).rev() {
            let digit = value / 10u32.pow(position) % 10;
            out.push(char::from(b'0' + digit as u8));
        }
    }
    out.push('Z');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_utc_milliseconds_whatever_the_offset() {
        let instant = OffsetDateTime::from_unix_timestamp_nanos(1_681_825_655_283_000_000)
            .expect("in range")
            .to_offset(UtcOffset::from_hms(-3, 0, 0).expect("offset"));
        assert_eq!(format(instant), "2023-04-18T13:47:35.283Z");
        assert_eq!(
            format(OffsetDateTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }
}
