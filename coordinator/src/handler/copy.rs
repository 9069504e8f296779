//! `COPY table FROM STDIN` in text and CSV formats: rows are parsed as data arrives and written
//! in chunks into the statement's transaction, so a bad row anywhere leaves nothing behind.
//! `COPY table|(query) TO STDOUT` in text, CSV and binary formats: the rows of a query, encoded
//! by the wire layer (`pgwire::encode::encode_copy_rows`).

use std::sync::Arc;

use datafusion::sql::sqlparser::ast;
use orochi_common::datum::Datum;
use orochi_common::error::{DbError, DbResult, SqlState};
use orochi_common::schema::TableDef;
use orochi_common::service::TxnId;

use crate::handler::dml::{default_value, normalize_ident, resolve_table};
use crate::session::{Session, StatementResult, TxnStatus};

const COPY_CHUNK_ROWS: usize = 16_384;

#[derive(Debug, Clone, PartialEq)]
pub enum CopyFormat {
    Text,
    Csv { quote: u8, escape: u8 },
    Binary,
}

pub struct CopyIn {
    pub def: Arc<TableDef>,
    pub targets: Vec<usize>,
    pub format: CopyFormat,
    pub delimiter: u8,
    pub null: String,
    pub header: bool,
    pub buffer: Vec<u8>,
    pub line: usize,
    pub rows: usize,
    /// Parsed rows not yet handed to the shards.
    pub pending: Vec<orochi_common::service::Row>,
    pub txn: TxnId,
    pub implicit: bool,
    pub done: bool,
    pub error: Option<DbError>,
    /// Columns the data does not give that get their default, and those that must not be
    /// NULL (decided once, not per row).
    defaults: Vec<usize>,
    not_null: Vec<usize>,
    /// `now()` for defaults: the transaction's start, as in Postgres.
    now: i64,
}

/// The options of a COPY statement, with Postgres' defaults filled in.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    pub format: CopyFormat,
    pub delimiter: u8,
    pub null: String,
    pub header: bool,
}

fn copy_options(
    options: &[ast::CopyOption],
    legacy: &[ast::CopyLegacyOption],
) -> DbResult<CopyOptions> {
    let mut csv = false;
    let mut binary = false;
    let mut delimiter: Option<u8> = None;
    let mut null: Option<String> = None;
    let mut header = false;
    let mut quote = b'"';
    let mut escape: Option<u8> = None;
    let single_byte = |c: char, what: &str| -> DbResult<u8> {
        if c.is_ascii() {
            Ok(c as u8)
        } else {
            Err(DbError::new(
                SqlState::FeatureNotSupported,
                format!("COPY {what} must be a single one-byte character"),
            ))
        }
    };
    for o in options {
        match o {
            ast::CopyOption::Format(f) => match f.value.to_lowercase().as_str() {
                "csv" => csv = true,
                "text" => csv = false,
                "binary" => binary = true,
                other => {
                    return Err(DbError::new(
                        SqlState::InvalidParameterValue,
                        format!("COPY format \"{other}\" not recognized"),
                    ));
                }
            },
            ast::CopyOption::Delimiter(c) => delimiter = Some(single_byte(*c, "delimiter")?),
            ast::CopyOption::Null(n) => null = Some(n.clone()),
            ast::CopyOption::Header(h) => header = *h,
            ast::CopyOption::Quote(c) => quote = single_byte(*c, "quote")?,
            ast::CopyOption::Escape(c) => escape = Some(single_byte(*c, "escape")?),
            ast::CopyOption::Freeze(_) => {}
            other => {
                return Err(DbError::new(
                    SqlState::FeatureNotSupported,
                    format!("COPY option {other} is not supported yet"),
                ));
            }
        }
    }
    for o in legacy {
        match o {
            ast::CopyLegacyOption::Csv(_) => csv = true,
            ast::CopyLegacyOption::Binary => binary = true,
            ast::CopyLegacyOption::Delimiter(c) => delimiter = Some(single_byte(*c, "delimiter")?),
            ast::CopyLegacyOption::Null(n) => null = Some(n.clone()),
            ast::CopyLegacyOption::Header => header = true,
            other => {
                return Err(DbError::new(
                    SqlState::FeatureNotSupported,
                    format!("COPY option {other} is not supported yet"),
                ));
            }
        }
    }
    if binary && (csv || delimiter.is_some() || null.is_some() || header) {
        return Err(DbError::new(
            SqlState::SyntaxError,
            "cannot specify DELIMITER, NULL or HEADER in BINARY mode",
        ));
    }
    if header && !csv {
        return Err(DbError::new(
            SqlState::FeatureNotSupported,
            "COPY HEADER available only in CSV mode",
        ));
    }
    let format = if binary {
        CopyFormat::Binary
    } else if csv {
        CopyFormat::Csv {
            quote,
            escape: escape.unwrap_or(quote),
        }
    } else {
        CopyFormat::Text
    };
    Ok(CopyOptions {
        delimiter: delimiter.unwrap_or(if csv { b',' } else { b'\t' }),
        null: null.unwrap_or_else(|| {
            if csv {
                String::new()
            } else {
                "\\N".to_string()
            }
        }),
        header,
        format,
    })
}

