//! Masking of what the server sends back, for a session that masking rules cover.
//!
//! A RowDescription (or a CopyOutResponse, with the COPY's source described through the
//! catalog connection) yields a [`ResultPlan`]; each DataRow or CopyData row is then walked
//! cell by cell and re-encoded only when a cell changes — otherwise the server's frame goes
//! out as it came. Error and notice texts go through the detectors. What was masked is
//! counted per statement, for the audit record.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use sluice_core::MaskCount;
use sluice_mask::{Cell, CellKind, Origin, ResultColumn, ResultPlan, SessionMasking};
use sluice_sql::CopyOut;

use crate::catalog::{Catalog, Field, Resolved};

/// Type OIDs the masker knows without asking the catalog.
mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const UNKNOWN: u32 = 705;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// How a column's cells are framed on the wire around the value the masker sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Plain,
    /// Binary jsonb: a version byte (1), then the JSON text.
    JsonbBinary,
}

/// How COPY output lays out a row.
#[derive(Debug, Clone)]
enum CopyFormat {
    Text {
        delimiter: u8,
        null: Vec<u8>,
    },
    Csv {
        delimiter: u8,
        quote: u8,
        escape: u8,
        null: Vec<u8>,
    },
    Binary,
    /// The statement could not be read: no field can be told from another.
    Unknown,
}

#[derive(Debug)]
struct Current {
    plan: ResultPlan,
    wire: Vec<Wire>,
    copy: Option<CopyState>,
}

#[derive(Debug)]
struct CopyState {
    format: CopyFormat,
    /// CSV output starts with a header line (column names) the masker leaves alone.
    header_pending: bool,
}

pub(super) struct Masker {
    masking: Arc<SessionMasking>,
    catalog: Arc<Catalog>,
    current: Option<Current>,
    /// Counts from ended results and scrubbed messages, for the statement now running.
    counts: Vec<MaskCount>,
    scratch: Vec<u8>,
    /// The buffer rewritten frames are built in, handed back after each use.
    frame: BytesMut,
    /// The text of the last statement a result, error or notice belonged to.
    last_sql: Option<Arc<str>>,
}

/// Largest row the masker reads whole (a masked cell must be rewritten in one piece).
pub(super) const MAX_MASKED_ROW: usize = 256 << 20;

impl Masker {
    pub fn new(masking: Arc<SessionMasking>, catalog: Arc<Catalog>) -> Masker {
        Masker {
            masking,
            catalog,
            current: None,
            counts: Vec::new(),
            scratch: Vec::new(),
            frame: BytesMut::new(),
            last_sql: None,
        }
    }

    /// Whether rows of the current result must be read whole.
    pub fn inspecting(&self) -> bool {
        self.current.is_some()
    }

    /// A RowDescription: plans the result that follows.
    pub async fn row_description(&mut self, body: &[u8], statement: Option<&str>) {
        self.end_result();
        let fields = crate::catalog::parse_row_description(body);
        self.current = self.plan(&fields, statement, None).await;
    }

    /// A CopyOutResponse: plans the COPY's rows from its statement. `unsafe_encoding`:
    /// the session's client_encoding is one whose characters can hold a delimiter byte.
    pub async fn copy_out(&mut self, body: &[u8], statement: Option<&str>, unsafe_encoding: bool) {
        self.end_result();
        let binary = body.first() == Some(&1);
        let columns = body
            .get(1..3)
            .map_or(0, |b| i16::from_be_bytes([b[0], b[1]]).max(0) as usize);
        // Fields cannot be told apart when a multibyte character can end in a delimiter
        // or backslash byte (SJIS, BIG5, …): then the layout counts as unknown.
        let copy = statement.and_then(sluice_sql::copy_to_stdout).filter(|c| {
            let encoding_hides = match &c.encoding {
                Some(e) => crate::codec::encoding_hides_delimiters(e),
                None => unsafe_encoding,
            };
            !encoding_hides
        });
        let format = match &copy {
            _ if binary => CopyFormat::Binary,
            Some(c) if c.csv => CopyFormat::Csv {
                delimiter: c.delimiter.unwrap_or(b','),
                quote: c.quote.unwrap_or(b'"'),
                escape: c.escape.or(c.quote).unwrap_or(b'"'),
                null: c.null.clone().unwrap_or_default().into_bytes(),
            },
            Some(c) => CopyFormat::Text {
                delimiter: c.delimiter.unwrap_or(b'\t'),
                null: c.null.clone().unwrap_or_else(|| "\\N".into()).into_bytes(),
            },
            None => CopyFormat::Unknown,
        };
        let header_pending = copy.as_ref().is_some_and(|c: &CopyOut| c.csv && c.header);
        let described = match &copy {
            Some(c) => self.describe_copy(&c.source).await,
            None => None,
        };
        let fields: Vec<Field> = match described {
            Some(f) if f.len() == columns => f
                .into_iter()
                .map(|f| Field {
                    format: i16::from(binary),
                    ..f
                })
                .collect(),
            // Not described: every column's origin is unknown (column rules apply).
            _ => (0..columns)
                .map(|_| Field {
                    table: u32::MAX,
                    column: 0,
                    type_oid: 0,
                    format: i16::from(binary),
                })
                .collect(),
        };
        let state = CopyState {
            format,
            header_pending,
        };
        self.current = self.plan(&fields, statement, Some(state)).await;
    }

