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
//!   group starting with `0` followed by ≥ 9 digits in all).
//! - IBAN: a run of upper-case letters, digits and spaces at least 15 long holding two
//!   letters followed by two digits.
//! - IPv6: a hex run with `::` or six colons or more.
//! - email: an `@` with local-part bytes before it and a dot after it.
//! - AWS access key, JWT, API tokens: a token run (`[A-Za-z0-9_./+-]`) at least 20
//!   long that holds one of their literal prefixes at its start or after a non-word
//!   byte.
//! - AWS secret key: a token run of at least 40 bytes.
//! - private key: `-----BEGIN `.
//!
//! One forward pass over the value serves all families at once. Its state is eight
//! 8-bit counters ("lanes") packed in a `u64`, and each byte updates all of them with
//! one table lookup, an AND and an ADD (see `L_DIGITS` and the lanes after it). A
//! lane counts what its family needs (digits or dots of the current numeric run, the
//! length of the current token or IBAN run, colons of the current hex run, …) from a
//! bias, so that its high bit is set exactly when a cheap necessary condition holds
//! (9 digits, 3 dots or a `+` in a numeric run; 20 token bytes; 15 IBAN bytes; `::`
//! or 6 colons in a hex run; 5 dashes; an `@`). Such events are rare: ordinary text
//! is read eight bytes at a time without a branch, and only at an event is the run
//! around it read again and checked in full (digit groups, token prefixes, …). Each
//! maximal run is checked once, so the windows are the same as those of a separate
//! scan per family.

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

/// The start of the maximal run of `class` bytes that holds `v[pos]` (one of them).
fn run_start(v: &[u8], pos: usize, class: u8) -> usize {
    // Plain loops: runs are short, and iterator adapters cost more than they save.
    let mut s = pos;
    while s > 0 && is(v[s - 1], class) {
        s -= 1;
    }
    s
}

/// The end of the run of `class` bytes that holds `v[pos]` (one of them).
fn run_end(v: &[u8], pos: usize, class: u8) -> usize {
    let mut e = pos + 1;
    while e < v.len() && is(v[e], class) {
        e += 1;
    }
    e
}

/// The end of the maximal run of `C_NUM` bytes starting at `s`, and whether the run
/// has the digit groups of a card, SSN, phone or IPv4 (read in the same walk).
fn numeric_run(v: &[u8], s: usize, e: &Enabled) -> (usize, bool) {
    let mut g = Groups::default();
    let (mut dots, mut plus) = (0usize, false);
    let mut end = s;
    while let Some(&b) = v.get(end).filter(|&&b| is(b, C_NUM)) {
        end += 1;
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
    let shape = (e.card && g.card)
        || (e.phone && ((plus && digits >= 8) || g.nanp || trunk))
        || (e.ssn && g.ssn)
        || (e.ipv4 && digits >= 4 && dots >= 3);
    (end, shape)
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
        ) && TOKEN_PREFIXES.iter().any(|p| {
            // The first byte first: most prefixes differ there, and it is cheaper
            // than a comparison call.
            let p = p.as_bytes();
            p[0] == rest[0] && rest.starts_with(p)
        }) {
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

// Lanes of the scan state: eight 8-bit counters packed in one `u64`, updated for
// every byte at once by `state = (state & keep) + add` from a 256-entry table. A
// lane counts up from a bias and reaches its high bit (an event) when its family's
// necessary condition is met; bytes outside the lane's run reset it to the bias.
/// Digits in the current numeric run: an event at the 9th (card, SSN, NANP and trunk
/// numbers have 9 or more); a `+` (E.164) is an event at once.
const L_DIGITS: u32 = 0;
/// Dots in the current numeric run: an event at the 3rd (IPv4).
const L_DOTS: u32 = 8;
/// Length of the current token run: an event at 20 bytes (40 for AWS secrets only).
const L_TOKEN: u32 = 16;
/// Length of the current IBAN run: an event at 15 bytes.
const L_IBAN: u32 = 24;
/// Colons in the current hex run: an event at the 6th (the full IPv6 forms).
const L_COLONS: u32 = 32;
/// Consecutive dashes: an event at the 5th (`-----BEGIN `).
const L_DASHES: u32 = 40;
/// An `@`: an event at once (email).
const L_AT: u32 = 48;
/// Consecutive colons: an event at the 2nd (`::`, the compressed IPv6 forms).
const L_DOUBLE: u32 = 56;
/// The high bit of every lane.
const HIGH: u64 = 0x8080_8080_8080_8080;

fn lane(state: u64, at: u32) -> u64 {
    (state >> at) & 0xFF
}

/// `state` with lane `at` set to `value`.
fn set_lane(state: u64, at: u32, value: u64) -> u64 {
    (state & !(0xFF << at)) | (value << at)
}

/// The step table of a lane: `in_run` bytes keep it and add `inc`, the others reset
/// it to the bias (`128 - threshold`).
fn lane_step(
    table: &mut [[u64; 2]; 256],
    at: u32,
    threshold: u8,
    inc: impl Fn(u8) -> u64,
    in_run: impl Fn(u8) -> bool,
) {
    for (b, entry) in (0..=255u8).zip(table.iter_mut()) {
        if in_run(b) {
            entry[0] |= 0xFF << at;
            entry[1] |= inc(b) << at;
        } else {
            entry[1] |= u64::from(128 - threshold) << at;
        }
    }
}

/// The shortest token run worth a look: an AWS access key id (20 bytes), or an AWS
/// secret key (40) when no prefixed detector is enabled.
fn token_min(on: &Enabled) -> u8 {
    if on.prefixed {
        20
    } else {
        40
    }
}

/// The scan table of a detector set: per byte, the `[keep, add]` of every lane.
struct Table([[u64; 2]; 256]);

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Table")
    }
}

