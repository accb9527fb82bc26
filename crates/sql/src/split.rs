//! Splitting a simple-Query string into the statements the server executes.

use crate::lexer::{is_space, next_significant, tokenize_with, Token, TokenKind};

/// One statement of a multi-statement SQL string (PostgreSQL lexical rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statement<'a> {
    /// The statement, as a slice of the input: trimmed of surrounding whitespace, without the
    /// terminating `;`; comments inside it (and before it) are kept.
    pub text: &'a str,
}

/// Splits `sql` into statements the way PostgreSQL 15 counts the statements of one simple-Query
/// message, so that each statement gets exactly one of the server's CommandComplete responses.
///
/// - Statements end at a `;` outside quotes, comments, parentheses (`CREATE RULE ... DO ALSO
///   (...; ...)`) and SQL-standard routine bodies (`CREATE FUNCTION ... BEGIN ATOMIC ...; END`).
/// - Statements holding only whitespace and comments are dropped: the server sends nothing for
///   them.
/// - An unterminated quote or comment swallows the rest of the input into the last statement
///   (even if that statement is only the unterminated comment): the server rejects the message,
///   and no text is lost.
///
/// Never panics; every returned text is a slice of `sql`, in order, not overlapping.
pub fn split_statements(sql: &str) -> Vec<Statement<'_>> {
    split_with(sql, true)
}

/// [`split_statements`] for a gateway that cannot know the session's
/// `standard_conforming_strings` (a client may turn it off, even in a message pipelined
/// behind the one being split): `None` unless the text reads the same with it off (see
/// [`reads_the_same_either_way`]).
pub fn split_statements_strict(sql: &str) -> Option<Vec<Statement<'_>>> {
    reads_the_same_either_way(sql).then(|| split_with(sql, true))
}

/// Whether `sql` is the same tokens whether `standard_conforming_strings` is on or off —
/// false only when a backslash sits in a plain `'…'` string where it changes where the
/// string ends. The policy parser reads SQL with the setting on, and a client may turn it
/// off: a text that reads differently could hide a subquery or a statement in what the
/// gateway took for a string or a comment, so such a text is refused (`E''` strings,
/// dollar quotes and backslashes that end no string are fine).
pub fn reads_the_same_either_way(sql: &str) -> bool {
    if !sql.contains('\\') {
        return true;
    }
    let on = tokenize_with(sql, true);
    let off = tokenize_with(sql, false);
    let same = |a: &Token, b: &Token| {
        a.start == b.start
            && a.end == b.end
            && match (a.kind, b.kind) {
                // A plain string is read as an escape string with the setting off; what
                // matters is that it spans the same text.
                (TokenKind::Literal(_), TokenKind::Literal(_)) => true,
                (x, y) => x == y,
            }
    };
    on.len() == off.len() && on.iter().zip(&off).all(|(a, b)| same(a, b))
}

fn split_with(sql: &str, standard_conforming_strings: bool) -> Vec<Statement<'_>> {
    let tokens = tokenize_with(sql, standard_conforming_strings);
    let mut statements = Vec::new();
    let mut start = 0;
    let mut nesting = Nesting::default();
    for (index, token) in tokens.iter().enumerate() {
        if token.kind == TokenKind::Semicolon && nesting.is_top_level() {
            statements.extend(statement(sql, &tokens[start..index]));
            start = index + 1;
            nesting = Nesting::default();
        } else {
            nesting.observe(sql, &tokens, index);
        }
    }
    statements.extend(statement(sql, &tokens[start..]));
    statements
}

/// The statement made of `tokens`, or `None` if the server would see nothing there.
fn statement<'a>(sql: &'a str, tokens: &[Token]) -> Option<Statement<'a>> {
    // An unterminated comment counts as SQL: the server rejects it, and its text must not vanish.
    let holds_sql = tokens.iter().any(|token| {
        !token.is_trivia() || token.kind == TokenKind::BlockComment { terminated: false }
    });
    if !holds_sql {
        return None;
    }
    let is_text = |token: &&Token| token.kind != TokenKind::Whitespace;
    let first = tokens.iter().find(is_text)?;
    let last = tokens.iter().rfind(is_text)?;
    let text = &sql[first.start..last.end];
    // A trailing line comment may end with spaces before its line break.
    let text = match last.kind {
        TokenKind::LineComment => text.trim_end_matches(|c| u8::try_from(c).is_ok_and(is_space)),
        _ => text,
    };
    Some(Statement { text })
}

/// What decides whether a `;` ends the current statement.
#[derive(Debug, Default)]
struct Nesting {
    /// Open parentheses.
    parens: usize,
    /// Open `BEGIN ATOMIC` blocks of a routine body, and `CASE` expressions inside them: both
    /// end with `END`.
    blocks: usize,
    head: Head,
}

impl Nesting {
    fn is_top_level(&self) -> bool {
        self.parens == 0 && self.blocks == 0
    }

