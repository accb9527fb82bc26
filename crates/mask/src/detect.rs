//! Content detectors: one multi-pattern pass over a value finds candidates, and a
//! validator (Luhn, mod-97, SSN ranges, …) confirms each before it counts as a hit.
//!
//! All detectors, built-in and custom, are compiled into one
//! [`regex_automata::meta::Regex`] (leftmost-first, one pattern id per format). A
//! search yields the leftmost candidate; its validator confirms it (possibly narrowing
//! or, for private keys, widening the span) or rejects it. After a rejection the other
//! patterns that can start at the same byte are tried anchored there, and then the
//! search resumes one byte later, so a valid match that starts later, even one
//! overlapping the rejected candidate, is still found.
//!
//! With built-ins only, a cheap trigger scan (module `prefilter`) first finds the
//! windows of the value where some enabled built-in could match (digit runs of the
//! right shape, an `@`, a `::`, a token run with a known prefix, …) and the regex
//! searches only those; most values (names, prose, dates, JSON without secrets) never
//! reach the regex. With custom detectors, whose triggers are unknown, the whole value
//! is searched.
//!
//! Values are bytes: the built-in patterns are compiled without Unicode (`(?-u)`), so
//! a value need not be UTF-8, and word boundaries are ASCII ones. Custom regexes keep
//! the ordinary (Unicode) syntax but may match any bytes.
//!
//! What each built-in recognises, and what it deliberately leaves alone:
//!
//! - `email`: `local@domain.tld`, local part of `[A-Za-z0-9_%+-]` runs joined by
//!   single dots (≤ 64 bytes), domain labels of letters, digits and inner hyphens
//!   (≤ 63 bytes each, ≤ 253 in all), a letters-only TLD of ≥ 2. Not detected: hosts
//!   without a dot (`user@localhost`), IP-literal domains, quoted or non-ASCII local
//!   parts, addresses glued to a following `-`/word character, file names whose
//!   "TLD" is a common file extension (`logo@2x.png`), and the user part of a URL
//!   (`postgres://app@db.internal`).
//! - `credit_card`: 13–19 digits, contiguous or grouped 4-4-4-4(-3), 4-6-5, 4-6-4 with
//!   one separator kind (space or dash); Luhn-valid; a known IIN range with a length
//!   that brand issues. Not part of a longer digit run (or of a dashed/dotted one).
//! - `us_ssn`: `AAA-GG-SSSS` or `AAA GG SSSS` (the same separator twice), excluding
//!   area 000, 666, 900–999, group 00, serial 0000 and the well-known 078-05-1120 and
//!   219-09-9999. Bare nine digits are not detected: they are indistinguishable from
//!   any other nine-digit number.
//! - `phone`: E.164 (`+` or `00` and the country code, 8–15 digits, separators space,
//!   dot, dash, one parenthesised group; `00` only in grouped form); NANP `(415) 555-2671`, `415-555-2671`, `415.555.2671`,
//!   `415 555 2671`, `1-415-555-2671` (valid area and exchange codes, consistent
//!   separators); trunk-prefixed national numbers `020 7946 0958`, `07700 900123`,
//!   `030 901820`, `030/901820` (9–11 digits); French `01 42 68 53 00`. Unseparated
//!   national digit strings are not detected (they are plain integers to a reader).
//! - `iban`: country code, check digits and BBAN, contiguous or in groups of four
//!   separated by single spaces; the length must be the registry length for the
//!   country (countries not in the table are not detected) and mod-97 must be 1.
//!   Upper case only.
//! - `ipv4`: dotted quad without leading zeros, not inside a longer dotted-number run
//!   (versions, OIDs) and not right after the word `version`/`ver`/`v`/`build`/
//!   `release`/`firmware`/`fw`. Other dotted quads (`section 4.2.1.3`) are hits.
//! - `ipv6`: any form `std::net::Ipv6Addr` parses (full, compressed, embedded IPv4),
//!   except the bare unspecified `::`. Times (`12:30:45`) and MAC addresses do not
//!   parse and are not detected.
//! - `aws_access_key`: the documented key-id prefixes followed by 16 upper-case letters or
//!   digits (AWS's own example `AKIAI44QH8DHBEXAMPLE` is not base-32).
//! - `aws_secret_key`: exactly 40 characters of `[A-Za-z0-9/+]`, not adjacent to another
//!   base64 or `_`/`-` character nor followed by `=` (padding: a longer blob), not one
//!   segment of a dotted token (`xxx.<40>.yyy`, as in a JWT), containing upper case,
//!   lower case and a digit, at most four `/`, and changing character class often
//!   (≥ 14 times), as random strings do and identifiers or paths do not. No surrounding context (`aws_secret…`) is
//!   required, so any random-looking 40-character base64 string is a hit.
//! - `jwt`: `eyJ…​.eyJ…​.sig` whose header decodes to a JSON object naming `alg`/`typ`/
//!   `kid` and whose payload decodes to a JSON object.
//! - `private_key`: a PEM `-----BEGIN … PRIVATE KEY-----` line through its matching END
//!   line, or to the end of the value when the END line is missing.
//! - `api_token`: GitHub (`ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_`, `github_pat_`), Slack
//!   (`xox?-`, `xapp-`, webhook URLs), Stripe (`sk_`/`rk_`/`pk_` live/test, `whsec_`),
//!   GitLab `glpat-`, Google `AIza`, Square `sq0atp-`/`sq0csp-`, npm `npm_`, SendGrid
//!   `SG.`, OpenAI `sk-proj-`/`sk-…T3BlbkFJ…`, Anthropic `sk-ant-`, and sluice's own
//!   `slu_` tokens.
//!
//! Custom `Regex` detectors report every match (a pattern that fails to compile or can
//! match the empty string is refused); custom `Words` detectors match whole words,
//! ignoring ASCII case, where "whole" means not preceded or followed by `[A-Za-z0-9_]`.

use std::net::Ipv6Addr;

use regex_automata::meta::Regex;
use regex_automata::nfa::thompson::WhichCaptures;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, PatternID};

use crate::MaskError;

mod prefilter;

/// Built-in detector names, as written in the config.
pub const BUILTIN: &[&str] = &[
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

/// A user-defined detector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomDetector {
    /// A regular expression; every match is a hit.
    Regex { name: String, pattern: String },
    /// Whole words, matched ignoring ASCII case.
    Words { name: String, words: Vec<String> },
}

impl CustomDetector {
    pub fn name(&self) -> &str {
        match self {
            CustomDetector::Regex { name, .. } | CustomDetector::Words { name, .. } => name,
        }
    }
}

/// One confirmed finding: bytes `start..end` of the value, found by detector `detector`
/// (an index into [`DetectorSet::names`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub start: usize,
    pub end: usize,
    pub detector: u16,
}

/// A compiled set of detectors.
#[derive(Debug)]
pub struct DetectorSet {
    names: Vec<String>,
    matcher: Option<Matcher>,
}

/// How a candidate of one pattern is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Email,
    CreditCard,
    UsSsn,
    PhoneE164,
    PhoneNanp,
    PhoneTrunk,
    PhoneFr,
    Iban,
    Ipv4,
    Ipv6,
    AwsAccessKey,
    AwsSecretKey,
    Jwt,
    PrivateKey,
    ApiToken,
    /// Custom detectors: every match counts.
    Any,
}

