//! Agent context on statements: a statement's own (a sqlcommenter comment) merged with its
//! session's (an MCP tool call's, the client's `application_name`), with every masking
//! detector run over the free text before it is stored — prompts may carry secrets.

use sluice_core::{AgentContext, Request, SessionInfo};
use sluice_mask::{DetectorSet, Hit, BUILTIN};

pub struct ContextScrubber {
    detectors: DetectorSet,
}

impl ContextScrubber {
    pub fn new() -> ContextScrubber {
        let all: Vec<String> = BUILTIN.iter().map(|s| (*s).to_owned()).collect();
        ContextScrubber {
            // Fixed input, checked by the tests: not something a peer can influence.
            detectors: DetectorSet::new(&all, &[]).expect("the built-in detectors compile"),
        }
    }

    /// Takes `request`'s sqlcommenter comment out of its text (policy and the record see
    /// the statement without it) and returns the context to record with it, if any.
    pub fn take(&self, session: &SessionInfo, request: &mut Request) -> Option<Box<AgentContext>> {
        // An API call's text names it (`s3:GetObject bucket/key`); it is not SQL, and a
        // key may well contain `/*`.
        let own = if request.call.is_some() {
            None
        } else {
            sluice_sql::take_comment(&request.text).map(|c| {
                request.text = c.statement;
                AgentContext::from_pairs(&c.pairs)
            })
        };
        let mut ctx = match (own, &session.agent_context) {
            (None, None) => return None,
            (Some(own), Some(session_ctx)) => own.or(session_ctx),
            (Some(own), None) => own,
            (None, Some(session_ctx)) => session_ctx.clone(),
        };
        if ctx.client.is_none() {
            ctx.client.clone_from(&session.application_name);
        }
        self.scrub(&mut ctx);
        Some(Box::new(ctx))
    }

    /// The session's own context, masked, for its `session_open` record.
    pub fn session(&self, session: &SessionInfo) -> Option<Box<AgentContext>> {
        let mut ctx = session.agent_context.clone()?;
        self.scrub(&mut ctx);
        Some(Box::new(ctx))
    }

    /// Masks what the detectors find in every text of the context, and the passwords of
    /// any connection string or URI in it.
    pub fn scrub(&self, ctx: &mut AgentContext) {
        let mut hits = Vec::new();
        for text in ctx.texts_mut() {
            if let std::borrow::Cow::Owned(redacted) = sluice_sql::redact_text_secrets(text) {
                *text = redacted;
            }
            hits.clear();
            self.detectors.find(text.as_bytes(), &mut hits);
            if !hits.is_empty() {
                *text = self.redacted(text, &hits);
            }
        }
    }

    fn redacted(&self, text: &str, hits: &[Hit]) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for hit in hits {
            // Detectors match on ASCII boundaries; a hit that would split a character is
            // widened to whole characters.
            let mut start = hit.start.max(at);
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            let mut end = hit.end.min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            if start < at {
                continue;
            }
            out.push_str(&text[at..start]);
            let name = self
                .detectors
                .names()
                .get(usize::from(hit.detector))
                .map_or("secret", String::as_str);
            out.push_str(&format!("[{name}]"));
            at = end;
        }
        out.push_str(&text[at..]);
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prompts_lose_their_secrets() {
        let scrubber = ContextScrubber::new();
        let mut ctx = AgentContext::from_pairs(&[(
            "prompt",
            "use key AKIAIOSFODNN7EXAMPLE and mail bob@example.com — ok",
        )]);
        scrubber.scrub(&mut ctx);
        let prompt = ctx.prompt.unwrap();
        assert!(!prompt.contains("AKIAIOSFODNN7EXAMPLE"), "{prompt}");
        assert!(!prompt.contains("bob@example.com"), "{prompt}");
        assert!(prompt.ends_with("— ok"), "{prompt}");
    }

    #[test]
    fn every_field_loses_connection_passwords() {
        let scrubber = ContextScrubber::new();
        let mut ctx = AgentContext::from_pairs(&[
            ("prompt", "use postgres://app:hunter2@db/x"),
            ("tool_call", "host=db password=s3cret"),
            ("conversation", "postgresql://u:pw1234@h"),
        ]);
        scrubber.scrub(&mut ctx);
        let all = format!("{ctx:?}");
        for secret in ["hunter2", "s3cret", "pw1234"] {
            assert!(!all.contains(secret), "{all}");
        }
    }
}
