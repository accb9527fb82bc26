//! Throughput of the content detectors on realistic row data.
//!
//! `cargo bench -p sluice-mask --bench masker -- detect`
//!
//! The rows are generated deterministically: names, street addresses, cities, emails,
//! free-text notes (~200 bytes), JSON blobs, numbers, dates, timestamps, UUIDs, status
//! words, log lines; about 7% of the cells carry something a detector should find.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_mask::detect::{DetectorSet, Hit, BUILTIN};

/// A small deterministic generator (SplitMix64), so the data set is the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const FIRST: &[&str] = &[
    "James", "Mary", "Robert", "Patricia", "Jürgen", "Chloé", "Wei", "Aiko", "Olusegun", "Priya",
    "Mateo", "Sofia", "Liam", "Emma", "Noah", "Ava", "Lucas", "Mia", "Ahmed", "Fatima",
];
const LAST: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Müller",
    "Dubois",
    "Zhang",
    "Tanaka",
    "Adeyemi",
    "Patel",
    "García",
    "Rossi",
    "Nguyen",
    "O'Brien",
    "Kowalski",
    "Andersson",
    "Silva",
    "Kim",
];
const STREETS: &[&str] = &[
    "Main St",
    "Oak Avenue",
    "Baker Street",
    "Rue de Rivoli",
    "Hauptstraße",
    "Elm Road",
    "Sunset Blvd",
    "Calle Mayor",
    "King's Road",
    "Maple Drive",
];
const CITIES: &[&str] = &[
    "Springfield, IL 62704",
    "London SW1A 1AA",
    "75001 Paris",
    "10115 Berlin",
    "Austin, TX 78701",
    "Toronto, ON M5V 2T6",
    "Sydney NSW 2000",
    "Tokyo 100-0001",
];
const NOTES: &[&str] = &[
    "Customer called about the delayed shipment; promised a follow-up by Friday. Escalated to tier 2 after the second call, ticket remains open pending warehouse confirmation.",
    "Prefers contact by mail. Account migrated from the legacy system in 2019, loyalty tier gold, last order 3 items, total 149.97 EUR incl. VAT. No complaints on record so far.",
    "Delivery window 09:00-12:00, ring twice, leave with neighbour at no. 14 if absent. Fragile items: handle with care. Invoice reference INV-2024-00871, paid by bank transfer.",
    "Meeting notes: reviewed Q3 roadmap, agreed to ship v2.4.1 after the regression fix (build 1187). Action items assigned to the platform team, next sync on 2024-10-03 at 15:30.",
    "Returned item was damaged in transit (box crushed, photos attached). Refund approved for 39.99, replacement sent via express, tracking to follow in a separate message.",
    "Der Kunde wünscht eine Rückrufbitte am Vormittag; Bestellung 7781 wurde storniert und der Betrag von 89,90 € erstattet. Keine weiteren Maßnahmen erforderlich laut Teamleitung.",
];
const STATUS: &[&str] = &[
    "active",
    "pending",
    "suspended",
    "closed",
    "trial",
    "churned",
];
const LOGS: &[&str] = &[
    "2024-05-17T08:12:44.512Z INFO  http: GET /api/v1/orders?page=3 200 12.4ms user_id=48213",
    "2024-05-17T08:12:45.003Z WARN  pool: connection wait 250ms (max 32, busy 31)",
    "2024-05-17T08:12:47.918Z ERROR worker: job 9f3c2a1e failed after 3 attempts: timeout",
];

/// Cells that a detector should find.
const PII: &[&str] = &[
    "maria.garcia@example.com",
    "Card on file: 4111 1111 1111 1111, exp 08/27",
    "SSN 536-90-4399",
    "Call me at (415) 555-2671 after 6pm",
    "+44 20 7946 0958",
    "DE89 3704 0044 0532 0130 00",
    "client 203.0.113.42 connected",
    "fe80::1ff:fe23:4567:890a",
    "AKIAIOSFODNN7EXAMPLE",
    "{\"token\":\"ghp_1234567890abcdefghijABCDEFGHIJ123456\"}",
    "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
];

fn cell(rng: &mut Rng, column: usize) -> String {
    if rng.below(100) < 7 {
        return rng.pick(PII).to_owned();
    }
    match column {
        0 => rng.below(10_000_000).to_string(),
        1 => format!("{} {}", rng.pick(FIRST), rng.pick(LAST)),
        2 => format!("{} {}", 1 + rng.below(400), rng.pick(STREETS)),
        3 => rng.pick(CITIES).to_owned(),
        4 => rng.pick(NOTES).to_owned(),
        5 => format!(
            "{{\"plan\":\"{}\",\"seats\":{},\"features\":[\"sso\",\"audit\"],\"renewal\":\"2025-{:02}-{:02}\",\"price\":{}.{:02}}}",
            rng.pick(STATUS),
            1 + rng.below(500),
            1 + rng.below(12),
            1 + rng.below(28),
            rng.below(10_000),
            rng.below(100)
        ),
        6 => format!("2024-{:02}-{:02} {:02}:{:02}:{:02}", 1 + rng.below(12), 1 + rng.below(28), rng.below(24), rng.below(60), rng.below(60)),
        7 => format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            rng.next() as u32,
            rng.below(0x10000),
            rng.below(0x1000),
            rng.below(0x1000),
            rng.next() & 0xFFFF_FFFF_FFFF
        ),
        8 => rng.pick(STATUS).to_owned(),
        9 => format!("{}.{:02}", rng.below(100_000), rng.below(100)),
        _ => rng.pick(LOGS).to_owned(),
    }
}

fn rows() -> Vec<String> {
    let mut rng = Rng(0x5EED);
    let mut cells = Vec::new();
    for _ in 0..2_000 {
        for column in 0..11 {
            cells.push(cell(&mut rng, column));
        }
    }
    cells
}

fn detect(c: &mut Criterion) {
    let names: Vec<String> = BUILTIN.iter().map(|s| (*s).to_owned()).collect();
    let set = DetectorSet::new(&names, &[]).expect("the built-in detectors compile");
    let cells = rows();
    let bytes: usize = cells.iter().map(String::len).sum();
    let mut hits: Vec<Hit> = Vec::new();
    // Sanity: the data does contain findings.
    for v in &cells {
        set.find(v.as_bytes(), &mut hits);
    }
    assert!(!hits.is_empty());

    let mut group = c.benchmark_group("detect");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("all_builtins_rows", |b| {
        b.iter(|| {
            let mut n = 0;
            for v in &cells {
                hits.clear();
                set.find(std::hint::black_box(v.as_bytes()), &mut hits);
                n += hits.len();
            }
            n
        })
    });
    group.finish();
}

criterion_group!(benches, detect);
criterion_main!(benches);
