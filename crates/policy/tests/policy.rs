//! Policy decisions end to end (rules as written in YAML, statements as clients send them),
//! including the evasion forms a hostile client would try.

#![allow(clippy::unwrap_used)]

use sluice_core::{ActorKind, Identity};
use sluice_policy::{Policy, RuleSpec, SessionPolicy, Unparsed, Verdict};

const RULES: &str = r#"
- { name: no-drop, connections: [prod], match: { statement: [drop, truncate] }, action: deny, message: ask a DBA }
- { name: unbounded-writes, match: { statement: [update, delete], where: absent }, action: deny }
- { name: no-secrets, match: { tables: ["secret.*"] }, action: deny, except: [group:dba] }
- { name: agents-read-only, applies_to: ["agent:*"], match: { statement: [insert, update, delete, merge, ddl, copy, grant, revoke, call] }, action: deny }
- { name: no-kill, match: { functions: [pg_terminate_backend, "pg_read_*", dblink] }, action: deny }
"#;

fn policy(unparsed: Unparsed) -> Policy {
    let specs: Vec<RuleSpec> = serde_yaml_ng::from_str(RULES).unwrap();
    Policy::new(
        &specs,
        &[("prod".into(), unparsed), ("staging".into(), unparsed)],
    )
    .unwrap()
}

fn person(groups: &[&str]) -> Identity {
    Identity {
        user: "alice".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        credential: None,
        actor: ActorKind::Human,
    }
}

fn agent() -> Identity {
    Identity {
        user: "cursor".into(),
        groups: vec![],
        credential: None,
        actor: ActorKind::Agent,
    }
}

/// The rule that refused `sql` in a fresh session (`""` for not understood), or `None`.
fn rule(policy: &Policy, who: &Identity, connection: &str, sql: &str) -> Option<String> {
    let mut session = SessionPolicy::default();
    match policy.judge(who, connection, sql, &mut session) {
        Verdict::Allow => None,
        Verdict::Deny { rule, .. } => Some(rule),
        Verdict::Review { rule, .. } => Some(format!("review:{rule}")),
        Verdict::NotUnderstood { .. } => Some(String::new()),
    }
}

#[test]
fn case_comments_whitespace_and_quoting_do_not_change_the_decision() {
    let p = policy(Unparsed::Deny);
    let alice = person(&[]);
    for sql in [
        "DROP TABLE users",
        "drop table users",
        "DrOp/**/TaBlE users",
        "/* leading */ drop -- comment\n table\t\"users\"",
        "drop /* a /* nested */ comment */ table users",
        "  \n drop table public.users cascade",
        "truncate only users",
    ] {
        assert_eq!(
            rule(&p, &alice, "prod", sql).as_deref(),
            Some("no-drop"),
            "{sql}"
        );
    }
    // The rule names only `prod`.
    assert_eq!(rule(&p, &alice, "staging", "drop table users"), None);
}

#[test]
fn hidden_statements_are_judged() {
    let p = policy(Unparsed::Deny);
    let alice = person(&[]);
    for sql in [
        "WITH gone AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM gone",
        "with x as (select 1) update orders set paid = true",
        "EXPLAIN ANALYZE DELETE FROM orders",
        "explain (analyze, buffers) update orders set paid = false",
        "PREPARE wipe AS DELETE FROM orders",
        "delete from orders where 1 = 1",
        "update orders set a = 1 where true",
    ] {
        assert_eq!(
            rule(&p, &alice, "prod", sql).as_deref(),
            Some("unbounded-writes"),
            "{sql}"
        );
    }
    assert_eq!(
        rule(&p, &alice, "prod", "delete from orders where id = 7"),
        None
    );
    assert_eq!(
        rule(&p, &alice, "prod", "explain analyze truncate orders").as_deref(),
        Some("no-drop")
    );
}