    /// The columns of a COPY's source, described on the catalog connection — unless a
    /// name in it could resolve differently in the session (its search_path, its temporary
    /// tables): then `None`, and every field counts as unknown.
    async fn describe_copy(&self, source: &str) -> Option<Vec<Field>> {
        let names = sluice_sql::identifiers(source);
        let described = match self.catalog.ambiguous(&names).await {
            Ok(false) => self.catalog.describe(source).await,
            Ok(true) => Err("a name in it exists in more than one schema".to_owned()),
            Err(e) => Err(e),
        };
        match described {
            Ok(fields) => Some(fields),
            Err(e) => {
                tracing::warn!(error = %e, "cannot describe a COPY's columns; masking every field");
                None
            }
        }
    }

    async fn plan(
        &self,
        fields: &[Field],
        statement: Option<&str>,
        copy: Option<CopyState>,
    ) -> Option<Current> {
        let tables: Vec<(u32, i16)> = fields
            .iter()
            .filter(|f| f.table != 0 && f.table != u32::MAX)
            .map(|f| (f.table, f.column))
            .collect();
        let origins: Option<Vec<Resolved>> = if tables.is_empty() {
            Some(Vec::new())
        } else {
            match self.catalog.origins(&tables).await {
                Ok(o) => Some(o),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read column origins; masking as if every column matched");
                    None
                }
            }
        };
        let unknown_types: Vec<u32> = fields
            .iter()
            .filter(|f| builtin_kind(f.type_oid).is_none())
            .map(|f| f.type_oid)
            .collect();
        let types = if unknown_types.is_empty() {
            Default::default()
        } else {
            self.catalog.types(&unknown_types).await.unwrap_or_default()
        };
        let mut origin_iter = origins.iter().flatten();
        let mut resolved: Vec<Option<&Resolved>> = Vec::with_capacity(fields.len());
        let mut unknown = Vec::with_capacity(fields.len());
        for f in fields {
            let known = f.table != 0 && f.table != u32::MAX;
            resolved.push(if known { origin_iter.next() } else { None });
            unknown.push(f.table == u32::MAX || (known && origins.is_none()));
        }
        let mut wire = Vec::with_capacity(fields.len());
        let mut columns = Vec::with_capacity(fields.len());
        for (i, f) in fields.iter().enumerate() {
            let kind = builtin_kind(f.type_oid).unwrap_or_else(|| match types.get(&f.type_oid) {
                Some(t) => match t.category {
                    b'S' => CellKind::Text,
                    b'N' | b'D' | b'B' | b'T' | b'G' | b'V' | b'R' => CellKind::Opaque,
                    _ => CellKind::Structured,
                },
                None => CellKind::Structured,
            });
            wire.push(if f.type_oid == oid::JSONB && f.format == 1 {
                Wire::JsonbBinary
            } else {
                Wire::Plain
            });
            let origin = if unknown[i] {
                Origin::Unknown
            } else {
                match resolved[i] {
                    Some(Resolved::Column(o)) => Origin::Column(o),
                    Some(Resolved::InView(names)) => Origin::InView(names),
                    Some(Resolved::Computed) | None => Origin::Computed,
                }
            };
            columns.push(ResultColumn { origin, kind });
        }
        let plan = self.masking.plan(&columns, statement)?;
        Some(Current { plan, wire, copy })
    }

    /// Gives back a frame this masker returned, so its buffer is reused.
    pub fn recycle(&mut self, mut frame: BytesMut) {
        frame.clear();
        self.frame = frame;
    }

    /// A DataRow: the re-encoded frame when a cell changed.
    pub fn data_row(&mut self, body: &[u8]) -> Option<BytesMut> {
        let current = self.current.as_mut()?;
        let mut out = std::mem::take(&mut self.frame);
        out.clear();
        out.put_u8(b'D');
        out.put_i32(0);
        match mask_tuple(current, body, &mut self.scratch, &mut out) {
            Some((used, true)) if used == body.len() => {
                set_frame_length(&mut out);
                Some(out)
            }
            _ => {
                self.recycle(out);
                None
            }
        }
    }

    /// A CopyData of COPY output: the re-encoded frame when a field changed.
    pub fn copy_data(&mut self, body: &[u8]) -> Option<BytesMut> {
        let current = self.current.as_mut()?;
        let copy = current.copy.as_mut()?;
        if std::mem::take(&mut copy.header_pending) {
            return None;
        }
        let mut out = std::mem::take(&mut self.frame);
        out.clear();
        out.put_u8(b'd');
        out.put_i32(0);
        let format = copy.format.clone();
        let changed = match format {
            CopyFormat::Binary => mask_binary_copy(current, body, &mut self.scratch, &mut out),
            CopyFormat::Text { delimiter, null } => {
                mask_text_line(current, body, delimiter, &null, &mut self.scratch, &mut out)
            }
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
                null,
            } => mask_csv_line(
                current,
                body,
                delimiter,
                quote,
                escape,
                &null,
                &mut self.scratch,
                &mut out,
            ),
            CopyFormat::Unknown => mask_unknown_line(current, body, &mut self.scratch, &mut out),
        };
        if !changed {
            self.recycle(out);
            return None;
        }
        set_frame_length(&mut out);
        Some(out)
    }

    /// An ErrorResponse or NoticeResponse: its texts (message, detail, hint, context)
    /// through the detectors — a unique violation's detail can echo the value itself.
    pub fn scrub_message(
        &mut self,
        tag: u8,
        body: &[u8],
        statement: Option<&str>,
    ) -> Option<BytesMut> {
        // A statement that reads masked columns can have them quoted back in its errors
        // (`invalid input syntax for type integer: "…"`, `Failing row contains (…)`) or
        // printed by its notices: those texts are masked beyond what detectors find.
        let reaches = self
            .masking
            .statement_reaches(statement.or(self.last_sql.as_deref()));
        let code = error_code(body);
        let raised = code.starts_with("P0"); // RAISE: the text is the caller's own
        let mut out = BytesMut::new();
        out.put_u8(tag);
        out.put_i32(0);
        let mut changed = false;
        let mut pos = 0;
        while let Some(&field) = body.get(pos) {
            if field == 0 {
                break;
            }
            let end = pos + 1 + body[pos + 1..].iter().position(|b| *b == 0)?;
            let value = &body[pos + 1..end];
            out.put_u8(field);
            // Message, detail, hint, context, internal query, and the object names
            // (schema, table, column, type, constraint) a RAISE … USING can fill.
            let text_field = matches!(
                field,
                b'M' | b'D' | b'H' | b'W' | b'q' | b's' | b't' | b'c' | b'd' | b'n'
            );
            let whole =
                reaches && text_field && (tag == b'N' || raised || !matches!(field, b'M' | b'D'));
            let quoted = if reaches && text_field && !whole {
                sluice_mask::mask_quoted(value, field == b'D')
            } else {
                None
            };
            if whole {
                changed = true;
                out.extend_from_slice(sluice_mask::TEXT_MARKER.as_bytes());
            } else {
                let value = quoted.as_deref().unwrap_or(value);
                changed |= quoted.is_some();
                match text_field.then(|| self.masking.mask_text(value)).flatten() {
                    Some((text, counts)) => {
                        changed = true;
                        out.extend(text.iter().filter(|b| **b != 0));
                        self.counts.extend(counts);
                    }
                    None => out.extend_from_slice(value),
                }
            }
            out.put_u8(0);
            pos = end + 1;
        }
        out.put_u8(0);
        if !changed {
            return None;
        }
        set_frame_length(&mut out);
        Some(out)
    }

    /// Remembers the statement a frame belongs to: a notification that arrives after it
    /// is judged by it.
    pub fn note_statement(&mut self, statement: Option<Arc<str>>) {
        if statement.is_some() {
            self.last_sql = statement;
        }
    }

    /// A NotificationResponse (LISTEN/NOTIFY): its payload through the detectors.
    pub fn scrub_notification(&mut self, body: &[u8]) -> Option<BytesMut> {
        let channel_end = 4 + body.get(4..)?.iter().position(|b| *b == 0)?;
        let payload = body.get(channel_end + 1..)?.strip_suffix(&[0])?;
        // The last statement read masked columns: it may have sent them (pg_notify).
        let text = if self.masking.statement_reaches(self.last_sql.as_deref()) {
            if payload.is_empty() {
                return None;
            }
            sluice_mask::TEXT_MARKER.as_bytes().to_vec()
        } else {
            let (text, counts) = self.masking.mask_text(payload)?;
            self.counts.extend(counts);
            text
        };
        let mut out = BytesMut::new();
        out.put_u8(b'A');
        out.put_i32(0);
        out.extend_from_slice(&body[..=channel_end]);
        out.extend(text.iter().filter(|b| **b != 0));
        out.put_u8(0);
        set_frame_length(&mut out);
        Some(out)
    }

    /// A FunctionCallResponse (fast-path call): its type is unknown here, so a value the
    /// detectors flag becomes NULL.
    pub fn function_result(&mut self, body: &[u8]) -> Option<BytesMut> {
        let len = i32::from_be_bytes(body.get(..4)?.try_into().ok()?);
        let value = body.get(4..4 + usize::try_from(len).ok()?)?;
        let (_, counts) = self.masking.mask_text(value)?;
        self.counts.extend(counts);
        let mut out = BytesMut::new();
        out.put_u8(b'V');
        out.put_i32(8);
        out.put_i32(-1);
        Some(out)
    }

    /// The current result ended (its counts wait for the statement's completion).
    fn end_result(&mut self) {
        if let Some(c) = self.current.take() {
            self.counts.extend(c.plan.counts());
        }
    }

    /// The statement completed (or failed): what was masked for it.
    pub fn finish(&mut self) -> Vec<MaskCount> {
        self.end_result();
        merge(std::mem::take(&mut self.counts))
    }
}

