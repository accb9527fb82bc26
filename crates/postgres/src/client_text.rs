//! Reading client text (SQL, text parameters) in the session's `client_encoding`, so that
//! the record and the policy see the characters the server sees. Decoding UTF-8 with
//! replacement characters instead would record `'café'` and `'cafè'` in LATIN1 alike, and
//! turn a non-ASCII table name into one no rule names.

use std::borrow::Cow;

use encoding_rs::Encoding;

/// How the bytes a client sends become text.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum ClientText {
    /// UTF8, and encodings read as it (with replacement characters where it is not).
    #[default]
    Utf8,
    /// LATIN1 (every byte one character, U+0000–U+00FF), and SQL_ASCII, whose bytes above
    /// 0x7F the server does not interpret: read this way, each byte stays distinct.
    Bytes,
    /// A single-byte or EUC encoding that `encoding_rs` reads exactly as PostgreSQL does.
    Table(&'static Encoding),
}

impl ClientText {
    /// For a `client_encoding` as the server reports it (`LATIN1`, `WIN1252`, …). Encodings
    /// whose multibyte characters can contain ASCII bytes (SJIS, BIG5, …) are read as UTF-8:
    /// the session refuses their non-ASCII text anyway (`codec::encoding_hides_delimiters`).
    pub fn named(encoding: &str) -> ClientText {
        let table = |label: &str| Encoding::for_label(label.as_bytes()).map(ClientText::Table);
        let known = match encoding.to_ascii_uppercase().as_str() {
            "LATIN1" | "SQL_ASCII" => Some(ClientText::Bytes),
            "LATIN2" => table("iso-8859-2"),
            "LATIN3" => table("iso-8859-3"),
            "LATIN4" => table("iso-8859-4"),
            "LATIN6" => table("iso-8859-10"),
            "LATIN7" => table("iso-8859-13"),
            "LATIN8" => table("iso-8859-14"),
            "LATIN9" => table("iso-8859-15"),
            "LATIN10" => table("iso-8859-16"),
            "ISO_8859_5" => table("iso-8859-5"),
            "ISO_8859_6" => table("iso-8859-6"),
            "ISO_8859_7" => table("iso-8859-7"),
            "ISO_8859_8" => table("iso-8859-8"),
            "WIN866" => table("ibm866"),
            "WIN874" => table("windows-874"),
            "WIN1250" => table("windows-1250"),
            "WIN1251" => table("windows-1251"),
            "WIN1252" => table("windows-1252"),
            "WIN1253" => table("windows-1253"),
            "WIN1254" => table("windows-1254"),
            "WIN1255" => table("windows-1255"),
            "WIN1256" => table("windows-1256"),
            "WIN1257" => table("windows-1257"),
            "WIN1258" => table("windows-1258"),
            "KOI8R" => table("koi8-r"),
            "KOI8U" => table("koi8-u"),
            "EUC_JP" => table("euc-jp"),
            "EUC_KR" => table("euc-kr"),
            _ => None,
        };
        known.unwrap_or_default()
    }

    /// `bytes` as text. ASCII reads the same in all of them, so it is never copied.
    pub fn decode(self, bytes: &[u8]) -> Cow<'_, str> {
        if bytes.is_ascii() {
            // Checked just above: ASCII is UTF-8.
            return String::from_utf8_lossy(bytes);
        }
        match self {
            ClientText::Utf8 => String::from_utf8_lossy(bytes),
            ClientText::Bytes => Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
            ClientText::Table(encoding) => encoding.decode_without_bom_handling(bytes).0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_reads_as_the_server_reads_it() {
        let latin1 = ClientText::named("LATIN1");
        assert_eq!(latin1.decode(b"select 'caf\xe9'"), "select 'café'");
        assert_ne!(latin1.decode(b"'caf\xe9'"), latin1.decode(b"'caf\xe8'"));
        // WIN1252 differs from LATIN1 in 0x80–0x9F.
        assert_eq!(ClientText::named("win1252").decode(b"\x80"), "€");
        assert_eq!(ClientText::named("KOI8R").decode(b"\xc1"), "а");
        assert_eq!(ClientText::named("EUC_JP").decode(b"\xa4\xa2"), "あ");
        assert_eq!(ClientText::named("UTF8").decode("é".as_bytes()), "é");
        // SQL_ASCII: every byte stays distinct.
        assert_eq!(ClientText::named("SQL_ASCII").decode(b"\xff"), "\u{ff}");
        // Unknown, or read as UTF-8 on purpose.
        assert_eq!(ClientText::named("SJIS"), ClientText::Utf8);
        assert_eq!(ClientText::named("MULE_INTERNAL"), ClientText::Utf8);
        assert!(matches!(
            ClientText::named("select").decode(b"select 1"),
            Cow::Borrowed(_)
        ));
    }
}
