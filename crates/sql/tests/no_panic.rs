//! Neither function may panic on any input, and split statements must be in-order slices of it.

use std::borrow::Cow;

use sluice_sql::{redact_secrets, split_statements};

/// Pieces that stress quoting, comments, nesting, redaction and char boundaries.
const FRAGMENTS: &[&str] = &[
    "'",
    "''",
    "\"",
    "$",
    "$$",
    "$a$",
    "$1",
    "--",
    "/*",
    "*/",
    ";",
    "\\",
    "E'",
    "U&'",
    "(",
    ")",
    "BEGIN ATOMIC",
    "END",
    "CASE",
    "CREATE FUNCTION",
    "password",
    "=",
    "://",
    ":",
    "@",
    "é",
    "日",
    "\u{a0}",
    "\n",
    " ",
    "a",
    "1",
    "*",
    "/",
    "-",
];

/// A tiny xorshift64 generator: deterministic, good enough to mix fragments.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        // The modulo bias is irrelevant here.
        (self.next() % bound as u64) as usize
    }
}

fn is_pg_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{b}' | '\u{c}')
}

fn check(sql: &str) {
    let mut previous_end = 0;
    for statement in split_statements(sql) {
        let text = statement.text;
        assert!(!text.is_empty(), "empty statement in {sql:?}");
        assert!(
            !text.starts_with(is_pg_space),
            "untrimmed {text:?} in {sql:?}"
        );
        // Where the slice lies in the input, found from its address.
        let start = (text.as_ptr() as usize).wrapping_sub(sql.as_ptr() as usize);
        // Trailing whitespace can only belong to an unterminated quote or comment.
        assert!(
            !text.ends_with(is_pg_space) || start + text.len() == sql.len(),
            "untrimmed {text:?} in {sql:?}"
        );
        assert!(
            start >= previous_end && start + text.len() <= sql.len(),
            "{text:?} is out of order or not inside {sql:?}"
        );
        assert_eq!(sql.get(start..start + text.len()), Some(text));
        previous_end = start + text.len();
    }

    let redacted = redact_secrets(sql);
    if let Cow::Borrowed(borrowed) = redacted {
        assert_eq!(borrowed, sql);
    }
    // The redacted text is input too.
    split_statements(&redacted);
    redact_secrets(&redacted);
}

#[test]
fn random_inputs_do_not_panic() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for _ in 0..200_000 {
        let mut sql = String::new();
        for _ in 0..rng.below(24) {
            sql.push_str(FRAGMENTS[rng.below(FRAGMENTS.len())]);
        }
        check(&sql);
    }
}

#[test]
fn every_prefix_of_a_tricky_input_is_handled() {
    let sql = "CREATE FUNCTION f() BEGIN ATOMIC SELECT E'\\'é;' /* a /* b; */ */ $日$;$日$; \
               SELECT CASE WHEN $1 THEN \"x;\" END; END; ALTER USER u PASSWORD $$p$$; \
               SELECT 'postgres://u:p@h password=s' -- 日\n";
    for (end, _) in sql.char_indices() {
        check(&sql[..end]);
    }
    check(sql);
}