/// The visible columns `columns` names (all visible columns when empty), by physical index.
fn target_columns(def: &TableDef, columns: &[ast::Ident]) -> DbResult<Vec<usize>> {
    if columns.is_empty() {
        return Ok(def.visible_columns());
    }
    columns
        .iter()
        .map(|c| {
            let n = normalize_ident(c);
            def.column_index(&n).ok_or_else(|| {
                DbError::new(
                    SqlState::UndefinedColumn,
                    format!("column \"{n}\" of relation \"{}\" does not exist", def.name),
                )
            })
        })
        .collect()
}

/// `COPY … TO STDOUT`: runs the table's (or the query's) rows through the query path and hands
/// them to the wire layer, which encodes them in the chosen format.
pub async fn handle_copy_to(
    s: &mut Session,
    source: &ast::CopySource,
    target: &ast::CopyTarget,
    options: &[ast::CopyOption],
    legacy: &[ast::CopyLegacyOption],
    params: &crate::session::Params,
) -> DbResult<StatementResult> {
    if !matches!(target, ast::CopyTarget::Stdout) {
        return Err(DbError::new(
            SqlState::InsufficientPrivilege,
            "COPY to a file is not allowed: use COPY TO STDOUT, or psql's \\copy",
        ));
    }
    let options = copy_options(options, legacy)?;
    let query = match source {
        ast::CopySource::Query(q) => (**q).clone(),
        ast::CopySource::Table {
            table_name,
            columns,
        } => {
            let def = resolve_table(s, table_name)?;
            table_query(&def, &target_columns(&def, columns)?)?
        }
    };
    match crate::handler::query::handle_query(s, &query, params).await? {
        StatementResult::Rows { schema, stream, .. } => Ok(StatementResult::CopyOut {
            schema,
            stream,
            options,
        }),
        _ => Err(DbError::internal("COPY query returned no rows")),
    }
}

/// `SELECT "c1", … FROM "schema"."table"`, parsed (names from the catalog, quoted).
fn table_query(def: &TableDef, columns: &[usize]) -> DbResult<ast::Query> {
    let quote = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
    let list: Vec<String> = columns
        .iter()
        .map(|&i| quote(&def.columns[i].name))
        .collect();
    let sql = format!(
        "SELECT {} FROM {}.{}",
        list.join(", "),
        quote(&def.schema),
        quote(&def.name)
    );
    let mut stmts = datafusion::sql::sqlparser::parser::Parser::parse_sql(
        &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
        &sql,
    )
    .map_err(|e| DbError::internal(format!("COPY query: {e}")))?;
    match stmts.pop() {
        Some(ast::Statement::Query(q)) => Ok(*q),
        _ => Err(DbError::internal("COPY query is not a query")),
    }
}