    /// Takes the token at `index` into account.
    fn observe(&mut self, sql: &str, tokens: &[Token], index: usize) {
        let token = &tokens[index];
        if token.is_trivia() {
            return;
        }
        let word = (token.kind == TokenKind::Word).then(|| token.text(sql));
        self.head = self.head.next(word);
        match (token.kind, word) {
            (TokenKind::OpenParen, _) => self.parens += 1,
            (TokenKind::CloseParen, _) => self.parens = self.parens.saturating_sub(1),
            // Like psql, look at keywords in routine definitions only, outside parentheses: that
            // is where `BEGIN ATOMIC` and its body's `CASE ... END` stand.
            (TokenKind::Word, Some(word)) if self.head == Head::Routine && self.parens == 0 => {
                let opens_block =
                    word.eq_ignore_ascii_case("begin") && is_atomic(sql, tokens, index);
                let opens_case = word.eq_ignore_ascii_case("case") && self.blocks > 0;
                if opens_block || opens_case {
                    self.blocks += 1;
                } else if word.eq_ignore_ascii_case("end") {
                    self.blocks = self.blocks.saturating_sub(1);
                }
            }
            _ => {}
        }
    }
}

/// Whether the token after the one at `index` (skipping trivia) is `ATOMIC`.
fn is_atomic(sql: &str, tokens: &[Token], index: usize) -> bool {
    next_significant(tokens, index).is_some_and(|next| {
        tokens[next].kind == TokenKind::Word
            && tokens[next].text(sql).eq_ignore_ascii_case("atomic")
    })
}

/// How far a statement's leading keywords match `CREATE [OR REPLACE] FUNCTION|PROCEDURE`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Head {
    #[default]
    Start,
    Create,
    CreateOr,
    CreateOrReplace,
    /// The statement defines a function or procedure.
    Routine,
    /// The statement is something else.
    Other,
}

