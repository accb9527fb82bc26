//! Removing passwords from SQL text before it is written to the audit log.

use std::borrow::Cow;
use std::ops::Range;

use crate::conninfo;
use crate::lexer::{next_significant, tokenize, Literal, LiteralKind, Token, TokenKind};

/// What a secret string constant is replaced with.
const REDACTED_LITERAL: &str = "'***'";
/// What a secret inside a string constant is replaced with.
const REDACTED_TEXT: &str = "***";

/// Replaces the passwords in `sql` with `***`, keeping every other byte as it is.
///
/// - In `CREATE|ALTER ROLE|USER|GROUP|SERVER|FOREIGN …` statements, a string constant (`'...'`,
///   `E'...'`, `U&'...'`, `$$...$$`, `$tag$...$tag$`) following the keyword `password` or
///   `passwd` becomes `'***'`: `[ENCRYPTED] PASSWORD '...'` (also the SCRAM verifier psql's
///   `\password` sends) and `OPTIONS (password '...')` of user mappings and servers.
///   `PASSWORD NULL` has no constant and stays. Only there: elsewhere the same words are an
///   argument name, a column or a type (`run(password => '…')`, `SET password = '…'`), and
///   blanking the constant would let any statement hide text from the record by passing it
///   to a function through a parameter named `password`.
/// - Inside any string constant, the value of a libpq `password=...` (or `sslpassword=...`)
///   keyword and the password of a `scheme://user:password@host` URI become `***`: dblink
///   connection strings, `CREATE SUBSCRIPTION ... CONNECTION '...'`.
///
/// Comments and identifiers such as `password_hash` are left alone. Returns
/// [`Cow::Borrowed`] when nothing changes, which is decided without scanning for most
/// statements; redacting twice gives the same text as redacting once.
pub fn redact_secrets(sql: &str) -> Cow<'_, str> {
    if !conninfo::may_hold_secret(sql) {
        return Cow::Borrowed(sql);
    }
    let edits = find_secrets(sql, &tokenize(sql));
    if edits.is_empty() {
        return Cow::Borrowed(sql);
    }
    let mut redacted = String::with_capacity(sql.len());
    let mut copied = 0;
    for edit in &edits {
        redacted.push_str(&sql[copied..edit.range.start]);
        redacted.push_str(edit.replacement);
        copied = edit.range.end;
    }
    redacted.push_str(&sql[copied..]);
    Cow::Owned(redacted)
}

/// Redacts the passwords in free text that is not SQL (a prompt, a tool's arguments):
/// libpq connection strings (`password=…`) and URIs (`postgresql://user:…@host`) anywhere
/// in it, as if it were the body of a dollar-quoted string.
pub fn redact_text_secrets(text: &str) -> Cow<'_, str> {
    let whole = Literal {
        kind: LiteralKind::Dollar,
        body_start: 0,
        body_end: text.len(),
    };
    let ranges = conninfo::secret_ranges(text, whole);
    if ranges.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut redacted = String::with_capacity(text.len());
    let mut copied = 0;
    for range in ranges {
        redacted.push_str(&text[copied..range.start]);
        redacted.push_str(REDACTED_TEXT);
        copied = range.end;
    }
    redacted.push_str(&text[copied..]);
    Cow::Owned(redacted)
}

/// A replacement of `range` of the SQL text.
#[derive(Debug)]
struct Edit {
    range: Range<usize>,
    replacement: &'static str,
}

/// The edits that remove the secrets, in order, not overlapping.
fn find_secrets(sql: &str, tokens: &[Token]) -> Vec<Edit> {
    let mut edits = Vec::new();
    let sets_passwords = sets_passwords(sql, tokens);
    let mut index = 0;
    while let Some(token) = tokens.get(index) {
        if sets_passwords && is_password_keyword(sql, token) {
            if let Some((range, last)) = literal_after(sql, tokens, index) {
                if sql[range.clone()] != *REDACTED_LITERAL {
                    edits.push(Edit {
                        range,
                        replacement: REDACTED_LITERAL,
                    });
                }
                index = last + 1;
                continue;
            }
        } else if let TokenKind::Literal(literal) = token.kind {
            edits.extend(
                conninfo::secret_ranges(sql, literal)
                    .into_iter()
                    .map(|range| Edit {
                        range,
                        replacement: REDACTED_TEXT,
                    }),
            );
        }
        index += 1;
    }
    edits
}

/// Whether the statement is one whose `PASSWORD '…'` or `OPTIONS (password '…')` sets a
/// password: `CREATE` or `ALTER` of a role, user, group, user mapping, server or foreign
/// data wrapper.
fn sets_passwords(sql: &str, tokens: &[Token]) -> bool {
    let mut words = tokens
        .iter()
        .filter(|t| !t.is_trivia())
        .map(|t| (t.kind == TokenKind::Word).then(|| t.text(sql)));
    let is = |word: Option<&str>, among: &[&str]| {
        word.is_some_and(|w| among.iter().any(|a| w.eq_ignore_ascii_case(a)))
    };
    is(words.next().flatten(), &["create", "alter"])
        && is(
            words.next().flatten(),
            &["role", "user", "group", "server", "foreign"],
        )
}

