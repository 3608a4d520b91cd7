pub mod core;
pub mod env;
pub mod server;
pub mod storage;
pub mod wire;