#[test]
fn sql_prepare_then_execute_is_judged_as_what_it_runs() {
    let p = policy(Unparsed::Deny);
    let who = agent();
    let mut session = SessionPolicy::default();
    // Reading is fine for the agent, so the PREPARE passes and EXECUTE runs a read.
    assert_eq!(
        p.judge(
            &who,
            "prod",
            "prepare q (int) as select * from orders where id = $1",
            &mut session
        ),
        Verdict::Allow
    );
    assert_eq!(
        p.judge(&who, "prod", "EXECUTE q(1)", &mut session),
        Verdict::Allow
    );
    // A write cannot be prepared, so it cannot be executed either.
    assert!(matches!(
        p.judge(
            &who,
            "prod",
            "prepare w as insert into orders values (1)",
            &mut session
        ),
        Verdict::Deny { .. }
    ));
    assert!(matches!(
        p.judge(&who, "prod", "execute w", &mut session),
        Verdict::NotUnderstood { .. }
    ));
    // A DEALLOCATE may be ignored by the server (in an aborted transaction), so a name
    // keeps its definitions: redefined after it, EXECUTE is judged as old and new.
    assert_eq!(
        p.judge(&who, "prod", "deallocate q", &mut session),
        Verdict::Allow
    );
}

#[test]
fn a_prepared_name_is_judged_as_every_definition_it_may_have() {
    let specs: Vec<RuleSpec> = serde_yaml_ng::from_str(
        "[{ name: deletes, match: { statement: [delete] }, action: review, reviewers: [group:dba] }]",
    )
    .unwrap();
    let p = Policy::new(&specs, &[("prod".into(), Unparsed::Deny)]).unwrap();
    let alice = person(&[]);
    let held = |v: Verdict| matches!(v, Verdict::Review { .. });
    // Redefined after a DEALLOCATE the server may have ignored: both definitions count,
    // and reviewers see what EXECUTE may run.
    let mut session = SessionPolicy::default();
    for sql in [
        "prepare r as delete from t where id = 1",
        "deallocate r",
        "prepare r as select 1",
    ] {
        assert_eq!(
            p.judge(&alice, "prod", sql, &mut session),
            Verdict::Allow,
            "{sql}"
        );
    }
    match p.judge(&alice, "prod", "execute r", &mut session) {
        Verdict::Review { runs, .. } => {
            assert!(runs.iter().any(|t| t.contains("delete from t")), "{runs:?}");
        }
        other => panic!("{other:?}"),
    }
    // The extended protocol shares the namespace with SQL PREPARE, both ways.
    let mut session = SessionPolicy::default();
    let parse = sluice_policy::Subject {
        sql: "delete from t where id = $1",
        defines: Some("s"),
        runs: None,
    };
    assert!(held(p.judge_subject(&alice, "prod", parse, &mut session)));
    assert!(held(p.judge(&alice, "prod", "execute s(1)", &mut session)));
    p.judge(
        &alice,
        "prod",
        "prepare u as delete from t where id = 2",
        &mut session,
    );
    let execute = sluice_policy::Subject {
        sql: "select 1",
        defines: None,
        runs: Some("u"),
    };
    assert!(held(p.judge_subject(&alice, "prod", execute, &mut session)));
}

#[test]
fn identities_scope_rules() {
    let p = policy(Unparsed::Deny);
    assert_eq!(
        rule(&p, &person(&[]), "prod", "select * from secret.keys").as_deref(),
        Some("no-secrets")
    );
    assert_eq!(
        rule(&p, &person(&["dba"]), "prod", "select * from secret.keys"),
        None
    );
    assert_eq!(
        rule(&p, &agent(), "prod", "insert into orders values (1)").as_deref(),
        Some("agents-read-only")
    );
    assert_eq!(
        rule(&p, &person(&[]), "prod", "insert into orders values (1)"),
        None
    );
    assert_eq!(
        rule(&p, &agent(), "prod", "copy orders from stdin").as_deref(),
        Some("agents-read-only")
    );
}

