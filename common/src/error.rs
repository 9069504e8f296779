//! The SQLSTATE registry. Every error that reaches a client carries one of these codes; no other
//! module spells a SQLSTATE literal.

use std::fmt;

/// Postgres error conditions we emit, named after Postgres' condition names
/// (<https://www.postgresql.org/docs/current/errcodes-appendix.html>).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SqlState {
    SuccessfulCompletion,
    Warning,
    FeatureNotSupported,
    InvalidTransactionState,
    ActiveSqlTransaction,
    NoActiveSqlTransaction,
    InFailedSqlTransaction,
    IdleInTransactionSessionTimeout,
    IdleSessionTimeout,
    ReadOnlySqlTransaction,
    InvalidSavepointSpecification,
    CardinalityViolation,
    NullValueNotAllowed,
    InvalidName,
    InvalidTextRepresentation,
    InvalidBinaryRepresentation,
    NumericValueOutOfRange,
    /// A value for a GENERATED ALWAYS column.
    GeneratedAlways,
    DivisionByZero,
    StringDataRightTruncation,
    InvalidDatetimeFormat,
    DatetimeFieldOverflow,
    InvalidParameterValue,
    BadCopyFileFormat,
    DataException,
    CharacterNotInRepertoire,
    NotNullViolation,
    UniqueViolation,
    CheckViolation,
    SyntaxError,
    UndefinedTable,
    UndefinedColumn,
    UndefinedObject,
    UndefinedFunction,
    UndefinedParameter,
    DuplicateTable,
    DuplicateColumn,
    DuplicateSchema,
    DuplicateObject,
    AmbiguousColumn,
    DatatypeMismatch,
    InvalidTableDefinition,
    InvalidColumnReference,
    InvalidSchemaName,
    InsufficientPrivilege,
    ReservedName,
    InvalidGrantOperation,
    ObjectInUse,
    InvalidCatalogName,
    InvalidPassword,
    InvalidAuthorizationSpecification,
    TooManyConnections,
    OutOfMemory,
    ProgramLimitExceeded,
    QueryCanceled,
    AdminShutdown,
    SerializationFailure,
    DeadlockDetected,
    LockNotAvailable,
    ProtocolViolation,
    ConnectionFailure,
    InvalidCursorName,
    InvalidSqlStatementName,
    DuplicatePreparedStatement,
    ObjectNotInPrerequisiteState,
    DependentObjectsStillExist,
    CantChangeRuntimeParam,
    IoError,
    InternalError,
}

impl SqlState {
    /// The five-character code sent in the `C` field of an ErrorResponse.
    pub fn code(self) -> &'static str {
        use SqlState::*;
        match self {
            SuccessfulCompletion => "00000",
            Warning => "01000",
            FeatureNotSupported => "0A000",
            InvalidTransactionState => "25000",
            ActiveSqlTransaction => "25001",
            NoActiveSqlTransaction => "25P01",
            InFailedSqlTransaction => "25P02",
            IdleInTransactionSessionTimeout => "25P03",
            IdleSessionTimeout => "57P05",
            ReadOnlySqlTransaction => "25006",
            InvalidSavepointSpecification => "3B001",
            CardinalityViolation => "21000",
            NullValueNotAllowed => "22004",
            InvalidName => "42602",
            InvalidTextRepresentation => "22P02",
            InvalidBinaryRepresentation => "22P03",
            NumericValueOutOfRange => "22003",
            GeneratedAlways => "428C9",
            DivisionByZero => "22012",
            StringDataRightTruncation => "22001",
            InvalidDatetimeFormat => "22007",
            DatetimeFieldOverflow => "22008",
            InvalidParameterValue => "22023",
            BadCopyFileFormat => "22P04",
            DataException => "22000",
            CharacterNotInRepertoire => "22021",
            NotNullViolation => "23502",
            UniqueViolation => "23505",
            CheckViolation => "23514",
            SyntaxError => "42601",
            UndefinedTable => "42P01",
            UndefinedColumn => "42703",
            UndefinedObject => "42704",
            UndefinedFunction => "42883",
            UndefinedParameter => "42P02",
            DuplicateTable => "42P07",
            DuplicateColumn => "42701",
            DuplicateSchema => "42P06",
            DuplicateObject => "42710",
            AmbiguousColumn => "42702",
            DatatypeMismatch => "42804",
            InvalidTableDefinition => "42P16",
            InvalidColumnReference => "42P10",
            InvalidSchemaName => "3F000",
            InsufficientPrivilege => "42501",
            ReservedName => "42939",
            InvalidGrantOperation => "0LP01",
            ObjectInUse => "55006",
            InvalidCatalogName => "3D000",
            InvalidPassword => "28P01",
            InvalidAuthorizationSpecification => "28000",
            TooManyConnections => "53300",
            OutOfMemory => "53200",
            ProgramLimitExceeded => "54000",
            QueryCanceled => "57014",
            AdminShutdown => "57P01",
            SerializationFailure => "40001",
            DeadlockDetected => "40P01",
            LockNotAvailable => "55P03",
            ProtocolViolation => "08P01",
            ConnectionFailure => "08006",
            InvalidCursorName => "34000",
            InvalidSqlStatementName => "26000",
            DuplicatePreparedStatement => "42P05",
            ObjectNotInPrerequisiteState => "55000",
            DependentObjectsStillExist => "2BP01",
            CantChangeRuntimeParam => "55P02",
            IoError => "58030",
            InternalError => "XX000",
        }
    }

    /// Whether a client may retry the statement unchanged and expect it to succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            SqlState::SerializationFailure
                | SqlState::DeadlockDetected
                | SqlState::ConnectionFailure
                | SqlState::LockNotAvailable
        )
    }
}

