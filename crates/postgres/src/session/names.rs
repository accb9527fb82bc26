//! Prepared statements and portals as the server has them, so that every Execute is
//! recorded with the SQL that really runs.
//!
//! The gateway sees Parse/Bind/Close before the server answers them, so it predicts the
//! server: a definition stands until the server fails or skips it, then the previous one is
//! put back; a Close takes effect only once CloseComplete confirms it; named portals end
//! with their transaction. A second Parse of a named statement usually fails (42P05), but
//! SQL (`DEALLOCATE`, `DISCARD ALL`) may have dropped the first one meanwhile, so it too
//! stands until answered: whatever runs after it in its batch uses it, or nothing runs (an
//! error skips the rest of the batch), and later batches wait for its answer. Where the
//! prediction could be wrong, the definition is refused instead.

use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug)]
pub(super) struct Statement {
    /// Statement text, secrets redacted.
    pub sql: Arc<str>,
    /// Parameter types given in Parse (0 = unspecified).
    pub declared: Vec<u32>,
    /// Parameter types the server reported in ParameterDescription.
    pub reported: Option<Vec<u32>>,
}

#[derive(Debug)]
pub(super) struct Portal {
    /// The prepared statement it was bound from.
    pub statement: String,
    pub sql: Arc<str>,
    pub params: Vec<Option<String>>,
    /// Number of ReadyForQuery-producing messages sent before this Bind.
    epoch: u64,
}

struct Entry<T> {
    value: T,
    /// A Close was sent and not yet confirmed.
    closing: bool,
    /// Defined in this batch (the client's count of Syncs before it) and not yet
    /// confirmed by the server.
    pending: Option<u64>,
    /// Which definition this is: a confirmation settles only its own definition, not a
    /// later one made under the same name meanwhile (0: known to the server).
    id: u64,
}

/// Named definitions of one kind (statements or portals) and their settlement state.
struct Table<T> {
    entries: HashMap<String, Entry<T>>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            entries: HashMap::new(),
        }
    }
}

impl<T> Table<T> {
    fn get(&self, name: &str) -> Option<&T> {
        self.entries.get(name).map(|e| &e.value)
    }

    /// Defines `name` as definition `id` of `batch`, not yet confirmed; returns what it
    /// replaced.
    fn define(&mut self, name: &str, value: T, batch: u64, id: u64) -> Option<T> {
        let entry = Entry {
            value,
            closing: false,
            pending: Some(batch),
            id,
        };
        self.entries.insert(name.to_owned(), entry).map(|e| e.value)
    }

    /// Puts back what the server has: `value`, or nothing.
    fn restore(&mut self, name: String, value: Option<T>) {
        match value {
            Some(value) => {
                let entry = Entry {
                    value,
                    closing: false,
                    pending: None,
                    id: 0,
                };
                self.entries.insert(name, entry);
            }
            None => {
                self.entries.remove(&name);
            }
        }
    }

    fn unsettled(&self, name: &str, batch: u64) -> bool {
        self.entries
            .get(name)
            .is_some_and(|e| e.pending.is_some_and(|p| p < batch))
    }

    fn confirm(&mut self, name: &str, id: u64) {
        if let Some(e) = self.entries.get_mut(name).filter(|e| e.id == id) {
            e.pending = None;
        }
    }

    fn set_closing(&mut self, name: &str, closing: bool) {
        if let Some(e) = self.entries.get_mut(name) {
            e.closing = closing;
        }
    }
}

/// The result of a Bind, as the server will see it.
#[derive(Debug)]
pub(super) enum Define {
    /// Defined; undo it if the server skips or fails the message.
    Defined(Undo),
    /// The server rejects the definition (a portal of the same name exists in this
    /// transaction); the existing one stays.
    Duplicate,
    /// The gateway cannot tell what the server will have; the message must be refused.
    Ambiguous,
}

/// What a Parse or Bind replaced, to restore when the server does not carry it out.
#[derive(Debug)]
pub(super) enum Undo {
    Statement {
        name: String,
        previous: Option<Statement>,
        /// The definition this undoes (see `Entry::id`).
        id: u64,
    },
    Portal {
        name: String,
        previous: Option<Portal>,
        id: u64,
    },
}

/// Whether running `sql` may change the named prepared statements and portals
/// (`DEALLOCATE`, `PREPARE`, `DISCARD`, `DECLARE`, `CLOSE` share their names). A plain
/// search, not a parse: a word anywhere (a DO block, a function body) may be what changes
/// them.
pub(super) fn may_change_names(sql: &str) -> bool {
    super::mentions_any(
        sql,
        &[b"dealloc", b"prepare", b"discard", b"declare", b"close"],
    )
}

#[derive(Default)]
pub(super) struct Names {
    statements: Table<Statement>,
    portals: Table<Portal>,
    /// Last definition id handed out.
    last_id: u64,
}

