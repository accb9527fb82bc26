//! The trigger scan: before the combined regex runs, a cheap look at the value finds
//! the windows where a built-in detector could possibly match, so that most bytes of
//! ordinary text (names, prose, dates, small numbers) are never given to the regex.
//!
//! Every window is a necessary condition of a family of built-ins, derived from what
//! their patterns and validators require: a match lies wholly inside a maximal run of
//! the bytes its pattern can contain, and that run has enough digits, colons or
//! length. Runs that must be long are found by sampling every `stride`-th byte (a run
//! at least `stride` long always contains a sample) and growing the run around a
//! sampled byte; rarer triggers (`@`, `:`, `-----BEGIN `) are found with memchr.

/// Families of built-ins that share a trigger.
pub(super) mod family {
    /// `credit_card`, `us_ssn`, `phone`, `ipv4`.
    pub const NUMERIC: u8 = 1;
    pub const IPV6: u8 = 2;
    pub const EMAIL: u8 = 4;
    /// `aws_access_key`, `aws_secret_key`, `jwt`, `api_token`.
    pub const TOKEN: u8 = 8;
    pub const IBAN: u8 = 16;
    pub const PEM: u8 = 32;
}

/// The families a built-in belongs to.
pub(super) fn family_of(builtin: &str) -> u8 {
    match builtin {
        "credit_card" | "us_ssn" | "phone" | "ipv4" => family::NUMERIC,
        "ipv6" => family::IPV6,
        "email" => family::EMAIL,
        "aws_access_key" | "aws_secret_key" | "jwt" | "api_token" => family::TOKEN,
        "iban" => family::IBAN,
        "private_key" => family::PEM,
        _ => 0,
    }
}

// Byte classes: which runs a byte can be part of.
/// Card, SSN, phone and IPv4 text: digits and `space ( ) + - . /`.
const C_NUM: u8 = 1;
/// IPv6 text: hex digits, `:` and `.` (embedded IPv4).
const C_HEX: u8 = 2;
/// Token text: `[A-Za-z0-9_./+-]`.
const C_TOK: u8 = 4;
/// IBAN text: `[A-Z0-9 ]`.
const C_IBAN: u8 = 8;
/// Email local part: `[A-Za-z0-9_%+.-]`.
const C_LOCAL: u8 = 16;
/// Email domain: `[A-Za-z0-9.-]`.
const C_DOMAIN: u8 = 32;

static CLASS: [u8; 256] = classes();

const fn classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let digit = b.is_ascii_digit();
        let upper = b.is_ascii_uppercase();
        let alnum = b.is_ascii_alphanumeric();
        let mut c = 0;
        if digit || matches!(b, b' ' | b'(' | b')' | b'+' | b'-' | b'.' | b'/') {
            c |= C_NUM;
        }
        if b.is_ascii_hexdigit() || b == b':' || b == b'.' {
            c |= C_HEX;
        }
        if alnum || matches!(b, b'_' | b'.' | b'/' | b'+' | b'-') {
            c |= C_TOK;
        }
        if upper || digit || b == b' ' {
            c |= C_IBAN;
        }
        if alnum || matches!(b, b'_' | b'%' | b'+' | b'.' | b'-') {
            c |= C_LOCAL;
        }
        if alnum || matches!(b, b'.' | b'-') {
            c |= C_DOMAIN;
        }
        t[i] = c;
        i += 1;
    }
    t
}

fn is(b: u8, class: u8) -> bool {
    CLASS[usize::from(b)] & class != 0
}

/// The maximal run of `class` bytes around `pos` (which must be one).
fn grow(v: &[u8], pos: usize, class: u8) -> (usize, usize) {
    let mut s = pos;
    while s > 0 && is(v[s - 1], class) {
        s -= 1;
    }
    let mut e = pos + 1;
    while e < v.len() && is(v[e], class) {
        e += 1;
    }
    (s, e)
}

/// Calls `f` on every maximal run of `class` bytes at least `stride` long.
fn sampled_runs(v: &[u8], stride: usize, class: u8, mut f: impl FnMut(usize, usize)) {
    let mut pos = stride - 1;
    while pos < v.len() {
        if !is(v[pos], class) {
            pos += stride;
            continue;
        }
        let (s, e) = grow(v, pos, class);
        if e - s >= stride {
            f(s, e);
        }
        // `v[e]` is not in the class: the next long run starts after it.
        pos = e + stride;
    }
}

/// Up to this many windows are kept apart; past it, one window covers the rest.
const CAP: usize = 16;

/// The windows of one value, sorted and merged.
pub(super) struct Windows {
    spans: [(usize, usize); CAP],
    len: usize,
    /// Set when more than `CAP` windows were found: the earliest start seen.
    overflow: Option<usize>,
}

impl Windows {
    pub(super) fn new() -> Windows {
        Windows {
            spans: [(0, 0); CAP],
            len: 0,
            overflow: None,
        }
    }

    fn push(&mut self, s: usize, e: usize) {
        if let Some(min) = &mut self.overflow {
            *min = (*min).min(s);
        } else if self.len < CAP {
            self.spans[self.len] = (s, e);
            self.len += 1;
        } else {
            let min = self.spans.iter().map(|w| w.0).min().unwrap_or(s).min(s);
            self.overflow = Some(min);
        }
    }