/// `COPY … FROM STDIN`: the sub-protocol's data arrives through [`copy_data`].
pub fn handle_copy_from(
    s: &mut Session,
    source: &ast::CopySource,
    target: &ast::CopyTarget,
    options: &[ast::CopyOption],
    legacy: &[ast::CopyLegacyOption],
) -> DbResult<StatementResult> {
    if !matches!(target, ast::CopyTarget::Stdin) {
        return Err(DbError::new(
            SqlState::InsufficientPrivilege,
            "COPY from a file is not allowed: use COPY FROM STDIN, or psql's \\copy",
        ));
    }
    let ast::CopySource::Table {
        table_name,
        columns,
    } = source
    else {
        return Err(DbError::new(
            SqlState::SyntaxError,
            "COPY FROM requires a table",
        ));
    };
    let def = resolve_table(s, table_name)?;
    s.check_table(&def, crate::privilege::Privilege::Insert)?;
    let targets = target_columns(&def, columns)?;
    let CopyOptions {
        format,
        delimiter,
        null,
        header,
    } = copy_options(options, legacy)?;
    let columns = targets.len();
    let binary = format == CopyFormat::Binary;
    let live = |i: &usize| !def.columns[*i].dropped;
    let defaults = (0..def.columns.len())
        .filter(live)
        .filter(|i| !targets.contains(i))
        .collect();
    let not_null = (0..def.columns.len())
        .filter(live)
        .filter(|&i| !def.columns[i].nullable)
        .collect();
    let now = s.txn_start.timestamp_micros();
    s.copy = Some(CopyIn {
        def,
        targets,
        delimiter,
        null,
        header,
        format,
        buffer: Vec::new(),
        line: 0,
        rows: 0,
        pending: Vec::new(),
        txn: 0,
        implicit: true,
        done: false,
        error: None,
        defaults,
        not_null,
        now,
    });
    Ok(StatementResult::CopyIn { columns, binary })
}

/// Splits the next complete record off the front of `buf` (CSV records may span lines).
fn next_record(buf: &[u8], format: &CopyFormat) -> Option<usize> {
    match format {
        // binary input is read by `CopyIn::feed_binary`
        CopyFormat::Text | CopyFormat::Binary => buf.iter().position(|&b| b == b'\n'),
        CopyFormat::Csv { quote, escape } => {
            let mut in_quotes = false;
            let mut i = 0;
            while i < buf.len() {
                let b = buf[i];
                if in_quotes {
                    if b == *escape && escape != quote && i + 1 < buf.len() && buf[i + 1] == *quote
                    {
                        i += 2;
                        continue;
                    }
                    if b == *quote {
                        in_quotes = false;
                    }
                } else if b == *quote {
                    in_quotes = true;
                } else if b == b'\n' {
                    return Some(i);
                }
                i += 1;
            }
            None
        }
    }
}

fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn bad_format(msg: impl Into<String>) -> DbError {
    DbError::new(SqlState::BadCopyFileFormat, msg.into())
}

/// Fields of a text-format line (`None` = NULL).
fn split_text(line: &[u8], delim: u8, null: &str) -> DbResult<Vec<Option<String>>> {
    let mut fields = Vec::new();
    for raw in line.split(|&b| b == delim) {
        if raw == null.as_bytes() {
            fields.push(None);
            continue;
        }
        let mut out = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'\\' && i + 1 < raw.len() {
                let c = raw[i + 1];
                i += 2;
                match c {
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'r' => out.push(b'\r'),
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'v' => out.push(11),
                    b'0'..=b'7' => {
                        let mut v = (c - b'0') as u32;
                        let mut n = 1;
                        while n < 3 && i < raw.len() && (b'0'..=b'7').contains(&raw[i]) {
                            v = v * 8 + (raw[i] - b'0') as u32;
                            i += 1;
                            n += 1;
                        }
                        out.push(v as u8);
                    }
                    other => out.push(other),
                }
            } else {
                out.push(raw[i]);
                i += 1;
            }
        }
        fields.push(Some(String::from_utf8(out).map_err(|_| {
            DbError::new(
                SqlState::CharacterNotInRepertoire,
                "invalid byte sequence for encoding \"UTF8\"",
            )
        })?));
    }
    Ok(fields)
}

