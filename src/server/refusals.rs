//! Refused credentials and permissions: counted per principal and reason (for Prometheus,
//! `mini_pubsub_refused_requests_total`), and logged at warn level with the peer's address
//! and the refusal's message, which never holds a secret. One address gets at most one line
//! per [`LOG_INTERVAL`]; the lines it did not get are counted in its next one, so a client
//! retrying a bad token in a loop cannot flood the log.
//!
//! Both tables are bounded: past [`SERIES_MAX`] principal-and-reason pairs, new principals
//! are counted as [`OTHER_PRINCIPAL`]; past [`ADDRESSES_MAX`] addresses in the log table,
//! a new address's lines are suppressed (and counted) until an old one ages out, and an
//! entry ages out [`LOG_INTERVAL`] after its line, whatever it suppressed since (that count
//! goes into the next line). IPv6 addresses are limited by their /64.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use crate::env::Clock;

/// The counter of refused requests, by `principal` and `reason`.
pub const REFUSED: &str = "mini_pubsub_refused_requests_total";
/// The principal label of a request refused before a principal was known (a missing,
/// malformed or unknown credential).
pub const UNAUTHENTICATED: &str = "unauthenticated";
/// The principal label of principals past [`SERIES_MAX`].
pub const OTHER_PRINCIPAL: &str = "(other)";
/// The most principal-and-reason pairs counted apart.
pub const SERIES_MAX: usize = 1024;
/// The most addresses whose log lines are rate-limited apart.
pub const ADDRESSES_MAX: usize = 4096;
/// One log line per address per this many milliseconds.
pub const LOG_INTERVAL_MS: u64 = 10_000;
/// [`LOG_INTERVAL_MS`], for the docs.
pub const LOG_INTERVAL: std::time::Duration = std::time::Duration::from_millis(LOG_INTERVAL_MS);

/// Why a request was refused: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// No credential, where one is needed.
    NoCredential,
    /// An `authorization` header that is not `Bearer TOKEN`.
    MalformedCredential,
    /// A bearer token the broker does not know.
    UnknownToken,
    /// A bearer token sent to a broker that takes none.
    TokensNotAccepted,
    /// No grant of the permission on the resource.
    NoPublishGrant,
    /// No `subscribe` grant on the resource.
    NoSubscribeGrant,
    /// No `admin` grant on the resource.
    NoAdminGrant,
    /// No `admin:*` grant, which the cluster's own operations take.
    NoClusterGrant,
}

impl Reason {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Reason::NoCredential => "no_credential",
            Reason::MalformedCredential => "malformed_credential",
            Reason::UnknownToken => "unknown_token",
            Reason::TokensNotAccepted => "tokens_not_accepted",
            Reason::NoPublishGrant => "no_publish_grant",
            Reason::NoSubscribeGrant => "no_subscribe_grant",
            Reason::NoAdminGrant => "no_admin_grant",
            Reason::NoClusterGrant => "no_cluster_grant",
        }
    }
}

/// What one address was last told in the log.
#[derive(Debug, Clone, Copy)]
struct Logged {
    at_ms: u64,
    suppressed: u64,
}

#[derive(Debug, Default)]
struct Tables {
    counts: BTreeMap<(String, Reason), u64>,
    logged: BTreeMap<Option<IpAddr>, Logged>,
    /// Lines suppressed because the address table was full, or counted in entries that
    /// aged out of it: told in the next line written.
    overflow: u64,
    /// When the full address table is scanned for entries to drop next.
    evict_at: u64,
}

/// The refusals of one server: counts and the log's rate limit.
pub struct Refusals {
    tables: Mutex<Tables>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Refusals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refusals").finish_non_exhaustive()
    }
}

/// What [`Refusals::refused`] decided about the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// Written, saying how many lines of this address were suppressed before it.
    Written {
        /// Lines suppressed since the address's last one.
        suppressed: u64,
    },
    /// Suppressed: the address had its line within [`LOG_INTERVAL`].
    Suppressed,
}

impl Refusals {
    /// Counts and logs by `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self { tables: Mutex::new(Tables::default()), clock }
    }

    /// Counts a refusal of `principal` (or [`UNAUTHENTICATED`]) for `reason`, and logs it
    /// with `peer` and `message` unless that address had a line within [`LOG_INTERVAL`].
    pub fn refused(&self, principal: &str, reason: Reason, peer: Option<SocketAddr>, message: &str) -> Line {
        let now = self.clock.now_ms();
        let Ok(mut tables) = self.tables.lock() else { return Line::Suppressed };
        let key = (principal.to_string(), reason);
        if let Some(count) = tables.counts.get_mut(&key) {
            *count += 1;
        } else if tables.counts.len() < SERIES_MAX {
            tables.counts.insert(key, 1);
        } else {
            *tables.counts.entry((OTHER_PRINCIPAL.to_string(), reason)).or_insert(0) += 1;
        }
        let line = tables.line_for(peer.map(|p| p.ip()), now);
        drop(tables);
        if let Line::Written { suppressed } = line {
            let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
            tracing::warn!(%peer, principal, reason = reason.label(), suppressed, "refused: {message}");
        }
        line
    }

    /// Every principal-and-reason count so far, in order.
    pub fn counts(&self) -> Vec<(String, &'static str, u64)> {
        let Ok(tables) = self.tables.lock() else { return Vec::new() };
        tables.counts.iter().map(|((principal, reason), n)| (principal.clone(), reason.label(), *n)).collect()
    }

    /// Sets the Prometheus counters to the counts (the exporter drops series not refreshed
    /// within its idle timeout, so this runs every second while metrics are on).
    pub fn export(&self) {
        for (principal, reason, n) in self.counts() {
            metrics::counter!(REFUSED, "principal" => principal, "reason" => reason).absolute(n);
        }
    }
}