/// Writes a frame's length once its body is complete (built after a placeholder).
fn set_frame_length(frame: &mut BytesMut) {
    let len = (frame.len() - 1) as i32;
    frame[1..5].copy_from_slice(&len.to_be_bytes());
}

/// The SQLSTATE of an ErrorResponse or NoticeResponse body.
fn error_code(body: &[u8]) -> String {
    crate::codec::parse_error_fields(body).code
}

/// Adds up counts of the same column or detector.
fn merge(counts: Vec<MaskCount>) -> Vec<MaskCount> {
    let mut out: Vec<MaskCount> = Vec::with_capacity(counts.len());
    for c in counts {
        match out
            .iter_mut()
            .find(|o| o.column == c.column && o.detector == c.detector && o.style == c.style)
        {
            Some(o) => o.values += c.values,
            None => out.push(c),
        }
    }
    out
}

fn builtin_kind(type_oid: u32) -> Option<CellKind> {
    use oid::*;
    Some(match type_oid {
        TEXT | VARCHAR | BPCHAR | NAME | XML | UNKNOWN => CellKind::Text,
        JSON | JSONB => CellKind::Json,
        BOOL | BYTEA | INT2 | INT4 | INT8 | OID | FLOAT4 | FLOAT8 | NUMERIC | DATE | TIME
        | TIMESTAMP | TIMESTAMPTZ | UUID => CellKind::Opaque,
        _ => return None,
    })
}