impl Table {
    fn new(on: &Enabled) -> Table {
        // Lanes above 127 are only ever seen by `Scanner::event` (which lowers them
        // again) or by the fast path of `Scanner::scan` (which then discards them), and
        // a lane below 128 gains at most 128 per byte: no lane carries into the next.
        let mut t = [[0u64; 2]; 256];
        if on.card || on.ssn || on.phone || on.ipv4 {
            // A `+` adds 128: its lane holds at most 127 before the byte, so no carry.
            let digits = |b: u8| match b {
                b'0'..=b'9' => 1,
                b'+' => 128,
                _ => 0,
            };
            lane_step(&mut t, L_DIGITS, 9, digits, |b| is(b, C_NUM));
            lane_step(
                &mut t,
                L_DOTS,
                3,
                |b| u64::from(b == b'.'),
                |b| is(b, C_NUM),
            );
        }
        if on.prefixed || on.aws_secret {
            lane_step(&mut t, L_TOKEN, token_min(on), |_| 1, |b| is(b, C_TOK));
        }
        if on.iban {
            lane_step(&mut t, L_IBAN, 15, |_| 1, |b| is(b, C_IBAN));
        }
        if on.ipv6 {
            lane_step(
                &mut t,
                L_COLONS,
                6,
                |b| u64::from(b == b':'),
                |b| is(b, C_HEX),
            );
            lane_step(&mut t, L_DOUBLE, 2, |_| 1, |b| b == b':');
        }
        if on.pem {
            lane_step(&mut t, L_DASHES, 5, |_| 1, |b| b == b'-');
        }
        if on.email {
            t[usize::from(b'@')][1] |= 0x80 << L_AT;
        }
        Table(t)
    }
}

/// Where the runs already examined end, per family: a lane that reaches its event
/// again inside the same run is not examined twice.
#[derive(Default)]
struct Done {
    numeric: usize,
    token: usize,
    iban: usize,
    hex: usize,
}

/// What the scan needs besides the value: built once per detector set.
#[derive(Debug)]
pub(super) struct Scanner {
    on: Enabled,
    table: Box<Table>,
    /// The token run length at which the token lane has its event.
    token_min: usize,
    /// The state before a value: every lane at its bias.
    start: u64,
}

impl Scanner {
    pub(super) fn new(on: Enabled) -> Scanner {
        let table = Box::new(Table::new(&on));
        // Byte 0 is in no run: its `add` is every lane's bias (and no event).
        let start = table.0[0][1];
        Scanner {
            on,
            table,
            start,
            token_min: usize::from(token_min(&on)),
        }
    }

    /// Adds the windows where the enabled built-ins could match in `v`: one forward
    /// pass updates all the lanes; the rare events examine the run around them.
    pub(super) fn scan(&self, v: &[u8], out: &mut Windows) {
        let table = &self.table.0;
        let mut state = self.start;
        let mut done = Done::default();
        // Eight bytes at a time without a branch; when a lane reached its high bit on
        // the way (events are rare), the eight bytes are stepped again one by one from
        // the state before them. Until that first high bit no lane can carry into the
        // next (a lane below 128 gains at most 128 per byte), so the check is sound.
        let mut chunks = v.chunks_exact(8);
        let mut at = 0;
        for chunk in &mut chunks {
            let (mut next, mut seen) = (state, 0);
            for &b in chunk {
                let [keep, add] = table[usize::from(b)];
                next = (next & keep) + add;
                seen |= next;
            }
            state = if seen & HIGH == 0 {
                next
            } else {
                self.step(v, at, at + 8, state, &mut done, out)
            };
            at += 8;
        }
        self.step(v, at, v.len(), state, &mut done, out);
    }

    /// Steps `v[from..to]` byte by byte, examining every event; returns the state.
    fn step(
        &self,
        v: &[u8],
        from: usize,
        to: usize,
        mut state: u64,
        done: &mut Done,
        out: &mut Windows,
    ) -> u64 {
        let table = &self.table.0;
        for i in from..to {
            let [keep, add] = table[usize::from(v[i])];
            state = (state & keep) + add;
            if state & HIGH != 0 {
                state = self.event(v, i, state, done, out);
            }
        }
        state
    }

