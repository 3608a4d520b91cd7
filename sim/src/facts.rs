//! What a scenario tells the checker beside the history: which subscriptions must see
//! every message, their retry policies, and which deliver by ordering key.

use std::collections::{BTreeMap, BTreeSet};

use crate::checker;
use crate::scenario::{duration, Scenario, Verb};

/// The retry policy of every subscription that has one, as the scenario declares it (the
/// broker's defaults fill what it leaves out), and the shortest nack delay any step gives.
pub fn retry_bounds(scenario: &Scenario) -> BTreeMap<String, checker::RetryBounds> {
    let ms = |d: Option<&str>| d.and_then(duration).map(|d| d.as_millis() as u64);
    let mut nack_delay_min: Option<u64> = None;
    for step in &scenario.steps {
        for delay in [ms(step.option("nack_delay")), ms(step.option("delay")).filter(|_| step.verb == Verb::Nack)] {
            nack_delay_min = match (nack_delay_min, delay) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    let mut bounds = BTreeMap::new();
    for step in scenario.steps.iter().filter(|s| s.verb == Verb::SubCreate) {
        let (min, max) = (ms(step.option("min_backoff")), ms(step.option("max_backoff")));
        if min.is_none() && max.is_none() {
            continue;
        }
        let minimum_ms = min.unwrap_or(1000);
        let maximum_ms = max.unwrap_or(60_000.max(minimum_ms));
        let sub = step.arg("sub").to_string();
        let limited = scenario
            .steps
            .iter()
            .any(|s| s.verb == Verb::Subscribe && s.arg("sub") == sub && s.option("max").is_some());
        let upper_bound = nack_delay_min.is_none() && !limited;
        let retry = checker::RetryBounds { minimum_ms, maximum_ms, nack_delay_min_ms: nack_delay_min, upper_bound };
        bounds.insert(sub, retry);
    }
    bounds
}

/// Subscriptions created with message ordering.
pub fn ordered_subscriptions(scenario: &Scenario) -> BTreeSet<String> {
    let creates = scenario.steps.iter().filter(|s| s.verb == Verb::SubCreate);
    creates.filter(|s| s.option("ordered") == Some("true")).map(|s| s.arg("sub").to_string()).collect()
}

/// Subscriptions that must see every acknowledged publish of their topic: created at the
/// earliest position, and never seeked or deleted.
pub fn audited(scenario: &Scenario) -> BTreeMap<String, String> {
    let mut audited = BTreeMap::new();
    for step in &scenario.steps {
        let sub = step.arg("sub").to_string();
        match step.verb {
            Verb::SubCreate if step.option("start") != Some("latest") => {
                audited.insert(sub.clone(), step.option("topic").unwrap_or(&sub).to_string());
            }
            Verb::SubDelete | Verb::Seek => {
                audited.remove(&sub);
            }
            _ => {}
        }
    }
    audited
}