/// Fields of a CSV record (`None` = NULL: an unquoted field equal to the NULL string).
fn split_csv(
    rec: &[u8],
    delim: u8,
    quote: u8,
    escape: u8,
    null: &str,
) -> DbResult<Vec<Option<String>>> {
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        let mut out = Vec::new();
        let mut quoted = false;
        let mut in_quotes = false;
        while i < rec.len() {
            let b = rec[i];
            if in_quotes {
                if b == escape && i + 1 < rec.len() && rec[i + 1] == quote {
                    out.push(quote);
                    i += 2;
                    continue;
                }
                if b == quote {
                    in_quotes = false;
                    i += 1;
                    continue;
                }
                out.push(b);
                i += 1;
            } else if b == quote {
                in_quotes = true;
                quoted = true;
                i += 1;
            } else if b == delim {
                break;
            } else {
                out.push(b);
                i += 1;
            }
        }
        if in_quotes {
            return Err(bad_format("unterminated CSV quoted field"));
        }
        let s = String::from_utf8(out).map_err(|_| {
            DbError::new(
                SqlState::CharacterNotInRepertoire,
                "invalid byte sequence for encoding \"UTF8\"",
            )
        })?;
        fields.push(if !quoted && s == null { None } else { Some(s) });
        if i >= rec.len() {
            break;
        }
        i += 1; // delimiter
    }
    Ok(fields)
}

impl CopyIn {
    /// Consumes incoming data: parses complete records into pending writes.
    pub fn feed(&mut self, data: &[u8], s: &Session) -> DbResult<()> {
        if self.done || self.error.is_some() {
            return Ok(());
        }
        self.buffer.extend_from_slice(data);
        if self.format == CopyFormat::Binary {
            return self.feed_binary(s);
        }
        // the buffer is taken out while its records are parsed (no copy of each record)
        let buffer = std::mem::take(&mut self.buffer);
        let mut consumed = 0;
        while let Some(end) = next_record(&buffer[consumed..], &self.format) {
            let mut rec = &buffer[consumed..consumed + end];
            consumed += end + 1;
            if rec.last() == Some(&b'\r') {
                rec = &rec[..rec.len() - 1];
            }
            self.line += 1;
            if rec == b"\\." {
                self.done = true;
                break;
            }
            if self.header && self.line == 1 {
                continue;
            }
            if let Err(e) = self.parse_record(rec, s) {
                return Err(self.with_context(e));
            }
        }
        self.buffer = buffer;
        self.buffer.drain(..consumed);
        Ok(())
    }

