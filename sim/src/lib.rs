//! mini-pubsub-sim: the production broker on turmoil's simulated network and clock.
//!
//! - [`scenario`]: the scenario language and its parser.
//! - [`html`]: a run as one self-contained page.
//! - [`world`]: turmoil implementations of the broker's `Net` and `Clock` traits, and a
//!   tonic client that connects over the simulated network.

#[cfg(not(tokio_unstable))]
compile_error!(
    "mini-pubsub-sim must be built with --cfg tokio_unstable (the workspace's .cargo/config.toml sets it): \
     without it turmoil cannot seed tokio's scheduler and runs are not reproducible"
);

pub mod agent;
pub mod checker;
pub mod disk;
pub mod explore;
pub mod facts;
pub mod history;
pub mod html;
pub mod replay;
pub mod runner;
pub mod scenario;
pub mod world;
