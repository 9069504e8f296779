//! Parsing SQL text with sqlparser's Postgres dialect.

use datafusion::sql::sqlparser::ast::{Expr, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use orochi_common::error::{DbError, DbResult, SqlState};

/// A syntax error, with the character position (1-based) Postgres reports.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub error: DbError,
    pub position: Option<usize>,
}

pub fn parse_statements(sql: &str) -> Result<Vec<Statement>, SyntaxError> {
    let mut stmts = parse_postgres(sql)?;
    for stmt in &mut stmts {
        // `pg_catalog.f()`, bare `current_schema`, casts to types DataFusion lacks
        crate::functions::strip_pg_catalog_qualifier(stmt);
        crate::pgtypes::rewrite_type_casts(stmt);
        crate::functions::name_scalar_table_functions(stmt);
    }
    Ok(stmts)
}

fn parse_postgres(sql: &str) -> Result<Vec<Statement>, SyntaxError> {
    // sqlparser reads `CREATE/ALTER USER` with Snowflake's grammar; in Postgres they are
    // CREATE/ALTER ROLE (CREATE USER with LOGIN by default)
    if let Some(rewritten) = rewrite_user_statements(sql)
        && let Ok(stmts) = Parser::parse_sql(&PostgreSqlDialect {}, &rewritten)
    {
        return Ok(stmts);
    }
    match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        // `SET GLOBAL` is how ALTER SYSTEM reaches the handler (below); Postgres has no such
        // SET, so a client writing it gets the syntax error Postgres gives
        Ok(stmts) if stmts.iter().any(is_alter_system) => {
            let at = sql.to_uppercase().find("GLOBAL").map(|i| i + 1);
            Err(SyntaxError {
                error: DbError::new(SqlState::SyntaxError, "syntax error at or near \"GLOBAL\""),
                position: at,
            })
        }
        Ok(stmts) => Ok(stmts),
        Err(e) => {
            if let Some(rewritten) = rewrite_alter_system(sql)
                && let Ok(stmts) = Parser::parse_sql(&PostgreSqlDialect {}, &rewritten)
            {
                return Ok(stmts);
            }
            if let Some((rewritten, admin_option_for)) = rewrite_role_grants(sql)
                && let Ok(mut stmts) = Parser::parse_sql(&PostgreSqlDialect {}, &rewritten)
            {
                if admin_option_for
                    && let [Statement::Revoke(r)] = stmts.as_mut_slice()
                    && r.granted_by.is_none()
                {
                    r.granted_by = Some(admin_option_marker());
                }
                return Ok(stmts);
            }
            // Postgres spellings sqlparser does not know: `on`/`off`/`1`/`0` for COPY's
            // boolean options (pgbench sends `with (freeze on)`) and VACUUM's options
            // (`vacuum analyze t`). Retry with them normalized, and report the original error
            // if that does not help either.
            if let Some(rewritten) = normalize_pg_spellings(sql)
                && let Ok(stmts) = Parser::parse_sql(&PostgreSqlDialect {}, &rewritten)
            {
                return Ok(stmts);
            }
            Err(syntax_error(sql, e))
        }
    }
}

/// What `REVOKE ADMIN OPTION FOR role FROM member` leaves in the parsed REVOKE's `granted_by`:
/// an identifier no SQL text produces (it starts with NUL, which the protocol's strings cannot
/// hold).
pub fn admin_option_marker() -> datafusion::sql::sqlparser::ast::Ident {
    datafusion::sql::sqlparser::ast::Ident::new("\0ADMIN OPTION FOR")
}

