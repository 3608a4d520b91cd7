//! Exponential backoff between attempts, bounded by a count and a total time.

use std::time::Duration;

use super::error::ClientError;

/// How a failed request is tried again. Waits double from `initial_backoff` up to
/// `max_backoff`; there is no random jitter (the client reads no randomness, so runs under
/// the simulator replay exactly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySettings {
    /// Wait before the second attempt. Default 100 ms.
    pub initial_backoff: Duration,
    /// Longest wait between two attempts. Default 5 s.
    pub max_backoff: Duration,
    /// Attempts in all, the first included; when they are used up the error is returned.
    /// 1 to 1000; default 20.
    pub max_attempts: u32,
    /// Longest time from the first attempt to giving up, waits included; past it the last
    /// error is returned. A publisher counts it from when `publish` queued the message (the
    /// oldest of a batch), so messages queued behind a failing batch share its budget.
    /// A retry is recognised as a duplicate only within the topic's dedupe window: on a
    /// topic whose window is shorter than the default 120 s, keep this (and the
    /// publisher's `request_timeout`) under half of it;
    /// [`PublisherSettings::validate_for_dedupe_window`](super::PublisherSettings::validate_for_dedupe_window)
    /// checks that. Default 60 s: half the broker's default dedupe window (120 s), so a
    /// retried publish is still recognised as a duplicate.
    pub total_timeout: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_attempts: 20,
            total_timeout: Duration::from_secs(60),
        }
    }
}

/// Most attempts `RetrySettings::max_attempts` may allow.
const MAX_ATTEMPTS_LIMIT: u32 = 1000;

impl RetrySettings {
    /// Refuses settings that cannot work, naming the field and the allowed range.
    pub fn validate(&self) -> Result<(), ClientError> {
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts) {
            return Err(ClientError::invalid(
                "retry.max_attempts",
                format!("is {}; allowed is 1 to {MAX_ATTEMPTS_LIMIT}", self.max_attempts),
            ));
        }
        if self.initial_backoff.is_zero() || self.initial_backoff > self.max_backoff {
            return Err(ClientError::invalid(
                "retry.initial_backoff",
                format!(
                    "is {:?}; allowed is more than 0 and at most max_backoff ({:?})",
                    self.initial_backoff, self.max_backoff
                ),
            ));
        }
        if self.total_timeout.is_zero() {
            return Err(ClientError::invalid("retry.total_timeout", "is 0; it must be positive"));
        }
        Ok(())
    }

    /// The wait after failed attempt `attempt` (1-based): initial, doubling, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial_backoff.saturating_mul(1 << doublings).min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let retry = RetrySettings {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            ..Default::default()
        };
        let waits: Vec<_> = (1..=5).map(|a| retry.backoff(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        assert_eq!(retry.backoff(u32::MAX), Duration::from_millis(500));
    }

    #[test]
    fn zero_attempts_are_refused_naming_the_field() {
        let retry = RetrySettings { max_attempts: 0, ..Default::default() };
        let error = retry.validate().unwrap_err().to_string();
        assert!(error.starts_with("retry.max_attempts: is 0; allowed is 1 to 1000"), "{error}");
    }
}
