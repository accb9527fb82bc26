//! What a policy decision costs per statement: `cargo bench -p sluice-policy`.
//!
//! The rule set is the README's realistic one. `judge/*` go through `Policy::judge` as the
//! gateway does: statements of one shape with changing constants hit the classification
//! cache after the first (the target is well under 10 µs each). `classify/*` is the
//! uncached parse, paid once per statement shape.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use sluice_core::{ActorKind, Identity};
use sluice_policy::{classify, Policy, RuleSpec, SessionPolicy, Unparsed};

const RULES: &str = r#"
- { name: no-drop, match: { statement: [drop, truncate] }, action: deny }
- { name: unbounded-writes, match: { statement: [update, delete], where: absent }, action: deny }
- { name: secrets, match: { tables: ["secret.*", "*.api_keys"] }, except: [group:dba], action: deny }
- { name: agents-read-only, applies_to: ["agent:*"], match: { statement: [insert, update, delete, merge, ddl, copy, grant, revoke, call] }, action: deny }
- { name: no-file-access, match: { functions: ["pg_read_*", lo_export, "dblink*"] }, action: deny }
- { name: writes-need-review, match: { statement: [ddl] }, action: review, reviewers: [group:dba] }
"#;

fn policy() -> Policy {
    let specs: Vec<RuleSpec> = serde_yaml_ng::from_str(RULES).expect("rules parse");
    Policy::new(&specs, &[("prod".into(), Unparsed::Deny)]).expect("rules are valid")
}

/// `n` statements of one shape with different constants.
fn variants(n: usize, shape: impl Fn(usize) -> String) -> Vec<String> {
    (0..n).map(shape).collect()
}

fn judge(c: &mut Criterion) {
    let policy = policy();
    let alice = Identity {
        user: "alice".into(),
        groups: vec!["engineers".into()],
        credential: None,
        actor: ActorKind::Human,
    };
    let mut session = SessionPolicy::default();
    let cases = [
        (
            "judge/pgbench_select",
            variants(1000, |i| {
                format!("SELECT abalance FROM pgbench_accounts WHERE aid = {i};")
            }),
        ),
        (
            "judge/update_with_where",
            variants(1000, |i| {
                format!("UPDATE orders SET status = 'paid', paid_at = now() WHERE id = {i} AND status = 'open'")
            }),
        ),
        (
            "judge/join_select",
            variants(1000, |i| {
                format!("SELECT o.id, c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.created_at > '2026-01-01' AND c.region = 'eu-{i}' ORDER BY o.id LIMIT 50")
            }),
        ),
    ];
    for (name, statements) in &cases {
        c.bench_function(name, |b| {
            let mut next = statements.iter().cycle();
            b.iter(|| {
                let sql = next.next().map(String::as_str).unwrap_or_default();
                black_box(policy.judge(&alice, "prod", black_box(sql), &mut session))
            })
        });
    }
}

fn parse(c: &mut Criterion) {
    c.bench_function("classify/pgbench_select", |b| {
        b.iter(|| {
            classify(black_box(
                "SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
            ))
        })
    });
    c.bench_function("classify/cte_with_write", |b| {
        b.iter(|| {
            classify(black_box(
                "WITH moved AS (DELETE FROM queue WHERE id IN (SELECT id FROM queue ORDER BY id LIMIT 10) RETURNING *) INSERT INTO archive SELECT * FROM moved",
            ))
        })
    });
    c.bench_function("fingerprint/join_select", |b| {
        b.iter(|| {
            sluice_sql::fingerprint(black_box(
                "SELECT o.id, c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.created_at > '2026-01-01' AND c.region = 'eu-1' ORDER BY o.id LIMIT 50",
            ))
        })
    });
}

criterion_group!(benches, judge, parse);
criterion_main!(benches);
