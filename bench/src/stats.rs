//! The arithmetic of the report, kept pure so it is unit-tested: latency summaries, the
//! median and range over repeats, ratios, and the timetable of fixed-rate sending.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram records, in microseconds (longer ones are clamped to it).
const LATENCY_MAX_US: u64 = 120_000_000;

/// A latency histogram in microseconds, 3 significant digits.
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        // Cannot fail: 1..LATENCY_MAX_US at 3 digits is a valid range.
        let histogram = Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds");
        Latencies { histogram }
    }
}

impl Latencies {
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, LATENCY_MAX_US);
        self.histogram.saturating_record(us);
    }

    /// Adds what `other` recorded.
    pub fn merge(&mut self, other: &Latencies) {
        // Both histograms have the same bounds, so nothing can be out of range.
        let _ = self.histogram.add(&other.histogram);
    }

    /// p50, p99, p99.9 and max, in microseconds; `None` when nothing was recorded.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.histogram.is_empty() {
            return None;
        }
        let h = &self.histogram;
        Some(LatencySummary {
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            count: h.len(),
        })
    }
}

/// Percentiles of one run's latencies, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub count: u64,
}

/// The median of repeats and their range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// Median (the mean of the middle two for an even count), min and max; `None` when empty.
pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
    Some(Spread { median, min: sorted[0], max: sorted[n - 1] })
}

/// `ours / theirs` as "2.41x"; "n/a" when either is missing or theirs is zero.
pub fn ratio(ours: Option<f64>, theirs: Option<f64>) -> String {
    match (ours, theirs) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => {
            let r = a / b;
            if r >= 10.0 {
                format!("{r:.0}x")
            } else if r >= 0.1 {
                format!("{r:.2}x")
            } else {
                format!("{r:.3}x")
            }
        }
        _ => "n/a".to_string(),
    }
}

/// A count of msgs/s or similar, readable at a glance: 812, 12.3k, 1.25M.
pub fn human(value: f64) -> String {
    if !value.is_finite() {
        return "n/a".to_string();
    }
    if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e4 {
        format!("{:.0}k", value / 1e3)
    } else if value >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else if value >= 10.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// Microseconds as "87 us", "1.2 ms", "3.40 s".
pub fn micros(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e4 {
        format!("{:.0} ms", us / 1e3)
    } else if us >= 1e3 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} us")
    }
}

/// When each message of a fixed-rate stream is due: message `i` at `i / rate` seconds after
/// the start. Latency is measured from this intended time, not from when the message was
/// actually sent, so a sender that falls behind (coordinated omission) is charged for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timetable {
    rate_per_s: u32,
}

impl Timetable {
    pub fn new(rate_per_s: u32) -> Self {
        assert!(rate_per_s > 0, "a timetable needs a positive rate");
        Timetable { rate_per_s }
    }

    /// The intended send time of message `i`, from the start.
    pub fn intended(&self, i: u64) -> Duration {
        let nanos = u128::from(i) * 1_000_000_000 / u128::from(self.rate_per_s);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// How many messages are due by `elapsed` since the start (message 0 is due at once).
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        let due = elapsed.as_nanos() * u128::from(self.rate_per_s) / 1_000_000_000 + 1;
        u64::try_from(due).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_is_the_middle_value_or_the_mean_of_the_middle_two() {
        let odd = spread(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((odd.median, odd.min, odd.max), (3.0, 1.0, 5.0));
        let even = spread(&[4.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((even.median, even.min, even.max), (3.0, 1.0, 10.0));
        assert_eq!(spread(&[]), None);
        assert_eq!(spread(&[f64::NAN]), None);
    }

    #[test]
    fn ratios_keep_about_three_digits_and_say_when_they_cannot_be_taken() {
        assert_eq!(ratio(Some(241.0), Some(100.0)), "2.41x");
        assert_eq!(ratio(Some(5000.0), Some(100.0)), "50x");
        assert_eq!(ratio(Some(1.0), Some(100.0)), "0.010x");
        assert_eq!(ratio(Some(1.0), Some(0.0)), "n/a");
        assert_eq!(ratio(None, Some(1.0)), "n/a");
    }

    #[test]
    fn numbers_are_shortened_for_tables() {
        assert_eq!(human(812.4), "812");
        assert_eq!(human(12_345.0), "12k");
        assert_eq!(human(1_250_000.0), "1.25M");
        assert_eq!(human(2_500.0), "2.5k");
        assert_eq!(micros(87.0), "87 us");
        assert_eq!(micros(1_234.0), "1.2 ms");
        assert_eq!(micros(3_400_000.0), "3.40 s");
    }

    #[test]
    fn the_timetable_spaces_messages_evenly_and_counts_what_is_due() {
        let t = Timetable::new(5_000);
        assert_eq!(t.intended(0), Duration::ZERO);
        assert_eq!(t.intended(1), Duration::from_micros(200));
        assert_eq!(t.intended(5_000), Duration::from_secs(1));
        assert_eq!(t.due_by(Duration::ZERO), 1);
        assert_eq!(t.due_by(Duration::from_micros(199)), 1);
        assert_eq!(t.due_by(Duration::from_micros(200)), 2);
        assert_eq!(t.due_by(Duration::from_secs(1)), 5_001);
        // Every message counted as due has an intended time at or before that moment.
        let at = Duration::from_micros(12_345);
        assert!(t.intended(t.due_by(at) - 1) <= at && t.intended(t.due_by(at)) > at);
    }

    #[test]
    fn latencies_summarise_to_percentiles() {
        let mut l = Latencies::default();
        assert_eq!(l.summary(), None);
        for us in 1..=1000 {
            l.record(Duration::from_micros(us));
        }
        let s = l.summary().unwrap();
        assert_eq!((s.p50_us, s.p99_us, s.count), (500, 990, 1000));
        assert_eq!(s.max_us, 1000);
    }
}
