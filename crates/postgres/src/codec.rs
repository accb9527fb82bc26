//! PostgreSQL message framing and the few message bodies the gateway must read or build.
//!
//! Pure functions over byte buffers: no I/O, no policy. We frame by hand rather than
//! decoding every message with a general codec because the proxy's hot path only needs
//! each frame's tag and length: most frames (DataRow, CopyData) are forwarded untouched
//! as whole read buffers, and only a handful of small messages are ever decoded.

use bytes::{BufMut, BytesMut};

use crate::client_text::ClientText;

/// Request codes of the untyped first packet.
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// Protocol 3.0; 3.2 (PostgreSQL 18) is `196610`.
pub const PROTOCOL_3_0: i32 = 196_608;

/// Largest startup packet accepted before authentication (PostgreSQL uses the same limit).
pub const MAX_STARTUP_PACKET: usize = 10_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("malformed {what} message")]
    Malformed { what: &'static str },
}

/// Header of a typed message: tag byte and the length of the body that follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Body length, i.e. the wire length field minus its own four bytes.
    pub body_len: usize,
}

/// Reads a typed message header from the start of `buf`, if five bytes are present.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, CodecError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(CodecError::BadLength(len.into()));
    }
    Ok(Some(Header {
        tag: buf[0],
        body_len: len as usize - 4,
    }))
}

/// Reads a null-terminated string starting at `*pos`, advancing past the terminator.
pub fn read_cstr<'a>(
    body: &'a [u8],
    pos: &mut usize,
    what: &'static str,
) -> Result<&'a str, CodecError> {
    let rest = body.get(*pos..).ok_or(CodecError::Malformed { what })?;
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(CodecError::Malformed { what })?;
    let s = std::str::from_utf8(&rest[..end]).map_err(|_| CodecError::Malformed { what })?;
    *pos += end + 1;
    Ok(s)
}

/// Like [`read_cstr`] for text a server sent (names, messages): what is not UTF-8 gets
/// replacement characters rather than failing.
pub fn read_cstr_lossy<'a>(
    body: &'a [u8],
    pos: &mut usize,
    what: &'static str,
) -> Result<std::borrow::Cow<'a, str>, CodecError> {
    read_cstr_in(body, pos, what, ClientText::Utf8)
}

/// Like [`read_cstr`] for SQL text, read in the session's client encoding (`text`). The
/// statement delimiters the gateway looks for are ASCII, so no encoding moves them.
pub fn read_cstr_in<'a>(
    body: &'a [u8],
    pos: &mut usize,
    what: &'static str,
    text: ClientText,
) -> Result<std::borrow::Cow<'a, str>, CodecError> {
    let rest = body.get(*pos..).ok_or(CodecError::Malformed { what })?;
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(CodecError::Malformed { what })?;
    *pos += end + 1;
    Ok(text.decode(&rest[..end]))
}

pub fn read_i16(body: &[u8], pos: &mut usize, what: &'static str) -> Result<i16, CodecError> {
    let b = body
        .get(*pos..*pos + 2)
        .ok_or(CodecError::Malformed { what })?;
    *pos += 2;
    Ok(i16::from_be_bytes([b[0], b[1]]))
}

pub fn read_i32(body: &[u8], pos: &mut usize, what: &'static str) -> Result<i32, CodecError> {
    let b = body
        .get(*pos..*pos + 4)
        .ok_or(CodecError::Malformed { what })?;
    *pos += 4;
    Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_bytes<'a>(
    body: &'a [u8],
    pos: &mut usize,
    len: usize,
    what: &'static str,
) -> Result<&'a [u8], CodecError> {
    let end = pos.checked_add(len).ok_or(CodecError::Malformed { what })?;
    let b = body.get(*pos..end).ok_or(CodecError::Malformed { what })?;
    *pos = end;
    Ok(b)
}

/// The untyped first packet of a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, key: Vec<u8> },
    Startup(Startup),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Startup {
    pub version: i32,
    /// Parameters in the order the client sent them (`user`, `database`, `application_name`, …).
    pub params: Vec<(String, String)>,
}