/// `password` or `passwd`, unquoted or quoted (`OPTIONS ("password" 'x')`).
fn is_password_keyword(sql: &str, token: &Token) -> bool {
    let text = token.text(sql);
    let name = match token.kind {
        TokenKind::Word => Some(text),
        TokenKind::QuotedIdent => text.strip_prefix('"').and_then(|t| t.strip_suffix('"')),
        _ => None,
    };
    name.is_some_and(|name| {
        name.eq_ignore_ascii_case("password") || name.eq_ignore_ascii_case("passwd")
    })
}

/// The string constant following the keyword at `index`, as its byte range and the index of its
/// last token.
fn literal_after(sql: &str, tokens: &[Token], index: usize) -> Option<(Range<usize>, usize)> {
    let is_char = |index: usize, chars: &[&str]| {
        tokens[index].kind == TokenKind::Other && chars.contains(&tokens[index].text(sql))
    };
    let mut first = next_significant(tokens, index)?;
    if is_char(first, &["=", ":"]) {
        first = next_significant(tokens, first)?;
        if is_char(first, &["=", ">"]) {
            first = next_significant(tokens, first)?;
        }
    }
    let TokenKind::Literal(literal) = tokens[first].kind else {
        return None;
    };
    let last = match literal.kind {
        LiteralKind::Dollar => first,
        _ => last_continuation(sql, tokens, first),
    };
    Some((tokens[first].start..tokens[last].end, last))
}

