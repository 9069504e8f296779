//! Statement handlers, one file per statement kind. [`crate::session::Session::execute`]
//! dispatches here.

pub mod copy;
pub mod ddl;
pub mod distribution;
pub mod dml;
pub mod eval;
pub mod explain;
pub mod fastpath;
pub mod query;
pub mod role;
pub mod utility;