impl Startup {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the body of the first packet (everything after its length field).
pub fn parse_first_packet(body: &[u8]) -> Result<FirstPacket, CodecError> {
    let mut pos = 0;
    let code = read_i32(body, &mut pos, "startup")?;
    match code {
        SSL_REQUEST => Ok(FirstPacket::SslRequest),
        GSSENC_REQUEST => Ok(FirstPacket::GssEncRequest),
        CANCEL_REQUEST => {
            let pid = read_i32(body, &mut pos, "cancel request")?;
            let key = body[pos..].to_vec();
            if key.is_empty() || key.len() > 256 {
                return Err(CodecError::Malformed {
                    what: "cancel request",
                });
            }
            Ok(FirstPacket::Cancel { pid, key })
        }
        version => {
            let mut params = Vec::new();
            loop {
                if body.get(pos) == Some(&0) && pos + 1 == body.len() {
                    break;
                }
                let key = read_cstr(body, &mut pos, "startup")?;
                if key.is_empty() {
                    return Err(CodecError::Malformed { what: "startup" });
                }
                let value = read_cstr(body, &mut pos, "startup")?;
                params.push((key.to_owned(), value.to_owned()));
            }
            Ok(FirstPacket::Startup(Startup { version, params }))
        }
    }
}

/// A frontend message the gateway inspects. Everything else is forwarded untouched.
#[derive(Debug, PartialEq, Eq)]
pub enum FrontendMessage<'a> {
    Query {
        sql: std::borrow::Cow<'a, str>,
    },
    Parse {
        name: &'a str,
        sql: std::borrow::Cow<'a, str>,
        param_types: Vec<u32>,
    },
    Bind {
        portal: &'a str,
        statement: &'a str,
        params: Vec<Param<'a>>,
    },
    Execute {
        portal: &'a str,
    },
    Close {
        kind: u8,
        name: &'a str,
    },
    FunctionCall {
        oid: u32,
        args: Vec<Param<'a>>,
    },
}

/// One bound parameter value as sent by the client.
#[derive(Debug, PartialEq, Eq)]
pub struct Param<'a> {
    pub binary: bool,
    pub value: Option<&'a [u8]>,
}

/// Parses the body of an inspected frontend message; `Ok(None)` for other tags.
pub fn parse_frontend(
    tag: u8,
    body: &[u8],
    text: ClientText,
) -> Result<Option<FrontendMessage<'_>>, CodecError> {
    let mut pos = 0;
    let msg = match tag {
        b'Q' => FrontendMessage::Query {
            sql: read_cstr_in(body, &mut pos, "Query", text)?,
        },
        b'P' => {
            let name = read_cstr(body, &mut pos, "Parse")?;
            let sql = read_cstr_in(body, &mut pos, "Parse", text)?;
            let n = read_i16(body, &mut pos, "Parse")?;
            let mut param_types = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n.max(0) {
                param_types.push(read_i32(body, &mut pos, "Parse")? as u32);
            }
            FrontendMessage::Parse {
                name,
                sql,
                param_types,
            }
        }
        b'B' => {
            let portal = read_cstr(body, &mut pos, "Bind")?;
            let statement = read_cstr(body, &mut pos, "Bind")?;
            let formats = read_formats(body, &mut pos, "Bind")?;
            let params = read_params(body, &mut pos, &formats, "Bind")?;
            FrontendMessage::Bind {
                portal,
                statement,
                params,
            }
        }
        b'E' => FrontendMessage::Execute {
            portal: read_cstr(body, &mut pos, "Execute")?,
        },
        b'C' => {
            let kind = *body
                .first()
                .ok_or(CodecError::Malformed { what: "Close" })?;
            pos = 1;
            FrontendMessage::Close {
                kind,
                name: read_cstr(body, &mut pos, "Close")?,
            }
        }
        b'F' => {
            let oid = read_i32(body, &mut pos, "FunctionCall")? as u32;
            let formats = read_formats(body, &mut pos, "FunctionCall")?;
            let args = read_params(body, &mut pos, &formats, "FunctionCall")?;
            FrontendMessage::FunctionCall { oid, args }
        }
        _ => return Ok(None),
    };
    Ok(Some(msg))
}