impl Names {
    fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    /// Defines statement `name`; `None` when the gateway cannot tell what the server will
    /// have (a Close of that name is unanswered), and the Parse must be refused.
    /// `batch`: the client's count of batch ends (Sync, Query, FunctionCall) before it.
    pub fn parse(&mut self, name: &str, statement: Statement, batch: u64) -> Option<Undo> {
        match self.statements.entries.get(name) {
            Some(e) if !name.is_empty() && e.closing => None,
            _ => {
                let id = self.next_id();
                let previous = self.statements.define(name, statement, batch, id);
                Some(Undo::Statement {
                    name: name.to_owned(),
                    previous,
                    id,
                })
            }
        }
    }

    /// `epoch`: ReadyForQuery-producing messages sent so far.
    pub fn bind(
        &mut self,
        name: &str,
        statement: &str,
        sql: Arc<str>,
        params: Vec<Option<String>>,
        epoch: u64,
        batch: u64,
    ) -> Define {
        match self.portals.entries.get(name) {
            // Same batch: the server rejects the duplicate.
            Some(e) if !name.is_empty() && e.value.epoch == epoch && !e.closing => {
                Define::Duplicate
            }
            // An earlier batch: whether its transaction (and so the portal) ended is not
            // known yet.
            Some(_) if !name.is_empty() => Define::Ambiguous,
            _ => {
                let id = self.next_id();
                let portal = Portal {
                    statement: statement.to_owned(),
                    sql,
                    params,
                    epoch,
                };
                let previous = self.portals.define(name, portal, batch, id);
                Define::Defined(Undo::Portal {
                    name: name.to_owned(),
                    previous,
                    id,
                })
            }
        }
    }

    /// The statement `name` was defined by an earlier batch than `batch` and the server
    /// has not confirmed it yet: what it will hold is not known until it answers.
    pub fn statement_unsettled(&self, name: &str, batch: u64) -> bool {
        self.statements.unsettled(name, batch)
    }

    /// Like [`Names::statement_unsettled`] for a portal.
    pub fn portal_unsettled(&self, name: &str, batch: u64) -> bool {
        self.portals.unsettled(name, batch)
    }

    /// The server confirmed the definition an undo record describes.
    pub fn confirm(&mut self, undo: &Undo) {
        match undo {
            Undo::Statement { name, id, .. } => self.statements.confirm(name, *id),
            Undo::Portal { name, id, .. } => self.portals.confirm(name, *id),
        }
    }

    pub fn statement(&self, name: &str) -> Option<&Statement> {
        self.statements.get(name)
    }

    pub fn portal(&self, name: &str) -> Option<&Portal> {
        self.portals.get(name)
    }

