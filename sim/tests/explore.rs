//! Generated workloads with random fault mixes pass every check; a failure is reported as
//! the smallest scenario that still fails the same way, ready to save as a regression.

use mini_pubsub_sim::{explore, runner, scenario};
use proptest::prelude::*;

/// Why `text` fails, if it does. A candidate the shrinker makes may not parse (a step that
/// names a host whose other steps were dropped): it does not reproduce the failure.
fn failure(text: &str) -> Option<String> {
    let parsed = scenario::parse("generated.scn", text).ok()?;
    runner::run(&parsed, None).failure
}

proptest! {
    // Each case simulates about a minute: a few fixed ones per `cargo test` (so CI is
    // reproducible), many more with `mini-pubsub-sim explore`.
    #![proptest_config(ProptestConfig {
        cases: 4,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(2026),
        ..ProptestConfig::default()
    })]

    #[test]
    fn generated_scenarios_pass_every_check(seed in any::<u64>()) {
        let text = explore::generate(seed);
        scenario::parse("generated.scn", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        if let Some(why) = failure(&text).filter(|why| !explore::is_inconclusive(why)) {
            let shrunk = explore::shrink(&text, failure);
            prop_assert!(false, "seed {seed} failed ({why}); smallest failing scenario:\n{shrunk}");
        }
    }
}