/// Masks one cell's value as framed on the wire. On a change, `scratch` holds the new
/// value and the returned prefix (jsonb's version byte) goes before it.
fn mask_framed<'v>(
    current: &mut Current,
    col: usize,
    value: &'v [u8],
    scratch: &mut Vec<u8>,
) -> (Cell, &'v [u8]) {
    let wire = current.wire.get(col).copied().unwrap_or(Wire::Plain);
    let (prefix, inner) = match wire {
        Wire::JsonbBinary if value.first() == Some(&1) => value.split_at(1),
        _ => (&value[..0], value),
    };
    (current.plan.mask_cell(col, inner, scratch), prefix)
}

/// Masks a tuple (`count`, then length-prefixed cells: a DataRow body or a binary COPY
/// tuple) into `out`. Nothing is written until a cell changes (most rows pass untouched:
/// copying them would be wasted work on every row); then the unchanged cells before it are
/// copied as they came. Returns the bytes of `body` the tuple takes and whether a cell
/// changed; `None` when it is malformed (then the frame goes out as the server sent it).
fn mask_tuple(
    current: &mut Current,
    body: &[u8],
    scratch: &mut Vec<u8>,
    out: &mut BytesMut,
) -> Option<(usize, bool)> {
    let count = i16::from_be_bytes([*body.first()?, *body.get(1)?]);
    let mut pos = 2;
    // Where the unchanged bytes not yet written to `out` start, once a cell has changed.
    let mut copied: Option<usize> = None;
    for col in 0..count.max(0) as usize {
        let cell = pos;
        let len = i32::from_be_bytes(body.get(pos..pos + 4)?.try_into().ok()?);
        pos += 4;
        let Ok(len) = usize::try_from(len) else {
            continue; // NULL
        };
        let value = body.get(pos..pos + len)?;
        pos += len;
        if !current.plan.inspects(col) {
            continue;
        }
        let (change, prefix) = mask_framed(current, col, value, scratch);
        if change == Cell::Keep {
            continue;
        }
        out.extend_from_slice(&body[copied.unwrap_or(0)..cell]);
        match change {
            Cell::Null => out.put_i32(-1),
            _ => {
                out.put_i32((prefix.len() + scratch.len()) as i32);
                out.extend_from_slice(prefix);
                out.extend_from_slice(scratch);
            }
        }
        copied = Some(pos);
    }
    if let Some(from) = copied {
        out.extend_from_slice(&body[from..pos]);
    }
    Some((pos, copied.is_some()))
}