impl Check {
    /// Whether a match of this pattern can start with byte `b` (a cheap filter before
    /// the anchored retries; `true` when unsure).
    fn can_start(self, b: u8) -> bool {
        match self {
            Check::Email => is_local_byte(b),
            Check::CreditCard | Check::UsSsn | Check::Ipv4 => b.is_ascii_digit(),
            Check::PhoneE164 => b == b'+' || b == b'0',
            Check::PhoneNanp => b.is_ascii_digit() || b == b'(',
            Check::PhoneTrunk => b == b'0' || b == b'(',
            Check::PhoneFr => b == b'0',
            Check::Iban => b.is_ascii_uppercase(),
            Check::Ipv6 => b.is_ascii_hexdigit() || b == b':',
            Check::AwsAccessKey => b == b'A',
            Check::Jwt => b == b'e',
            Check::PrivateKey => b == b'-',
            Check::ApiToken => b.is_ascii_alphabetic(),
            Check::AwsSecretKey | Check::Any => true,
        }
    }
}

/// One pattern of the combined regex: which detector it reports and how it is checked.
#[derive(Debug, Clone, Copy)]
struct Slot {
    detector: u16,
    check: Check,
}

#[derive(Debug)]
struct Matcher {
    re: Regex,
    /// Indexed by pattern id.
    slots: Vec<Slot>,
    /// No pattern matches fewer bytes than this.
    min_len: usize,
    /// The trigger scan of the enabled built-ins; `None` when custom detectors are
    /// present (their triggers are unknown: the whole value is searched).
    scanner: Option<prefilter::Scanner>,
}

// The built-in patterns. `(?-u)`: bytes, ASCII classes, ASCII word boundaries.
// `\b{start-half}` / `\b{end-half}`: not preceded / followed by a word byte.

const EMAIL: &str = r"(?-u:\b{start-half}[A-Za-z0-9_%+\-]+(?:\.[A-Za-z0-9_%+\-]+)*@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}\b{end-half})";

const CREDIT_CARD: &str = r"(?-u:\b(?:\d{4}[ \-]\d{4}[ \-]\d{4}[ \-]\d{4}(?:[ \-]\d{3})?|\d{4}[ \-]\d{6}[ \-]\d{4,5}|\d{13,19})\b)";

const US_SSN: &str = r"(?-u:\b\d{3}[ \-]\d{2}[ \-]\d{4}\b)";

const PHONE_E164: &str = concat!(
    r"(?-u:\b{start-half}(?:\+[1-9]\d{7,14}|(?:\+|00)[1-9]\d{0,3}",
    r"(?:[ .\-]?\(\d{1,4}\)[ .\-]?\d{1,8}|[ .\-]\d{1,8})(?:[ .\-]\d{1,8}){0,6})\b)"
);

const PHONE_NANP: &str = r"(?-u:\b{start-half}(?:1[ .\-]?)?(?:\([2-9]\d{2}\)[ .\-]?|[2-9]\d{2}[ .\-])[2-9]\d{2}[ .\-]\d{4}\b)";

const PHONE_TRUNK: &str =
    r"(?-u:\b{start-half}(?:0[1-9]\d{1,4}|\(0[1-9]\d{1,4}\))[ /](?:\d{3,4} \d{3,4}|\d{3,8})\b)";

const PHONE_FR: &str = r"(?-u:\b0[1-9](?:[ .\-]\d{2}){4}\b)";

const IBAN: &str = r"(?-u:\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b)";

const IPV4: &str =
    r"(?-u:\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b)";

const IPV6: &str = r"(?-u:\b{start-half}(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){7}|(?:[0-9A-Fa-f]{1,4}:){6}(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f:]*::(?:[0-9A-Fa-f]{1,4}:)*(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f:]*::[0-9A-Fa-f:]*))";

const AWS_ACCESS_KEY: &str =
    r"(?-u:\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA|ASCA)[A-Z0-9]{16}\b)";

const AWS_SECRET_KEY: &str =
    r"(?-u:(?:^|[^A-Za-z0-9/+_\-])[A-Za-z0-9/+]{40}(?:$|[^A-Za-z0-9/+=_\-]))";

const JWT: &str = r"(?-u:\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*)";

const PRIVATE_KEY: &str =
    r"(?-u:-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----)";

const API_TOKEN: &str = concat!(
    r"(?-u:\b(?:",
    r"gh[pousr]_[A-Za-z0-9]{36}",
    r"|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}",
    r"|xox[baprs]-[A-Za-z0-9\-]{20,}",
    r"|xapp-\d-[A-Za-z0-9\-]{20,}",
    r"|hooks\.slack\.com/services/T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{20,}",
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{24,}",
    r"|whsec_[A-Za-z0-9]{32,}",
    r"|glpat-[A-Za-z0-9_\-]{20}",
    r"|AIza[A-Za-z0-9_\-]{35}",
    r"|sq0(?:atp|csp)-[A-Za-z0-9_\-]{22,43}",
    r"|npm_[A-Za-z0-9]{36}",
    r"|SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}",
    r"|sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,}",
    r"|sk-ant-(?:api|admin)\d\d-[A-Za-z0-9_\-]{80,}",
    r"|sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}",
    r"|slu_[a-z0-9]{8}_[A-Za-z0-9]{32}",
    r"))"
);

/// The patterns of a built-in detector, most specific first.
fn builtin_patterns(name: &str) -> Option<&'static [(&'static str, Check)]> {
    Some(match name {
        "email" => &[(EMAIL, Check::Email)],
        "credit_card" => &[(CREDIT_CARD, Check::CreditCard)],
        "us_ssn" => &[(US_SSN, Check::UsSsn)],
        "phone" => &[
            (PHONE_E164, Check::PhoneE164),
            (PHONE_NANP, Check::PhoneNanp),
            (PHONE_FR, Check::PhoneFr),
            (PHONE_TRUNK, Check::PhoneTrunk),
        ],
        "iban" => &[(IBAN, Check::Iban)],
        "ipv4" => &[(IPV4, Check::Ipv4)],
        "ipv6" => &[(IPV6, Check::Ipv6)],
        "aws_access_key" => &[(AWS_ACCESS_KEY, Check::AwsAccessKey)],
        "aws_secret_key" => &[(AWS_SECRET_KEY, Check::AwsSecretKey)],
        "jwt" => &[(JWT, Check::Jwt)],
        "private_key" => &[(PRIVATE_KEY, Check::PrivateKey)],
        "api_token" => &[(API_TOKEN, Check::ApiToken)],
        _ => return None,
    })
}

/// The order in which built-in patterns are placed in the combined regex. Only ties
/// (two patterns matching at the same start) depend on it, and a rejected candidate
/// lets the others be tried, so it only decides which of two valid readings wins.
const PRIORITY: &[&str] = &[
    "private_key",
    "jwt",
    "api_token",
    "aws_access_key",
    "email",
    "iban",
    "credit_card",
    "us_ssn",
    "phone",
    "ipv4",
    "ipv6",
    "aws_secret_key",
];

