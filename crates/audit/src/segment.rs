//! Segment files: their names and how to list them.

use std::fs;
use std::path::Path;

use crate::error::AuditError;

const PREFIX: &str = "audit-";
const SUFFIX: &str = ".jsonl";

/// File name of segment `number`, e.g. `audit-000001.jsonl`.
pub(crate) fn file_name(number: u32) -> String {
    format!("{PREFIX}{number:06}{SUFFIX}")
}

/// The segment number of a file name, or `None` if it is not a segment.
fn parse_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() < 6 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Numbers of the segments in `dir`, ascending. Other files are ignored.
pub(crate) fn list(dir: &Path) -> Result<Vec<u32>, AuditError> {
    let context = || format!("cannot list audit directory {}", dir.display());
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir).map_err(|err| AuditError::io(context(), err))? {
        let entry = entry.map_err(|err| AuditError::io(context(), err))?;
        if let Some(number) = entry.file_name().to_str().and_then(parse_file_name) {
            numbers.push(number);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(file_name(1), "audit-000001.jsonl");
        assert_eq!(parse_file_name("audit-000001.jsonl"), Some(1));
        assert_eq!(parse_file_name(&file_name(1_234_567)), Some(1_234_567));
        assert_eq!(parse_file_name("audit-1.jsonl"), None);
        assert_eq!(parse_file_name("audit-000001.jsonl.bak"), None);
        assert_eq!(parse_file_name("audit-00000x.jsonl"), None);
    }
}
