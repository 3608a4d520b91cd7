pub mod core;
pub mod storage;
pub mod wire;
