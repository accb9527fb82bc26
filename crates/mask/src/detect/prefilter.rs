//! The trigger scan: before the combined regex runs, a cheap look at the value finds
//! the windows where an enabled built-in detector could possibly match, so that most
//! bytes of ordinary text (names, prose, dates, small numbers, JSON) are never given to
//! the regex.
//!
//! Every window comes from a necessary condition of the built-ins it serves, derived
//! from what their patterns and validators require:
//!
//! - card, SSN, phone, IPv4: the match lies inside a maximal run of digits and
//!   `space ( ) + - . /` whose digit groups have the right shape (≥ 13 digits; a `+` and
//!   ≥ 8 digits; ≥ 4 digits and 3 dots; consecutive groups of 3-2-4 or 3-3-4 digits; a
//!   group starting with `0` followed by ≥ 9 digits in all). Such runs are found by
//!   sampling every 7th byte (a run of 7 or more always holds a sample) and growing
//!   the run around it.
//! - IBAN: a run of upper-case letters, digits and spaces at least 15 long (sampling
//!   every 15th byte) holding two letters followed by two digits.
//! - IPv6: a hex run with `::` (found with memmem) or six colons or more.
//! - email: an `@` (memchr) with local-part bytes before it and a dot after it.
//! - AWS access key, JWT, API tokens: a token run (`[A-Za-z0-9_./+-]`, found by
//!   sampling every 20th byte) that holds one of their literal prefixes at its start
//!   or after a non-word byte.
//! - AWS secret key: a token run of at least 40 bytes.
//! - private key: `-----BEGIN ` (memmem).
//!
//! A counting pass (digits, upper-case letters, colons, `@`, dots) first rules out whole
//! families for the many values that cannot hold them.

/// The built-ins a scanner serves.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Enabled {
    pub card: bool,
    pub ssn: bool,
    pub phone: bool,
    pub ipv4: bool,
    pub iban: bool,
    pub ipv6: bool,
    pub email: bool,
    pub aws_secret: bool,
    /// AWS access key ids, JWTs, API tokens: detectors with a literal prefix.
    pub prefixed: bool,
    pub pem: bool,
}

impl Enabled {
    pub(super) fn from_names<S: AsRef<str>>(names: &[S]) -> Enabled {
        let mut e = Enabled::default();
        for name in names {
            match name.as_ref() {
                "credit_card" => e.card = true,
                "us_ssn" => e.ssn = true,
                "phone" => e.phone = true,
                "ipv4" => e.ipv4 = true,
                "iban" => e.iban = true,
                "ipv6" => e.ipv6 = true,
                "email" => e.email = true,
                "aws_secret_key" => e.aws_secret = true,
                "aws_access_key" | "jwt" | "api_token" => e.prefixed = true,
                "private_key" => e.pem = true,
                _ => {}
            }
        }
        e
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
    // Plain loops: runs are short, and iterator adapters cost more than they save.
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
    // Sampling every `stride`-th byte: a run of `stride` or more always holds a sample.
    // (Measured: cheaper here than a Horspool-like skip, as runs are mostly short.)
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

/// Whether a run of `C_NUM` bytes has the digit groups of a card, SSN, phone or IPv4.
fn numeric_run(run: &[u8], e: &Enabled) -> bool {
    let mut g = Groups::default();
    let (mut dots, mut plus) = (0usize, false);
    for &b in run {
        if b.is_ascii_digit() {
            if g.cur == 0 {
                g.first = b;
            }
            g.cur += 1;
            g.digits += 1;
        } else {
            g.end();
            dots += usize::from(b == b'.');
            plus |= b == b'+';
        }
    }
    g.end();
    let digits = g.digits;
    // E.164 needs a `+`, or an `00` group (which the trunk rule covers: ≥ 8 digits
    // after the `00`); NANP needs 3-3-4; French and trunk numbers a `0` group.
    let trunk = g.trunk_from.is_some_and(|from| digits - from >= 9);
    (e.card && g.card)
        || (e.phone && ((plus && digits >= 8) || g.nanp || trunk))
        || (e.ssn && g.ssn)
        || (e.ipv4 && digits >= 4 && dots >= 3)
}

/// The digit groups of a numeric run, as far as `numeric_run` needs them.
#[derive(Default)]
struct Groups {
    digits: usize,
    /// Length of the current group (0 between groups) and its first digit.
    cur: usize,
    first: u8,
    /// Lengths of the last four groups, four bits each (capped at 15), newest lowest:
    /// cheaper than an array to shift and compare.
    last: u32,
    /// The digit count before the first group that starts with `0` (2–6 digits long).
    trunk_from: Option<usize>,
    /// A card shape: one group of 13–19 digits, or consecutive groups of 4-4-4-4,
    /// 4-6-4 or 4-6-5 (a UUID's 8-4-4-4-12 is none of them).
    card: bool,
    /// Consecutive groups of 3-2-4 / 3-3-4 digits were seen.
    ssn: bool,
    nanp: bool,
}

impl Groups {
    #[inline]
    fn end(&mut self) {
        if self.cur == 0 {
            return;
        }
        let cur = u32::try_from(self.cur.min(15)).unwrap_or(15);
        self.last = (self.last << 4) | cur;
        let three = self.last & 0xFFF;
        self.card |= (13..=19).contains(&self.cur)
            || self.last & 0xFFFF == 0x4444
            || three == 0x464
            || three == 0x465;
        self.ssn |= three == 0x324;
        self.nanp |= three == 0x334;
        if self.first == b'0' && (2..=6).contains(&self.cur) && self.trunk_from.is_none() {
            self.trunk_from = Some(self.digits - self.cur);
        }
        self.cur = 0;
    }
}

/// Counts of the bytes that rule families in or out.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    digits: usize,
    colons: usize,
    ats: usize,
    dots: usize,
    upper: usize,
    dashes: usize,
}

// Lanes of `LANES`: the bit offset of each count in a packed `u64`.
const L_DIGIT: u32 = 0;
const L_COLON: u32 = 8;
const L_AT: u32 = 16;
const L_DOT: u32 = 24;
const L_UPPER: u32 = 32;
const L_DASH: u32 = 40;

/// Per byte, a one in the 8-bit lane of each count it adds to: a short stretch is
/// counted with one table load and one add per byte (no lane overflows below 256).
static LANES: [u64; 256] = lanes();

const fn lanes() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = match b {
            b'0'..=b'9' => 1 << L_DIGIT,
            b':' => 1 << L_COLON,
            b'@' => 1 << L_AT,
            b'.' => 1 << L_DOT,
            b'A'..=b'Z' => 1 << L_UPPER,
            b'-' => 1 << L_DASH,
            _ => 0,
        };
        i += 1;
    }
    t
}

