//! Cheap facts about a statement's tokens, for callers that must decide whether (and under
//! which key) to parse it.

use crate::lexer::{tokenize, TokenKind};

/// Number of tokens that are not whitespace or comments.
pub fn significant_tokens(sql: &str) -> usize {
    tokenize(sql).iter().filter(|t| !t.is_trivia()).count()
}

/// Whether the statement writes an identifier with Unicode escapes (`U&"…"`), whose meaning
/// only the server decodes.
pub fn has_unicode_identifier(sql: &str) -> bool {
    tokenize(sql).iter().any(|t| {
        t.kind == TokenKind::QuotedIdent
            && t.text(sql).as_bytes().first().is_some_and(|b| *b != b'"')
    })
}

/// Whether the first token that is not whitespace or a comment is the keyword `word`
/// (compared ignoring ASCII case; a quoted identifier never matches).
pub fn first_word_is(sql: &str, word: &str) -> bool {
    tokenize(sql)
        .iter()
        .find(|t| !t.is_trivia())
        .is_some_and(|t| t.kind == TokenKind::Word && t.text(sql).eq_ignore_ascii_case(word))
}

/// The names a statement mentions: unquoted words (lower-cased, as the server folds them),
/// quoted identifiers (as written), and the words inside string constants (text that may
/// become a name at run time). Each once, in order of appearance.
pub fn identifiers(sql: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |name: String| {
        if !name.is_empty() && !out.contains(&name) {
            out.push(name);
        }
    };
    for t in tokenize(sql) {
        match t.kind {
            TokenKind::Word => add(t.text(sql).to_lowercase()),
            TokenKind::QuotedIdent => {
                let text = t.text(sql);
                let inner = text
                    .find('"')
                    .map_or("", |start| &text[start + 1..])
                    .strip_suffix('"')
                    .unwrap_or_default();
                add(inner.replace("\"\"", "\""));
            }
            TokenKind::Literal(l) => {
                for word in sql[l.body_start..l.body_end]
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
                {
                    add(word.to_lowercase());
                }
            }
            _ => {}
        }
    }
    out
}

/// The statement as the server reads it, written one way: keywords and unquoted identifiers
/// in lower case, comments dropped, whitespace collapsed, constants kept exactly. Two texts
/// with the same normal form run the same statement with the same values.
pub fn normalize(sql: &str) -> String {
    shape(sql, false)
}

/// The statement with every constant replaced by `?`, keywords and unquoted identifiers in
/// lower case (the server folds them too), comments dropped and whitespace collapsed.
/// Statements that differ only in their constants, case, comments or spacing get the same
/// fingerprint; statements that differ in anything else (a quoted identifier, a parameter
/// number, an operator) do not.
pub fn fingerprint(sql: &str) -> String {
    shape(sql, true)
}

fn shape(sql: &str, hide_constants: bool) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut space = false;
    for token in tokenize(sql) {
        match token.kind {
            TokenKind::Whitespace | TokenKind::LineComment | TokenKind::BlockComment { .. } => {
                space = !out.is_empty();
                continue;
            }
            _ => {}
        }
        if space {
            out.push(' ');
            space = false;
        }
        match token.kind {
            TokenKind::Literal(_) | TokenKind::Number if hide_constants => out.push('?'),
            TokenKind::Word => out.extend(token.text(sql).chars().map(|c| c.to_ascii_lowercase())),
            _ => out.push_str(token.text(sql)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_follow_the_lexer() {
        assert_eq!(
            identifiers(r#"SELECT '"', lower(EMAIL) FROM "My ""T""" WHERE x = E'a\'b ssn'"#),
            ["select", "lower", "email", "from", "My \"T\"", "where", "x", "a", "b", "ssn"]
        );
    }

    #[test]
    fn fingerprints_ignore_constants_case_and_comments() {
        let a = fingerprint("SELECT * FROM t WHERE id = 42 AND name = 'bob'");
        let b = fingerprint("select *  from T /* hi */ where ID = 7 and NAME = $$x$$ -- c\n");
        assert_eq!(a, b);
        assert_eq!(a, "select * from t where id = ? and name = ?");
        assert_ne!(
            fingerprint(r#"select * from "T""#),
            fingerprint("select * from t")
        );
        assert_ne!(fingerprint("select $1"), fingerprint("select $2"));
        assert_ne!(fingerprint("drop table t"), fingerprint("select table t"));
    }

    #[test]
    fn normal_forms_keep_constants() {
        assert_eq!(
            normalize("DELETE  FROM t /* x */ WHERE id = 42 AND n = 'Bob'"),
            "delete from t where id = 42 and n = 'Bob'"
        );
        assert_ne!(
            normalize("delete from t where id = 1"),
            normalize("delete from t where id = 2")
        );
        assert_eq!(normalize("  select 1 ; "), "select 1 ;");
    }

    #[test]
    fn unicode_identifiers_are_spotted() {
        assert!(has_unicode_identifier(
            r#"select U&"pg\005fread_file"('x')"#
        ));
        assert!(has_unicode_identifier(r#"select u&"x""#));
        assert!(!has_unicode_identifier(r#"select "U&x", U&'text'"#));
    }

    #[test]
    fn first_words_and_token_counts() {
        assert!(first_word_is("/* x */ -- y\n DO $$ begin end $$", "do"));
        assert!(!first_word_is(r#""do" 1"#, "do"));
        assert!(!first_word_is("done", "do"));
        assert_eq!(significant_tokens("select /* a */ 1 , 2"), 4);
    }
}