fn read_formats(body: &[u8], pos: &mut usize, what: &'static str) -> Result<Vec<i16>, CodecError> {
    let n = read_i16(body, pos, what)?;
    if n < 0 {
        return Err(CodecError::Malformed { what });
    }
    (0..n).map(|_| read_i16(body, pos, what)).collect()
}

fn read_params<'a>(
    body: &'a [u8],
    pos: &mut usize,
    formats: &[i16],
    what: &'static str,
) -> Result<Vec<Param<'a>>, CodecError> {
    let n = read_i16(body, pos, what)?;
    if n < 0 || (formats.len() > 1 && formats.len() != n as usize) {
        return Err(CodecError::Malformed { what });
    }
    let mut params = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        // One format code applies to all parameters; none means all text.
        let format = match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => formats[i],
        };
        let len = read_i32(body, pos, what)?;
        let value = match len {
            -1 => None,
            len if len < -1 => return Err(CodecError::Malformed { what }),
            len => Some(read_bytes(body, pos, len as usize, what)?),
        };
        params.push(Param {
            binary: format == 1,
            value,
        });
    }
    Ok(params)
}

/// Fields of an ErrorResponse or NoticeResponse that the gateway records.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
    /// The server function that raised it (`R`); [`GATEWAY_ROUTINE`] for the gateway's own.
    pub routine: String,
}

pub fn parse_error_fields(body: &[u8]) -> ErrorFields {
    let mut fields = ErrorFields::default();
    let mut pos = 0;
    while let Some(&field) = body.get(pos) {
        if field == 0 {
            break;
        }
        pos += 1;
        // Lossy: a message in a client_encoding such as LATIN1 is still recorded.
        let Ok(value) = read_cstr_lossy(body, &mut pos, "ErrorResponse") else {
            break;
        };
        match field {
            b'V' => fields.severity = value.into_owned(),
            b'S' if fields.severity.is_empty() => fields.severity = value.into_owned(),
            b'C' => fields.code = value.into_owned(),
            b'M' => fields.message = value.into_owned(),
            b'R' => fields.routine = value.into_owned(),
            _ => {}
        }
    }
    fields
}

/// Name and value of a ParameterStatus message.
pub fn parse_parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let mut pos = 0;
    let name = read_cstr(body, &mut pos, "ParameterStatus").ok()?;
    let value = read_cstr(body, &mut pos, "ParameterStatus").ok()?;
    Some((name, value))
}

/// Client encodings in which a byte of a multibyte character can be `\` or `;`, so the
/// gateway could split statements differently from the server.
pub fn encoding_hides_delimiters(encoding: &str) -> bool {
    matches!(
        encoding.to_ascii_uppercase().as_str(),
        "SJIS" | "SHIFT_JIS_2004" | "BIG5" | "GBK" | "GB18030" | "UHC" | "JOHAB"
    )
}

/// Row count of a CommandComplete tag: its last number (`INSERT 0 5` → 5, `SELECT 3` → 3).
pub fn rows_from_tag(tag: &str) -> Option<u64> {
    tag.rsplit(' ').next().and_then(|n| n.parse().ok())
}

// ---- messages the gateway builds ----

fn put_message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let len_at = out.len();
    out.put_i32(0);
    body(out);
    let len = (out.len() - len_at) as i32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early; messages we build never need one.
    out.put_slice(s.replace('\0', " ").as_bytes());
    out.put_u8(0);
}

/// The routine field (`R`) of every ErrorResponse the gateway makes itself: no statement
/// can set it (RAISE sets the message, detail, hint and code, not the routine), so a client
/// of the gateway can tell a gateway refusal from a database error with the same code.
pub const GATEWAY_ROUTINE: &str = "sluice";

pub fn error_response(out: &mut BytesMut, severity: &str, code: &str, message: &str) {
    put_message(out, b'E', |b| {
        for (field, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', message),
            (b'R', GATEWAY_ROUTINE),
        ] {
            b.put_u8(field);
            put_cstr(b, value);
        }
        b.put_u8(0);
    });
}

