//! Expectations: evaluated against the history now, or (`eventually`) as soon as they hold
//! within their bound, while simulated time runs on.

use std::collections::BTreeMap;
use std::time::Duration;

use super::driver::Driver;
use crate::history::{Entry, Event};
use crate::scenario::{Expectation, Expected};

/// A host with no delivery for this long counts as stalled.
const STALL: Duration = Duration::from_secs(1);

impl Driver<'_> {
    /// Evaluates an expectation now, or (eventually) as soon as it holds within its bound.
    pub(super) fn expect(&mut self, line: usize, expectation: &Expectation) -> Result<String, String> {
        let deadline = self.sim.elapsed() + expectation.within.unwrap_or_default();
        loop {
            if let Some(seen) = self.holds(expectation) {
                let line = format!("line {line}: pass at {} ms: {}", self.now_ms(), describe(expectation, &seen));
                self.note(format!("expect {} ok", describe(expectation, &seen)));
                return Ok(line);
            }
            if self.sim.elapsed() >= deadline {
                let line = format!("line {line}: FAIL at {} ms: {}", self.now_ms(), describe(expectation, "not seen"));
                self.note(format!("expect {} FAILED", describe(expectation, "not seen")));
                return Err(line);
            }
            if let Err(message) = self.advance_to(self.sim.elapsed() + Duration::from_millis(1)) {
                return Err(format!("line {line}: FAIL: {message}"));
            }
        }
    }

    /// `Some(what was seen)` when the expectation holds now.
    fn holds(&self, expectation: &Expectation) -> Option<String> {
        let Expectation { host, what, sub, attempt, code, .. } = expectation;
        let sub: Option<&str> = sub.as_deref();
        let at_host = |e: &Entry| e.host == *host;
        let seen = match what {
            Expected::Received => self.history.count(|e| {
                at_host(e)
                    && matches!(&e.event, Event::Delivered { sub: s, attempt: a, .. }
                        if sub.is_none_or(|x| x == s) && attempt.is_none_or(|x| x == *a))
            }),
            Expected::Acked | Expected::Expired => {
                let wanted = if *what == Expected::Acked { "applied" } else { "expired" };
                self.history.count(|e| {
                    at_host(e)
                        && matches!(&e.event, Event::AckAnswered { sub: s, op, result, .. }
                            if op == "ack" && result == wanted && sub.is_none_or(|x| x == s))
                })
            }
            Expected::Error => self.history.count(|e| {
                at_host(e)
                    && match &e.event {
                        Event::PublishFailed { code: c, .. }
                        | Event::PublishInvoked { after: Some(c), .. }
                        | Event::StreamFailed { code: c, .. }
                        | Event::AdminAnswered { refused: Some(c), .. } => code.as_ref().is_none_or(|x| x == c),
                        _ => false,
                    }
            }),
            Expected::Duplicate => {
                self.history.count(|e| at_host(e) && matches!(e.event, Event::Published { duplicate: true, .. }))
            }
            Expected::Stalled => {
                let since = self.now_ms().saturating_sub(STALL.as_millis() as u64);
                let recent =
                    self.history.count(|e| at_host(e) && e.at_ms > since && matches!(e.event, Event::Delivered { .. }));
                return (recent == 0).then(|| "nothing for 1 s".to_string());
            }
        };
        (seen as u64 >= expectation.least()).then(|| format!("{seen} seen"))
    }
}

impl Driver<'_> {
    /// `expect cluster leader[=HOST]`: now, or as soon as it holds within its bound.
    pub(super) fn expect_leader(
        &mut self,
        line: usize,
        host: Option<&str>,
        within: Option<Duration>,
    ) -> Result<String, String> {
        let deadline = self.sim.elapsed() + within.unwrap_or_default();
        let what = match host {
            Some(host) => format!("cluster leader={host}"),
            None => "cluster leader".to_string(),
        };
        let within = within.map(|w| format!(" within {} ms", w.as_millis())).unwrap_or_default();
        loop {
            let leader = self.leader();
            if let Some(leader) = leader.filter(|l| host.is_none_or(|h| h == l.0)) {
                let seen = format!("{what}{within} ({} serves term {})", leader.0, leader.1);
                self.note(format!("expect {seen} ok"));
                return Ok(format!("line {line}: pass at {} ms: {seen}", self.now_ms()));
            }
            if self.sim.elapsed() >= deadline {
                let seen = match self.leader() {
                    Some((leader, term)) => format!("{leader} serves term {term}"),
                    None => "no broker serves".to_string(),
                };
                self.note(format!("expect {what}{within} FAILED ({seen})"));
                return Err(format!("line {line}: FAIL at {} ms: {what}{within} ({seen})", self.now_ms()));
            }
            if let Err(message) = self.advance_to(self.sim.elapsed() + Duration::from_millis(1)) {
                return Err(format!("line {line}: FAIL: {message}"));
            }
        }
    }

    /// The broker that serves as the cluster's leader now, with its term: of the brokers
    /// running that last said they serve, the one of the highest term.
    pub(super) fn leader(&self) -> Option<(String, u64)> {
        self.history.scan(|entries| {
            let mut states: BTreeMap<&str, (u64, bool)> = BTreeMap::new();
            for entry in entries {
                match &entry.event {
                    Event::Cluster { term, serving, .. } => {
                        states.insert(entry.host.as_str(), (*term, *serving));
                    }
                    Event::Crashed { host } => {
                        states.remove(host.as_str());
                    }
                    _ => {}
                }
            }
            let serving = states.into_iter().filter(|(_, (_, serving))| *serving);
            serving.map(|(host, (term, _))| (host.to_string(), term)).max_by_key(|(_, term)| *term)
        })
    }
}

fn describe(expectation: &Expectation, seen: &str) -> String {
    let within = expectation.within.map(|w| format!(" within {} ms", w.as_millis())).unwrap_or_default();
    format!("{expectation}{within} ({seen})")
}