impl SqlState {
    /// Every condition, for decoding a code received from another process.
    pub const ALL: &'static [SqlState] = &[
        SqlState::SuccessfulCompletion,
        SqlState::Warning,
        SqlState::FeatureNotSupported,
        SqlState::InvalidTransactionState,
        SqlState::ActiveSqlTransaction,
        SqlState::NoActiveSqlTransaction,
        SqlState::InFailedSqlTransaction,
        SqlState::IdleInTransactionSessionTimeout,
        SqlState::IdleSessionTimeout,
        SqlState::ReadOnlySqlTransaction,
        SqlState::InvalidSavepointSpecification,
        SqlState::CardinalityViolation,
        SqlState::NullValueNotAllowed,
        SqlState::InvalidName,
        SqlState::InvalidTextRepresentation,
        SqlState::InvalidBinaryRepresentation,
        SqlState::NumericValueOutOfRange,
        SqlState::GeneratedAlways,
        SqlState::DivisionByZero,
        SqlState::StringDataRightTruncation,
        SqlState::InvalidDatetimeFormat,
        SqlState::DatetimeFieldOverflow,
        SqlState::InvalidParameterValue,
        SqlState::BadCopyFileFormat,
        SqlState::DataException,
        SqlState::CharacterNotInRepertoire,
        SqlState::NotNullViolation,
        SqlState::UniqueViolation,
        SqlState::CheckViolation,
        SqlState::SyntaxError,
        SqlState::UndefinedTable,
        SqlState::UndefinedColumn,
        SqlState::UndefinedObject,
        SqlState::UndefinedFunction,
        SqlState::UndefinedParameter,
        SqlState::DuplicateTable,
        SqlState::DuplicateColumn,
        SqlState::DuplicateSchema,
        SqlState::DuplicateObject,
        SqlState::AmbiguousColumn,
        SqlState::DatatypeMismatch,
        SqlState::InvalidTableDefinition,
        SqlState::InvalidColumnReference,
        SqlState::InvalidSchemaName,
        SqlState::InsufficientPrivilege,
        SqlState::ReservedName,
        SqlState::InvalidGrantOperation,
        SqlState::ObjectInUse,
        SqlState::InvalidCatalogName,
        SqlState::InvalidPassword,
        SqlState::InvalidAuthorizationSpecification,
        SqlState::TooManyConnections,
        SqlState::OutOfMemory,
        SqlState::ProgramLimitExceeded,
        SqlState::QueryCanceled,
        SqlState::AdminShutdown,
        SqlState::SerializationFailure,
        SqlState::DeadlockDetected,
        SqlState::LockNotAvailable,
        SqlState::ProtocolViolation,
        SqlState::ConnectionFailure,
        SqlState::InvalidCursorName,
        SqlState::InvalidSqlStatementName,
        SqlState::DuplicatePreparedStatement,
        SqlState::ObjectNotInPrerequisiteState,
        SqlState::DependentObjectsStillExist,
        SqlState::CantChangeRuntimeParam,
        SqlState::IoError,
        SqlState::InternalError,
    ];

    /// The condition with this five-character code, if we emit it.
    pub fn from_code(code: &str) -> Option<SqlState> {
        SqlState::ALL.iter().copied().find(|s| s.code() == code)
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A user-facing error with its SQLSTATE: what value parsing, codecs and the shard service return.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DbError {
    pub state: SqlState,
    pub message: String,
    pub detail: Option<String>,
    /// Where it happened (Postgres' CONTEXT line, e.g. `COPY t, line 3`).
    pub context: Option<String>,
}

impl DbError {
    pub fn new(state: SqlState, message: impl Into<String>) -> Self {
        DbError {
            state,
            message: message.into(),
            detail: None,
            context: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_context(mut self, context: impl Into<String>) -> Self {
        self.context = Some(context.into());
        self
    }

    pub fn internal(message: impl Into<String>) -> Self {
        DbError::new(SqlState::InternalError, message)
    }

    pub fn sqlstate(&self) -> SqlState {
        self.state
    }
}

pub type DbResult<T> = Result<T, DbError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails to compile when a condition is added without being listed here; add it to
    /// [`SqlState::ALL`] too, which the assertions below then check.
    fn listed(s: SqlState) -> bool {
        match s {
            SqlState::SuccessfulCompletion
            | SqlState::Warning
            | SqlState::FeatureNotSupported
            | SqlState::InvalidTransactionState
            | SqlState::ActiveSqlTransaction
            | SqlState::NoActiveSqlTransaction
            | SqlState::InFailedSqlTransaction
            | SqlState::IdleInTransactionSessionTimeout
            | SqlState::IdleSessionTimeout
            | SqlState::ReadOnlySqlTransaction
            | SqlState::InvalidSavepointSpecification
            | SqlState::CardinalityViolation
            | SqlState::NullValueNotAllowed
            | SqlState::InvalidName
            | SqlState::InvalidTextRepresentation
            | SqlState::InvalidBinaryRepresentation
            | SqlState::NumericValueOutOfRange
            | SqlState::GeneratedAlways
            | SqlState::DivisionByZero
            | SqlState::StringDataRightTruncation
            | SqlState::InvalidDatetimeFormat
            | SqlState::DatetimeFieldOverflow
            | SqlState::InvalidParameterValue
            | SqlState::BadCopyFileFormat
            | SqlState::DataException
            | SqlState::CharacterNotInRepertoire
            | SqlState::NotNullViolation
            | SqlState::UniqueViolation
            | SqlState::CheckViolation
            | SqlState::SyntaxError
            | SqlState::UndefinedTable
            | SqlState::UndefinedColumn
            | SqlState::UndefinedObject
            | SqlState::UndefinedFunction
            | SqlState::UndefinedParameter
            | SqlState::DuplicateTable
            | SqlState::DuplicateColumn
            | SqlState::DuplicateSchema
            | SqlState::DuplicateObject
            | SqlState::AmbiguousColumn
            | SqlState::DatatypeMismatch
            | SqlState::InvalidTableDefinition
            | SqlState::InvalidColumnReference
            | SqlState::InvalidSchemaName
            | SqlState::InsufficientPrivilege
            | SqlState::ReservedName
            | SqlState::InvalidGrantOperation
            | SqlState::ObjectInUse
            | SqlState::InvalidCatalogName
            | SqlState::InvalidPassword
            | SqlState::InvalidAuthorizationSpecification
            | SqlState::TooManyConnections
            | SqlState::OutOfMemory
            | SqlState::ProgramLimitExceeded
            | SqlState::QueryCanceled
            | SqlState::AdminShutdown
            | SqlState::SerializationFailure
            | SqlState::DeadlockDetected
            | SqlState::LockNotAvailable
            | SqlState::ProtocolViolation
            | SqlState::ConnectionFailure
            | SqlState::InvalidCursorName
            | SqlState::InvalidSqlStatementName
            | SqlState::DuplicatePreparedStatement
            | SqlState::ObjectNotInPrerequisiteState
            | SqlState::DependentObjectsStillExist
            | SqlState::CantChangeRuntimeParam
            | SqlState::IoError
            | SqlState::InternalError => SqlState::ALL.contains(&s),
        }
    }

    #[test]
    fn every_code_round_trips() {
        for &s in SqlState::ALL {
            assert!(listed(s));
            assert_eq!(SqlState::from_code(s.code()), Some(s), "{s:?}");
        }
        assert_eq!(SqlState::from_code("99999"), None);
    }
}