impl DetectorSet {
    /// Compiles the named built-ins and the custom detectors, in that order of ids.
    pub fn new(builtins: &[String], custom: &[CustomDetector]) -> Result<DetectorSet, MaskError> {
        let mut names = Vec::new();
        for b in builtins {
            if !BUILTIN.contains(&b.as_str()) {
                return Err(MaskError::UnknownDetector(b.clone()));
            }
            names.push(b.clone());
        }
        names.extend(custom.iter().map(|c| c.name().to_owned()));
        if names.len() > usize::from(u16::MAX) {
            return Err(MaskError::BadPattern {
                name: names.last().cloned().unwrap_or_default(),
                reason: "too many detectors".to_owned(),
            });
        }
        let id = |i: usize| u16::try_from(i).unwrap_or(u16::MAX);

        // (pattern, slot, detector name for error messages)
        let mut patterns: Vec<(String, Slot, &str)> = Vec::new();
        for builtin in PRIORITY {
            // A built-in named twice reports under its first id.
            let Some(i) = builtins.iter().position(|b| b == builtin) else {
                continue;
            };
            for (pattern, check) in builtin_patterns(builtin).unwrap_or(&[]) {
                let slot = Slot {
                    detector: id(i),
                    check: *check,
                };
                patterns.push(((*pattern).to_owned(), slot, builtin));
            }
        }
        let syntax_config = syntax::Config::new().utf8(false);
        for (k, c) in custom.iter().enumerate() {
            let slot = Slot {
                detector: id(builtins.len() + k),
                check: Check::Any,
            };
            let pattern = match c {
                CustomDetector::Regex { pattern, .. } => pattern.clone(),
                CustomDetector::Words { words, .. } => words_pattern(c.name(), words)?,
            };
            let hir = syntax::parse_with(&pattern, &syntax_config).map_err(|e| {
                MaskError::BadPattern {
                    name: c.name().to_owned(),
                    reason: e.to_string(),
                }
            })?;
            if hir.properties().minimum_len() == Some(0) {
                return Err(MaskError::BadPattern {
                    name: c.name().to_owned(),
                    reason: "the pattern can match the empty string".to_owned(),
                });
            }
            patterns.push((pattern, slot, c.name()));
        }
        if patterns.is_empty() {
            return Ok(DetectorSet {
                names,
                matcher: None,
            });
        }

        let mut min_len = usize::MAX;
        for (pattern, _, name) in &patterns {
            let hir =
                syntax::parse_with(pattern, &syntax_config).map_err(|e| MaskError::BadPattern {
                    name: (*name).to_owned(),
                    reason: e.to_string(),
                })?;
            // `None`: the pattern can never match; it does not lower the bound.
            if let Some(n) = hir.properties().minimum_len() {
                min_len = min_len.min(n);
            }
        }
        let sources: Vec<&str> = patterns.iter().map(|(p, _, _)| p.as_str()).collect();
        let re = Regex::builder()
            .syntax(syntax_config)
            .configure(
                Regex::config()
                    .utf8_empty(false)
                    .which_captures(WhichCaptures::Implicit)
                    .hybrid_cache_capacity(8 << 20),
            )
            .build_many(&sources)
            .map_err(|e| {
                let name = e
                    .pattern()
                    .and_then(|p| patterns.get(p.as_usize()))
                    .map_or("detectors", |(_, _, name)| *name);
                MaskError::BadPattern {
                    name: name.to_owned(),
                    reason: e.to_string(),
                }
            })?;
        let slots = patterns.iter().map(|(_, slot, _)| *slot).collect();
        let scanner = custom
            .is_empty()
            .then(|| prefilter::Scanner::new(prefilter::Enabled::from_names(builtins)));
        Ok(DetectorSet {
            names,
            matcher: Some(Matcher {
                re,
                slots,
                min_len,
                scanner,
            }),
        })
    }

    /// Detector names by id.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Appends the confirmed, non-overlapping hits in `value`, in ascending order.
    pub fn find(&self, value: &[u8], hits: &mut Vec<Hit>) {
        let Some(m) = &self.matcher else {
            return;
        };
        if value.len() < m.min_len {
            return;
        }
        let mut windows;
        let spans: &[(usize, usize)] = match &m.scanner {
            Some(scanner) => {
                windows = prefilter::Windows::new();
                scanner.scan(value, &mut windows);
                windows.finish(value.len())
            }
            None => &[(0, value.len())],
        };
        let mut at = 0;
        let mut rejected = 0usize;
        for &(ws, we) in spans {
            at = at.max(ws);
            while at < we {
                let Some(found) = m.re.search(&Input::new(value).range(at..we)) else {
                    break;
                };
                let start = found.start();
                let confirmed = m
                    .confirm(found.pattern(), value, start, found.end())
                    .or_else(|| m.retry_at(value, start, found.pattern()));
                match confirmed {
                    Some(hit) => {
                        hits.push(hit);
                        at = hit.end.max(start + 1);
                    }
                    // A rejected candidate is retried one byte later, so that a valid
                    // match overlapping it is not missed. A value crafted to be nothing
                    // but near-misses (`1.2.1.2.…`, a repeated JWT header) would make that
                    // quadratic: past MAX_REJECTED the rest of the window counts as one
                    // finding of the last candidate's detector — masked, not scanned.
                    None if rejected >= MAX_REJECTED => {
                        let detector = m
                            .slots
                            .get(found.pattern().as_usize())
                            .map_or(0, |slot| slot.detector);
                        hits.push(Hit {
                            start,
                            end: we,
                            detector,
                        });
                        at = we;
                    }
                    None => {
                        rejected += 1;
                        at = start + 1;
                    }
                }
            }
        }
    }
}

impl Matcher {
    /// Validates pattern `pid`'s candidate `start..end`; the hit may be narrower or
    /// (private keys) wider than the candidate.
    fn confirm(&self, pid: PatternID, value: &[u8], start: usize, end: usize) -> Option<Hit> {
        let slot = self.slots.get(pid.as_usize())?;
        let (s, e) = validate(slot.check, value, start, end)?;
        Some(Hit {
            start: s,
            end: e,
            detector: slot.detector,
        })
    }

    /// After pattern `failed` was rejected at `start`: the first other pattern that
    /// matches there and validates.
    fn retry_at(&self, value: &[u8], start: usize, failed: PatternID) -> Option<Hit> {
        let first = *value.get(start)?;
        for (i, slot) in self.slots.iter().enumerate() {
            if i == failed.as_usize() || !slot.check.can_start(first) {
                continue;
            }
            let pid = PatternID::new(i).ok()?;
            let input = Input::new(value)
                .range(start..)
                .anchored(Anchored::Pattern(pid));
            if let Some(m) = self.re.search(&input) {
                if let Some(hit) = self.confirm(pid, value, m.start(), m.end()) {
                    return Some(hit);
                }
            }
        }
        None
    }
}

/// The regex for a `Words` detector.
fn words_pattern(name: &str, words: &[String]) -> Result<String, MaskError> {
    if words.is_empty() {
        return Err(MaskError::BadPattern {
            name: name.to_owned(),
            reason: "no words".to_owned(),
        });
    }
    let mut pattern = String::from(r"(?i-u:\b{start-half}(?:");
    for (i, word) in words.iter().enumerate() {
        if word.is_empty() {
            return Err(MaskError::BadPattern {
                name: name.to_owned(),
                reason: "an empty word".to_owned(),
            });
        }
        if i > 0 {
            pattern.push('|');
        }
        for b in word.bytes() {
            if b.is_ascii_alphanumeric() {
                pattern.push(char::from(b));
            } else {
                pattern.push_str(&format!(r"\x{b:02X}"));
            }
        }
    }
    pattern.push_str(r")\b{end-half})");
    Ok(pattern)
}

