//! Precision and recall of the built-in detectors on a labelled corpus.
//!
//! The corpus is `tests/corpus/handwritten.txt` (realistic free text, JSON, log lines,
//! addresses, codes, numbers, with findings embedded by hand) and
//! `tests/corpus/generated.txt` (written by `tests/corpus/generate.py`: valid Luhn
//! numbers, mod-97-valid IBANs, SSNs from the issued ranges, … in realistic templates,
//! and look-alike negatives). `[[detector|text]]` marks an expected finding.
//!
//! A reported hit counts as correct when it overlaps an expected finding of the same
//! detector; an expected finding counts as found when a hit of the same detector covers
//! it entirely (a partial cover would leave part of the secret in clear).
//!
//! `cargo test -p sluice-mask --test corpus -- --nocapture` prints the table.

use std::collections::BTreeMap;

use sluice_mask::detect::{DetectorSet, Hit, BUILTIN};

/// Per-detector thresholds the corpus must meet.
const MIN_PRECISION: f64 = 0.97;
const MIN_RECALL: f64 = 0.95;

struct Expected {
    detector: String,
    start: usize,
    end: usize,
}

struct Case {
    source: String,
    value: Vec<u8>,
    expected: Vec<Expected>,
}

/// Parses one corpus line: markup out, expected spans recorded.
fn parse(line: &str, source: String) -> Case {
    let line = line.replace('\u{23ce}', "\n");
    let mut value = Vec::new();
    let mut expected = Vec::new();
    let mut rest = line.as_str();
    while let Some(open) = rest.find("[[") {
        let after = &rest[open + 2..];
        let label = after.find('|').map(|bar| &after[..bar]);
        match label {
            Some(name) if BUILTIN.contains(&name) => {
                let body = &after[name.len() + 1..];
                let close = body
                    .find("]]")
                    .unwrap_or_else(|| panic!("{source}: unclosed [[{name}|"));
                value.extend_from_slice(&rest.as_bytes()[..open]);
                let start = value.len();
                value.extend_from_slice(&body.as_bytes()[..close]);
                expected.push(Expected {
                    detector: name.to_owned(),
                    start,
                    end: value.len(),
                });
                rest = &body[close + 2..];
            }
            _ => {
                // A literal `[`.
                value.extend_from_slice(&rest.as_bytes()[..=open]);
                rest = &rest[open + 1..];
            }
        }
    }
    value.extend_from_slice(rest.as_bytes());
    Case {
        source,
        value,
        expected,
    }
}

fn load() -> Vec<Case> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");
    let mut cases = Vec::new();
    for file in ["handwritten.txt", "generated.txt"] {
        let text = std::fs::read_to_string(format!("{dir}/{file}"))
            .unwrap_or_else(|e| panic!("reading {file}: {e}"));
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            cases.push(parse(line, format!("{file}:{}", i + 1)));
        }
    }
    cases
}

#[derive(Default)]
struct Tally {
    expected: usize,
    found: usize,
    exact: usize,
    reported: usize,
    correct: usize,
}

impl Tally {
    fn precision(&self) -> f64 {
        if self.reported == 0 {
            1.0
        } else {
            self.correct as f64 / self.reported as f64
        }
    }

    fn recall(&self) -> f64 {
        if self.expected == 0 {
            1.0
        } else {
            self.found as f64 / self.expected as f64
        }
    }
}

fn show(value: &[u8], start: usize, end: usize) -> String {
    String::from_utf8_lossy(&value[start..end]).replace('\n', "⏎")
}