impl Head {
    /// The state after the next significant token; `word` is its text if it is a word.
    fn next(self, word: Option<&str>) -> Head {
        let is = |keyword: &str| word.is_some_and(|word| word.eq_ignore_ascii_case(keyword));
        match self {
            Head::Start if is("create") => Head::Create,
            Head::Create if is("or") => Head::CreateOr,
            Head::CreateOr if is("replace") => Head::CreateOrReplace,
            Head::Create | Head::CreateOrReplace if is("function") || is("procedure") => {
                Head::Routine
            }
            Head::Routine => Head::Routine,
            _ => Head::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str) -> Vec<&str> {
        split_statements(sql).iter().map(|s| s.text).collect()
    }

    #[test]
    fn splits_like_the_server() {
        let cases: &[(&str, &[&str])] = &[
            // Plain splitting, trimming, empty statements.
            ("", &[]),
            ("SELECT 1", &["SELECT 1"]),
            ("SELECT 1;", &["SELECT 1"]),
            ("SELECT 1;;SELECT 2;", &["SELECT 1", "SELECT 2"]),
            ("  SELECT 1 ;\n\tSELECT 2  ", &["SELECT 1", "SELECT 2"]),
            (";", &[]),
            (" ; ;; ", &[]),
            ("-- x", &[]),
            ("/* a */ ; -- b\n;", &[]),
            ("/* a; /* b; */ c; */", &[]),
            ("-- lead\nSELECT 1; -- trail", &["-- lead\nSELECT 1"]),
            ("SELECT 1 -- trail \t\n", &["SELECT 1 -- trail"]),
            ("SELECT 1 /* in; side */ + 1", &["SELECT 1 /* in; side */ + 1"]),
            ("BEGIN; SELECT 1; COMMIT;", &["BEGIN", "SELECT 1", "COMMIT"]),
            ("SELECT 'é';SELECT 日;", &["SELECT 'é'", "SELECT 日"]),
            // U+00A0 is an identifier character to the server, not whitespace.
            ("SELECT 1 AS a\u{a0};", &["SELECT 1 AS a\u{a0}"]),
            // Quotes.
            ("SELECT 'a;b'; SELECT 2", &["SELECT 'a;b'", "SELECT 2"]),
            ("SELECT 'it''s;'; SELECT 2", &["SELECT 'it''s;'", "SELECT 2"]),
            ("SELECT '\\'; SELECT 2", &["SELECT '\\'", "SELECT 2"]),
            ("SELECT E'\\';'; SELECT 2", &["SELECT E'\\';'", "SELECT 2"]),
            ("SELECT e'\\\\'; SELECT 2", &["SELECT e'\\\\'", "SELECT 2"]),
            ("SELECT U&'a;b'; SELECT 2", &["SELECT U&'a;b'", "SELECT 2"]),
            ("SELECT \"a;\"\"b\"; SELECT 2", &["SELECT \"a;\"\"b\"", "SELECT 2"]),
            ("SELECT U&\"a;b\"; SELECT 2", &["SELECT U&\"a;b\"", "SELECT 2"]),
            // Comments.
            (
                "SELECT /* a; /* nested; */ still; */ 1; SELECT 2",
                &["SELECT /* a; /* nested; */ still; */ 1", "SELECT 2"],
            ),
            ("SELECT 1 -- c;\n; SELECT 2", &["SELECT 1 -- c;", "SELECT 2"]),
            // Dollar quotes, parameters, `$` in identifiers.
            ("SELECT $$a;b$$; SELECT 2", &["SELECT $$a;b$$", "SELECT 2"]),
            (
                "SELECT $x$ $$; $y$ ; $x$; SELECT 2",
                &["SELECT $x$ $$; $y$ ; $x$", "SELECT 2"],
            ),
            (
                "DO $fn$ BEGIN PERFORM 1; END $fn$; SELECT 2",
                &["DO $fn$ BEGIN PERFORM 1; END $fn$", "SELECT 2"],
            ),
            (
                "PREPARE p AS SELECT $1; EXECUTE p(1)",
                &["PREPARE p AS SELECT $1", "EXECUTE p(1)"],
            ),
            ("SELECT a$$b; SELECT 2$$;", &["SELECT a$$b", "SELECT 2$$;"]),
            ("SELECT $; SELECT $a;", &["SELECT $", "SELECT $a"]),
            // Parentheses.
            (
                "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); DELETE FROM b); SELECT 1",
                &[
                    "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); DELETE FROM b)",
                    "SELECT 1",
                ],
            ),
            ("SELECT 1); SELECT 2", &["SELECT 1)", "SELECT 2"]),
            // SQL-standard routine bodies.
            (
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; \
                 SELECT CASE WHEN true THEN 2 END; END; SELECT 3",
                &[
                    "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; \
                     SELECT CASE WHEN true THEN 2 END; END",
                    "SELECT 3",
                ],
            ),
            (
                "create or replace procedure p() begin /* c */ atomic insert into t values (1); end;call p()",
                &[
                    "create or replace procedure p() begin /* c */ atomic insert into t values (1); end",
                    "call p()",
                ],
            ),
            (
                "CREATE FUNCTION begin() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql; SELECT begin()",
                &[
                    "CREATE FUNCTION begin() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql",
                    "SELECT begin()",
                ],
            ),
            // Outside a routine definition `BEGIN ATOMIC` opens nothing.
            ("BEGIN ATOMIC; SELECT 1", &["BEGIN ATOMIC", "SELECT 1"]),
            // Unterminated quotes and comments take the rest.
            ("SELECT 1; SELECT 'abc; SELECT 2", &["SELECT 1", "SELECT 'abc; SELECT 2"]),
            ("SELECT 1; SELECT E'\\'; SELECT 2", &["SELECT 1", "SELECT E'\\'; SELECT 2"]),
            ("SELECT $$abc; SELECT 2", &["SELECT $$abc; SELECT 2"]),
            ("SELECT \"abc; SELECT 2", &["SELECT \"abc; SELECT 2"]),
            ("SELECT 1; /* abc; SELECT 2", &["SELECT 1", "/* abc; SELECT 2"]),
            ("SELECT 1 /* a /* b */; SELECT 2", &["SELECT 1 /* a /* b */; SELECT 2"]),
        ];
        for (sql, expected) in cases {
            assert_eq!(texts(sql), *expected, "input {sql:?}");
        }
    }
}

#[cfg(test)]
mod strict_tests {
    use super::*;

    #[test]
    fn backslash_that_changes_statement_boundaries_is_ambiguous() {
        // With standard_conforming_strings off the server reads `'\'; --'` as one string and
        // runs the DELETE; with it on, the DELETE is inside a comment.
        assert_eq!(
            split_statements_strict("SELECT '\\'; --'; DELETE FROM t"),
            None
        );
        assert_eq!(split_statements_strict("SELECT '\\'; SELECT 2 --'"), None);
    }

    #[test]
    fn backslash_that_hides_a_subquery_in_one_statement_is_ambiguous() {
        // One statement either way, but with the setting off the server runs the subquery
        // that the policy parser (setting on) reads as a comment.
        let sql = "SELECT '\\' -- ', (SELECT string_agg(salary::text, ',') FROM payroll)";
        assert_eq!(split_statements_strict(sql), None);
        assert!(!reads_the_same_either_way(sql));
        assert!(!reads_the_same_either_way("SELECT '\\' /*a='b'*/"));
        assert!(reads_the_same_either_way(
            "SELECT 'C:\\temp', E'\\'', $$\\$$"
        ));
    }

    #[test]
    fn backslashes_that_do_not_matter_are_fine() {
        let s = split_statements_strict("SELECT 'C:\\temp'; SELECT 2").map(|v| v.len());
        assert_eq!(s, Some(2));
        let s = split_statements_strict("SELECT E'a\\'b'; SELECT $$x\\$$").map(|v| v.len());
        assert_eq!(s, Some(2));
        assert_eq!(
            split_statements_strict("SELECT 1; SELECT 2").map(|v| v.len()),
            Some(2)
        );
    }
}