    /// Types for rendering bind values: declared ones, completed by reported ones.
    pub fn param_types(&self, statement: &Statement) -> Vec<u32> {
        match &statement.reported {
            Some(reported) => reported
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    statement
                        .declared
                        .get(i)
                        .copied()
                        .filter(|d| *d != 0)
                        .unwrap_or(*t)
                })
                .collect(),
            None => statement.declared.clone(),
        }
    }

    pub fn set_reported(&mut self, statement: &str, types: Vec<u32>) {
        if let Some(e) = self.statements.entries.get_mut(statement) {
            e.value.reported = Some(types);
        }
    }

    /// A Close for `kind` (`S` or `P`) `name` was sent.
    pub fn start_close(&mut self, kind: u8, name: &str) {
        match kind {
            b'S' => self.statements.set_closing(name, true),
            _ => self.portals.set_closing(name, true),
        }
    }

    /// The server confirmed the Close (`took_effect`) or skipped it after an error.
    pub fn finish_close(&mut self, kind: u8, name: &str, took_effect: bool) {
        match (kind, took_effect) {
            (b'S', true) => self.statements.restore(name.to_owned(), None),
            (_, true) => self.portals.restore(name.to_owned(), None),
            (b'S', false) => self.statements.set_closing(name, false),
            (_, false) => self.portals.set_closing(name, false),
        }
    }

    /// The server did not carry out a Parse or Bind: `failed` when that message itself
    /// failed, otherwise it was skipped after an earlier error.
    pub fn undo(&mut self, undo: Undo, failed: bool) {
        match undo {
            // A Parse of the unnamed statement drops the old one before it can fail.
            Undo::Statement { name, .. } if failed && name.is_empty() => {
                self.statements.restore(name, None)
            }
            Undo::Statement { name, previous, .. } => self.statements.restore(name, previous),
            Undo::Portal { name, previous, .. } => self.portals.restore(name, previous),
        }
    }

    /// SQL may have changed the named prepared statements and portals (see
    /// [`may_change_names`]): forget them, so that running one by name is recorded as
    /// unknown (and masked as hidden) instead of with a text the server may no longer have.
    pub fn forget_named(&mut self) {
        self.statements.entries.retain(|name, _| name.is_empty());
        self.portals.entries.retain(|name, _| name.is_empty());
    }

    /// A transaction ended at the `epoch`-th ReadyForQuery: portals bound before it are gone.
    pub fn transaction_ended(&mut self, epoch: u64) {
        self.portals.entries.retain(|_, e| e.value.epoch >= epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(sql: &str) -> Statement {
        Statement {
            sql: Arc::from(sql),
            declared: Vec::new(),
            reported: None,
        }
    }

    #[test]
    fn a_second_definition_of_a_name_stands_until_the_server_fails_it() {
        let mut n = Names::default();
        let Some(first) = n.parse("s", stmt("DELETE FROM t"), 0) else {
            panic!()
        };
        n.confirm(&first);
        // What runs after it in its batch uses it (if the server accepts it: SQL may have
        // deallocated the first)...
        let Some(second) = n.parse("s", stmt("SELECT 1"), 1) else {
            panic!()
        };
        assert_eq!(
            &*n.statement("s").map(|s| s.sql.clone()).unwrap_or_default(),
            "SELECT 1"
        );
        // ...later batches wait for its answer...
        assert!(n.statement_unsettled("s", 2));
        // ...and when the server rejects it, the first one is back.
        n.undo(second, true);
        assert_eq!(
            &*n.statement("s").map(|s| s.sql.clone()).unwrap_or_default(),
            "DELETE FROM t"
        );
        assert!(!n.statement_unsettled("s", 2));
        assert!(n.parse("", stmt("SELECT 1"), 0).is_some());
        // A skipped Parse of the unnamed statement leaves the old one in place...
        let Some(undo) = n.parse("", stmt("SELECT 2"), 0) else {
            panic!()
        };
        n.undo(undo, false);
        assert_eq!(
            &*n.statement("").map(|s| s.sql.clone()).unwrap_or_default(),
            "SELECT 1"
        );
        // ...a failed one drops it, as the server does.
        let Some(undo) = n.parse("", stmt("SELEC 3"), 0) else {
            panic!()
        };
        n.undo(undo, true);
        assert!(n.statement("").is_none());
    }

    #[test]
    fn definitions_from_an_earlier_batch_are_unsettled_until_confirmed() {
        let mut n = Names::default();
        let Some(undo) = n.parse("s", stmt("DELETE FROM t"), 3) else {
            panic!()
        };
        assert!(
            !n.statement_unsettled("s", 3),
            "same batch: settled by the batch itself"
        );
        assert!(n.statement_unsettled("s", 4));
        n.confirm(&undo);
        assert!(!n.statement_unsettled("s", 4));
    }

    #[test]
    fn a_confirmation_settles_only_its_own_definition() {
        let mut n = Names::default();
        let Some(first) = n.parse("", stmt("DELETE FROM t"), 0) else {
            panic!()
        };
        n.parse("", stmt("SELECT 1"), 1);
        n.confirm(&first);
        assert!(
            n.statement_unsettled("", 2),
            "the later definition is still unsettled"
        );
    }

    #[test]
    fn close_takes_effect_only_when_confirmed() {
        let mut n = Names::default();
        n.parse("s", stmt("DELETE FROM t"), 0);
        n.start_close(b'S', "s");
        assert!(n.parse("s", stmt("SELECT 1"), 0).is_none(), "ambiguous");
        n.finish_close(b'S', "s", false);
        assert!(
            n.statement("s").is_some(),
            "a skipped Close keeps the statement"
        );
        n.start_close(b'S', "s");
        n.finish_close(b'S', "s", true);
        assert!(n.parse("s", stmt("SELECT 1"), 0).is_some());
    }

    #[test]
    fn sql_that_may_change_names_makes_them_unknown() {
        let mut n = Names::default();
        n.parse("s", stmt("SELECT 'hello'"), 0);
        n.parse("", stmt("SELECT 1"), 0);
        n.bind("p", "s", Arc::from("SELECT 'hello'"), vec![], 0, 0);
        assert!(!may_change_names("SELECT count(*) FROM t"));
        assert!(n.statement("s").is_some() && n.portal("p").is_some());
        assert!(may_change_names(
            "deallocate s; prepare s as select email from users"
        ));
        n.forget_named();
        assert!(n.statement("s").is_none() && n.portal("p").is_none());
        assert!(
            n.statement("").is_some(),
            "the unnamed statement is the protocol's own"
        );
    }

    #[test]
    fn named_portals_end_with_their_transaction() {
        let mut n = Names::default();
        let sql: Arc<str> = Arc::from("SELECT 1");
        assert!(matches!(
            n.bind("p", "s", sql.clone(), vec![], 0, 0),
            Define::Defined(_)
        ));
        assert!(matches!(
            n.bind("p", "s", sql.clone(), vec![], 0, 0),
            Define::Duplicate
        ));
        assert!(matches!(
            n.bind("p", "s", sql.clone(), vec![], 1, 1),
            Define::Ambiguous
        ));
        n.transaction_ended(1);
        assert!(n.portal("p").is_none());
        assert!(matches!(
            n.bind("p", "s", sql, vec![], 1, 1),
            Define::Defined(_)
        ));
    }
}