/// A simple Query.
pub fn put_query(out: &mut BytesMut, sql: &str) {
    put_message(out, b'Q', |b| {
        b.put_slice(sql.as_bytes());
        b.put_u8(0);
    });
}

/// Execute of `portal`, all rows.
pub fn put_execute(out: &mut BytesMut, portal: &str) {
    put_execute_limited(out, portal, 0);
}

/// Execute of `portal`, at most `max_rows` rows (0: all); the server answers
/// PortalSuspended when more remain.
pub fn put_execute_limited(out: &mut BytesMut, portal: &str, max_rows: i32) {
    put_message(out, b'E', |b| {
        put_cstr(b, portal);
        b.put_i32(max_rows);
    });
}

/// Bind of the unnamed statement to the unnamed portal: every parameter and result in
/// text format (`None` is NULL).
pub fn put_bind_texts(out: &mut BytesMut, params: &[Option<&str>]) {
    put_message(out, b'B', |b| {
        b.put_slice(b"\0\0"); // portal, statement
        b.put_i16(0); // parameter formats: all text
        b.put_i16(params.len() as i16);
        for p in params {
            match p {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
        b.put_i16(0); // result formats: all text
    });
}

/// Parse of the unnamed statement, parameter types left to the server.
pub fn put_parse(out: &mut BytesMut, sql: &str) {
    let len = 4 + 1 + sql.len() + 1 + 2;
    out.extend_from_slice(b"P");
    out.extend_from_slice(&(len as i32).to_be_bytes());
    out.extend_from_slice(b"\0");
    out.extend_from_slice(sql.as_bytes());
    out.extend_from_slice(b"\0\0\0");
}

/// Bind of the unnamed statement to the unnamed portal with one text parameter.
pub fn put_bind_text(out: &mut BytesMut, value: &str) {
    put_bind_texts(out, &[Some(value)]);
}

pub fn put_describe(out: &mut BytesMut, kind: u8, name: &str) {
    out.put_u8(b'D');
    out.put_i32((4 + 1 + name.len() + 1) as i32);
    out.put_u8(kind);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
}

pub fn notice_response(out: &mut BytesMut, code: &str, message: &str) {
    put_message(out, b'N', |b| {
        for (field, value) in [
            (b'S', "NOTICE"),
            (b'V', "NOTICE"),
            (b'C', code),
            (b'M', message),
        ] {
            b.put_u8(field);
            put_cstr(b, value);
        }
        b.put_u8(0);
    });
}

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    put_message(out, b'Z', |b| b.put_u8(status));
}

pub fn auth_request(out: &mut BytesMut, code: i32) {
    put_message(out, b'R', |b| b.put_i32(code));
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, key: i32) {
    put_message(out, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(key);
    });
}

/// Tells a client asking for protocol 3.x (x > 0) that we speak 3.0, listing the
/// `_pq_.` options we did not recognise.
pub fn negotiate_protocol_version(out: &mut BytesMut, unrecognized: &[&str]) {
    put_message(out, b'v', |b| {
        b.put_i32(PROTOCOL_3_0);
        b.put_i32(unrecognized.len() as i32);
        for opt in unrecognized {
            put_cstr(b, opt);
        }
    });
}