impl Counts {
    fn of(v: &[u8]) -> Counts {
        let mut c = Counts::default();
        // Chunks of at most 255 bytes, so that no 8-bit lane overflows.
        for chunk in v.chunks(255) {
            let packed = chunk
                .iter()
                .fold(0u64, |acc, &b| acc + LANES[usize::from(b)]);
            let lane = |at: u32| usize::from((packed >> at) as u8);
            c.digits += lane(L_DIGIT);
            c.colons += lane(L_COLON);
            c.ats += lane(L_AT);
            c.dots += lane(L_DOT);
            c.upper += lane(L_UPPER);
            c.dashes += lane(L_DASH);
        }
        c
    }
}

/// Up to this many windows are kept apart; past it, one window covers the rest.
const CAP: usize = 6;

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
        if self.len <= 1 && self.overflow.is_none() {
            return &self.spans[..self.len];
        }
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

/// Literal prefixes of the AWS access key, JWT and API token detectors.
const TOKEN_PREFIXES: &[&str] = &[
    "eyJ",
    "AKIA",
    "ASIA",
    "ABIA",
    "ACCA",
    "AGPA",
    "AIDA",
    "AIPA",
    "ANPA",
    "ANVA",
    "AROA",
    "APKA",
    "ASCA",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "xoxb-",
    "xoxa-",
    "xoxp-",
    "xoxr-",
    "xoxs-",
    "xapp-",
    "hooks.slack.com",
    "sk_live_",
    "sk_test_",
    "rk_live_",
    "rk_test_",
    "pk_live_",
    "pk_test_",
    "whsec_",
    "glpat-",
    "AIza",
    "sq0atp-",
    "sq0csp-",
    "npm_",
    "SG.",
    "sk-",
    "slu_",
];

/// Whether a token prefix starts the run or follows one of its non-word bytes (a
/// token pattern starts at a word boundary).
fn has_token_prefix(run: &[u8]) -> bool {
    let mut i = 0;
    while let Some(rest) = run.get(i..).filter(|r| !r.is_empty()) {
        if matches!(
            rest[0],
            b'e' | b'A' | b'g' | b'x' | b'h' | b's' | b'r' | b'p' | b'w' | b'n' | b'S'
        ) && TOKEN_PREFIXES
            .iter()
            .any(|p| rest.starts_with(p.as_bytes()))
        {
            return true;
        }
        match rest
            .iter()
            .position(|&b| matches!(b, b'-' | b'.' | b'/' | b'+'))
        {
            Some(k) => i += k + 1,
            None => return false,
        }
    }
    false
}

/// The families worth scanning a value for.
pub(super) struct Plan {
    numeric: bool,
    iban: bool,
    email: bool,
    ipv6: bool,
    /// Six colons or more: an uncompressed IPv6 form is possible.
    full_ipv6: bool,
    prefixed: bool,
    aws_secret: bool,
    pem: bool,
}

