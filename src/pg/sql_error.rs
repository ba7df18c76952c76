//! The ERRORs Postgres raises inside the worker's units of work, as values:
//! what a subtransaction, a guarded call or the decoder caught.

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

/// An ERROR raised inside a subtransaction.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlError {
    pub code: PgSqlErrorCode,
    pub message: String,
}

impl SqlError {
    /// `insufficient_privilege` (42501): what an RLS policy that says no raises.
    pub fn is_denial(&self) -> bool {
        self.code == PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE
    }

    /// A statement or lock timeout, or a cancel.
    pub fn is_timeout(&self) -> bool {
        matches!(self.code, PgSqlErrorCode::ERRCODE_QUERY_CANCELED | PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE)
    }
}

impl SqlError {
    /// As Supabase's clients read a database error (Postgrex's form):
    /// `ERROR 22P02 (invalid_text_representation) invalid input syntax ...`.
    pub fn with_code(&self) -> String {
        // SAFETY: Postgres's own unpacking, into a static buffer read at once
        // (main thread).
        let sqlstate = unsafe { std::ffi::CStr::from_ptr(pg_sys::unpack_sql_state(self.code as i32)) };
        let sqlstate = sqlstate.to_string_lossy();
        let name = format!("{:?}", self.code);
        let name = name.strip_prefix("ERRCODE_").unwrap_or(&name).to_ascii_lowercase();
        format!("ERROR {sqlstate} ({name}) {}", self.message)
    }
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<SqlError> for String {
    fn from(e: SqlError) -> String {
        e.message
    }
}

/// What a caught ERROR (or a Rust panic, as pgrx reports it) says.
pub fn describe(e: &CaughtError) -> SqlError {
    let report = match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
        CaughtError::RustPanic { ereport, .. } => ereport,
    };
    SqlError { code: report.sql_error_code(), message: report.message().to_owned() }
}