/// The untyped startup packet sent to the target.
pub fn startup_message(out: &mut BytesMut, params: &[(&str, &str)]) {
    let start = out.len();
    out.put_i32(0);
    out.put_i32(PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(out, k);
        put_cstr(out, v);
    }
    out.put_u8(0);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn cancel_request(out: &mut BytesMut, pid: i32, key: &[u8]) {
    out.put_i32(12 + key.len() as i32);
    out.put_i32(CANCEL_REQUEST);
    out.put_i32(pid);
    out.put_slice(key);
}

pub fn ssl_request(out: &mut BytesMut) {
    out.put_i32(8);
    out.put_i32(SSL_REQUEST);
}

/// CopyFail: the client aborts a COPY FROM STDIN with `message`.
pub fn copy_fail(out: &mut BytesMut, message: &str) {
    put_message(out, b'f', |b| put_cstr(b, message));
}

pub fn sync(out: &mut BytesMut) {
    put_message(out, b'S', |_| {});
}

pub fn password_message(out: &mut BytesMut, password: &[u8]) {
    put_message(out, b'p', |b| {
        b.put_slice(password);
        b.put_u8(0);
    });
}

pub fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    put_message(out, b'p', |b| {
        put_cstr(b, mechanism);
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}

pub fn sasl_response(out: &mut BytesMut, data: &[u8]) {
    put_message(out, b'p', |b| b.put_slice(data));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn header_rejects_short_lengths() {
        assert_eq!(parse_header(b"Q\0\0\0\x03x"), Err(CodecError::BadLength(3)));
        assert_eq!(parse_header(b"Q\0\0"), Ok(None));
        let h = parse_header(b"Q\0\0\0\x09rest").unwrap().unwrap();
        assert_eq!(h.body_len, 5);
    }

    #[test]
    fn header_of_2gib_is_reported_not_trusted() {
        let h = parse_header(&[b'Q', 0x7f, 0xff, 0xff, 0xff])
            .unwrap()
            .unwrap();
        assert_eq!(h.body_len, 0x7fff_fffb);
        assert_eq!(
            parse_header(&[b'Q', 0x80, 0, 0, 0]),
            Err(CodecError::BadLength(i32::MIN.into()))
        );
    }

    #[test]
    fn startup_params() {
        let mut b = BytesMut::new();
        startup_message(&mut b, &[("user", "alice"), ("database", "pg")]);
        let p = parse_first_packet(&b[4..]).unwrap();
        let FirstPacket::Startup(s) = p else {
            panic!("not a startup packet")
        };
        assert_eq!(s.version, PROTOCOL_3_0);
        assert_eq!(s.param("user"), Some("alice"));
        assert_eq!(s.param("database"), Some("pg"));
    }

    #[test]
    fn truncated_and_garbage_packets_are_errors_not_panics() {
        let mut b = BytesMut::new();
        startup_message(&mut b, &[("user", "alice")]);
        for cut in 0..b.len() - 4 {
            let _ = parse_first_packet(&b[4..4 + cut]);
        }
        for tag in [b'Q', b'P', b'B', b'E', b'C', b'F'] {
            for len in 0..24 {
                let body: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
                let _ = parse_frontend(tag, &body, ClientText::Utf8);
            }
        }
        assert!(parse_frontend(
            b'B',
            b"\0\0\0\x01\0\x01\0\x01\xff\xff\xff\x00",
            ClientText::Utf8
        )
        .is_err());
    }

    #[test]
    fn bind_params_with_formats() {
        // portal "", statement "s1", 1 format (binary), 2 params: 4 bytes, NULL
        let body = b"\0s1\0\0\x01\0\x01\0\x02\0\0\0\x04\0\0\0\x2a\xff\xff\xff\xff\0\0";
        let m = parse_frontend(b'B', body, ClientText::Utf8)
            .unwrap()
            .unwrap();
        let FrontendMessage::Bind {
            params, statement, ..
        } = m
        else {
            panic!("not a bind")
        };
        assert_eq!(statement, "s1");
        assert_eq!(params.len(), 2);
        assert!(params[0].binary);
        assert_eq!(params[0].value, Some(&[0, 0, 0, 42][..]));
        assert_eq!(params[1].value, None);
    }

    #[test]
    fn error_fields_round_trip() {
        let mut b = BytesMut::new();
        error_response(&mut b, "ERROR", "42501", "denied");
        let f = parse_error_fields(&b[5..]);
        assert_eq!(f.code, "42501");
        assert_eq!(f.message, "denied");
        assert_eq!(f.severity, "ERROR");
    }

    #[test]
    fn tags() {
        assert_eq!(rows_from_tag("INSERT 0 5"), Some(5));
        assert_eq!(rows_from_tag("SELECT 3"), Some(3));
        assert_eq!(rows_from_tag("CREATE TABLE"), None);
    }
}