#[test]
fn tables_follow_the_search_path() {
    let p = policy(Unparsed::Deny);
    let alice = person(&[]);
    let mut session = SessionPolicy::default();
    assert_eq!(
        p.judge(&alice, "prod", "select * from keys", &mut session),
        Verdict::Allow
    );
    assert_eq!(
        p.judge(
            &alice,
            "prod",
            "SET search_path TO secret, public",
            &mut session
        ),
        Verdict::Allow
    );
    assert!(matches!(
        p.judge(&alice, "prod", "select * from keys", &mut session),
        Verdict::Deny { .. }
    ));
    // A RESET may be undone by a ROLLBACK, which sluice cannot see: once on the path, a
    // schema stays there as far as policy is concerned.
    p.judge(&alice, "prod", "reset search_path", &mut session);
    assert!(matches!(
        p.judge(&alice, "prod", "select * from keys", &mut session),
        Verdict::Deny { .. }
    ));
    // A change sluice cannot follow makes every unqualified name suspect.
    p.judge(
        &alice,
        "prod",
        "select set_config('search_path', 'sec' || 'ret', false)",
        &mut session,
    );
    assert!(matches!(
        p.judge(&alice, "prod", "select * from keys", &mut session),
        Verdict::Deny { .. }
    ));
    // However the startup spells it: PostgreSQL reads `-` as `_` in option names.
    for options in [
        "-c search_path=secret",
        "--search-path=secret",
        "-csearch-path=secret",
        "-c SEARCH-PATH=secret",
    ] {
        let mut started_with_path =
            SessionPolicy::with_startup_settings(&[("options".into(), options.into())]);
        assert!(
            matches!(
                p.judge(&alice, "prod", "select * from keys", &mut started_with_path),
                Verdict::Deny { .. }
            ),
            "{options}"
        );
    }
}

#[test]
fn functions_are_matched_wherever_they_are_called() {
    let p = policy(Unparsed::Deny);
    let alice = person(&[]);
    for sql in [
        "select pg_terminate_backend(123)",
        "SELECT Pg_Catalog.PG_TERMINATE_BACKEND(pid) FROM pg_stat_activity",
        "select * from orders where exists (select pg_read_file('/etc/passwd'))",
        "select * from dblink('host=x', 'select 1') as t(a int)",
        "insert into orders select pg_read_binary_file('/x')",
    ] {
        assert_eq!(
            rule(&p, &alice, "prod", sql).as_deref(),
            Some("no-kill"),
            "{sql}"
        );
    }
}

#[test]
fn what_sluice_cannot_understand_is_refused_unless_the_connection_allows_it() {
    let strict = policy(Unparsed::Deny);
    let lenient = policy(Unparsed::Allow);
    let alice = person(&[]);
    for sql in [
        "DO $$ BEGIN EXECUTE 'DROP TABLE users'; END $$",
        "selct * from users",
        "drop tablee users",
    ] {
        assert_eq!(
            rule(&strict, &alice, "prod", sql).as_deref(),
            Some(""),
            "{sql}"
        );
        assert_eq!(rule(&lenient, &alice, "prod", sql), None, "{sql}");
    }
    // A connection no rule covers is never parsed, so nothing there is refused.
    let specs: Vec<RuleSpec> = serde_yaml_ng::from_str(
        "[{ name: r, connections: [prod], match: { statement: [drop] }, action: deny }]",
    )
    .unwrap();
    let scoped = Policy::new(
        &specs,
        &[
            ("prod".into(), Unparsed::Deny),
            ("dev".into(), Unparsed::Deny),
        ],
    )
    .unwrap();
    assert_eq!(rule(&scoped, &alice, "dev", "selct 1"), None);
}

