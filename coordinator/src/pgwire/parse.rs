//! Parsing SQL text with sqlparser's Postgres dialect.

use datafusion::sql::sqlparser::ast::{Expr, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use orochi_common::error::{DbError, DbResult, SqlState};

/// A syntax error, with the character position (1-based) Postgres reports.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub error: DbError,
    pub position: Option<usize>,
}

pub fn parse_statements(sql: &str) -> Result<Vec<Statement>, SyntaxError> {
    Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| syntax_error(sql, e))
}

pub fn parse_expr(sql: &str) -> DbResult<Expr> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| syntax_error(sql, e).error)
}

fn syntax_error(sql: &str, e: ParserError) -> SyntaxError {
    let msg = match &e {
        ParserError::ParserError(m) | ParserError::TokenizerError(m) => m.clone(),
        ParserError::RecursionLimitExceeded => {
            return SyntaxError {
                error: DbError::new(SqlState::ProgramLimitExceeded, "stack depth limit exceeded"),
                position: None,
            };
        }
    };
    // "Expected: ..., found: foo at Line: 1, Column: 8"
    let (line, col) = match msg.rfind("at Line: ") {
        Some(i) => {
            let rest = &msg[i + 9..];
            let mut parts = rest.split(", Column: ");
            let l = parts.next().and_then(|x| x.trim().parse::<usize>().ok());
            let c = parts.next().and_then(|x| x.trim().parse::<usize>().ok());
            (l, c)
        }
        None => (None, None),
    };
    let position = match (line, col) {
        (Some(l), Some(c)) => {
            let mut pos = 0;
            for (i, text) in sql.split('\n').enumerate() {
                if i + 1 == l {
                    pos += c;
                    break;
                }
                pos += text.chars().count() + 1;
            }
            Some(pos)
        }
        _ => None,
    };
    let found = msg
        .split("found: ")
        .nth(1)
        .map(|f| f.split(" at Line").next().unwrap_or(f).to_string());
    let message = match found {
        Some(f) if f == "EOF" => "syntax error at end of input".to_string(),
        Some(f) => format!("syntax error at or near \"{f}\""),
        None => format!("syntax error: {msg}"),
    };
    let position = if message.contains("end of input") {
        Some(sql.chars().count().max(1))
    } else {
        position
    };
    SyntaxError {
        error: DbError::new(SqlState::SyntaxError, message),
        position,
    }
}