    /// Binary format: the signature and header once, then tuples (`int16` field count, each
    /// field an `int32` length, -1 for NULL, and the type's binary send format) until the
    /// `-1` trailer. A tuple split across CopyData messages waits for the rest.
    fn feed_binary(&mut self, s: &Session) -> DbResult<()> {
        const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
        let mut pos = 0;
        let fail = |c: &mut CopyIn, e: DbError| {
            c.buffer.clear();
            Err(c.with_context(e))
        };
        if self.line == 0 {
            // signature, flags, header extension length, extension
            if self.buffer.len() < SIGNATURE.len() + 8 {
                return Ok(());
            }
            if &self.buffer[..SIGNATURE.len()] != SIGNATURE {
                return fail(self, bad_format("COPY file signature not recognized"));
            }
            let flags = be_i32(&self.buffer[11..15]);
            if flags & (1 << 16) != 0 || flags & !0xffff != 0 {
                return fail(
                    self,
                    bad_format("invalid COPY file header (unrecognized critical flags)"),
                );
            }
            let ext = be_i32(&self.buffer[15..19]);
            if ext < 0 {
                return fail(
                    self,
                    bad_format("invalid COPY file header (missing length)"),
                );
            }
            if self.buffer.len() < 19 + ext as usize {
                return Ok(());
            }
            pos = 19 + ext as usize;
            self.line = 1;
        }
        while let Some(count) = self.buffer.get(pos..pos + 2) {
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count == -1 {
                self.done = true;
                pos += 2;
                break;
            }
            if count as usize != self.targets.len() {
                let e = bad_format(format!(
                    "row field count is {count}, expected {}",
                    self.targets.len()
                ));
                return fail(self, e);
            }
            // the whole tuple must be here before anything is decoded
            let mut end = pos + 2;
            let mut fields: Vec<Option<(usize, usize)>> = Vec::with_capacity(self.targets.len());
            let mut complete = true;
            for _ in 0..count {
                let Some(len) = self.buffer.get(end..end + 4) else {
                    complete = false;
                    break;
                };
                let len = be_i32(len);
                end += 4;
                if len == -1 {
                    fields.push(None);
                    continue;
                }
                if len < 0 {
                    return fail(self, bad_format("invalid field size"));
                }
                if self.buffer.len() < end + len as usize {
                    complete = false;
                    break;
                }
                fields.push(Some((end, len as usize)));
                end += len as usize;
            }
            if !complete {
                break;
            }
            self.line += 1;
            let values: DbResult<Vec<Datum>> = self
                .targets
                .iter()
                .zip(&fields)
                .map(|(&col, f)| match f {
                    Some((at, len)) => crate::pgwire::encode::decode_binary(
                        &self.buffer[*at..*at + *len],
                        self.def.columns[col].ty,
                    ),
                    None => Ok(Datum::Null),
                })
                .collect();
            if let Err(e) = values.and_then(|v| self.store_row(v, s)) {
                return fail(self, e);
            }
            pos = end;
        }
        self.buffer.drain(..pos);
        Ok(())
    }

    /// Sends the parsed rows to the shards (inside the COPY's transaction).
    async fn write_pending(&mut self, s: &Session) -> DbResult<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.pending);
        s.instance
            .service
            .load(self.txn, self.def.id, rows)
            .await
            .map_err(|e| self.with_context(e))
    }

    pub fn with_context(&self, e: DbError) -> DbError {
        e.with_context(format!("COPY {}, line {}", self.def.name, self.line))
    }

    fn parse_record(&mut self, rec: &[u8], s: &Session) -> DbResult<()> {
        let fields = match &self.format {
            CopyFormat::Text | CopyFormat::Binary => split_text(rec, self.delimiter, &self.null)?,
            CopyFormat::Csv { quote, escape } => {
                split_csv(rec, self.delimiter, *quote, *escape, &self.null)?
            }
        };
        if fields.len() < self.targets.len() {
            let missing = &self.def.columns[self.targets[fields.len()]].name;
            return Err(bad_format(format!("missing data for column \"{missing}\"")));
        }
        if fields.len() > self.targets.len() {
            return Err(bad_format("extra data after last expected column"));
        }
        let values = self
            .targets
            .iter()
            .zip(fields)
            .map(|(&col, f)| match f {
                Some(text) => Datum::parse_in(self.def.columns[col].ty, &text, &s.zone),
                None => Ok(Datum::Null),
            })
            .collect::<DbResult<Vec<_>>>()?;
        self.store_row(values, s)
    }

    /// Adds a row of the target columns' values: defaults for the other columns, NOT NULL
    /// checked.
    fn store_row(&mut self, values: Vec<Datum>, s: &Session) -> DbResult<()> {
        let def = &self.def;
        let mut row = vec![Datum::Null; def.columns.len()];
        for (&col, v) in self.targets.iter().zip(values) {
            row[col] = v;
        }
        for &i in &self.defaults {
            row[i] = default_value(s, def, i, self.now)?;
        }
        for &i in &self.not_null {
            let c = &def.columns[i];
            if row[i].is_null() {
                return Err(DbError::new(
                    SqlState::NotNullViolation,
                    format!(
                        "null value in column \"{}\" of relation \"{}\" violates not-null constraint",
                        c.name, def.name
                    ),
                ));
            }
        }
        self.pending.push(row);
        self.rows += 1;
        Ok(())
    }
}