// ---------------------------------------------------------------------------------
// Validators. Each takes the whole value and the candidate span and returns the span
// to report, or `None`.

fn validate(check: Check, v: &[u8], s: usize, e: usize) -> Option<(usize, usize)> {
    let ok = |yes: bool| yes.then_some((s, e));
    match check {
        Check::Email => ok(email_ok(v, s, e)),
        Check::CreditCard => ok(card_ok(v, s, e)),
        Check::UsSsn => ok(ssn_ok(v, s, e)),
        Check::PhoneE164 => phone_e164(v, s, e),
        Check::PhoneNanp => ok(phone_nanp_ok(v, s, e)),
        Check::PhoneTrunk => ok(phone_trunk_ok(v, s, e)),
        Check::PhoneFr => ok(phone_fr_ok(v, s, e)),
        Check::Iban => iban(v, s, e),
        Check::Ipv4 => ok(ipv4_ok(v, s, e)),
        Check::Ipv6 => ipv6(v, s, e),
        Check::AwsAccessKey => Some((s, e)),
        Check::AwsSecretKey => aws_secret(v, s, e),
        Check::Jwt => ok(jwt_ok(v, s, e)),
        Check::PrivateKey => Some(private_key(v, s, e)),
        Check::ApiToken => ok(!v.get(e).is_some_and(|&b| is_token_byte(b))),
        Check::Any => Some((s, e)),
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_local_byte(b: u8) -> bool {
    is_word(b) || matches!(b, b'%' | b'+' | b'-')
}

fn is_token_byte(b: u8) -> bool {
    is_word(b) || b == b'-'
}

/// Rejected candidates tolerated per value before the rest of a window is masked whole.
const MAX_REJECTED: usize = 256;

fn digit_at(v: &[u8], i: Option<usize>) -> bool {
    i.and_then(|i| v.get(i)).is_some_and(u8::is_ascii_digit)
}

/// A numeric candidate `s..e` stands alone: no word byte touches it, and it does not
/// continue a dotted, dashed or slashed number on either side (`1.2.3.4.5`,
/// `123-45-6789-0`).
///
/// After or before `,` and `/` the number continues only when the group that touches them
/// is short (`1,234,567`, `12/31`): `(1,4111111111111111)` — a row, a list — holds a card.
fn numeric_context_ok(v: &[u8], s: usize, e: usize) -> bool {
    let first_group = v[s..e].iter().take_while(|b| b.is_ascii_digit()).count();
    let last_group = v[s..e]
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    // The byte after the first group and before the last one, inside the candidate.
    let after_first = v
        .get(s + first_group)
        .filter(|_| s + first_group < e)
        .copied();
    let before_last = (e - last_group > s).then(|| v[e - last_group - 1]);
    // A short group joined by `,` continues a grouped number only if the candidate goes
    // on like one (`1,234,567`), not like an SSN or a phone (`1,123-45-6789`).
    let continues = |sep: u8, group: usize, inner: Option<u8>| match sep {
        b'.' | b'-' => true,
        b',' => group <= 3 && matches!(inner, None | Some(b',' | b'.')),
        b'/' => group <= 3,
        _ => false,
    };
    if s > 0 {
        let p = v[s - 1];
        if is_word(p) || (continues(p, first_group, after_first) && digit_at(v, s.checked_sub(2))) {
            return false;
        }
    }
    if let Some(&n) = v.get(e) {
        if is_word(n) || (continues(n, last_group, before_last) && digit_at(v, Some(e + 1))) {
            return false;
        }
    }
    true
}

fn email_ok(v: &[u8], s: usize, e: usize) -> bool {
    let text = &v[s..e];
    let Some(at) = memchr::memrchr(b'@', text) else {
        return false;
    };
    let (local, domain) = (&text[..at], &text[at + 1..]);
    if local.is_empty() || local.len() > 64 || domain.len() > 253 {
        return false;
    }
    if domain.split(|&b| b == b'.').any(|label| label.len() > 63) {
        return false;
    }
    // The domain must not run on into more host-name characters or another `@`.
    if matches!(v.get(e), Some(b'-' | b'@'))
        || (v.get(e) == Some(&b'.') && v.get(e + 1).is_some_and(|&b| is_word(b)))
    {
        return false;
    }
    // A file name (`logo@2x.png`) is not an address.
    let tld = domain.rsplit(|&b| b == b'.').next().unwrap_or_default();
    if is_file_extension(tld) {
        return false;
    }
    // Nor is the user part of a URL (`postgres://app@db.internal`, `https://u:p@host`).
    let before = &v[..s];
    let userinfo = before
        .iter()
        .rposition(|&b| !(is_local_byte(b) || b == b'.' || b == b':'))
        .map_or(0, |i| i + 1);
    !before[..userinfo].ends_with(b"//")
}

/// Whether `tld` is a common file name extension that is not a top-level domain.
fn is_file_extension(tld: &[u8]) -> bool {
    let mut lower = [0u8; 5];
    let Some(buf) = lower.get_mut(..tld.len()) else {
        return false;
    };
    buf.copy_from_slice(tld);
    buf.make_ascii_lowercase();
    matches!(
        &*buf,
        b"png"
            | b"jpg"
            | b"jpeg"
            | b"gif"
            | b"svg"
            | b"webp"
            | b"bmp"
            | b"ico"
            | b"css"
            | b"js"
            | b"mjs"
            | b"json"
            | b"html"
            | b"htm"
            | b"pdf"
            | b"txt"
            | b"log"
            | b"csv"
            | b"xml"
            | b"yml"
            | b"yaml"
            | b"toml"
            | b"exe"
            | b"dll"
            | b"tgz"
            | b"gz"
            | b"bz2"
            | b"xz"
            | b"mp3"
            | b"mp4"
            | b"wav"
            | b"avi"
            | b"mov"
            | b"mkv"
            | b"woff"
            | b"woff2"
            | b"ttf"
            | b"otf"
    )
}

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut x = u32::from(d - b'0');
        if i % 2 == 1 {
            x *= 2;
            if x > 9 {
                x -= 9;
            }
        }
        sum += x;
    }
    sum.is_multiple_of(10)
}

/// The digits of `text` (at most `N`), and the separator bytes if they are all alike.
fn digits_of<const N: usize>(text: &[u8]) -> Option<([u8; N], usize)> {
    let mut out = [0u8; N];
    let mut n = 0;
    let mut sep = None;
    for &b in text {
        if b.is_ascii_digit() {
            *out.get_mut(n)? = b;
            n += 1;
        } else {
            match sep {
                None => sep = Some(b),
                Some(prev) if prev != b => return None,
                Some(_) => {}
            }
        }
    }
    Some((out, n))
}

fn prefix_num(d: &[u8], k: usize) -> u32 {
    d.iter()
        .take(k)
        .fold(0, |acc, &b| acc * 10 + u32::from(b - b'0'))
}