impl Tables {
    /// Whether `ip`'s line is written at `now`, updating its entry.
    fn line_for(&mut self, ip: Option<IpAddr>, now: u64) -> Line {
        let ip = ip.map(grouped);
        if let Some(entry) = self.logged.get_mut(&ip) {
            if now.saturating_sub(entry.at_ms) < LOG_INTERVAL_MS {
                entry.suppressed += 1;
                return Line::Suppressed;
            }
            let suppressed = std::mem::take(&mut entry.suppressed) + std::mem::take(&mut self.overflow);
            entry.at_ms = now;
            return Line::Written { suppressed };
        }
        if self.logged.len() >= ADDRESSES_MAX && now >= self.evict_at {
            // The entries whose interval is over go, their suppressed lines counted in the
            // next line written; the scan runs again only once another entry can go.
            let (mut oldest_kept, mut folded) = (u64::MAX, 0);
            self.logged.retain(|_, entry| {
                let keep = now.saturating_sub(entry.at_ms) < LOG_INTERVAL_MS;
                if keep {
                    oldest_kept = oldest_kept.min(entry.at_ms);
                } else {
                    folded += entry.suppressed;
                }
                keep
            });
            self.overflow += folded;
            self.evict_at = oldest_kept.saturating_add(LOG_INTERVAL_MS);
        }
        if self.logged.len() >= ADDRESSES_MAX {
            self.overflow += 1;
            return Line::Suppressed;
        }
        self.logged.insert(ip, Logged { at_ms: now, suppressed: 0 });
        Line::Written { suppressed: std::mem::take(&mut self.overflow) }
    }
}

/// The address a rate limit applies to: an IPv4 address, or an IPv6 address's /64 (one
/// host usually has a whole /64 to pick addresses from).
fn grouped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    struct Manual(AtomicU64);

    impl Clock for Manual {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }

        fn wall_ms(&self) -> u64 {
            self.now_ms()
        }
    }

    fn addr(last: u8) -> Option<SocketAddr> {
        Some(SocketAddr::from(([10, 0, 0, last], 40000 + u16::from(last))))
    }

    #[test]
    fn a_burst_from_one_address_is_one_line_per_interval_and_every_refusal_is_counted() {
        let clock = Arc::new(Manual::default());
        let refusals = Refusals::new(clock.clone());
        let mut written = 0;
        for _ in 0..100 {
            if matches!(refusals.refused(UNAUTHENTICATED, Reason::UnknownToken, addr(1), "m"), Line::Written { .. }) {
                written += 1;
            }
        }
        assert_eq!(written, 1);
        // Another address is not held back by the first.
        assert_eq!(refusals.refused("shop", Reason::NoPublishGrant, addr(2), "m"), Line::Written { suppressed: 0 });
        // Another port of the same host is the same address.
        let other_port = Some(SocketAddr::from(([10, 0, 0, 1], 1)));
        assert_eq!(refusals.refused(UNAUTHENTICATED, Reason::NoCredential, other_port, "m"), Line::Suppressed);
        clock.0.store(LOG_INTERVAL_MS, Ordering::Relaxed);
        assert_eq!(
            refusals.refused(UNAUTHENTICATED, Reason::UnknownToken, addr(1), "m"),
            Line::Written { suppressed: 100 }
        );
        assert_eq!(
            refusals.counts(),
            [
                ("shop".to_string(), "no_publish_grant", 1),
                (UNAUTHENTICATED.to_string(), "no_credential", 1),
                (UNAUTHENTICATED.to_string(), "unknown_token", 101),
            ]
        );
    }

    #[test]
    fn both_tables_stay_within_their_bounds() {
        let clock = Arc::new(Manual::default());
        let refusals = Refusals::new(clock.clone());
        for n in 0..(SERIES_MAX + 10) {
            refusals.refused(&format!("p{n}"), Reason::NoAdminGrant, None, "m");
        }
        let counts = refusals.counts();
        assert_eq!(counts.len(), SERIES_MAX + 1);
        assert!(counts.contains(&(OTHER_PRINCIPAL.to_string(), "no_admin_grant", 10)), "{:?}", counts.last());

        let refusals = Refusals::new(clock.clone());
        // Every address of the table refused twice: each entry holds a suppressed line.
        for n in 0..ADDRESSES_MAX {
            let ip = IpAddr::from(u32::try_from(n).unwrap().to_be_bytes());
            for _ in 0..2 {
                refusals.refused("p", Reason::NoAdminGrant, Some(SocketAddr::new(ip, 1)), "m");
            }
        }
        let late = Some(SocketAddr::from(([192, 168, 0, 1], 1)));
        assert_eq!(refusals.refused("p", Reason::NoAdminGrant, late, "m"), Line::Suppressed, "the table is full");
        clock.0.store(LOG_INTERVAL_MS, Ordering::Relaxed);
        // The old entries aged out although they held suppressed lines; those, and the late
        // address's, are counted in the next line.
        let expected = u64::try_from(ADDRESSES_MAX).unwrap() + 1;
        assert_eq!(refusals.refused("p", Reason::NoAdminGrant, late, "m"), Line::Written { suppressed: expected });
        assert_eq!(refusals.tables.lock().unwrap().logged.len(), 1);

        // The addresses of one IPv6 /64 share a limit.
        let v6 = |last: u16| Some(SocketAddr::from(([0x2001, 0xdb8, 0, 1, 0, 0, 0, last], 1)));
        assert!(matches!(refusals.refused("p", Reason::NoAdminGrant, v6(1), "m"), Line::Written { .. }));
        assert_eq!(refusals.refused("p", Reason::NoAdminGrant, v6(2), "m"), Line::Suppressed);
    }
}