/// Handles a chunk of COPY data for the session.
pub async fn copy_data(s: &mut Session, data: &[u8]) -> DbResult<()> {
    let Some(mut c) = s.copy.take() else {
        return Err(DbError::new(
            SqlState::ProtocolViolation,
            "unexpected COPY data",
        ));
    };
    let mut result = c.feed(data, s);
    if result.is_ok() && c.pending.len() >= COPY_CHUNK_ROWS {
        result = c.write_pending(s).await;
    }
    if let Err(e) = result
        && c.error.is_none()
    {
        c.error = Some(e);
    }
    s.copy = Some(c);
    Ok(())
}

/// Finishes COPY: writes the rest, commits an implicit transaction, returns the tag.
pub async fn copy_done(s: &mut Session) -> DbResult<String> {
    let Some(mut c) = s.copy.take() else {
        return Err(DbError::new(
            SqlState::ProtocolViolation,
            "unexpected COPY done",
        ));
    };
    let mut result = match c.error.take() {
        Some(e) => Err(e),
        None => Ok(()),
    };
    if result.is_ok() && c.format == CopyFormat::Binary && !c.done {
        result = Err(c.with_context(bad_format("unexpected EOF in COPY data")));
    }
    if result.is_ok() && !c.buffer.is_empty() && !c.done {
        // a final line without a newline
        let mut tail = std::mem::take(&mut c.buffer);
        tail.push(b'\n');
        result = c.feed(&tail, s);
    }
    if result.is_ok() {
        result = c.write_pending(s).await;
    }
    finish(s, &c, result)
        .await
        .map(|_| format!("COPY {}", c.rows))
}

/// Client aborted the COPY (CopyFail) or it failed.
pub async fn copy_fail(s: &mut Session, message: &str) -> DbError {
    let err = DbError::new(
        SqlState::QueryCanceled,
        format!("COPY from stdin failed: {message}"),
    );
    if let Some(c) = s.copy.take() {
        let _ = finish(s, &c, Err(err.clone())).await;
    }
    err
}

async fn finish(s: &mut Session, c: &CopyIn, result: DbResult<()>) -> DbResult<()> {
    match (&result, c.implicit) {
        (Ok(()), true) => s
            .instance
            .service
            .commit(c.txn)
            .await
            .map_err(|e| c.with_context(e))?,
        (Err(_), true) => s.instance.service.abort(c.txn).await,
        (Err(_), false) => s.txn = TxnStatus::Failed(c.txn),
        (Ok(()), false) => {}
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_csv_fields() {
        assert_eq!(
            split_text(b"1\t\\N\ta\\tb", b'\t', "\\N").unwrap(),
            vec![Some("1".into()), None, Some("a\tb".into())]
        );
        assert_eq!(
            split_csv(b"1,,\"a,\"\"b\"\"\",\"\"", b',', b'"', b'"', "").unwrap(),
            vec![
                Some("1".into()),
                None,
                Some("a,\"b\"".into()),
                Some("".into())
            ]
        );
        assert_eq!(
            next_record(
                b"\"a\nb\",1\nrest",
                &CopyFormat::Csv {
                    quote: b'"',
                    escape: b'"'
                }
            ),
            Some(7)
        );
    }
}
