//! Sizes and durations as people write them in YAML: `150MiB`, `20GB`, `5s`, `250ms`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A byte count: an integer, or a string with `B`, `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024) or
/// `KB`, `MB`, `GB`, `TB` (powers of 1000).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const SIZE_UNITS: [(&str, u64); 9] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

impl ByteSize {
    pub const fn kib(n: u64) -> ByteSize {
        ByteSize(n << 10)
    }

    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n << 20)
    }

    pub const fn gib(n: u64) -> ByteSize {
        ByteSize(n << 30)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    pub fn parse(text: &str) -> Option<ByteSize> {
        let (number, unit) = split_number(text)?;
        let factor = if unit.is_empty() {
            1
        } else {
            SIZE_UNITS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(unit))
                .map(|(_, factor)| *factor)?
        };
        number.checked_mul(factor).map(ByteSize)
    }
}

/// Splits `"150 MiB"` into `(150, "MiB")`; the number must be plain decimal digits.
fn split_number(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return None;
    }
    Some((digits.parse().ok()?, unit.trim_start()))
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that states the size exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let binary = [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, factor) in binary {
            if self.0 >= factor && self.0 % factor == 0 {
                return write!(f, "{}{}", self.0 / factor, name);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a size like "10GiB""#)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!(r#"expected a size like "10GiB", got {v}"#)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v)
                    .ok_or_else(|| E::custom(format!(r#"expected a size like "10GiB", got "{v}""#)))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// A duration written as a string: `200us`, `250ms`, `5s`, `10m`, `24h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(n: u64) -> HumanDuration {
        HumanDuration(Duration::from_secs(n))
    }

    pub const fn millis(n: u64) -> HumanDuration {
        HumanDuration(Duration::from_millis(n))
    }

    pub fn get(self) -> Duration {
        self.0
    }

    pub fn parse(text: &str) -> Option<HumanDuration> {
        let (number, unit) = split_number(text)?;
        let micros_per_unit: u64 = match unit {
            "us" => 1,
            "ms" => 1_000,
            "s" => 1_000_000,
            "m" => 60_000_000,
            "h" => 3_600_000_000,
            _ => return None,
        };
        number
            .checked_mul(micros_per_unit)
            .map(|us| HumanDuration(Duration::from_micros(us)))
    }

    /// Whole seconds, rounded up: for settings that only take seconds.
    pub fn whole_secs_ceil(self) -> u64 {
        let d = self.0;
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0.as_micros();
        let units = [
            ("h", 3_600_000_000),
            ("m", 60_000_000),
            ("s", 1_000_000),
            ("ms", 1_000),
        ];
        for (name, factor) in units {
            if us >= factor && us % factor == 0 {
                return write!(f, "{}{}", us / factor, name);
            }
        }
        if us == 0 {
            return f.write_str("0ms");
        }
        write!(f, "{us}us")
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a duration like "5s""#)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                Err(E::custom(format!(
                    r#"expected a duration like "5s" (with a unit: us, ms, s, m, h), got {v}"#
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                self.visit_u64(v.unsigned_abs())
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                HumanDuration::parse(v).ok_or_else(|| {
                    E::custom(format!(
                        r#"expected a duration like "5s" (units: us, ms, s, m, h), got "{v}""#
                    ))
                })
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_every_unit() {
        assert_eq!(ByteSize::parse("150MiB"), Some(ByteSize(157_286_400)));
        assert_eq!(ByteSize::parse("20GiB"), Some(ByteSize(20 << 30)));
        assert_eq!(ByteSize::parse("10 MB"), Some(ByteSize(10_000_000)));
        assert_eq!(ByteSize::parse("1kib"), Some(ByteSize(1024)));
        assert_eq!(ByteSize::parse("512B"), Some(ByteSize(512)));
        assert_eq!(ByteSize::parse("512"), Some(ByteSize(512)));
    }

    #[test]
    fn bad_sizes_are_refused() {
        for bad in [
            "lots",
            "",
            "MiB",
            "-1MiB",
            "1.5GiB",
            "10 parsecs",
            "99999999999TiB",
        ] {
            assert_eq!(ByteSize::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(
            HumanDuration::parse("250ms"),
            Some(HumanDuration(Duration::from_millis(250)))
        );
        assert_eq!(
            HumanDuration::parse("200us"),
            Some(HumanDuration(Duration::from_micros(200)))
        );
        assert_eq!(HumanDuration::parse("5s"), Some(HumanDuration::secs(5)));
        assert_eq!(HumanDuration::parse("10m"), Some(HumanDuration::secs(600)));
        assert_eq!(
            HumanDuration::parse("24h"),
            Some(HumanDuration::secs(86_400))
        );
        for bad in ["5", "s", "5 days", "1.5s", "-3s"] {
            assert_eq!(HumanDuration::parse(bad), None, "{bad}");
        }
        assert_eq!(
            HumanDuration(Duration::from_millis(1500)).whole_secs_ceil(),
            2
        );
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "150MiB", "1GiB", "1000B", "24h", "90s", "250ms", "200us", "0ms",
        ] {
            let shown = ByteSize::parse(text)
                .map(|s| s.to_string())
                .or_else(|| HumanDuration::parse(text).map(|d| d.to_string()));
            assert_eq!(shown.as_deref(), Some(text));
        }
    }
}
