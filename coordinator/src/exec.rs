//! Physical operators of our own.

pub mod pushdown;
pub mod shard_scan;
