//! A PostgreSQL lexical scanner, detailed enough to find where tokens end.
//!
//! It follows the server's `scan.l` (with `standard_conforming_strings = on`) for everything that
//! decides a token's extent: quotes, comments, dollar quotes, identifiers, parameters. Everything
//! else becomes a one-character [`TokenKind::Other`] token.
//!
//! The scanner works on bytes. Every delimiter is ASCII, and bytes >= 0x80 (the parts of
//! multi-byte characters) are identifier characters, as in `scan.l`. So every token starts and
//! ends on an ASCII byte or at the end of the input, which are always char boundaries: slicing the
//! input with token offsets cannot panic.

/// How the body of a string constant is escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LiteralKind {
    /// `'...'`, also `N'...'`, `B'...'` and `X'...'`: only `''` is special.
    Standard,
    /// `E'...'`: a backslash escapes the next character; `''` is a quote too.
    Escape,
    /// `U&'...'`: `''` is a quote; backslash sequences are Unicode escapes (left undecoded).
    Unicode,
    /// `$tag$...$tag$`: nothing inside is special.
    Dollar,
}

/// A string constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Literal {
    pub kind: LiteralKind,
    /// Byte offset where the text between the delimiters starts.
    pub body_start: usize,
    /// Byte offset where the text between the delimiters ends (the input's end if unterminated).
    pub body_end: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// Spaces, tabs, line breaks, form and line feeds.
    Whitespace,
    /// `-- ...` up to, not including, the line break.
    LineComment,
    /// `/* ... */`; these nest.
    BlockComment {
        terminated: bool,
    },
    /// A string constant of any kind.
    Literal(Literal),
    /// `"..."` or `U&"..."`.
    QuotedIdent,
    /// A keyword or an unquoted identifier.
    Word,
    /// A positional parameter such as `$1`.
    Param,
    /// The leading digits of a numeric constant.
    Number,
    Semicolon,
    OpenParen,
    CloseParen,
    /// Any other single character: operators, punctuation, a lone `$`.
    Other,
}

/// A token and where it is in the input, as byte offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub kind: TokenKind,
    pub start: usize,
    pub end: usize,
}

impl Token {
    /// The token's text in `sql`, the string it was scanned from.
    pub fn text<'a>(&self, sql: &'a str) -> &'a str {
        &sql[self.start..self.end]
    }

    /// Whitespace and comments: what the server skips between tokens.
    pub fn is_trivia(&self) -> bool {
        matches!(
            self.kind,
            TokenKind::Whitespace | TokenKind::LineComment | TokenKind::BlockComment { .. }
        )
    }
}

/// Splits `sql` into tokens that together cover all of it, in order, with
/// `standard_conforming_strings` on (PostgreSQL's default since 9.1).
pub(crate) fn tokenize(sql: &str) -> Vec<Token> {
    tokenize_with(sql, true)
}

/// Like [`tokenize`]; with `standard_conforming_strings` off, a backslash escapes the next
/// character inside plain `'...'` (and `N'...'`) strings too.
pub(crate) fn tokenize_with(sql: &str, standard_conforming_strings: bool) -> Vec<Token> {
    let bytes = sql.as_bytes();
    let mut tokens = Vec::new();
    let mut start = 0;
    while start < bytes.len() {
        let (kind, end) = scan_token(bytes, start, standard_conforming_strings);
        tokens.push(Token { kind, start, end });
        start = end;
    }
    tokens
}

/// Index of the first token after `index` that is not trivia.
pub(crate) fn next_significant(tokens: &[Token], index: usize) -> Option<usize> {
    (index + 1..tokens.len()).find(|&i| !tokens[i].is_trivia())
}

