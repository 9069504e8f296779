//! SQLSTATEs for DataFusion and Arrow errors: shared with the workers, which run plan
//! fragments (see `orochi_worker::dferror`).

pub use orochi_worker::dferror::*;