/// Role grants, which sqlparser's grammar lacks: `GRANT r1, r2 TO m [WITH ADMIN OPTION]` →
/// `GRANT ROLE r1, ROLE r2 TO m [WITH GRANT OPTION]`, `REVOKE [ADMIN OPTION FOR] r FROM m` →
/// `REVOKE ROLE r FROM m`, and whether ADMIN OPTION FOR was there. `None` for anything else,
/// a GRANT/REVOKE with `ON` included (one statement only).
fn rewrite_role_grants(sql: &str) -> Option<(String, bool)> {
    let head = sql.trim_start().as_bytes();
    if !["grant", "revoke"].iter().any(|k| {
        head.get(..k.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(k.as_bytes()))
    }) {
        return None;
    }
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let mut words: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    while matches!(words.last(), Some(Token::SemiColon)) {
        words.pop();
    }
    let kw = |t: &Token, k: Keyword| matches!(t, Token::Word(w) if w.keyword == k && w.quote_style.is_none());
    if words
        .iter()
        .any(|t| kw(t, Keyword::ON) || matches!(t, Token::SemiColon))
    {
        return None;
    }
    let grant = kw(words.first()?, Keyword::GRANT);
    let mut i = 1;
    let mut admin_option_for = false;
    if !grant
        && words.len() > 4
        && kw(words[1], Keyword::ADMIN)
        && kw(words[2], Keyword::OPTION)
        && kw(words[3], Keyword::FOR)
    {
        admin_option_for = true;
        i = 4;
    }
    let mut out = String::from(if grant { "GRANT" } else { "REVOKE" });
    let to = if grant { Keyword::TO } else { Keyword::FROM };
    // the role list: names separated by commas
    let mut expect_name = true;
    while i < words.len() && !kw(words[i], to) {
        match words[i] {
            Token::Word(w) if expect_name => {
                out.push_str(" ROLE ");
                out.push_str(&w.to_string());
                expect_name = false;
            }
            Token::Comma if !expect_name => {
                out.push(',');
                expect_name = true;
            }
            _ => return None,
        }
        i += 1;
    }
    if expect_name || i == words.len() {
        return None;
    }
    let rest = &words[i..];
    let mut j = 0;
    while j < rest.len() {
        if grant
            && j + 2 < rest.len()
            && kw(rest[j], Keyword::WITH)
            && kw(rest[j + 1], Keyword::ADMIN)
            && kw(rest[j + 2], Keyword::OPTION)
        {
            out.push_str(" WITH GRANT OPTION");
            j += 3;
            continue;
        }
        out.push(' ');
        out.push_str(&rest[j].to_string());
        j += 1;
    }
    Some((out, admin_option_for))
}

/// `SET GLOBAL name = …`: our spelling of `ALTER SYSTEM SET` (see [`rewrite_alter_system`]).
pub fn is_alter_system(stmt: &Statement) -> bool {
    matches!(
        stmt,
        Statement::Set(datafusion::sql::sqlparser::ast::Set::SingleAssignment {
            scope: Some(datafusion::sql::sqlparser::ast::ContextModifier::Global),
            ..
        })
    )
}

/// `ALTER SYSTEM SET name = value` → `SET GLOBAL name = value`; `ALTER SYSTEM RESET name` →
/// `SET GLOBAL name = DEFAULT` (`ALL` included), which sqlparser parses and the SET handler
/// turns back into ALTER SYSTEM. `None` when there is no ALTER SYSTEM.
fn rewrite_alter_system(sql: &str) -> Option<String> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let word = |t: &Token, k: Keyword| matches!(t, Token::Word(w) if w.keyword == k);
    let mut out = String::with_capacity(sql.len() + 16);
    let mut changed = false;
    let mut at_start = true;
    let mut reset_pending = false;
    let mut i = 0;
    while i < tokens.len() {
        let tok = &tokens[i];
        match tok {
            Token::Whitespace(_) => {}
            Token::SemiColon => {
                if reset_pending {
                    out.push_str(" = DEFAULT");
                    reset_pending = false;
                }
                at_start = true;
            }
            _ if at_start && word(tok, Keyword::ALTER) => {
                at_start = false;
                let next: Vec<(usize, &Token)> = tokens
                    .iter()
                    .enumerate()
                    .skip(i + 1)
                    .filter(|(_, t)| !matches!(t, Token::Whitespace(_)))
                    .take(2)
                    .collect();
                if let [(_, system), (j, verb)] = next.as_slice()
                    && word(system, Keyword::SYSTEM)
                    && (word(verb, Keyword::SET) || word(verb, Keyword::RESET))
                {
                    reset_pending = word(verb, Keyword::RESET);
                    out.push_str("SET GLOBAL");
                    changed = true;
                    i = j + 1;
                    continue;
                }
            }
            _ => at_start = false,
        }
        out.push_str(&tok.to_string());
        i += 1;
    }
    if reset_pending {
        out.push_str(" = DEFAULT");
    }
    changed.then_some(out)
}