/// Scans the token starting at `pos` (< `b.len()`); returns its kind and end (> `pos`).
fn scan_token(b: &[u8], pos: usize, scs: bool) -> (TokenKind, usize) {
    let next = b.get(pos + 1).copied();
    let plain = if scs {
        LiteralKind::Standard
    } else {
        LiteralKind::Escape
    };
    match b[pos] {
        c if is_space(c) => (TokenKind::Whitespace, skip_while(b, pos, is_space)),
        b'-' if next == Some(b'-') => (
            TokenKind::LineComment,
            skip_while(b, pos, |c| c != b'\n' && c != b'\r'),
        ),
        b'/' if next == Some(b'*') => block_comment(b, pos),
        b'\'' => quoted_literal(b, pos + 1, plain),
        b'"' => quoted_ident(b, pos + 1),
        b'$' => dollar(b, pos),
        b';' => (TokenKind::Semicolon, pos + 1),
        b'(' => (TokenKind::OpenParen, pos + 1),
        b')' => (TokenKind::CloseParen, pos + 1),
        // Only digits and separators: `1$$..$$` and `1E'..'` must end the number where the
        // server does, before the `$` or the `E'` prefix.
        c if c.is_ascii_digit() => (
            TokenKind::Number,
            skip_while(b, pos, |c| c.is_ascii_digit() || c == b'.' || c == b'_'),
        ),
        c if is_ident_start(c) => prefixed_quote(b, pos, plain)
            .unwrap_or_else(|| (TokenKind::Word, skip_while(b, pos, is_ident_cont))),
        _ => (TokenKind::Other, pos + 1),
    }
}

/// A quote with a letter prefix (`E'`, `N'`, `B'`, `X'`, `U&'`, `U&"`) starting at `pos`.
fn prefixed_quote(b: &[u8], pos: usize, plain: LiteralKind) -> Option<(TokenKind, usize)> {
    let prefix = b[pos].to_ascii_lowercase();
    match (prefix, b.get(pos + 1), b.get(pos + 2)) {
        (b'e', Some(b'\''), _) => Some(quoted_literal(b, pos + 2, LiteralKind::Escape)),
        (b'n', Some(b'\''), _) => Some(quoted_literal(b, pos + 2, plain)),
        (b'b' | b'x', Some(b'\''), _) => Some(quoted_literal(b, pos + 2, LiteralKind::Standard)),
        (b'u', Some(b'&'), Some(b'\'')) => Some(quoted_literal(b, pos + 3, LiteralKind::Unicode)),
        (b'u', Some(b'&'), Some(b'"')) => Some(quoted_ident(b, pos + 3)),
        _ => None,
    }
}

/// A `/* */` comment starting at `pos`, counting nested comments.
fn block_comment(b: &[u8], pos: usize) -> (TokenKind, usize) {
    let mut depth = 1usize;
    let mut i = pos + 2;
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'/', Some(b'*')) => {
                depth += 1;
                i += 2;
            }
            (b'*', Some(b'/')) => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return (TokenKind::BlockComment { terminated: true }, i);
                }
            }
            _ => i += 1,
        }
    }
    (TokenKind::BlockComment { terminated: false }, b.len())
}

/// A single-quoted constant whose body starts at `body_start` (just after the opening quote).
fn quoted_literal(b: &[u8], body_start: usize, kind: LiteralKind) -> (TokenKind, usize) {
    let literal = |body_end| {
        TokenKind::Literal(Literal {
            kind,
            body_start,
            body_end,
        })
    };
    let mut i = body_start;
    while i < b.len() {
        match b[i] {
            b'\\' if kind == LiteralKind::Escape => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return (literal(i), i + 1),
            _ => i += 1,
        }
    }
    (literal(b.len()), b.len())
}

/// A double-quoted identifier whose body starts at `body_start`.
fn quoted_ident(b: &[u8], body_start: usize) -> (TokenKind, usize) {
    let mut i = body_start;
    while i < b.len() {
        match b[i] {
            b'"' if b.get(i + 1) == Some(&b'"') => i += 2,
            b'"' => return (TokenKind::QuotedIdent, i + 1),
            _ => i += 1,
        }
    }
    (TokenKind::QuotedIdent, b.len())
}

/// A token starting with `$` at `pos`: a dollar-quoted constant, a parameter, or a lone `$`.
fn dollar(b: &[u8], pos: usize) -> (TokenKind, usize) {
    let tag_end = match b.get(pos + 1) {
        Some(b'$') => pos + 1,
        Some(c) if c.is_ascii_digit() => {
            return (
                TokenKind::Param,
                skip_while(b, pos + 1, |c| c.is_ascii_digit()),
            );
        }
        Some(&c) if is_ident_start(c) => skip_while(b, pos + 1, is_dollar_tag_char),
        _ => return (TokenKind::Other, pos + 1),
    };
    // `$abc` without a closing `$`: the server returns the `$` alone and goes on with `abc`.
    if b.get(tag_end) != Some(&b'$') {
        return (TokenKind::Other, pos + 1);
    }
    let delimiter = &b[pos..=tag_end];
    let body_start = tag_end + 1;
    let literal = |body_end| {
        TokenKind::Literal(Literal {
            kind: LiteralKind::Dollar,
            body_start,
            body_end,
        })
    };
    match b[body_start..]
        .windows(delimiter.len())
        .position(|window| window == delimiter)
    {
        Some(offset) => {
            let body_end = body_start + offset;
            (literal(body_end), body_end + delimiter.len())
        }
        None => (literal(b.len()), b.len()),
    }
}

