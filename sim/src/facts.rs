//! What a scenario tells the checker beside the history: subscriptions' retry policies,
//! ack deadlines, and which deliver by ordering key.

use std::collections::{BTreeMap, BTreeSet};

use crate::checker;
use crate::scenario::{Action, Admin, Scenario, SubSpec};

fn sub_creates(scenario: &Scenario) -> impl Iterator<Item = &SubSpec> {
    scenario.steps.iter().filter_map(|s| match &s.action {
        Action::Admin { admin: Admin::SubCreate(spec), .. } => Some(spec),
        _ => None,
    })
}

/// The retry policy of every subscription that has one, as the scenario declares it (the
/// broker's defaults fill what it leaves out), and the shortest nack delay any step gives.
pub fn retry_bounds(scenario: &Scenario) -> BTreeMap<String, checker::RetryBounds> {
    let delays = scenario.steps.iter().filter_map(|s| match &s.action {
        Action::Subscribe(subscribe) => subscribe.nack.delay,
        Action::Nack { nack, .. } => nack.delay,
        _ => None,
    });
    let nack_delay_min = delays.map(|d| d.as_millis() as u64).min();
    let mut bounds = BTreeMap::new();
    for spec in sub_creates(scenario) {
        let Some((min, max)) = spec.retry else { continue };
        let minimum_ms = min.map_or(1000, |d| d.as_millis() as u64);
        let maximum_ms = max.map_or(60_000.max(minimum_ms), |d| d.as_millis() as u64);
        let limited =
            scenario.steps.iter().any(|s| matches!(&s.action, Action::Subscribe(x) if x.sub == spec.sub && x.max > 0));
        let upper_bound = nack_delay_min.is_none() && !limited;
        let retry = checker::RetryBounds { minimum_ms, maximum_ms, nack_delay_min_ms: nack_delay_min, upper_bound };
        bounds.insert(spec.sub.clone(), retry);
    }
    bounds
}

/// Subscriptions created with message ordering.
pub fn ordered_subscriptions(scenario: &Scenario) -> BTreeSet<String> {
    sub_creates(scenario).filter(|spec| spec.ordered).map(|spec| spec.sub.clone()).collect()
}

/// Each subscription's ack deadline in milliseconds (the scenario's default where its
/// `sub create` sets none).
pub fn ack_deadlines(scenario: &Scenario) -> BTreeMap<String, u64> {
    let default = scenario.config.ack_deadline;
    let deadline = |spec: &SubSpec| spec.ack_deadline.unwrap_or(default).as_millis() as u64;
    sub_creates(scenario).map(|spec| (spec.sub.clone(), deadline(spec))).collect()
}