/// What the scan needs besides the value: built once per detector set.
#[derive(Debug)]
pub(super) struct Scanner {
    on: Enabled,
    pem: memchr::memmem::Finder<'static>,
    double_colon: memchr::memmem::Finder<'static>,
}

impl Scanner {
    pub(super) fn new(on: Enabled) -> Scanner {
        Scanner {
            on,
            pem: memchr::memmem::Finder::new(b"-----BEGIN "),
            double_colon: memchr::memmem::Finder::new(b"::"),
        }
    }

    /// What to look for in `v`: counts rule families out; `None` when nothing can
    /// match at all (most values).
    #[inline]
    pub(super) fn plan(&self, v: &[u8]) -> Option<Plan> {
        let on = &self.on;
        let c = Counts::of(v);
        let plan = Plan {
            numeric: ((on.card || on.ssn) && c.digits >= 9)
                || (on.phone && c.digits >= 8)
                || (on.ipv4 && c.digits >= 4 && c.dots >= 3),
            iban: on.iban && c.digits >= 2 && c.upper >= 2 && v.len() >= 15,
            email: on.email && c.ats > 0,
            ipv6: on.ipv6 && c.colons >= 2,
            full_ipv6: c.colons >= 6,
            prefixed: on.prefixed && v.len() >= 20,
            aws_secret: on.aws_secret && v.len() >= 40,
            // `-----BEGIN `: five dashes at least.
            pem: on.pem && v.len() >= 27 && c.dashes >= 5,
        };
        let any = plan.numeric
            || plan.iban
            || plan.email
            || plan.ipv6
            || plan.prefixed
            || plan.aws_secret
            || plan.pem;
        any.then_some(plan)
    }