/// The index of the last quoted constant continuing the one at `index`: the server joins
/// constants separated by whitespace with a line break (`'abc'\n'def'` is `'abcdef'`), and the
/// continuation is part of the secret.
fn last_continuation(sql: &str, tokens: &[Token], index: usize) -> usize {
    let mut last = index;
    while let (Some(gap), Some(next)) = (tokens.get(last + 1), tokens.get(last + 2)) {
        let is_line_break =
            gap.kind == TokenKind::Whitespace && gap.text(sql).contains(['\n', '\r']);
        // A continuation is a plain `'...'`, without prefix.
        let is_plain_quote = matches!(
            next.kind,
            TokenKind::Literal(literal)
                if literal.kind == LiteralKind::Standard && literal.body_start == next.start + 1
        );
        if !(is_line_break && is_plain_quote) {
            break;
        }
        last += 2;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs and their redacted form.
    const REDACTED: &[(&str, &str)] = &[
        // Role passwords, in every kind of string constant.
        (
            "CREATE ROLE alice PASSWORD 'secret'",
            "CREATE ROLE alice PASSWORD '***'",
        ),
        (
            "create user bob with encrypted password 'x' valid until '2030-01-01'",
            "create user bob with encrypted password '***' valid until '2030-01-01'",
        ),
        (
            "CREATE GROUP g PASSWORD 'it''s'",
            "CREATE GROUP g PASSWORD '***'",
        ),
        (
            "ALTER ROLE a PASSWORD E'se\\'cret'",
            "ALTER ROLE a PASSWORD '***'",
        ),
        (
            "ALTER ROLE a PASSWORD U&'s\\0065cret'",
            "ALTER ROLE a PASSWORD '***'",
        ),
        (
            "ALTER USER a PASSWORD $$sec;ret$$;",
            "ALTER USER a PASSWORD '***';",
        ),
        (
            "ALTER USER a PASSWORD $pw$se$$cret$pw$",
            "ALTER USER a PASSWORD '***'",
        ),
        (
            "ALTER USER x PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy'",
            "ALTER USER x PASSWORD '***'",
        ),
        (
            "ALTER USER a /* c */ PASSWORD -- c\n 'x' LOGIN",
            "ALTER USER a /* c */ PASSWORD -- c\n '***' LOGIN",
        ),
        (
            "ALTER USER a PASSWORD 'ab'\n  'cd';",
            "ALTER USER a PASSWORD '***';",
        ),
        (
            "ALTER USER a PASSWORD 'unterminated",
            "ALTER USER a PASSWORD '***'",
        ),
        // Options of foreign servers and user mappings.
        (
            "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password 'secret')",
            "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password '***')",
        ),
        (
            "ALTER USER MAPPING FOR bob SERVER s OPTIONS (SET password 'new')",
            "ALTER USER MAPPING FOR bob SERVER s OPTIONS (SET password '***')",
        ),
        (
            "CREATE SERVER s FOREIGN DATA WRAPPER w OPTIONS (host 'h', passwd 'x')",
            "CREATE SERVER s FOREIGN DATA WRAPPER w OPTIONS (host 'h', passwd '***')",
        ),
        (
            "ALTER SERVER s OPTIONS (\"password\" 'x')",
            "ALTER SERVER s OPTIONS (\"password\" '***')",
        ),
        (
            "/* why */ create role r login password 'x'",
            "/* why */ create role r login password '***'",
        ),
        // libpq connection strings in any string constant.
        (
            "SELECT dblink_connect('host=h user=u password=secret dbname=d')",
            "SELECT dblink_connect('host=h user=u password=*** dbname=d')",
        ),
        (
            "CREATE SUBSCRIPTION s CONNECTION 'host=x password=secret' PUBLICATION p",
            "CREATE SUBSCRIPTION s CONNECTION 'host=x password=***' PUBLICATION p",
        ),
        (
            "SELECT dblink('password=''my secret'' host=h', 'q')",
            "SELECT dblink('password=''***'' host=h', 'q')",
        ),
        (
            "SELECT 'PASSWORD = s3cr3t port=5432'",
            "SELECT 'PASSWORD = *** port=5432'",
        ),
        ("SELECT 'sslpassword=k3y'", "SELECT 'sslpassword=***'"),
        (
            "SELECT E'host=h password=se\\'cr\\\\et x'",
            "SELECT E'host=h password=*** x'",
        ),
        ("SELECT $$password=secret$$", "SELECT $$password=***$$"),
        (
            "SELECT 'host=h password=a' || 'password=b'",
            "SELECT 'host=h password=***' || 'password=***'",
        ),
        // Connection URIs in any string constant.
        (
            "SELECT dblink('postgres://user:secret@host/db', 'select 1')",
            "SELECT dblink('postgres://user:***@host/db', 'select 1')",
        ),
        (
            "SELECT 'postgresql://u:p%40ss@h1:5432,h2/db?sslmode=require'",
            "SELECT 'postgresql://u:***@h1:5432,h2/db?sslmode=require'",
        ),
        (
            "SELECT 'postgresql://u:p@ss@h'",
            "SELECT 'postgresql://u:***@h'",
        ),
        (
            "SELECT 'postgresql://h/db?user=u&password=secret&sslmode=require'",
            "SELECT 'postgresql://h/db?user=u&password=***&sslmode=require'",
        ),
        (
            "SELECT 'dbname=postgres://u:p@h password=x'",
            "SELECT 'dbname=postgres://u:***@h password=***'",
        ),
        (
            "SELECT 'password=postgres://u:p@h'",
            "SELECT 'password=***'",
        ),
    ];

    /// Inputs left as they are.
    const UNCHANGED: &[&str] = &[
        "SELECT 1",
        "SELECT password_hash FROM users",
        "SELECT \"password_hash\" FROM users WHERE id = '1'",
        "SELECT 1 -- password 'x'",
        "SELECT 1 /* password 'x' */",
        "ALTER USER a PASSWORD NULL",
        "ALTER USER a PASSWORD '***'",
        "SELECT 'password'",
        "SELECT 'mypassword=x'",
        "SELECT 'password='",
        "SELECT 'https://example.com/path'",
        "SELECT 'postgres://user@host/db'",
        "SELECT 'postgres://host:5432/db'",
        "SELECT 'host=x password=***'",
        "SELECT 'postgres://u:***@h'",
        "SELECT password FROM users",
        "SELECT 'password' AS password",
        // Not a password being set: an argument, a column, a typed constant. Blanking these
        // would let a function hide any text from the record.
        "UPDATE users SET password = 'x'",
        "CALL f(password => 'x')",
        "SELECT f(passwd := 'x')",
        "SELECT run(password => 'create table hidden(x int)')",
        "SELECT run(password 'drop table t')",
        "OPTIONS (\"password\" 'x')",
    ];

    #[test]
    fn redacts_every_form() {
        for (sql, expected) in REDACTED {
            assert_eq!(redact_secrets(sql), *expected, "input {sql:?}");
        }
    }

    #[test]
    fn borrows_when_nothing_changes() {
        for sql in UNCHANGED {
            let redacted = redact_secrets(sql);
            assert!(
                matches!(redacted, Cow::Borrowed(_)),
                "input {sql:?} gave {redacted:?}"
            );
            assert_eq!(redacted, *sql);
        }
    }

    #[test]
    fn redacting_twice_is_redacting_once() {
        for (sql, _) in REDACTED {
            let once = redact_secrets(sql);
            let twice = redact_secrets(&once);
            assert!(matches!(twice, Cow::Borrowed(_)), "input {sql:?}");
            assert_eq!(twice, once, "input {sql:?}");
        }
    }

    #[test]
    fn free_text_loses_connection_passwords() {
        let prompt = "connect with postgres://app:hunter2@db/x or host=db password=s3cret please";
        let redacted = redact_text_secrets(prompt);
        assert_eq!(
            redacted,
            "connect with postgres://app:***@db/x or host=db password=*** please"
        );
        assert!(matches!(
            redact_text_secrets("no secrets here"),
            Cow::Borrowed(_)
        ));
    }
}