const BINARY_COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

fn mask_binary_copy(
    current: &mut Current,
    body: &[u8],
    scratch: &mut Vec<u8>,
    out: &mut BytesMut,
) -> bool {
    let mut pos = 0;
    if body.starts_with(BINARY_COPY_SIGNATURE) {
        let ext = body
            .get(15..19)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
        let header = (19 + ext).min(body.len());
        out.extend_from_slice(&body[..header]);
        pos = header;
    }
    let mut changed = false;
    while pos + 2 <= body.len() {
        if body[pos..pos + 2] == [0xff, 0xff] {
            out.extend_from_slice(&body[pos..]);
            return changed;
        }
        let mark = out.len();
        match mask_tuple(current, &body[pos..], scratch, out) {
            Some((used, true)) => {
                changed = true;
                pos += used;
            }
            Some((used, false)) => {
                out.extend_from_slice(&body[pos..pos + used]);
                pos += used;
            }
            None => {
                // Unreadable: the rest goes out as it came.
                out.truncate(mark);
                break;
            }
        }
    }
    out.extend_from_slice(&body[pos..]);
    changed
}

/// One text-format COPY line: fields split on the delimiter, backslash escapes decoded
/// before masking and applied again after.
fn mask_text_line(
    current: &mut Current,
    body: &[u8],
    delimiter: u8,
    null: &[u8],
    scratch: &mut Vec<u8>,
    out: &mut BytesMut,
) -> bool {
    let line = body.strip_suffix(b"\n").unwrap_or(body);
    let mut changed = false;
    let mut decoded = Vec::new();
    for (col, field) in split_text_fields(line, delimiter).into_iter().enumerate() {
        if col > 0 {
            out.put_u8(delimiter);
        }
        if field == null || !current.plan.inspects(col) {
            out.extend_from_slice(field);
            continue;
        }
        decode_text_field(field, &mut decoded);
        match current.plan.mask_cell(col, &decoded, scratch) {
            Cell::Keep => out.extend_from_slice(field),
            Cell::Null => {
                changed = true;
                out.extend_from_slice(null);
            }
            Cell::Replaced => {
                changed = true;
                for &b in scratch.iter() {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        b if b == delimiter => {
                            out.put_u8(b'\\');
                            out.put_u8(b);
                        }
                        b => out.put_u8(b),
                    }
                }
            }
        }
    }
    out.put_u8(b'\n');
    changed
}