#[test]
fn corpus_precision_and_recall() {
    let names: Vec<String> = BUILTIN.iter().map(|s| (*s).to_owned()).collect();
    let set = DetectorSet::new(&names, &[]).expect("the built-in detectors compile");
    let cases = load();
    assert!(cases.len() >= 400, "corpus too small: {}", cases.len());

    let mut tally: BTreeMap<&str, Tally> = BUILTIN.iter().map(|b| (*b, Tally::default())).collect();
    let mut misses = Vec::new();
    let mut false_hits = Vec::new();
    let mut hits: Vec<Hit> = Vec::new();
    let mut negatives = 0;
    for case in &cases {
        hits.clear();
        set.find(&case.value, &mut hits);
        if case.expected.is_empty() {
            negatives += 1;
        }
        for w in hits.windows(2) {
            assert!(
                w[0].end <= w[1].start,
                "{}: overlapping hits {hits:?}",
                case.source
            );
        }
        for h in &hits {
            let name = names[usize::from(h.detector)].as_str();
            let t = tally.get_mut(name).expect("a built-in");
            t.reported += 1;
            let right = case
                .expected
                .iter()
                .any(|x| x.detector == name && h.start < x.end && x.start < h.end);
            if right {
                t.correct += 1;
            } else {
                false_hits.push(format!(
                    "{:<15} {:<22} {:?}",
                    name,
                    case.source,
                    show(&case.value, h.start, h.end)
                ));
            }
        }
        for x in &case.expected {
            let t = tally.get_mut(x.detector.as_str()).expect("a built-in");
            t.expected += 1;
            let mine = |h: &&Hit| names[usize::from(h.detector)] == x.detector;
            if hits
                .iter()
                .filter(mine)
                .any(|h| h.start <= x.start && h.end >= x.end)
            {
                t.found += 1;
            } else {
                let got: Vec<String> = hits
                    .iter()
                    .map(|h| {
                        format!(
                            "{}:{:?}",
                            names[usize::from(h.detector)],
                            show(&case.value, h.start, h.end)
                        )
                    })
                    .collect();
                misses.push(format!(
                    "{:<15} {:<22} {:?} (got {})",
                    x.detector,
                    case.source,
                    show(&case.value, x.start, x.end),
                    if got.is_empty() {
                        "nothing".to_owned()
                    } else {
                        got.join(", ")
                    }
                ));
            }
            if hits.iter().any(|h| {
                names[usize::from(h.detector)] == x.detector && h.start == x.start && h.end == x.end
            }) {
                t.exact += 1;
            }
        }
    }

    let positives = cases.len() - negatives;
    eprintln!();
    eprintln!(
        "detector corpus: {} values ({} with findings, {} without), all built-ins enabled",
        cases.len(),
        positives,
        negatives
    );
    eprintln!(
        "{:<15} {:>8} {:>8} {:>8} {:>6} {:>6} {:>10} {:>8}",
        "detector", "expected", "reported", "correct", "FP", "FN", "precision", "recall"
    );
    let mut total = Tally::default();
    for (name, t) in &tally {
        eprintln!(
            "{:<15} {:>8} {:>8} {:>8} {:>6} {:>6} {:>10.3} {:>8.3}",
            name,
            t.expected,
            t.reported,
            t.correct,
            t.reported - t.correct,
            t.expected - t.found,
            t.precision(),
            t.recall()
        );
        total.expected += t.expected;
        total.found += t.found;
        total.exact += t.exact;
        total.reported += t.reported;
        total.correct += t.correct;
    }
    eprintln!(
        "{:<15} {:>8} {:>8} {:>8} {:>6} {:>6} {:>10.3} {:>8.3}",
        "all",
        total.expected,
        total.reported,
        total.correct,
        total.reported - total.correct,
        total.expected - total.found,
        total.precision(),
        total.recall()
    );
    eprintln!(
        "exact spans: {} of {} expected findings",
        total.exact, total.expected
    );
    if !false_hits.is_empty() {
        eprintln!("false positives:");
        for f in &false_hits {
            eprintln!("  {f}");
        }
    }
    if !misses.is_empty() {
        eprintln!("missed:");
        for m in &misses {
            eprintln!("  {m}");
        }
    }

    for (name, t) in &tally {
        assert!(
            t.expected >= 10,
            "{name}: only {} labelled findings",
            t.expected
        );
        assert!(
            t.precision() >= MIN_PRECISION,
            "{name}: precision {:.3} < {MIN_PRECISION}",
            t.precision()
        );
        assert!(
            t.recall() >= MIN_RECALL,
            "{name}: recall {:.3} < {MIN_RECALL}",
            t.recall()
        );
    }
}