    /// Adds the windows where the enabled built-ins could match in `v`.
    pub(super) fn scan(&self, plan: &Plan, v: &[u8], out: &mut Windows) {
        let on = &self.on;
        if plan.numeric {
            sampled_runs(v, 7, C_NUM, |s, e| {
                if numeric_run(&v[s..e], on) {
                    out.push(s, e);
                }
            });
        }
        if plan.iban {
            // Shortest: 15 characters (Norway); two letters and two digits first.
            sampled_runs(v, 15, C_IBAN, |s, e| {
                let signature = v[s..e].windows(4).any(|w| {
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
        if plan.email {
            email(v, out);
        }
        if plan.ipv6 {
            ipv6(v, plan.full_ipv6, &self.double_colon, out);
        }
        if plan.prefixed {
            // Shortest: an AWS access key id (20 bytes). A token run shorter than 40
            // bytes needs one of the literal prefixes; longer ones always make a
            // window (and one byte either side).
            sampled_runs(v, 20, C_TOK, |s, e| {
                if e - s >= 40 || has_token_prefix(&v[s..e]) {
                    out.push(s.saturating_sub(1), (e + 1).min(v.len()));
                }
            });
        }
        if plan.aws_secret && !plan.prefixed {
            // The pattern also reads the byte on either side of its 40 characters.
            sampled_runs(v, 40, C_TOK, |s, e| {
                out.push(s.saturating_sub(1), (e + 1).min(v.len()));
            });
        }
        if plan.pem {
            for at in self.pem.find_iter(v) {
                // The BEGIN line is at most 48 bytes; the validator finds the END line.
                out.push(at, (at + 64).min(v.len()));
            }
        }
    }
}

fn email(v: &[u8], out: &mut Windows) {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'@', &v[from..]) {
        let at = from + i;
        let s = v[..at]
            .iter()
            .rposition(|&b| !is(b, C_LOCAL))
            .map_or(0, |i| i + 1);
        let e = v[at + 1..]
            .iter()
            .position(|&b| !is(b, C_DOMAIN))
            .map_or(v.len(), |i| at + 1 + i);
        if s < at && v[at + 1..e].contains(&b'.') {
            out.push(s, e);
        }
        from = at + 1;
    }
}

fn ipv6(v: &[u8], full: bool, double_colon: &memchr::memmem::Finder<'_>, out: &mut Windows) {
    // Compressed forms: a hex run with `::`.
    let mut from = 0;
    while let Some(i) = double_colon.find(&v[from..]) {
        let (s, e) = grow(v, from + i, C_HEX);
        out.push(s, e);
        from = e;
    }
    if !full {
        return;
    }
    // Full forms (eight groups, or six and an IPv4): a hex run with six colons or
    // more, found from a colon between two hex digits.
    let mut from = 0;
    while let Some(i) = memchr::memchr(b':', &v[from..]) {
        let at = from + i;
        from = at + 1;
        let hex_before = at > 0 && v[at - 1].is_ascii_hexdigit();
        if !(hex_before && v.get(at + 1).is_some_and(u8::is_ascii_hexdigit)) {
            continue;
        }
        let (s, e) = grow(v, at, C_HEX);
        if v[s..e].iter().filter(|&&b| b == b':').count() >= 6 {
            out.push(s, e);
        }
        from = e;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(names: &[&str], v: &str) -> Vec<(usize, usize)> {
        let scanner = Scanner::new(Enabled::from_names(names));
        let mut w = Windows::new();
        if let Some(plan) = scanner.plan(v.as_bytes()) {
            scanner.scan(&plan, v.as_bytes(), &mut w);
        }
        w.finish(v.len()).to_vec()
    }

    const ALL: &[&str] = &[
        "email",
        "credit_card",
        "us_ssn",
        "phone",
        "iban",
        "ipv4",
        "ipv6",
        "aws_access_key",
        "aws_secret_key",
        "jwt",
        "private_key",
        "api_token",
    ];

    #[test]
    fn plain_text_has_no_windows() {
        for v in [
            "Customer called about the delayed shipment on 2024-05-17.",
            "{\"plan\":\"trial\",\"seats\":12,\"renewal\":\"2025-07-19\"}",
            "2024-05-17 08:12:44",
            "12:30:45",
            "INV-2024-00871",
            "550e8400-e29b-41d4-a716-4466c5544ab0",
            "v2.4.1 build 1187",
        ] {
            assert!(windows(ALL, v).is_empty(), "{v}");
        }
    }

    #[test]
    fn triggers() {
        assert_eq!(windows(&["phone"], "call 415-555-2671 now"), [(4, 18)]);
        assert_eq!(windows(&["us_ssn"], "ssn 123-45-6789"), [(3, 15)]);
        assert_eq!(windows(&["phone"], "tel 030 901820"), [(3, 14)]);
        assert_eq!(windows(&["ipv4"], "at 10.0.0.1"), [(2, 11)]);
        assert_eq!(windows(&["email"], "x a.b@c.de y"), [(2, 10)]);
        assert_eq!(windows(&["ipv6"], "at ::1 up"), [(3, 6)]);
        assert_eq!(
            windows(&["aws_access_key"], "k=AKIAIOSFODNN7EXAMPLE;"),
            [(1, 23)]
        );
        assert_eq!(windows(&["iban"], "DE89 3704 0044 0532 0130 00"), [(0, 27)]);
        assert_eq!(windows(&["iban"], "x GB82WEST12345698765432 y"), [(1, 25)]);
        assert_eq!(windows(&["iban"], "CH75 8821 5S18 G0SE 40UH W"), [(0, 26)]);
        // Overlapping windows merge.
        assert_eq!(
            windows(&["credit_card", "aws_access_key"], "4111111111111111"),
            [(0, 16)]
        );
        assert!(windows(&["credit_card"], "123456789012").is_empty());
    }

    #[test]
    fn numeric_runs() {
        let all = Enabled::from_names(ALL);
        let cand = |r: &str| numeric_run(r.as_bytes(), &all);
        assert!(cand(" (415) 555-2671 "));
        assert!(cand("1-800-555-0199"));
        assert!(cand(" 123-45-6789"));
        assert!(cand("01 42 68 53 00"));
        assert!(cand("+49 30 901820"));
        assert!(cand("4111 1111 1111 1111"));
        assert!(cand(" 1.2.3.4 "));
        assert!(!cand("2024-05-17 08"));
        assert!(!cand("-2024-00871"));
        assert!(!cand(" 12345.67"));
        // Card shapes only: a UUID's digit groups (8-4-4) are not one.
        assert!(cand("3782 822463 10005"));
        assert!(cand("4111111111111111"));
        assert!(!cand("89296562-7308-4034-"));
        assert!(!cand("2024-05-17 08"));
    }

    #[test]
    fn counts() {
        let v: Vec<u8> = (0..=255u8).chain(b"0:@-9.+".iter().copied()).collect();
        let c = Counts::of(&v);
        assert_eq!(
            (c.digits, c.colons, c.ats, c.dots, c.upper, c.dashes),
            (12, 2, 2, 2, 26, 2)
        );
        let c = Counts::of(b"+1 (415) 555-2671 a@b.c:X");
        assert_eq!(
            (c.digits, c.colons, c.ats, c.dots, c.upper, c.dashes),
            (11, 1, 1, 1, 1, 1)
        );
        // Longer than one 255-byte chunk: no lane overflows.
        let c = Counts::of("7-".repeat(600).as_bytes());
        assert_eq!((c.digits, c.dashes), (600, 600));
    }

    #[test]
    fn overflow_covers_the_rest() {
        let v = "1.2.3.4 x ".repeat(40);
        let w = windows(&["ipv4"], &v);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0], (0, v.len()));
    }
}
