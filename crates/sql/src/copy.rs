//! `COPY … TO STDOUT`: where its rows come from and how its text is laid out, so that a
//! gateway can tell which column each field of the output is.

use crate::lexer::{tokenize, LiteralKind, Token, TokenKind};

/// A `COPY … TO STDOUT` statement, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOut {
    /// A query returning the copied columns, for the server to describe (never to run).
    pub source: String,
    pub csv: bool,
    pub binary: bool,
    /// CSV output starts with a line of column names.
    pub header: bool,
    /// The `ENCODING` option: the output's encoding, when not the client's.
    pub encoding: Option<String>,
    pub delimiter: Option<u8>,
    pub null: Option<String>,
    pub quote: Option<u8>,
    pub escape: Option<u8>,
}

/// Reads a `COPY … TO STDOUT` statement. `None` when `sql` is not one, or uses a syntax
/// this reader does not follow (then a caller must not guess the layout).
pub fn copy_to_stdout(sql: &str) -> Option<CopyOut> {
    let tokens: Vec<Token> = tokenize(sql)
        .into_iter()
        .filter(|t| !t.is_trivia())
        .collect();
    let word = |t: Option<&Token>, w: &str| {
        t.is_some_and(|t| t.kind == TokenKind::Word && t.text(sql).eq_ignore_ascii_case(w))
    };
    if !word(tokens.first(), "copy") {
        return None;
    }
    let mut i = 1;
    let source = if tokens.get(i)?.kind == TokenKind::OpenParen {
        let close = matching_paren(&tokens, i)?;
        let inner = &sql[tokens[i].end..tokens[close].start];
        i = close + 1;
        inner.to_owned()
    } else {
        let name_start = tokens.get(i)?.start;
        while let Some(t) = tokens.get(i) {
            if t.kind == TokenKind::OpenParen || word(Some(t), "to") {
                break;
            }
            i += 1;
        }
        let name_end = tokens.get(i.checked_sub(1)?)?.end;
        let name = &sql[name_start..name_end];
        let columns = if tokens.get(i)?.kind == TokenKind::OpenParen {
            let close = matching_paren(&tokens, i)?;
            let list = sql[tokens[i].end..tokens[close].start].to_owned();
            i = close + 1;
            list
        } else {
            "*".to_owned()
        };
        format!("SELECT {columns} FROM {name}")
    };
    if !word(tokens.get(i), "to") || !word(tokens.get(i + 1), "stdout") {
        return None;
    }
    let mut copy = CopyOut {
        source,
        csv: false,
        binary: false,
        header: false,
        encoding: None,
        delimiter: None,
        null: None,
        quote: None,
        escape: None,
    };
    let rest = &tokens[i + 2..];
    let mut j = 0;
    while let Some(t) = rest.get(j) {
        let text = t.text(sql).to_ascii_lowercase();
        let next = rest.get(j + 1);
        match (t.kind, text.as_str()) {
            (TokenKind::Word, "csv") => copy.csv = true,
            (TokenKind::Word, "binary") => copy.binary = true,
            (TokenKind::Word, "format") => {
                match next.map(|n| n.text(sql).to_ascii_lowercase()).as_deref() {
                    Some("csv") => copy.csv = true,
                    Some("binary") => copy.binary = true,
                    Some("text") => {}
                    _ => return None,
                }
                j += 1;
            }
            (TokenKind::Word, "delimiter" | "null" | "quote" | "escape") => {
                let value = literal(sql, next?)?;
                match text.as_str() {
                    "null" => copy.null = Some(value),
                    other => {
                        let byte = match value.as_bytes() {
                            [b] => *b,
                            _ => return None,
                        };
                        match other {
                            "delimiter" => copy.delimiter = Some(byte),
                            "quote" => copy.quote = Some(byte),
                            _ => copy.escape = Some(byte),
                        }
                    }
                }
                j += 1;
            }
            // Options that do not change how fields are laid out.
            (TokenKind::Word, "header") => {
                // A boolean may be written bare, quoted ('false') or as an identifier ("off").
                let value = next.map(|n| {
                    let text = n.text(sql);
                    text.trim_matches(|c| c == '\'' || c == '"')
                        .to_ascii_lowercase()
                });
                copy.header = !matches!(value.as_deref(), Some("false" | "off" | "0"));
            }
            (TokenKind::Word, "encoding") => {
                copy.encoding = Some(literal(sql, next?)?);
                j += 1;
            }
            (
                TokenKind::Word,
                "with" | "true" | "false" | "on" | "off" | "match" | "force_quote" | "force"
                | "text",
            )
            | (
                TokenKind::OpenParen
                | TokenKind::CloseParen
                | TokenKind::Semicolon
                | TokenKind::Number,
                _,
            ) => {}
            (TokenKind::Other, ",") | (TokenKind::Other, "*") => {}
            (TokenKind::Literal(_), _) => {} // HEADER 'true'
            (TokenKind::Word | TokenKind::QuotedIdent, _) => {} // FORCE_QUOTE column names
            _ => return None,
        }
        j += 1;
    }
    Some(copy)
}

fn matching_paren(tokens: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (k, t) in tokens.iter().enumerate().skip(open) {
        match t.kind {
            TokenKind::OpenParen => depth += 1,
            TokenKind::CloseParen => {
                depth -= 1;
                if depth == 0 {
                    return Some(k);
                }
            }
            _ => {}
        }
    }
    None
}

/// The value of a plain `'…'` literal; other kinds (escapes) are not followed.
fn literal(sql: &str, t: &Token) -> Option<String> {
    match t.kind {
        TokenKind::Literal(l)
            if l.kind == LiteralKind::Standard && sql.as_bytes().get(t.start) == Some(&b'\'') =>
        {
            Some(sql[l.body_start..l.body_end].replace("''", "'"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_queries_and_options() {
        let c = copy_to_stdout("COPY public.users (id, email) TO STDOUT")
            .unwrap_or_else(|| panic!("parsed"));
        assert_eq!(c.source, "SELECT id, email FROM public.users");
        assert!(!c.csv && c.delimiter.is_none());
        let c = copy_to_stdout("copy (select email from users where id > 1) to stdout with (format csv, header, delimiter ';')")
            .unwrap_or_else(|| panic!("parsed"));
        assert_eq!(c.source, "select email from users where id > 1");
        assert!(c.csv && c.header);
        assert_eq!(c.delimiter, Some(b';'));
        let c = copy_to_stdout("COPY \"Odd Table\" TO STDOUT CSV NULL 'x''y'")
            .unwrap_or_else(|| panic!("parsed"));
        assert_eq!(c.source, "SELECT * FROM \"Odd Table\"");
        assert_eq!(c.null.as_deref(), Some("x'y"));
        for off in ["'false'", "\"off\"", "0", "false"] {
            let c = copy_to_stdout(&format!("COPY t TO STDOUT (FORMAT csv, HEADER {off})"))
                .unwrap_or_else(|| panic!("parsed"));
            assert!(!c.header, "{off}");
        }
        let c = copy_to_stdout("COPY t TO STDOUT (ENCODING 'SJIS')")
            .unwrap_or_else(|| panic!("parsed"));
        assert_eq!(c.encoding.as_deref(), Some("SJIS"));
        assert!(copy_to_stdout("COPY users FROM STDIN").is_none());
        assert!(copy_to_stdout("COPY users TO '/tmp/x'").is_none());
        assert!(copy_to_stdout("COPY users TO STDOUT DELIMITER E'\\t'").is_none());
        assert!(copy_to_stdout("SELECT 1").is_none());
    }
}