/// Splits on unescaped delimiters (a backslash escapes the next byte).
fn split_text_fields(line: &[u8], delimiter: u8) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < line.len() {
        if line[i] == b'\\' {
            i += 2;
            continue;
        }
        if line[i] == delimiter {
            fields.push(&line[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    fields.push(&line[start.min(line.len())..]);
    fields
}

fn decode_text_field(field: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' || i + 1 >= field.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let next = field[i + 1];
        i += 2;
        match next {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(next - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut digits = 0;
                while digits < 2 {
                    match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                            digits += 1;
                        }
                        None => break,
                    }
                }
                if digits == 0 {
                    out.push(b'x');
                } else {
                    out.push(v as u8);
                }
            }
            other => out.push(other),
        }
    }
}

/// One CSV-format COPY line.
#[allow(clippy::too_many_arguments)]
fn mask_csv_line(
    current: &mut Current,
    body: &[u8],
    delimiter: u8,
    quote: u8,
    escape: u8,
    null: &[u8],
    scratch: &mut Vec<u8>,
    out: &mut BytesMut,
) -> bool {
    let line = body.strip_suffix(b"\n").unwrap_or(body);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut changed = false;
    let mut col = 0;
    let mut i = 0;
    let mut value = Vec::new();
    loop {
        // One field: quoted or raw.
        let start = i;
        value.clear();
        let quoted = line.get(i) == Some(&quote);
        if quoted {
            i += 1;
            while i < line.len() {
                let b = line[i];
                let next = line.get(i + 1).copied();
                if b == escape && (next == Some(quote) || (escape != quote && next == Some(escape)))
                {
                    value.push(line[i + 1]);
                    i += 2;
                } else if b == quote {
                    i += 1;
                    break;
                } else {
                    value.push(b);
                    i += 1;
                }
            }
        }
        while i < line.len() && line[i] != delimiter {
            value.push(line[i]);
            i += 1;
        }
        let raw = &line[start..i];
        if col > 0 {
            out.put_u8(delimiter);
        }
        let is_null = !quoted && raw == null;
        if is_null || !current.plan.inspects(col) {
            out.extend_from_slice(raw);
        } else {
            match current.plan.mask_cell(col, &value, scratch) {
                Cell::Keep => out.extend_from_slice(raw),
                Cell::Null => {
                    changed = true;
                    out.extend_from_slice(null);
                }
                Cell::Replaced => {
                    changed = true;
                    // Quoted only when it must be, as PostgreSQL writes it.
                    let needs_quotes = scratch.is_empty()
                        || scratch.as_slice() == null
                        || scratch.iter().any(|&b| {
                            b == delimiter || b == quote || b == escape || b == b'\n' || b == b'\r'
                        });
                    if needs_quotes {
                        out.put_u8(quote);
                        for &b in scratch.iter() {
                            if b == quote || (escape != quote && b == escape) {
                                out.put_u8(escape);
                            }
                            out.put_u8(b);
                        }
                        out.put_u8(quote);
                    } else {
                        out.extend_from_slice(scratch);
                    }
                }
            }
        }
        col += 1;
        if i >= line.len() {
            break;
        }
        i += 1; // the delimiter
    }
    out.put_u8(b'\n');
    changed
}

/// A COPY line whose layout is unknown: column rules cannot tell fields apart, so a
/// session with column rules sees the whole line masked; detectors rewrite what they find.
fn mask_unknown_line(
    current: &mut Current,
    body: &[u8],
    scratch: &mut Vec<u8>,
    out: &mut BytesMut,
) -> bool {
    let line = body.strip_suffix(b"\n").unwrap_or(body);
    match current.plan.mask_cell(0, line, scratch) {
        Cell::Keep => false,
        Cell::Null => {
            out.extend_from_slice(b"\n");
            true
        }
        Cell::Replaced => {
            out.extend(scratch.iter().map(|b| if *b == b'\n' { b' ' } else { *b }));
            out.put_u8(b'\n');
            true
        }
    }
}
