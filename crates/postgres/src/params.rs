//! Rendering bind parameter values as text for the audit record.

use crate::client_text::ClientText;
use crate::codec::Param;

/// Longest rendered value kept in the audit record; longer ones are cut and marked, so
/// that a large bytea upload cannot bloat the log.
const MAX_RENDERED: usize = 1024;

/// Renders each parameter: text-format values as they are, binary ones decoded by type
/// OID where the type is known, hex (`\x…`) otherwise; text read in the client encoding.
pub fn render_params(params: &[Param<'_>], types: &[u32], text: ClientText) -> Vec<Option<String>> {
    params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            p.value.map(|v| {
                let text = if p.binary {
                    render_binary(types.get(i).copied().unwrap_or(0), v, text)
                } else {
                    text.decode(v).into_owned()
                };
                truncate(text)
            })
        })
        .collect()
}

fn render_binary(oid: u32, v: &[u8], text: ClientText) -> String {
    let decoded = match (oid, v.len()) {
        (16, 1) => Some((v[0] != 0).to_string()),
        (21, 2) => Some(i16::from_be_bytes([v[0], v[1]]).to_string()),
        (23, 4) | (26, 4) => v.try_into().ok().map(|b| i32::from_be_bytes(b).to_string()),
        (20, 8) => v.try_into().ok().map(|b| i64::from_be_bytes(b).to_string()),
        (700, 4) => v.try_into().ok().map(|b| f32::from_be_bytes(b).to_string()),
        (701, 8) => v.try_into().ok().map(|b| f64::from_be_bytes(b).to_string()),
        // text, varchar, bpchar, name, json, xml, unknown: binary form is the text itself
        (25 | 1043 | 1042 | 19 | 114 | 142 | 705, _) => match text {
            ClientText::Utf8 => std::str::from_utf8(v).ok().map(str::to_owned),
            _ => Some(text.decode(v).into_owned()),
        },
        (2950, 16) => Some(uuid(v)),
        _ => None,
    };
    decoded.unwrap_or_else(|| hex(v))
}

fn uuid(v: &[u8]) -> String {
    let h = hex_digits(v);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn hex_digits(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex(v: &[u8]) -> String {
    let shown = &v[..v.len().min(MAX_RENDERED / 2)];
    format!("\\x{}", hex_digits(shown))
}

fn truncate(mut s: String) -> String {
    if s.len() <= MAX_RENDERED {
        return s;
    }
    let total = s.len();
    let cut = sluice_core::text::clip(&s, MAX_RENDERED).len();
    s.truncate(cut);
    s.push_str(&format!("…({total} bytes)"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(binary: bool, v: &[u8]) -> Param<'_> {
        Param {
            binary,
            value: Some(v),
        }
    }

    #[test]
    fn renders_text_binary_and_null() {
        let forty_two = 42i32.to_be_bytes();
        let params = [
            p(false, b"hello"),
            p(true, &forty_two),
            Param {
                binary: false,
                value: None,
            },
            p(true, &[1, 2]),
        ];
        let out = render_params(&params, &[25, 23, 0, 0], ClientText::Utf8);
        assert_eq!(
            out,
            vec![
                Some("hello".into()),
                Some("42".into()),
                None,
                Some("\\x0102".into())
            ]
        );
    }

    #[test]
    fn long_values_are_cut_on_char_boundaries() {
        let long = "é".repeat(2000);
        let out = render_params(&[p(false, long.as_bytes())], &[], ClientText::Utf8);
        let s = out[0].as_deref().unwrap_or_default();
        assert!(s.ends_with("…(4000 bytes)"));
        assert!(s.len() < 1100);
    }
}
