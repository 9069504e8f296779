//! The one place that builds pgwire's `ErrorInfo` (STYLE.md §4).

use orochi_common::error::{DbError, SqlState};
use pgwire::error::{ErrorInfo, PgWireError};

pub fn error_info(e: &DbError, position: Option<usize>) -> ErrorInfo {
    let mut info = ErrorInfo::new(
        "ERROR".to_string(),
        e.state.code().to_string(),
        e.message.clone(),
    );
    info.detail = e.detail.clone();
    info.where_context = e.context.clone();
    info.position = position.map(|p| p.to_string());
    info
}

pub fn fatal_info(e: &DbError) -> ErrorInfo {
    let mut info = error_info(e, None);
    info.severity = "FATAL".to_string();
    info
}

pub fn to_pgwire(e: &DbError, position: Option<usize>) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(e, position)))
}

/// A FATAL error (the connection is closed after it is sent).
pub fn fatal(state: SqlState, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(fatal_info(&DbError::new(state, message))))
}
