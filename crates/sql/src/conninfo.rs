//! Finding passwords inside the text of a string constant: libpq connection strings
//! (`host=db password=secret`) and URIs (`postgresql://user:secret@host`).
//!
//! The body is first decoded (`''` and backslash escapes), so that the search sees what libpq
//! would; every decoded character remembers the raw bytes it came from, so a found password maps
//! back to an exact range of the SQL text.

use std::ops::Range;

use crate::lexer::{Literal, LiteralKind};

/// libpq keywords whose value is a secret (`passwd` for the look-alike spelling).
const PASSWORD_KEYS: [&str; 3] = ["password", "passwd", "sslpassword"];

/// A cheap test: can `text` hold anything the redaction looks for?
pub(crate) fn may_hold_secret(text: &str) -> bool {
    let needle = b"passw"; // password, passwd, sslpassword
    text.as_bytes()
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
        || text.contains("://")
}

/// Byte ranges in `sql` of the passwords inside `literal`'s body: in order, not overlapping,
/// never empty, and never a password already reading `***`.
pub(crate) fn secret_ranges(sql: &str, literal: Literal) -> Vec<Range<usize>> {
    let body = &sql[literal.body_start..literal.body_end];
    if !may_hold_secret(body) {
        return Vec::new();
    }
    let chars = decode(body, literal.body_start, literal.kind);
    let mut found = keyword_passwords(&chars);
    found.extend(uri_passwords(&chars));
    found.sort_by_key(|range| range.start);

    // A password found both ways (`password=postgres://u:p@h`) is redacted once, as a whole.
    let mut merged: Vec<Range<usize>> = Vec::new();
    for range in found {
        match merged.last_mut() {
            Some(last) if range.start < last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
        .into_iter()
        .filter(|range| !is_redacted(&chars[range.clone()]))
        .filter_map(|range| {
            let first = chars.get(range.start)?;
            let last = chars.get(range.end.checked_sub(1)?)?;
            Some(first.start..last.end)
        })
        .collect()
}

/// A character of a decoded literal body and the bytes of the SQL text it came from.
#[derive(Debug, Clone, Copy)]
struct DecodedChar {
    ch: char,
    start: usize,
    end: usize,
}

/// Decodes `body`, which starts at byte `offset` of the SQL text.
fn decode(body: &str, offset: usize, kind: LiteralKind) -> Vec<DecodedChar> {
    let mut decoded = Vec::with_capacity(body.len());
    let mut chars = body.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let mut end = start + c.len_utf8();
        let ch = match c {
            '\'' if kind != LiteralKind::Dollar && chars.next_if(|&(_, c)| c == '\'').is_some() => {
                end += 1;
                '\''
            }
            '\\' if kind == LiteralKind::Escape => match chars.next() {
                Some((escaped_at, escaped)) => {
                    end = escaped_at + escaped.len_utf8();
                    unescape(escaped)
                }
                None => '\\',
            },
            _ => c,
        };
        decoded.push(DecodedChar {
            ch,
            start: offset + start,
            end: offset + end,
        });
    }
    decoded
}

/// The character an `E'...'` escape `\c` stands for; octal, hex and Unicode escapes are rare in
/// connection strings and stay as their first character.
fn unescape(c: char) -> char {
    match c {
        'b' => '\u{8}',
        'f' => '\u{c}',
        'n' => '\n',
        'r' => '\r',
        't' => '\t',
        other => other,
    }
}

/// Values of password keywords: `password=secret`, `password = 'my secret'`, and URI query
/// parameters `?password=secret&...`.
fn keyword_passwords(chars: &[DecodedChar]) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let before = i.checked_sub(1).map(|previous| chars[previous].ch);
        let starts_key = before.is_none_or(|c| is_space(c) || c == '?' || c == '&');
        let key_end = skip_while(chars, i, |c| c.is_ascii_alphanumeric() || c == '_');
        if !starts_key || key_end == i {
            i += 1;
            continue;
        }
        let key = &chars[i..key_end];
        let equals = skip_while(chars, key_end, is_space);
        if !PASSWORD_KEYS.iter().any(|k| eq_ignore_ascii_case(key, k))
            || chars.get(equals).map(|c| c.ch) != Some('=')
        {
            i = key_end;
            continue;
        }
        let in_uri_query = matches!(before, Some('?' | '&'));
        let value_start = skip_while(chars, equals + 1, is_space);
        let (value, next) = if chars.get(value_start).is_some_and(|c| c.ch == '\'') {
            quoted_value(chars, value_start + 1)
        } else {
            plain_value(chars, value_start, in_uri_query)
        };
        if !value.is_empty() {
            found.push(value);
        }
        i = next;
    }
    found
}

/// A libpq value in single quotes whose text starts at `start`; returns its text and where
/// scanning goes on.
fn quoted_value(chars: &[DecodedChar], start: usize) -> (Range<usize>, usize) {
    let mut i = start;
    while let Some(c) = chars.get(i) {
        match c.ch {
            '\\' => i += 2,
            '\'' => break,
            _ => i += 1,
        }
    }
    let end = i.min(chars.len());
    (start..end, end + 1)
}

/// An unquoted value starting at `start`: up to whitespace, or also `&`/`#` in a URI query.
fn plain_value(chars: &[DecodedChar], start: usize, in_uri_query: bool) -> (Range<usize>, usize) {
    let mut i = start;
    while let Some(c) = chars.get(i) {
        match c.ch {
            c if is_space(c) => break,
            '&' | '#' if in_uri_query => break,
            '\\' if !in_uri_query => i += 2,
            _ => i += 1,
        }
    }
    let end = i.min(chars.len());
    (start..end, end)
}

/// The password of each `scheme://user:password@host` URI: between the first `:` and the last
/// `@` of the authority.
fn uri_passwords(chars: &[DecodedChar]) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(separator) = find_scheme_separator(chars, from) {
        let authority = separator + 3;
        let end = skip_while(chars, authority, |c| {
            !is_space(c) && !matches!(c, '/' | '?' | '#')
        });
        let at = (authority..end).rev().find(|&i| chars[i].ch == '@');
        let colon = at.and_then(|at| (authority..at).find(|&i| chars[i].ch == ':'));
        if let (Some(at), Some(colon)) = (at, colon) {
            if colon + 1 < at {
                found.push(colon + 1..at);
            }
        }
        from = end;
    }
    found
}

/// Index of the next `://` at or after `from`.
fn find_scheme_separator(chars: &[DecodedChar], from: usize) -> Option<usize> {
    let position = chars
        .get(from..)?
        .windows(3)
        .position(|w| w[0].ch == ':' && w[1].ch == '/' && w[2].ch == '/')?;
    Some(from + position)
}

/// First index at or after `from` whose character does not satisfy `pred` (or `chars.len()`).
fn skip_while(chars: &[DecodedChar], from: usize, pred: impl Fn(char) -> bool) -> usize {
    (from..chars.len())
        .find(|&i| !pred(chars[i].ch))
        .unwrap_or(chars.len().max(from))
}

fn eq_ignore_ascii_case(chars: &[DecodedChar], word: &str) -> bool {
    chars.len() == word.len()
        && chars
            .iter()
            .zip(word.chars())
            .all(|(c, w)| c.ch.eq_ignore_ascii_case(&w))
}

fn is_redacted(chars: &[DecodedChar]) -> bool {
    chars.len() == 3 && chars.iter().all(|c| c.ch == '*')
}

/// libpq separates keywords with what C's `isspace` accepts.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{b}' | '\u{c}')
}
