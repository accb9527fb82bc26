//! SQL text handling that does not depend on a wire protocol: statement splitting, secret
//! redaction, fingerprints.
//!
//! Both follow PostgreSQL's lexical rules (with `standard_conforming_strings = on`) closely enough
//! to find statement boundaries and string constants; neither is a SQL parser. Neither panics, on
//! any input.

mod conninfo;
mod copy;
mod lexer;
mod redact;
mod shape;
mod split;
mod sqlcommenter;

pub use copy::{copy_to_stdout, CopyOut};
pub use redact::{redact_secrets, redact_text_secrets};
pub use shape::{
    fingerprint, first_word_is, has_unicode_identifier, identifiers, normalize, significant_tokens,
};
pub use split::{reads_the_same_either_way, split_statements, split_statements_strict, Statement};
pub use sqlcommenter::{take_comment, Commented};