    /// Examines the runs whose lanes fired at `v[i]`; returns the state with those
    /// lanes cleared (far from firing again).
    #[cold]
    fn event(&self, v: &[u8], i: usize, mut state: u64, done: &mut Done, out: &mut Windows) -> u64 {
        let on = &self.on;
        if (lane(state, L_DIGITS) | lane(state, L_DOTS)) & 0x80 != 0 {
            if i >= done.numeric {
                let s = run_start(v, i, C_NUM);
                let (e, shape) = numeric_run(v, s, on);
                // Shortest: an IPv4 address (7 bytes).
                if e - s >= 7 && shape {
                    out.push(s, e);
                }
                done.numeric = e;
            }
            state = set_lane(set_lane(state, L_DIGITS, 0), L_DOTS, 0);
        }
        if lane(state, L_TOKEN) & 0x80 != 0 {
            if i >= done.token {
                // The first event of a run is at its `token_min`-th byte.
                let s = i + 1 - self.token_min;
                let e = run_end(v, i, C_TOK);
                // A token run shorter than 40 bytes needs one of the literal prefixes;
                // longer ones always make a window (and one byte either side, which the
                // AWS secret pattern reads).
                if e - s >= 40 || (on.prefixed && has_token_prefix(&v[s..e])) {
                    out.push(s.saturating_sub(1), (e + 1).min(v.len()));
                }
                done.token = e;
            }
            state = set_lane(state, L_TOKEN, 0);
        }
        if lane(state, L_IBAN) & 0x80 != 0 {
            if i >= done.iban {
                // The first event of a run is at its 15th byte.
                let s = i + 1 - 15;
                let e = run_end(v, i, C_IBAN);
                // Two letters and two digits first.
                let signature = v[s..e].windows(4).any(|w| {
                    w[0].is_ascii_uppercase()
                        && w[1].is_ascii_uppercase()
                        && w[2].is_ascii_digit()
                        && w[3].is_ascii_digit()
                });
                if signature {
                    out.push(s, e);
                }
                done.iban = e;
            }
            state = set_lane(state, L_IBAN, 0);
        }
        if (lane(state, L_COLONS) | lane(state, L_DOUBLE)) & 0x80 != 0 {
            if i >= done.hex {
                let (s, e) = (run_start(v, i, C_HEX), run_end(v, i, C_HEX));
                ipv6(&v[s..e], s, out);
                done.hex = e;
            }
            state = set_lane(set_lane(state, L_COLONS, 0), L_DOUBLE, 0);
        }
        if lane(state, L_DASHES) & 0x80 != 0 {
            // The BEGIN line is at most 48 bytes; the validator finds the END line.
            let at = i - 4;
            if v.len() >= 27 && v[at..].starts_with(b"-----BEGIN ") {
                out.push(at, (at + 64).min(v.len()));
            }
            // Each further dash is an event again.
            state = set_lane(state, L_DASHES, 127);
        }
        if lane(state, L_AT) & 0x80 != 0 {
            email(v, i, out);
            state = set_lane(state, L_AT, 0);
        }
        state
    }
}

/// The window of the `@` at `at`, if it has local-part bytes before it and a dot in
/// the domain bytes after it.
fn email(v: &[u8], at: usize, out: &mut Windows) {
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
}

/// The windows of a maximal hex run (at `offset`) with `::` or six colons or more.
fn ipv6(run: &[u8], offset: usize, out: &mut Windows) {
    let (mut colons, mut double, mut hex_colon) = (0, false, false);
    for (k, &b) in run.iter().enumerate() {
        if b == b':' {
            colons += 1;
            let before = k.checked_sub(1).map(|j| run[j]);
            double |= before == Some(b':');
            hex_colon |= before.is_some_and(|c| c.is_ascii_hexdigit())
                && run.get(k + 1).is_some_and(u8::is_ascii_hexdigit);
        }
    }
    let window = (offset, offset + run.len());
    // Compressed forms: `::`.
    if double {
        out.push(window.0, window.1);
    }
    // Full forms (eight groups, or six and an IPv4): six colons or more, one of them
    // between two hex digits.
    if colons >= 6 && hex_colon {
        out.push(window.0, window.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(names: &[&str], v: &str) -> Vec<(usize, usize)> {
        let scanner = Scanner::new(Enabled::from_names(names));
        let mut w = Windows::new();
        scanner.scan(v.as_bytes(), &mut w);
        w.finish(v.len()).to_vec()
    }

    const ALL: &[&str] = super::super::BUILTIN;

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
        let cand = |r: &str| {
            let (end, shape) = numeric_run(r.as_bytes(), 0, &all);
            assert_eq!(end, r.len(), "{r}");
            shape
        };
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
    fn overflow_covers_the_rest() {
        let v = "1.2.3.4 x ".repeat(40);
        let w = windows(&["ipv4"], &v);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0], (0, v.len()));
    }
}