#[test]
fn the_cache_never_mixes_up_statements() {
    let p = policy(Unparsed::Deny);
    let alice = person(&[]);
    // Same fingerprint (constants differ): same decision, from the cache the second time.
    assert_eq!(
        rule(&p, &alice, "prod", "delete from orders where id = 1"),
        None
    );
    assert_eq!(
        rule(&p, &alice, "prod", "delete from orders where id = 2"),
        None
    );
    // Different shapes are never confused.
    assert_eq!(
        rule(&p, &alice, "prod", "delete from orders").as_deref(),
        Some("unbounded-writes")
    );
    assert_eq!(
        rule(&p, &alice, "prod", r#"select * from secret."Keys""#).as_deref(),
        Some("no-secrets")
    );
}

#[test]
fn invalid_rules_are_rejected_with_the_rule_and_key_named() {
    let connections = [("prod".to_string(), Unparsed::Deny)];
    let err = |yaml: &str| {
        let specs: Vec<RuleSpec> = serde_yaml_ng::from_str(yaml).unwrap();
        Policy::new(&specs, &connections).unwrap_err().to_string()
    };
    assert!(err("[{name: a, match: {statement: [dropp]}, action: deny}]").contains("dropp"));
    assert!(err("[{name: a, connections: [nope], match: {}, action: deny}]").contains("nope"));
    assert!(err("[{name: a, match: {}, action: allow}]").contains("action"));
    assert!(err("[{name: a, match: {}, action: review}]").contains("reviewers"));
    assert!(
        err("[{name: a, match: {}, action: review, reviewers: [\"agent:*\"]}]")
            .contains("agents cannot approve")
    );
    assert!(
        err("[{name: a, match: {}, action: review, reviewers: [group:dba], mode: later}]")
            .contains("mode")
    );
    assert!(
        err("[{name: a, match: {}, action: review, reviewers: [group:dba], timeout: soon}]")
            .contains("timeout")
    );
    assert!(
        err("[{name: a, match: {}, action: deny, reviewers: [group:dba]}]").contains("reviewers")
    );
    assert!(err("[{name: a, match: {where: sometimes}, action: deny}]").contains("where"));
    assert!(
        err("[{name: a, applies_to: [role:x], match: {}, action: deny}]").contains("applies_to")
    );
    assert!(
        err("[{name: a, match: {}, action: deny}, {name: a, match: {}, action: deny}]")
            .contains("unique")
    );
    assert!(serde_yaml_ng::from_str::<Vec<RuleSpec>>(
        "[{name: a, match: {statment: [drop]}, action: deny}]"
    )
    .is_err());
}

#[test]
fn deny_beats_review_and_modes_follow_the_identity() {
    let specs: Vec<RuleSpec> = serde_yaml_ng::from_str(
        r#"
- name: writes-need-review
  match: { statement: [insert, update, delete] }
  action: review
  reviewers: [group:dba]
  mode_overrides: [{ principal: "agent:*", mode: fail }]
  min_approvals: 2
  timeout: 5m
- { name: unbounded, match: { statement: [delete], where: absent }, action: deny }
"#,
    )
    .unwrap();
    let p = Policy::new(&specs, &[("prod".into(), Unparsed::Deny)]).unwrap();
    let mut session = SessionPolicy::default();
    assert!(matches!(
        p.judge(&person(&[]), "prod", "delete from t", &mut session),
        Verdict::Deny { rule, .. } if rule == "unbounded"
    ));
    match p.judge(
        &person(&[]),
        "prod",
        "delete from t where id = 1",
        &mut session,
    ) {
        Verdict::Review {
            rule, mode, review, ..
        } => {
            assert_eq!(rule, "writes-need-review");
            assert_eq!(mode, sluice_policy::ReviewMode::Hold);
            assert_eq!(review.min_approvals, 2);
            assert_eq!(review.timeout, std::time::Duration::from_secs(300));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        p.judge(&agent(), "prod", "insert into t values (1)", &mut session),
        Verdict::Review {
            mode: sluice_policy::ReviewMode::Fail,
            ..
        }
    ));
}

#[test]
fn a_review_waits_for_the_execute_of_a_prepared_statement() {
    let specs: Vec<RuleSpec> = serde_yaml_ng::from_str(
        "[{ name: deletes, match: { statement: [delete] }, action: review, reviewers: [group:dba] }]",
    )
    .unwrap();
    let p = Policy::new(&specs, &[("prod".into(), Unparsed::Deny)]).unwrap();
    let mut session = SessionPolicy::default();
    let alice = person(&[]);
    assert_eq!(
        p.judge(
            &alice,
            "prod",
            "prepare d as delete from t where id = $1",
            &mut session
        ),
        Verdict::Allow
    );
    assert!(matches!(
        p.judge(&alice, "prod", "execute d(1)", &mut session),
        Verdict::Review { .. }
    ));
}

/// Found by red-teaming `policy check` against a real PostgreSQL: each of these ran a
/// statement a rule was meant to stop.
#[test]
fn red_team_bypasses_stay_closed() {
    let p = policy(Unparsed::Deny);
    let alice = person(&[]);
    let refused = |sql: &str| rule(&p, &alice, "prod", sql).is_some();
    for sql in [
        // Unicode-escaped names hide the function from the parser.
        r#"select U&"pg\005fread_file"('/etc/hostname')"#,
        r#"select U&"set_confi\0067"('search_path','secret',false)"#,
        // Tables read through COPY, TABLE, and functions given SQL as text.
        "COPY secret.keys TO STDOUT",
        "COPY secret.keys (k) TO STDOUT",
        "select * from (table secret.keys) x",
        "WITH x AS (TABLE secret.keys) SELECT * FROM x",
        "COPY (TABLE secret.keys) TO STDOUT",
        "select query_to_xml('select * from secret.keys', true, false, '')",
        "select table_to_xml('secret.keys', true, false, '')",
        // Unbounded writes in disguise.
        "MERGE INTO orders USING (select 1) s ON true WHEN MATCHED THEN DELETE",
        "insert into orders select * from orders on conflict (id) do update set a = 0",
        "delete from orders where true or id = 1",
        "delete from orders where id = id",
        "update orders set a = 0 from t2 where t2.id is null",
        "delete from orders where not false",
        // Two statements where the splitter saw one.
        "select 1; select * from secret.keys",
    ] {
        assert!(refused(sql), "allowed: {sql}");
    }
    for sql in [
        "MERGE INTO orders o USING new_orders n ON o.id = n.id WHEN MATCHED THEN UPDATE SET a = n.a",
        "insert into orders values (1, 'a') on conflict (id) do update set a = excluded.a",
        "update orders o set a = 0 from t2 where t2.id = o.id",
        "delete from orders where id = 1 or id = 2",
    ] {
        assert!(!refused(sql), "refused: {sql}");
    }

    // The search path can no longer be moved unseen.
    for moves in [
        "select * from set_config('search_path', 'secret', false)",
        "update pg_settings set setting = 'secret' where name = 'search_path'",
        r#"SET "Search_Path" = secret"#,
    ] {
        let mut session = SessionPolicy::default();
        p.judge(&alice, "prod", moves, &mut session);
        assert!(
            matches!(
                p.judge(&alice, "prod", "select * from keys", &mut session),
                Verdict::Deny { .. }
            ),
            "after {moves}"
        );
    }
    // A SET undone by ROLLBACK leaves the schema suspect.
    let mut session = SessionPolicy::default();
    for sql in [
        "set search_path = secret",
        "begin",
        "set search_path = public",
        "rollback",
    ] {
        p.judge(&alice, "prod", sql, &mut session);
    }
    assert!(matches!(
        p.judge(&alice, "prod", "select * from keys", &mut session),
        Verdict::Deny { .. }
    ));
    // The classification cache is never shared between two SETs of different schemas.
    let mut session = SessionPolicy::default();
    for sql in ["set search_path = 'public'", "set search_path = 'secret'"] {
        p.judge(&alice, "prod", sql, &mut session);
    }
    assert!(matches!(
        p.judge(&alice, "prod", "select * from keys", &mut session),
        Verdict::Deny { .. }
    ));
}

/// The second red-team pass.
#[test]
fn second_red_team_pass_stays_closed() {
    let p = policy(Unparsed::Deny);
    let alice = person(&[]);
    let refused = |sql: &str| rule(&p, &alice, "prod", sql).is_some();
    for sql in [
        // Always-true conditions and conditions that are not the target's.
        "delete from orders where id = (id)",
        "delete from orders where orders.id = id",
        r#"delete from orders where ID = "id""#,
        "delete from orders where id in (id)",
        "delete from orders where id between id and id",
        "delete from orders where id is not distinct from id",
        "delete from orders where not id <> id",
        "update orders set a = 0 from t2 where x is null",
        "delete from orders using t2 where x is null",
        "update orders as z set a = 0 from t2 as orders where orders.x is null",
        "delete from orders where exists (select x from t2)",
        // Catalog writes, TOAST reads, contrib functions given SQL or table names.
        "update pg_class set relnamespace = 'public'::regnamespace where oid = 'secret.keys'::regclass",
        "update pg_namespace set nspname = 'pub2' where nspname = 'secret'",
        "delete from pg_catalog.pg_class where oid = 1",
        "select chunk_data from pg_toast.pg_toast_16512",
        "select * from crosstab('select id, ''c'', k from secret.keys') as t(a int, b text)",
        "select get_raw_page('secret.keys', 0)",
        "load 'auto_explain'",
        // GRANT on secret tables.
        "grant select on secret.keys to public",
        "grant select on all tables in schema secret to public",
    ] {
        assert!(refused(sql), "allowed: {sql}");
    }
    // Statements that differ only in constants share a cached classification, so their
    // decision must not depend on the constants: the same whichever comes first.
    let verdicts = |first: &str, second: &str| {
        let fresh = policy(Unparsed::Deny);
        let mut session = SessionPolicy::default();
        let a = fresh.judge(&alice, "prod", first, &mut session);
        let b = fresh.judge(&alice, "prod", second, &mut session);
        (a, b)
    };
    let same = "delete from orders where id*1 = id*1";
    let other = "delete from orders where id*1 = id*2";
    let (a1, b1) = verdicts(same, other);
    let (b2, a2) = verdicts(other, same);
    assert_eq!(a1, b1);
    assert_eq!((a1, b1), (a2, b2));
    // Correlated subqueries and joins on the target still count as limits.
    for sql in [
        "delete from orders o where exists (select 1 from t2 where t2.id = o.id)",
        "delete from orders using t2 where orders.id = t2.id",
        "update orders o set a = 0 from t2 where t2.id = o.id",
    ] {
        assert!(!refused(sql), "refused: {sql}");
    }
    // SET ROLE can bring the schema named after the role onto the path ("$user").
    let mut session = SessionPolicy::default();
    p.judge(&alice, "prod", "set role secret", &mut session);
    assert!(matches!(
        p.judge(&alice, "prod", "select * from keys", &mut session),
        Verdict::Deny { .. }
    ));
    // A name prepared twice is judged as both definitions.
    let mut session = SessionPolicy::default();
    for sql in [
        "prepare q as select * from keys",
        "prepare q as select 1",
        "set search_path = secret",
    ] {
        p.judge(&alice, "prod", sql, &mut session);
    }
    assert!(matches!(
        p.judge(&alice, "prod", "execute q", &mut session),
        Verdict::Deny { .. }
    ));
}

fn call(service: &str, action: &str, resource: &str, source: Option<&str>) -> sluice_core::ApiCall {
    sluice_core::ApiCall {
        service: service.into(),
        action: action.into(),
        resource: resource.into(),
        source: source.map(str::to_owned),
        body_unbound: false,
    }
}

#[test]
fn api_calls_are_judged_by_action_and_resource_and_copies_by_their_source_too() {
    let specs: Vec<RuleSpec> = serde_yaml_ng::from_str(
        r#"
- { name: keep-prod, match: { actions: ["s3:DeleteObject", "s3:DeleteObjects"], resources: ["prod-*"] }, action: deny }
- { name: secrets, match: { actions: ["s3:GetObject"], resources: ["secret/*"] }, action: deny }
- { name: billing, match: { actions: ["lambda:Invoke"], resources: ["billing-*"] }, action: review, reviewers: [group:ops] }
- { name: no-drop, match: { statement: [drop] }, action: deny }
"#,
    )
    .unwrap();
    let p = Policy::new(&specs, &[("aws".into(), Unparsed::Deny)]).unwrap();
    let alice = person(&[]);
    let judged = |c: &sluice_core::ApiCall| match p.judge_call(&alice, "aws", c) {
        Verdict::Allow => None,
        Verdict::Deny { rule, .. } => Some(rule),
        Verdict::Review { rule, .. } => Some(format!("review:{rule}")),
        Verdict::NotUnderstood { .. } => Some(String::new()),
    };
    assert_eq!(
        judged(&call("s3", "DeleteObject", "prod-eu/a.csv", None)).as_deref(),
        Some("keep-prod")
    );
    assert_eq!(judged(&call("s3", "DeleteObject", "dev/a.csv", None)), None);
    assert_eq!(
        judged(&call("s3", "PutObject", "prod-eu/a.csv", None)),
        None
    );
    // Service names are case-insensitive, actions are not globbed loosely.
    assert_eq!(
        judged(&call("S3", "DeleteObject", "prod-eu/a", None)).as_deref(),
        Some("keep-prod")
    );
    assert_eq!(
        judged(&call("s3", "DeleteObjectTagging", "prod-eu/a", None)),
        None
    );
    assert_eq!(
        judged(&call("lambda", "Invoke", "billing-x", None)).as_deref(),
        Some("review:billing")
    );
    // A copy reads its source: it cannot carry out what may not be read.
    assert_eq!(
        judged(&call(
            "s3",
            "CopyObject",
            "open/x",
            Some("secret/passwords.txt")
        ))
        .as_deref(),
        Some("secrets")
    );
    assert_eq!(
        judged(&call("s3", "CopyObject", "open/x", Some("open/y"))),
        None
    );
    // A call whose resource is unknown may be any resource: rules naming resources match.
    assert_eq!(
        judged(&call("s3", "DeleteObject", "*", None)).as_deref(),
        Some("keep-prod")
    );
    // A call sluice cannot name is not understood on a connection with rules.
    assert_eq!(
        judged(&call("s3", "Unknown", "b", None)).as_deref(),
        Some("")
    );
    // SQL rules never match calls, and call rules never match SQL.
    assert_eq!(
        rule(&p, &alice, "aws", "DROP TABLE t").as_deref(),
        Some("no-drop")
    );
    assert_eq!(
        rule(&p, &alice, "aws", "DELETE FROM prod_x WHERE id = 1"),
        None
    );

    let mixed: Vec<RuleSpec> = serde_yaml_ng::from_str(
        "[{ name: m, match: { statement: [drop], actions: [\"s3:*\"] }, action: deny }]",
    )
    .unwrap();
    let err = Policy::new(&mixed, &[]).unwrap_err().to_string();
    assert!(err.contains("mixes SQL criteria"), "{err}");
    let bare: Vec<RuleSpec> =
        serde_yaml_ng::from_str("[{ name: m, match: { actions: [DeleteObject] }, action: deny }]")
            .unwrap();
    assert!(Policy::new(&bare, &[])
        .unwrap_err()
        .to_string()
        .contains("service:Action"));
}

/// A statement the parser cannot read is refused with the parser's words about it, never
/// with those about another statement of the same shape (another user's constants).
#[test]
fn a_refusal_to_understand_quotes_only_its_own_statement() {
    let p = policy(Unparsed::Deny);
    let alice = person(&[]);
    let reason = |sql: &str| match p.judge(&alice, "prod", sql, &mut SessionPolicy::default()) {
        Verdict::NotUnderstood { reason } => reason,
        other => panic!("{sql}: {other:?}"),
    };
    let first = reason("select 1 as a 'alice-private-token'");
    assert!(first.contains("alice-private-token"), "{first}");
    let second = reason("select 2 as a 'bobvalue'");
    assert!(!second.contains("alice"), "{second}");
    assert!(second.contains("bobvalue"), "{second}");
}