fn card_ok(v: &[u8], s: usize, e: usize) -> bool {
    if !numeric_context_ok(v, s, e) {
        return false;
    }
    let Some((buf, n)) = digits_of::<19>(&v[s..e]) else {
        return false;
    };
    let d = &buf[..n];
    if !(13..=19).contains(&n) {
        return false;
    }
    let (p2, p3, p4) = (prefix_num(d, 2), prefix_num(d, 3), prefix_num(d, 4));
    let brand = match d[0] {
        b'4' => matches!(n, 13 | 16 | 19),
        b'5' => (51..=55).contains(&p2) && n == 16,
        b'2' => (2221..=2720).contains(&p4) && n == 16,
        b'3' => {
            (matches!(p2, 34 | 37) && n == 15)
                || ((3528..=3589).contains(&p4) && n >= 16)
                || ((p2 == 36 || p2 == 38 || p2 == 39 || (300..=305).contains(&p3) || p3 == 309)
                    && n >= 14)
        }
        b'6' => (p4 == 6011 || p2 == 65 || (644..=649).contains(&p3) || p2 == 62) && n >= 16,
        _ => false,
    };
    brand && luhn(d)
}

fn ssn_ok(v: &[u8], s: usize, e: usize) -> bool {
    if !numeric_context_ok(v, s, e) {
        return false;
    }
    let Some((d, 9)) = digits_of::<9>(&v[s..e]) else {
        return false;
    };
    let (area, group, serial) = (
        prefix_num(&d, 3),
        prefix_num(&d[3..], 2),
        prefix_num(&d[5..], 4),
    );
    !(area == 0
        || area == 666
        || area >= 900
        || group == 0
        || serial == 0
        || (area, group, serial) == (78, 5, 1120)
        || (area, group, serial) == (219, 9, 9999))
}

/// E.164: 8–15 digits. A longer candidate is cut back at a space to the longest prefix
/// that fits (a number followed by another number).
fn phone_e164(v: &[u8], s: usize, e: usize) -> Option<(usize, usize)> {
    // `00` is the international prefix, not part of the number; it must not be a group
    // in the middle of a longer grouped number either.
    let mut digits: i32 = 0;
    if v[s] == b'0' {
        if s >= 2 && v[s - 1] == b' ' && v[s - 2].is_ascii_digit() {
            return None;
        }
        digits = -2;
    }
    let mut end = None;
    for (i, &b) in v[s..e].iter().enumerate() {
        if b.is_ascii_digit() {
            digits += 1;
            if digits > 15 {
                break;
            }
            let at_group_end = match v.get(s + i + 1) {
                None => true,
                Some(&n) => s + i + 1 == e || n == b' ',
            };
            if at_group_end {
                end = Some((s + i + 1, digits));
            }
        }
    }
    let (end, digits) = end?;
    ((8..=15).contains(&digits) && numeric_context_ok(v, s, end)).then_some((s, end))
}

fn phone_nanp_ok(v: &[u8], s: usize, e: usize) -> bool {
    if !numeric_context_ok(v, s, e) {
        return false;
    }
    let text = &v[s..e];
    // Skip the optional country code `1` and its separator.
    let mut i = 0;
    let mut digits: [u8; 10] = [0; 10];
    let mut n = 0;
    let mut seps: [u8; 3] = [0; 3];
    let mut ns = 0;
    let total_digits = text.iter().filter(|b| b.is_ascii_digit()).count();
    if total_digits == 11 {
        i = 1;
        if text
            .get(1)
            .is_some_and(|b| !b.is_ascii_digit() && *b != b'(')
        {
            i = 2;
        }
    }
    let parens = text.get(i) == Some(&b'(');
    for &b in &text[i..] {
        if b.is_ascii_digit() {
            if let Some(slot) = digits.get_mut(n) {
                *slot = b;
            }
            n += 1;
        } else if !matches!(b, b'(' | b')') {
            if let Some(slot) = seps.get_mut(ns) {
                *slot = b;
            }
            ns += 1;
        }
    }
    if n != 10 {
        return false;
    }
    // Without parentheses both separators must be the same: 415-555-2671.
    if !parens && (ns != 2 || seps[0] != seps[1]) {
        return false;
    }
    // Area code: not N9X, not N11; exchange: not N11.
    let area_ok = digits[1] != b'9' && !(digits[1] == b'1' && digits[2] == b'1');
    let exchange_ok = !(digits[4] == b'1' && digits[5] == b'1');
    area_ok && exchange_ok
}

fn phone_trunk_ok(v: &[u8], s: usize, e: usize) -> bool {
    let digits = v[s..e].iter().filter(|b| b.is_ascii_digit()).count();
    (9..=11).contains(&digits) && numeric_context_ok(v, s, e)
}

fn phone_fr_ok(v: &[u8], s: usize, e: usize) -> bool {
    numeric_context_ok(v, s, e) && digits_of::<10>(&v[s..e]).is_some()
}

/// Registry lengths of IBANs by country.
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SC", 31),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

/// IBAN: the candidate is cut to the country's length (it may have run on into a
/// following group), spaces must sit at every group boundary or nowhere, and mod 97
/// of the rearranged number must be 1.
fn iban(v: &[u8], s: usize, e: usize) -> Option<(usize, usize)> {
    let country = v.get(s..s + 2)?;
    let want = IBAN_LENGTHS
        .iter()
        .find(|(c, _)| c.as_slice() == country)
        .map(|(_, n)| *n)?;
    let mut chars: [u8; 34] = [0; 34];
    let mut n: usize = 0;
    let mut spaces = 0;
    let mut end = None;
    for (i, &b) in v[s..e].iter().enumerate() {
        if b == b' ' {
            // Spaces only between groups of four.
            if !n.is_multiple_of(4) {
                return None;
            }
            spaces += 1;
            continue;
        }
        *chars.get_mut(n)? = b;
        n += 1;
        if n == want {
            end = Some(s + i + 1);
            break;
        }
    }
    let end = end?;
    if spaces != 0 && spaces != (want - 1) / 4 {
        return None;
    }
    if v.get(end).is_some_and(|&b| is_word(b)) {
        return None;
    }
    // A spaced IBAN must not run on into another group of the same shape.
    if spaces != 0 && v.get(end) == Some(&b' ') && v.get(end + 1).is_some_and(|&b| is_word(b)) {
        let rest = v[end + 1..].iter().take_while(|&&b| is_word(b)).count();
        if rest <= 4
            && v[end + 1..end + 1 + rest]
                .iter()
                .all(|b| b.is_ascii_digit())
        {
            return None;
        }
    }
    let chars = &chars[..want];
    // Move the first four to the end, letters become 10..35, remainder mod 97.
    let mut rem: u32 = 0;
    for &b in chars[4..].iter().chain(&chars[..4]) {
        if b.is_ascii_digit() {
            rem = (rem * 10 + u32::from(b - b'0')) % 97;
        } else if b.is_ascii_uppercase() {
            rem = (rem * 100 + u32::from(b - b'A') + 10) % 97;
        } else {
            return None;
        }
    }
    (rem == 1 && chars[2].is_ascii_digit() && chars[3].is_ascii_digit()).then_some((s, end))
}