/// `CREATE USER x …` → `CREATE ROLE x … LOGIN` (unless LOGIN/NOLOGIN is given), `ALTER USER`
/// → `ALTER ROLE`, `DROP USER` → `DROP ROLE`. `None` when there is none.
fn rewrite_user_statements(sql: &str) -> Option<String> {
    // most statements are none of these: decide on the first word without allocating
    let head = sql.trim_start().as_bytes();
    if !["create", "alter", "drop"].iter().any(|k| {
        head.get(..k.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(k.as_bytes()))
    }) {
        return None;
    }
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let word = |t: &Token, k: Keyword| matches!(t, Token::Word(w) if w.keyword == k);
    let is = |t: &Token, s: &str| matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(s));
    let mut out = String::with_capacity(sql.len() + 8);
    let mut changed = false;
    // inside a CREATE USER: whether LOGIN/NOLOGIN was seen
    let mut create_user: Option<bool> = None;
    let mut at_start = true;
    let mut i = 0;
    let finish = |out: &mut String, create_user: &mut Option<bool>| {
        if *create_user == Some(false) {
            out.push_str(" LOGIN");
        }
        *create_user = None;
    };
    while i < tokens.len() {
        let tok = &tokens[i];
        match tok {
            Token::Whitespace(_) => {}
            Token::SemiColon => {
                finish(&mut out, &mut create_user);
                at_start = true;
            }
            _ if at_start => {
                at_start = false;
                let verb = [Keyword::CREATE, Keyword::ALTER, Keyword::DROP]
                    .into_iter()
                    .find(|k| word(tok, *k));
                let next = tokens
                    .iter()
                    .enumerate()
                    .skip(i + 1)
                    .find(|(_, t)| !matches!(t, Token::Whitespace(_)));
                if let (Some(verb), Some((j, user))) = (verb, next)
                    && word(user, Keyword::USER)
                {
                    out.push_str(&tok.to_string());
                    out.push_str(" ROLE");
                    changed = true;
                    if verb == Keyword::CREATE {
                        create_user = Some(false);
                    }
                    i = j + 1;
                    continue;
                }
            }
            _ if create_user.is_some() && (is(tok, "login") || is(tok, "nologin")) => {
                create_user = Some(true);
            }
            _ => {}
        }
        out.push_str(&tok.to_string());
        i += 1;
    }
    finish(&mut out, &mut create_user);
    changed.then_some(out)
}