    /// The merged windows in ascending order.
    pub(super) fn finish(&mut self, value_len: usize) -> &[(usize, usize)] {
        if let Some(min) = self.overflow {
            self.spans[0] = (min, value_len);
            self.len = 1;
            return &self.spans[..1];
        }
        let spans = &mut self.spans[..self.len];
        spans.sort_unstable();
        let mut out = 0;
        for i in 0..spans.len() {
            let (s, e) = spans[i];
            if out > 0 && s <= spans[out - 1].1 {
                spans[out - 1].1 = spans[out - 1].1.max(e);
            } else {
                spans[out] = (s, e);
                out += 1;
            }
        }
        &self.spans[..out]
    }
}

/// Adds the windows where the built-ins of `families` could match in `v`.
pub(super) fn scan(families: u8, pem: &memchr::memmem::Finder<'_>, v: &[u8], out: &mut Windows) {
    if families & family::NUMERIC != 0 {
        // Shortest: an IPv4 `1.2.3.4`. Enough digits for the shortest phone (8 after a
        // `+`, else 9), SSN (9) or card (13), or four digits and three dots.
        sampled_runs(v, 7, C_NUM, |s, e| {
            let (mut digits, mut dots, mut plus) = (0, 0, false);
            for &b in &v[s..e] {
                match b {
                    b'0'..=b'9' => digits += 1,
                    b'.' => dots += 1,
                    b'+' => plus = true,
                    _ => {}
                }
            }
            if digits >= 9 || (plus && digits >= 8) || (dots >= 3 && digits >= 4) {
                out.push(s, e);
            }
        });
    }
    if families & family::IBAN != 0 {
        // Shortest: 15 characters (Norway), starting with two letters and two digits.
        sampled_runs(v, 15, C_IBAN, |s, e| {
            let run = &v[s..e];
            let signature = run.windows(4).any(|w| {
                w[0].is_ascii_uppercase()
                    && w[1].is_ascii_uppercase()
                    && w[2].is_ascii_digit()
                    && w[3].is_ascii_digit()
            });
            if signature {
                out.push(s, e);
            }
        });
    }
    if families & family::TOKEN != 0 {
        // Shortest: a Slack `xoxb-` token (15); the AWS secret pattern also reads the
        // byte on either side of its 40 characters.
        sampled_runs(v, 15, C_TOK, |s, e| {
            out.push(s.saturating_sub(1), (e + 1).min(v.len()));
        });
    }
    if families & family::IPV6 != 0 {
        // A candidate has `::`, or at least six colons (six groups and an IPv4).
        let mut from = 0;
        while let Some(i) = memchr::memchr(b':', &v[from..]) {
            let (s, e) = grow(v, from + i, C_HEX);
            let run = &v[s..e];
            let colons = run.iter().filter(|&&b| b == b':').count();
            if colons >= 6 || run.windows(2).any(|w| w == b"::") {
                out.push(s, e);
            }
            from = e;
        }
    }
    if families & family::EMAIL != 0 {
        let mut from = 0;
        while let Some(i) = memchr::memchr(b'@', &v[from..]) {
            let at = from + i;
            let mut s = at;
            while s > 0 && is(v[s - 1], C_LOCAL) {
                s -= 1;
            }
            let mut e = at + 1;
            while e < v.len() && is(v[e], C_DOMAIN) {
                e += 1;
            }
            if s < at && v[at + 1..e].contains(&b'.') {
                out.push(s, e);
            }
            from = at + 1;
        }
    }
    if families & family::PEM != 0 {
        for at in pem.find_iter(v) {
            // The BEGIN line is at most 48 bytes; the validator finds the END line.
            out.push(at, (at + 64).min(v.len()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(families: u8, v: &str) -> Vec<(usize, usize)> {
        let pem = memchr::memmem::Finder::new(b"-----BEGIN ");
        let mut w = Windows::new();
        scan(families, &pem, v.as_bytes(), &mut w);
        w.finish(v.len()).to_vec()
    }

    #[test]
    fn plain_text_has_no_windows() {
        let all = 63;
        assert!(windows(all, "Customer called about the delayed shipment on 2024-05-17.").is_empty());
        assert!(windows(all, "{\"plan\":\"trial\",\"seats\":12}").is_empty());
        assert!(windows(all, "12:30:45").is_empty());
    }

    #[test]
    fn triggers() {
        assert_eq!(windows(family::NUMERIC, "call 415-555-2671 now"), [(4, 18)]);
        assert_eq!(windows(family::EMAIL, "x a.b@c.de y"), [(2, 10)]);
        assert_eq!(windows(family::IPV6, "at ::1 up"), [(3, 6)]);
        assert_eq!(windows(family::TOKEN, "k=AKIAIOSFODNN7EXAMPLE;"), [(1, 23)]);
        assert_eq!(windows(family::IBAN, "DE89 3704 0044 0532 0130 00"), [(0, 27)]);
        // Overlapping windows merge.
        assert_eq!(windows(family::NUMERIC | family::TOKEN, "4111111111111111"), [(0, 16)]);
    }

    #[test]
    fn overflow_covers_the_rest() {
        let v = "1.2.3.4 ".repeat(40);
        let w = windows(family::NUMERIC, &v);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0], (0, v.len()));
    }
}