fn ipv4_ok(v: &[u8], s: usize, e: usize) -> bool {
    // Part of a longer dotted run: `1.2.3.4.5`, `.1.2.3.4`.
    if s > 0 && v[s - 1] == b'.' {
        return false;
    }
    if v.get(e) == Some(&b'.') && v.get(e + 1).is_some_and(|&b| is_word(b)) {
        return false;
    }
    if v.get(e).is_some_and(|&b| is_word(b)) {
        return false;
    }
    // A version number: `version 1.2.3.4`, `v 1.2.3.4`, `build: 10.0.0.1`.
    let before = &v[..s];
    let trimmed_len = before
        .iter()
        .rposition(|b| !matches!(b, b' ' | b':' | b'=' | b'\t'))
        .map_or(0, |i| i + 1);
    let word_start = before[..trimmed_len]
        .iter()
        .rposition(|b| !b.is_ascii_alphabetic())
        .map_or(0, |i| i + 1);
    let word = &before[word_start..trimmed_len];
    !["version", "ver", "v", "build", "release", "firmware", "fw"]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w.as_bytes()))
}

fn ipv6(v: &[u8], s: usize, mut e: usize) -> Option<(usize, usize)> {
    let parses = |e: usize| {
        std::str::from_utf8(&v[s..e])
            .ok()
            .and_then(|t| t.parse::<Ipv6Addr>().ok())
            .is_some()
    };
    if !parses(e) {
        // A trailing `:` that is punctuation: `fe80::1: up`.
        if e - s > 3 && v[e - 1] == b':' && v[e - 2] != b':' && parses(e - 1) {
            e -= 1;
        } else {
            return None;
        }
    }
    if &v[s..e] == b"::" {
        return None;
    }
    if s > 0 && matches!(v[s - 1], b'.' | b':') {
        return None;
    }
    match v.get(e) {
        Some(&b) if is_word(b) || b == b':' => None,
        Some(b'.') if v.get(e + 1).is_some_and(u8::is_ascii_digit) => None,
        _ => Some((s, e)),
    }
}

fn is_b64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'/' || b == b'+'
}

fn aws_secret(v: &[u8], mut s: usize, mut e: usize) -> Option<(usize, usize)> {
    if !is_b64(v[s]) {
        s += 1;
    }
    if !is_b64(v[e - 1]) {
        e -= 1;
    }
    let key = &v[s..e];
    if key.len() != 40 {
        return None;
    }
    // One segment of a dotted token (a JWT, a host or file name) is not a key.
    let dotted_before = s >= 2 && v[s - 1] == b'.' && is_token_byte(v[s - 2]);
    let dotted_after = v.get(e) == Some(&b'.') && v.get(e + 1).is_some_and(|&b| is_token_byte(b));
    if dotted_before || dotted_after {
        return None;
    }
    let class = |b: u8| match b {
        b'a'..=b'z' => 0u8,
        b'A'..=b'Z' => 1,
        b'0'..=b'9' => 2,
        _ => 3,
    };
    let mut counts = [0usize; 4];
    let mut changes = 0;
    let mut prev = None;
    for &b in key {
        let c = class(b);
        counts[usize::from(c)] += 1;
        if prev.is_some_and(|p| p != c) {
            changes += 1;
        }
        prev = Some(c);
    }
    let slashes = key.iter().filter(|&&b| b == b'/').count();
    (counts[0] > 0 && counts[1] > 0 && counts[2] > 0 && slashes <= 4 && changes >= 14)
        .then_some((s, e))
}