/// First index at or after `from` whose byte does not satisfy `pred` (or `b.len()`).
fn skip_while(b: &[u8], from: usize, pred: impl Fn(u8) -> bool) -> usize {
    (from..b.len()).find(|&i| !pred(b[i])).unwrap_or(b.len())
}

/// Whitespace to the server.
pub(crate) fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C)
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_dollar_tag_char(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

/// Identifiers may contain `$` (`a$b`), which is why `a$$` is one identifier.
fn is_ident_cont(c: u8) -> bool {
    is_dollar_tag_char(c) || c == b'$'
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The input cut into token texts, with a short name for each kind.
    fn scan(sql: &str) -> Vec<(&'static str, &str)> {
        tokenize(sql)
            .iter()
            .map(|token| {
                let kind = match token.kind {
                    TokenKind::Whitespace => "ws",
                    TokenKind::LineComment => "line",
                    TokenKind::BlockComment { terminated: true } => "block",
                    TokenKind::BlockComment { terminated: false } => "open-block",
                    TokenKind::Literal(_) => "lit",
                    TokenKind::QuotedIdent => "qident",
                    TokenKind::Word => "word",
                    TokenKind::Param => "param",
                    TokenKind::Number => "num",
                    TokenKind::Semicolon => ";",
                    TokenKind::OpenParen => "(",
                    TokenKind::CloseParen => ")",
                    TokenKind::Other => "other",
                };
                (kind, token.text(sql))
            })
            .collect()
    }

    #[test]
    fn token_boundaries() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("a$b", &[("word", "a$b")]),
            ("a$$b", &[("word", "a$$b")]),
            ("$1", &[("param", "$1")]),
            ("$", &[("other", "$")]),
            ("$a", &[("other", "$"), ("word", "a")]),
            ("1$$x$$", &[("num", "1"), ("lit", "$$x$$")]),
            ("1E'x'", &[("num", "1"), ("lit", "E'x'")]),
            ("$é$x$é$", &[("lit", "$é$x$é$")]),
            ("$a$ $b$ $a$", &[("lit", "$a$ $b$ $a$")]),
            ("$a$x$ba$a$", &[("lit", "$a$x$ba$a$")]),
            ("E'\\''", &[("lit", "E'\\''")]),
            ("'\\'", &[("lit", "'\\'")]),
            ("'a''b'", &[("lit", "'a''b'")]),
            ("U&'x'", &[("lit", "U&'x'")]),
            ("u&\"x\"", &[("qident", "u&\"x\"")]),
            ("xE'a'", &[("word", "xE"), ("lit", "'a'")]),
            ("/*/**/*/", &[("block", "/*/**/*/")]),
            ("/* /* */", &[("open-block", "/* /* */")]),
            ("-- x\ny", &[("line", "-- x"), ("ws", "\n"), ("word", "y")]),
            ("+/*c*/", &[("other", "+"), ("block", "/*c*/")]),
            ("é;", &[("word", "é"), (";", ";")]),
        ];
        for (sql, expected) in cases {
            assert_eq!(scan(sql), *expected, "input {sql:?}");
        }
    }

    #[test]
    fn literal_body_excludes_delimiters() {
        for (sql, body) in [
            ("'ab'", "ab"),
            ("E'a\\'b'", "a\\'b"),
            ("N'x'", "x"),
            ("U&'x'", "x"),
            ("$t$x$t$", "x"),
            ("'open", "open"),
            ("$$open", "open"),
        ] {
            let tokens = tokenize(sql);
            let TokenKind::Literal(literal) = tokens[0].kind else {
                panic!("{sql:?} is not a literal: {tokens:?}");
            };
            assert_eq!(&sql[literal.body_start..literal.body_end], body);
        }
    }
}
