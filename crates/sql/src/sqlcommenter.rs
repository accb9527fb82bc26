//! sqlcommenter comments: `SELECT … /*prompt='why%20this',traceparent='00-…'*/`.
//!
//! Tools and AI agents attach context to a statement in one block comment of
//! `key='value'` pairs (keys and values URL-encoded, `'` in a value escaped as `\'`), by
//! convention at the end of the statement (some put it first). [`take_comment`] finds such a
//! comment with the lexer — so a comment-like text inside a string constant is never taken —
//! and returns the pairs and the statement without it. A block comment that is not a
//! well-formed list of pairs is not a sqlcommenter comment and stays in the text.

use crate::lexer::{is_space, tokenize, tokenize_with, TokenKind};

/// A statement's sqlcommenter comment, taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commented {
    /// The statement without the comment.
    pub statement: String,
    /// The comment's pairs, decoded, in their order.
    pub pairs: Vec<(String, String)>,
}

/// At most this many pairs are read from one comment; a longer list is not taken.
const MAX_PAIRS: usize = 64;

/// Takes the sqlcommenter comment out of one statement: the last token before any trailing
/// `;` and whitespace, else the first token. `None` when there is none (cheaply, when the
/// text has no `/*` at all).
///
/// The comment must be the same comment whether `standard_conforming_strings` is on or off:
/// with it off, `'\' /*a='` is one string constant, and what follows would run while the
/// text without the "comment" looked harmless. Only whitespace as the server knows it is
/// trimmed where the comment was (bytes >= 0x80 belong to identifiers), so the text left is
/// the statement the server runs.
pub fn take_comment(sql: &str) -> Option<Commented> {
    if !sql.contains("/*") {
        return None;
    }
    let tokens = tokenize(sql);
    // Without a backslash the setting changes nothing: no second lexing.
    let escaped = sql.contains('\\').then(|| tokenize_with(sql, false));
    let is_comment = |i: usize| {
        matches!(tokens[i].kind, TokenKind::BlockComment { terminated: true })
            && escaped.as_ref().is_none_or(|e| e.contains(&tokens[i]))
    };
    let last = tokens
        .iter()
        .rposition(|t| !matches!(t.kind, TokenKind::Whitespace | TokenKind::Semicolon));
    let first = tokens.iter().position(|t| t.kind != TokenKind::Whitespace);
    for index in [last, first].into_iter().flatten() {
        if !is_comment(index) {
            continue;
        }
        let token = tokens[index];
        let body = &sql[token.start + 2..token.end - 2];
        let Some(pairs) = parse_pairs(body) else {
            continue;
        };
        let before = &sql[..token.start];
        let after = &sql[token.end..];
        let space = |c: char| c.is_ascii() && is_space(c as u8);
        let statement = if Some(index) == last {
            format!(
                "{}{}",
                before.trim_end_matches(space),
                after.trim_matches(space)
            )
        } else {
            format!("{}{}", before, after.trim_start_matches(space))
        };
        return Some(Commented { statement, pairs });
    }
    None
}

/// `key='value',key2='value2'` → the decoded pairs; `None` when the text is anything else.
fn parse_pairs(body: &str) -> Option<Vec<(String, String)>> {
    let b = body.as_bytes();
    let mut pairs = Vec::new();
    let mut i = skip_spaces(b, 0);
    if i == b.len() {
        return None;
    }
    loop {
        let key_start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b"_.-%".contains(&b[i])) {
            i += 1;
        }
        if i == key_start || b.get(i) != Some(&b'=') || b.get(i + 1) != Some(&b'\'') {
            return None;
        }
        let key = percent_decode(&body[key_start..i]);
        i += 2;
        let mut value = Vec::new();
        loop {
            match b.get(i)? {
                b'\\' => {
                    value.push(*b.get(i + 1)?);
                    i += 2;
                }
                b'\'' => {
                    i += 1;
                    break;
                }
                c => {
                    value.push(*c);
                    i += 1;
                }
            }
        }
        let value = percent_decode(&String::from_utf8_lossy(&value));
        pairs.push((key, value));
        if pairs.len() > MAX_PAIRS {
            return None;
        }
        i = skip_spaces(b, i);
        match b.get(i) {
            None => return Some(pairs),
            Some(b',') => i = skip_spaces(b, i + 1),
            Some(_) => return None,
        }
    }
}

fn skip_spaces(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// URL decoding (`%XX`); a `%` not followed by two hex digits is kept as it is, and bytes
/// that do not form UTF-8 are replaced.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                // Both digits are < 16, so the byte cannot overflow.
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn trailing_comment_is_taken_and_decoded() {
        let c = take_comment(
            "SELECT * FROM users /*prompt='find%20the%20user%27s%20email',traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'*/;",
        )
        .unwrap();
        assert_eq!(c.statement, "SELECT * FROM users;");
        assert_eq!(
            c.pairs,
            pairs(&[
                ("prompt", "find the user's email"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                )
            ])
        );
    }

    #[test]
    fn leading_comment_and_escaped_quotes() {
        let c = take_comment("/* prompt='it\\'s', tool_call='t1' */ SELECT 1").unwrap();
        assert_eq!(c.statement, "SELECT 1");
        assert_eq!(c.pairs, pairs(&[("prompt", "it's"), ("tool_call", "t1")]));
    }

    #[test]
    fn comments_that_are_not_sqlcommenter_stay() {
        for sql in [
            "SELECT 1 /* just a note */",
            "SELECT 1 /* a='b' trailing words */",
            "SELECT 1 /* a='unterminated */",
            "SELECT 1 /**/",
            "SELECT '/* prompt=''x'' */'",
            "SELECT $$/*prompt='x'*/$$",
            "SELECT 1 /*a='b'*/ -- trailing line comment",
            "SELECT 1 /* a='b' */ + 2",
            "SELECT 1",
        ] {
            assert_eq!(take_comment(sql), None, "{sql}");
        }
    }

    #[test]
    fn nested_comment_in_a_value_cannot_escape() {
        // Comments nest, as in the server: the first `*/` closes only the inner one, so the
        // comment is unterminated and nothing is taken.
        assert_eq!(take_comment("SELECT 1 /* a='/* b' */"), None);
    }

    #[test]
    fn a_comment_only_with_standard_conforming_strings_on_is_not_taken() {
        // With standard_conforming_strings off, `'\' /*a='` is one string and the subquery
        // runs; taking the "comment" would hide it from policy and the record.
        let sql = "SELECT '\\' /*a=' || (SELECT secret FROM t) --'*/";
        assert_eq!(take_comment(sql), None);
        // An E'' string reads the same either way: that comment is taken.
        let c = take_comment("SELECT E'\\'' /*a='b'*/").unwrap();
        assert_eq!(c.statement, "SELECT E'\\''");
    }

    #[test]
    fn only_server_whitespace_is_trimmed() {
        // U+00A0 is part of an identifier for PostgreSQL: it stays.
        let c = take_comment("DELETE FROM accounts\u{a0} /*a='b'*/").unwrap();
        assert_eq!(c.statement, "DELETE FROM accounts\u{a0}");
        let c = take_comment("DELETE FROM accounts\u{a0}/*a='b'*/").unwrap();
        assert_eq!(c.statement, "DELETE FROM accounts\u{a0}");
    }

    #[test]
    fn odd_percent_signs_are_kept() {
        let c = take_comment("SELECT 1 /*intent='100%25 sure %zz'*/").unwrap();
        assert_eq!(c.pairs, pairs(&[("intent", "100% sure %zz")]));
    }
}