/// Rewrites the boolean values of COPY options (`freeze on`, `header 1`, ...) to
/// `true`/`false`, and drops VACUUM's Postgres options (`analyze`, `verbose`, `(...)`), which
/// sqlparser's VACUUM grammar does not have and which change nothing here (VACUUM is accepted
/// and does no work). `None` when there is nothing to rewrite.
fn normalize_pg_spellings(sql: &str) -> Option<String> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let mut out = String::with_capacity(sql.len());
    let mut changed = false;
    let mut at_start = true;
    let mut in_copy = false;
    // inside VACUUM, before its table name: options are dropped
    let mut in_vacuum_options = false;
    let mut depth = 0usize;
    let mut prev_option = false;
    for tok in tokens {
        if in_vacuum_options {
            let drop = match &tok {
                Token::Whitespace(_) => false,
                Token::LParen => {
                    depth += 1;
                    true
                }
                Token::RParen => {
                    depth = depth.saturating_sub(1);
                    true
                }
                _ if depth > 0 => true,
                Token::Word(w) => matches!(
                    w.keyword,
                    Keyword::ANALYZE | Keyword::VERBOSE | Keyword::FREEZE
                ),
                _ => false,
            };
            if drop {
                changed = true;
                continue;
            }
            if !matches!(tok, Token::Whitespace(_)) {
                in_vacuum_options = false;
            }
        }
        let mut replacement = None;
        match &tok {
            Token::Whitespace(_) => {}
            Token::SemiColon => {
                at_start = true;
                in_copy = false;
                in_vacuum_options = false;
                depth = 0;
                prev_option = false;
            }
            Token::LParen => {
                depth += 1;
                at_start = false;
                prev_option = false;
            }
            Token::RParen => {
                depth = depth.saturating_sub(1);
                prev_option = false;
            }
            Token::Word(w) => {
                if at_start {
                    in_copy = w.keyword == Keyword::COPY;
                    at_start = false;
                    if w.keyword == Keyword::VACUUM {
                        in_vacuum_options = true;
                        out.push_str(&tok.to_string());
                        continue;
                    }
                }
                let value = w.value.to_ascii_lowercase();
                if in_copy && depth == 1 && prev_option && w.quote_style.is_none() {
                    replacement = match value.as_str() {
                        "on" => Some("true"),
                        "off" => Some("false"),
                        _ => None,
                    };
                }
                prev_option = in_copy && matches!(w.keyword, Keyword::FREEZE | Keyword::HEADER);
            }
            Token::Number(n, _) => {
                if in_copy && depth == 1 && prev_option {
                    replacement = match n.as_str() {
                        "1" => Some("true"),
                        "0" => Some("false"),
                        _ => None,
                    };
                }
                prev_option = false;
            }
            _ => {
                at_start = false;
                prev_option = false;
            }
        }
        match replacement {
            Some(r) => {
                changed = true;
                out.push_str(r);
            }
            None => out.push_str(&tok.to_string()),
        }
    }
    changed.then_some(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_boolean_options_accept_on_off() {
        let stmts = parse_statements("copy t from stdin with (freeze on, header 0)").unwrap();
        let text = stmts[0].to_string().to_lowercase();
        assert_eq!(text, "copy t from stdin (freeze, header false)");
        // only COPY options are rewritten
        let stmts = parse_statements("select 'on'; copy t to stdout with (header off)").unwrap();
        assert_eq!(stmts[0].to_string(), "SELECT 'on'");
        assert!(parse_statements("copy t from stdin with (freeze maybe)").is_err());
    }

    #[test]
    fn alter_system_is_set_global_and_set_global_is_refused() {
        let stmts = parse_statements(
            "ALTER SYSTEM SET orochi.compression_level = 5; alter system reset all; \
             ALTER SYSTEM RESET statement_timeout",
        )
        .unwrap();
        assert!(stmts.iter().all(is_alter_system));
        assert_eq!(
            stmts[1].to_string().to_lowercase(),
            "set global all = default"
        );
        let e = parse_statements("SET GLOBAL x = 1").unwrap_err();
        assert_eq!(e.error.state, SqlState::SyntaxError);
    }

    #[test]
    fn vacuum_accepts_postgres_options() {
        for sql in [
            "vacuum analyze pgbench_branches",
            "VACUUM (VERBOSE, ANALYZE) t",
            "vacuum freeze verbose analyze s.t; select 1",
        ] {
            let stmts = parse_statements(sql).unwrap();
            assert!(matches!(stmts[0], Statement::Vacuum(_)), "{sql}");
        }
    }
}