/// Decodes unpadded base64url; `None` if it is not.
fn b64url_decode(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &b in text {
        let x = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(x);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn json_object_like(bytes: &[u8]) -> bool {
    let trimmed = bytes.trim_ascii();
    trimmed.first() == Some(&b'{')
        && trimmed.last() == Some(&b'}')
        && std::str::from_utf8(trimmed).is_ok()
        && !trimmed
            .iter()
            .any(|&b| b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t'))
}

fn jwt_ok(v: &[u8], s: usize, e: usize) -> bool {
    if v.get(e)
        .is_some_and(|&b| is_token_byte(b) || b == b'=' || b == b'.')
    {
        return false;
    }
    let mut parts = v[s..e].split(|&b| b == b'.');
    let (Some(header), Some(payload), Some(signature)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Some(header) = b64url_decode(header) else {
        return false;
    };
    let names_field = [&b"\"alg\""[..], b"\"typ\"", b"\"kid\""]
        .iter()
        .any(|f| memchr::memmem::find(&header, f).is_some());
    json_object_like(&header)
        && names_field
        && b64url_decode(payload).is_some_and(|p| json_object_like(&p))
        && signature.len() % 4 != 1
}

/// From the BEGIN line through the matching END line, or to the end of the value.
fn private_key(v: &[u8], s: usize, e: usize) -> (usize, usize) {
    // The BEGIN line is `-----BEGIN <label>-----`.
    let label = &v[s + 11..e - 5];
    let mut end_line = Vec::with_capacity(label.len() + 14);
    end_line.extend_from_slice(b"-----END ");
    end_line.extend_from_slice(label);
    end_line.extend_from_slice(b"-----");
    match memchr::memmem::find(&v[e..], &end_line) {
        Some(i) => (s, e + i + end_line.len()),
        None => (s, v.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> DetectorSet {
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        DetectorSet::new(&names, &[]).expect("built-ins compile")
    }

    fn all() -> DetectorSet {
        set(BUILTIN)
    }

    /// The (detector name, matched text) pairs found in `value`.
    fn found(d: &DetectorSet, value: &str) -> Vec<(String, String)> {
        let mut hits = Vec::new();
        d.find(value.as_bytes(), &mut hits);
        let mut last = 0;
        for h in &hits {
            assert!(
                h.start >= last && h.start < h.end,
                "ordered, non-overlapping: {hits:?}"
            );
            last = h.end;
        }
        hits.iter()
            .map(|h| {
                (
                    d.names()[usize::from(h.detector)].clone(),
                    value[h.start..h.end].to_owned(),
                )
            })
            .collect()
    }

    fn assert_hit(value: &str, detector: &str, text: &str) {
        let got = found(&all(), value);
        assert!(
            got.iter().any(|(d, t)| d == detector && t == text),
            "{value:?}: expected {detector} {text:?}, got {got:?}"
        );
    }

    fn assert_no(value: &str, detector: &str) {
        let got = found(&all(), value);
        assert!(
            !got.iter().any(|(d, _)| d == detector),
            "{value:?}: expected no {detector}, got {got:?}"
        );
    }

    fn assert_nothing(value: &str) {
        let got = found(&all(), value);
        assert!(got.is_empty(), "{value:?}: expected nothing, got {got:?}");
    }

    #[test]
    fn email() {
        assert_hit(
            "mail john.doe@example.com now",
            "email",
            "john.doe@example.com",
        );
        assert_hit(
            "<a.b+tag@mail.example.co.uk>",
            "email",
            "a.b+tag@mail.example.co.uk",
        );
        assert_hit(
            r#"{"email":"x_y@sub-domain.io"}"#,
            "email",
            "x_y@sub-domain.io",
        );
        assert_hit("Reach me at jane@corp.org.", "email", "jane@corp.org");
        assert_no("root@localhost", "email");
        assert_no("user@192.168.0.1", "email");
        assert_no("@mention and a@b", "email");
        assert_no(
            "git@github.com:org/repo.git is fine but x@y.z is not",
            "ipv4",
        );
        assert_no("john@example.c", "email");
        assert_no("john@example.com-foo", "email");
        assert_no("img/logo@2x.PNG", "email");
        assert_no("postgres://app@db.internal:5432/x", "email");
        assert_no("https://user:secret@example.com/", "email");
    }

    #[test]
    fn credit_card() {
        assert_hit(
            "card 4111 1111 1111 1111 exp 12/26",
            "credit_card",
            "4111 1111 1111 1111",
        );
        assert_hit("4111-1111-1111-1111", "credit_card", "4111-1111-1111-1111");
        assert_hit("pan=5555555555554444;", "credit_card", "5555555555554444");
        assert_hit("amex 3782 822463 10005", "credit_card", "3782 822463 10005");
        assert_hit("2223003122003222", "credit_card", "2223003122003222");
        assert_hit("6011111111111117", "credit_card", "6011111111111117");
        assert_hit("jcb 3530111333300000", "credit_card", "3530111333300000");
        assert_hit("diners 30569309025904", "credit_card", "30569309025904");
        // Luhn fails.
        assert_no("4111 1111 1111 1112", "credit_card");
        // No known IIN.
        assert_no("9111111111111111", "credit_card");
        // Inside a longer digit run, or glued to letters.
        assert_no("14111111111111111", "credit_card");
        assert_no("ID4111111111111111", "credit_card");
        assert_no("4111111111111111.25", "credit_card");
        // Mixed separators.
        assert_no("4111 1111-1111 1111", "credit_card");
    }

    #[test]
    fn us_ssn() {
        assert_hit("SSN: 123-45-6789", "us_ssn", "123-45-6789");
        assert_hit("ssn 536 90 4399.", "us_ssn", "536 90 4399");
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
            "078-05-1120",
            "219-09-9999",
            "123-45 6789",
            "1-123-45-6789",
            "123-45-6789-1",
            "123456789",
        ] {
            assert_no(bad, "us_ssn");
        }
    }

    #[test]
    fn phone() {
        for (text, number) in [
            ("call (415) 555-2671 today", "(415) 555-2671"),
            ("415-555-2671", "415-555-2671"),
            ("415.555.2671", "415.555.2671"),
            ("tel: +1 415 555 2671", "+1 415 555 2671"),
            ("1-800-555-0199", "1-800-555-0199"),
            ("+44 20 7946 0958", "+44 20 7946 0958"),
            ("020 7946 0958", "020 7946 0958"),
            ("07700 900123", "07700 900123"),
            ("+49 30 901820", "+49 30 901820"),
            ("030 901820", "030 901820"),
            ("+33 1 42 68 53 00", "+33 1 42 68 53 00"),
            ("01 42 68 53 00", "01 42 68 53 00"),
            ("+14155552671", "+14155552671"),
            ("+44 (0)20 7946 0958", "+44 (0)20 7946 0958"),
            ("+44 20 7946 0958 2024", "+44 20 7946 0958"),
            ("0049 30 901820", "0049 30 901820"),
        ] {
            assert_hit(text, "phone", number);
        }
        for text in [
            "2024-01-15",
            "12:30:45",
            "v1.2.3",
            "192.168.1.1",
            "4155552671",
            "order 123456789012",
            "123-45-6789",
            "4111 1111 1111 1111",
            "415-555.2671",
            "02134-1234",
            "1.415.555.2671.3",
            "price +5.00",
            "00493090182012",
            "DE89 3704 0044 0532 0130 00",
        ] {
            assert_no(text, "phone");
        }
    }

    #[test]
    fn iban() {
        assert_hit(
            "IBAN DE89 3704 0044 0532 0130 00 EUR",
            "iban",
            "DE89 3704 0044 0532 0130 00",
        );
        assert_hit("GB82WEST12345698765432", "iban", "GB82WEST12345698765432");
        assert_hit(
            "FR1420041010050500013M02606",
            "iban",
            "FR1420041010050500013M02606",
        );
        assert_no("DE89 3704 0044 0532 0130 01", "iban");
        assert_no("DE89370400440532013000X", "iban");
        assert_no("ZZ89370400440532013000", "iban");
        assert_no("GB82 WEST 1234 5698 7654", "iban");
    }

    #[test]
    fn ipv4() {
        assert_hit("from 192.168.1.20:5432", "ipv4", "192.168.1.20");
        assert_hit("10.0.0.1.", "ipv4", "10.0.0.1");
        assert_hit("host=8.8.8.8,", "ipv4", "8.8.8.8");
        for text in [
            "1.2.3.4.5",
            "OID 1.3.6.1.4.1.311",
            "256.1.1.1",
            "01.2.3.4",
            "version 1.2.3.4",
            "v1.2.3.4",
            "1.2.3",
            "2024.01.15",
        ] {
            assert_no(text, "ipv4");
        }
    }

    #[test]
    fn ipv6() {
        for ip in [
            "2001:db8::1",
            "::1",
            "fe80::1ff:fe23:4567:890a",
            "::ffff:192.0.2.1",
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            "fe80::",
        ] {
            assert_hit(&format!("addr {ip} up"), "ipv6", ip);
        }
        assert_hit("[2001:db8::2]:443", "ipv6", "2001:db8::2");
        for text in [
            "12:30:45",
            "2024-01-15T12:30:45Z",
            "aa:bb:cc:dd:ee:ff",
            "std::vector",
            "a :: b",
            "16:9",
        ] {
            assert_no(text, "ipv6");
        }
    }

    #[test]
    fn aws() {
        assert_hit(
            "AKIAIOSFODNN7EXAMPLE",
            "aws_access_key",
            "AKIAIOSFODNN7EXAMPLE",
        );
        assert_no("AKIAIOSFODNN7EXAMPLE1", "aws_access_key");
        assert_no("XAKIAIOSFODNN7EXAMPLE", "aws_access_key");
        assert_hit(
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "aws_secret_key",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        );
        // A SHA-1 (no upper case), a longer base64 run, an identifier.
        assert_no("da39a3ee5e6b4b0d3255bfef95601890afd80709", "aws_secret_key");
        assert_no(
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYX",
            "aws_secret_key",
        );
        assert_no(
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY==",
            "aws_secret_key",
        );
        assert_no("AbstractSingletonProxyFactoryBean2Config", "aws_secret_key");
    }

    #[test]
    fn jwt() {
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        assert_hit(&format!("Authorization: Bearer {token}"), "jwt", token);
        assert_no(
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIx.abc",
            "jwt",
        );
        assert_no(
            "eyJub3QiOiJhIGp3dCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abc",
            "jwt",
        );
    }

    #[test]
    fn private_key() {
        let pem =
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----";
        assert_hit(&format!("key:\n{pem}\nrest"), "private_key", pem);
        let open = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA";
        assert_hit(&format!("x {open}"), "private_key", open);
        assert_no(
            "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
            "private_key",
        );
    }

    #[test]
    fn api_token() {
        for token in [
            "ghp_1234567890abcdefghijABCDEFGHIJ123456",
            "github_pat_11ABCDEFG0123456789abc_0123456789abcdefghijABCDEFGHIJ0123456789abcdefghijABCDEFGHI",
            "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            "glpat-xxxxxxxxxxxxxxxxxxxx",
            "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI",
            "slu_abcd1234_aZ0aZ0aZ0aZ0aZ0aZ0aZ0aZ0aZ0aZ0xy",
        ] {
            assert_hit(&format!("token: {token}\n"), "api_token", token);
        }
        assert_no("ghp_1234567890abcdefghijABCDEFGHIJ1234567", "api_token");
        assert_no("sk_live_short", "api_token");
    }

    #[test]
    fn near_misses_are_masked_not_rescanned() {
        // Every byte starts a candidate that fails validation; past the budget the rest
        // of the value is one finding instead of a quadratic rescan.
        let all = all();
        for v in [
            "eyJhbGciOiJIUzI1NiJ9.".repeat(30_000),
            "1.2.".repeat(50_000),
        ] {
            let mut hits = Vec::new();
            all.find(v.as_bytes(), &mut hits);
            assert_eq!(hits.last().map(|h| h.end), Some(v.len()));
        }
    }

    #[test]
    fn numbers_in_rows_and_lists() {
        let set = set(&["credit_card", "us_ssn", "phone"]);
        let found = |v: &str| {
            let mut hits = Vec::new();
            set.find(v.as_bytes(), &mut hits);
            hits.len()
        };
        // A row or list puts a value right after another number and a comma.
        assert_eq!(found("(1,4111111111111111)"), 1);
        assert_eq!(found("{5,4111111111111111}"), 1);
        assert_eq!(found("(1,123-45-6789)"), 1);
        assert_eq!(found("(2,415-555-2671)"), 1);
        assert_eq!(found("9/4111111111111111"), 1);
        // Grouped numbers and dates still continue.
        assert_eq!(found("1,234,567,890,123,456"), 0);
        assert_eq!(found("12/31/2024"), 0);
        assert_eq!(found("123-45-6789-0"), 0);
    }

    #[test]
    fn rejected_candidate_does_not_hide_a_later_one() {
        // The first candidate fails Luhn; the valid card starts inside the same run of
        // grouped digits.
        assert_hit(
            "4111 1111 1111 1112 4111 1111 1111 1111",
            "credit_card",
            "4111 1111 1111 1111",
        );
        // An IPv4 candidate inside a version string is rejected, a real one follows.
        assert_hit("1.2.3.4.5 then 10.1.2.3", "ipv4", "10.1.2.3");
        // The phone pattern rejects its reading; the SSN reading at the same start wins.
        assert_hit("ref 212-55-1234", "us_ssn", "212-55-1234");
    }

    #[test]
    fn ids_and_order() {
        let d = DetectorSet::new(
            &["ipv4".to_owned(), "email".to_owned()],
            &[CustomDetector::Words {
                name: "codename".to_owned(),
                words: vec!["Project Falcon".to_owned(), "c++".to_owned()],
            }],
        )
        .expect("compiles");
        assert_eq!(d.names(), ["ipv4", "email", "codename"]);
        let mut hits = Vec::new();
        d.find(
            b"a@b.io PROJECT FALCON 10.0.0.1 c++ projectfalcon",
            &mut hits,
        );
        assert_eq!(
            hits,
            [
                Hit {
                    start: 0,
                    end: 6,
                    detector: 1
                },
                Hit {
                    start: 7,
                    end: 21,
                    detector: 2
                },
                Hit {
                    start: 22,
                    end: 30,
                    detector: 0
                },
                Hit {
                    start: 31,
                    end: 34,
                    detector: 2
                },
            ]
        );
    }

    #[test]
    fn custom_regex() {
        let d = DetectorSet::new(
            &[],
            &[CustomDetector::Regex {
                name: "employee".to_owned(),
                pattern: r"\bEMP-\d{6}\b".to_owned(),
            }],
        )
        .expect("compiles");
        assert_eq!(
            found(&d, "id EMP-123456 and EMP-12"),
            [("employee".to_owned(), "EMP-123456".to_owned())]
        );
        // Non-UTF-8 values are fine.
        let mut hits = Vec::new();
        d.find(b"\xff\xfeEMP-000001\xff", &mut hits);
        assert_eq!(hits.len(), 1);
    }

    #[test]
    fn bad_detectors_are_refused() {
        let unknown = DetectorSet::new(&["passport".to_owned()], &[]);
        assert!(matches!(unknown, Err(MaskError::UnknownDetector(n)) if n == "passport"));
        for pattern in ["(unclosed", "a*", r"\b", "x?"] {
            let r = DetectorSet::new(
                &[],
                &[CustomDetector::Regex {
                    name: "bad".to_owned(),
                    pattern: pattern.to_owned(),
                }],
            );
            assert!(
                matches!(r, Err(MaskError::BadPattern { ref name, .. }) if name == "bad"),
                "{pattern}: {r:?}"
            );
        }
        let r = DetectorSet::new(
            &[],
            &[CustomDetector::Words {
                name: "w".to_owned(),
                words: vec![String::new()],
            }],
        );
        assert!(matches!(r, Err(MaskError::BadPattern { .. })));
    }

    #[test]
    fn empty_set_and_plain_values() {
        let d = DetectorSet::new(&[], &[]).expect("empty");
        assert!(d.is_empty());
        let mut hits = Vec::new();
        d.find(b"john@example.com", &mut hits);
        assert!(hits.is_empty());
        for text in [
            "",
            "Hello, world",
            "Order #48213 shipped 2024-03-02 12:44:10 UTC, total $1,249.99",
            "550e8400-e29b-41d4-a716-446655440000",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "v2.14.3-rc.1",
            "SKU AB-1234-XYZ, qty 12",
            "lat 48.858844, lon 2.294351",
            "\u{fffd}\u{e9}t\u{e9} 2024",
        ] {
            assert_nothing(text);
        }
        // Arbitrary bytes do not panic.
        let noise: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let mut hits = Vec::new();
        all().find(&noise, &mut hits);
    }

    /// The trigger scan only skips work: with it and without it, the hits are the same.
    #[test]
    fn prefilter_loses_nothing() {
        let with = all();
        let mut without = all();
        if let Some(m) = &mut without.matcher {
            m.scanner = None;
        }
        let corpus = concat!(
            include_str!("../tests/corpus/handwritten.txt"),
            include_str!("../tests/corpus/generated.txt")
        );
        let mut values: Vec<Vec<u8>> = corpus
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let mut v = l.replace('\u{23ce}', "\n").replace("]]", "");
                for name in BUILTIN {
                    v = v.replace(&format!("[[{name}|"), "");
                }
                v.into_bytes()
            })
            .collect();
        // Pairs glued together with assorted separators, and noise around them.
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let n = values.len();
        for _ in 0..600 {
            let a = values[(next() % n as u64) as usize].clone();
            let b = values[(next() % n as u64) as usize].clone();
            let sep: &[u8] = match next() % 6 {
                0 => b" ",
                1 => b"",
                2 => b"\t",
                3 => b"=",
                4 => b"\xff\xfe",
                _ => b".",
            };
            let mut v = a;
            v.extend_from_slice(sep);
            v.extend_from_slice(&b);
            let cut = (next() % (v.len() as u64 + 1)) as usize;
            values.push(v[cut..].to_vec());
            values.push(v);
        }
        // Random strings over the bytes the detectors care about.
        let alphabet: &[u8] =
            b"0123456789012345678901234567890123456789abcdefXYZ:::...---  +()/@_=eyJAKIA\n\xff";
        for _ in 0..3000 {
            let len = (next() % 100) as usize;
            values.push(
                (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect(),
            );
        }
        for v in &values {
            let (mut h1, mut h2) = (Vec::new(), Vec::new());
            with.find(v, &mut h1);
            without.find(v, &mut h2);
            assert_eq!(h1, h2, "{:?}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn send_sync() {
        fn is<T: Send + Sync + std::fmt::Debug>() {}
        is::<DetectorSet>();
    }
}
