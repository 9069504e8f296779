//! Physical operators of our own.

pub mod shard_scan;
