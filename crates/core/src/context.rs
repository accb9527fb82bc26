//! Agent context: what an AI agent or tool says about why it made a request — its own name,
//! the conversation, the tool call, the prompt, a W3C trace — so an auditor can go from a
//! prompt to the statements it caused and back. It is information, never authority: nothing
//! in it changes a decision.

use serde::{Deserialize, Serialize};

/// Longest value kept for one field, in bytes (longer ones are cut at a char boundary and
/// marked), so a chatty client cannot bloat every audit event.
pub const MAX_FIELD_BYTES: usize = 8 * 1024;
/// At most this many extra tags are kept.
const MAX_TAGS: usize = 16;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentContext {
    /// The client program, e.g. `claude-code` (MCP `clientInfo.name`, a sqlcommenter
    /// `client`/`application`, or the session's `application_name`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client_version: Option<String>,
    /// The agent's conversation or session id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub conversation: Option<String>,
    /// The tool call that made the request.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tool_call: Option<String>,
    /// The prompt behind the request, after the masking detectors ran over it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub prompt: Option<String>,
    /// A short statement of intent, when the agent gives one instead of (or with) a prompt.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub intent: Option<String>,
    /// W3C `traceparent`, as given.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub traceparent: Option<String>,
    /// The trace id of a well-formed `traceparent` (32 hex digits), for search.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub trace_id: Option<String>,
    /// Other keys the client sent (sqlcommenter `framework`, `route`, …).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub tags: Vec<(String, String)>,
}

impl AgentContext {
    /// Reads sqlcommenter-style pairs (or any key/value list an agent sends). Unknown keys
    /// become tags; values are bounded.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> AgentContext {
        let mut ctx = AgentContext::default();
        for (key, value) in pairs {
            ctx.set(key.as_ref(), value.as_ref());
        }
        ctx
    }

    /// Sets one field by its conventional key names; anything else is a tag.
    pub fn set(&mut self, key: &str, value: &str) {
        let value = bounded(value);
        let slot = match key.to_ascii_lowercase().replace('-', "_").as_str() {
            "prompt" | "user_prompt" => &mut self.prompt,
            "intent" | "purpose" => &mut self.intent,
            "tool_call" | "tool_call_id" | "toolcallid" => &mut self.tool_call,
            "conversation" | "conversation_id" | "conversationid" | "session_id" | "thread_id" => {
                &mut self.conversation
            }
            "client" | "agent" | "application" => &mut self.client,
            "client_version" | "agent_version" => &mut self.client_version,
            "traceparent" => {
                self.trace_id = trace_id(&value);
                &mut self.traceparent
            }
            _ => {
                if self.tags.len() < MAX_TAGS {
                    self.tags.push((bounded(key), value));
                }
                return;
            }
        };
        *slot = Some(value);
    }

    /// This context with the fields it lacks taken from `fallback` (a statement's own
    /// context wins over its session's).
    pub fn or(mut self, fallback: &AgentContext) -> AgentContext {
        let fill = |mine: &mut Option<String>, theirs: &Option<String>| {
            if mine.is_none() {
                mine.clone_from(theirs);
            }
        };
        fill(&mut self.client, &fallback.client);
        fill(&mut self.client_version, &fallback.client_version);
        fill(&mut self.conversation, &fallback.conversation);
        fill(&mut self.tool_call, &fallback.tool_call);
        fill(&mut self.prompt, &fallback.prompt);
        fill(&mut self.intent, &fallback.intent);
        if self.traceparent.is_none() {
            self.traceparent.clone_from(&fallback.traceparent);
            self.trace_id.clone_from(&fallback.trace_id);
        }
        for tag in &fallback.tags {
            if self.tags.len() < MAX_TAGS && !self.tags.iter().any(|(k, _)| *k == tag.0) {
                self.tags.push(tag.clone());
            }
        }
        self
    }

    /// Every text field a client chose (all but the derived trace id), for masking before
    /// the context is stored.
    pub fn texts_mut(&mut self) -> impl Iterator<Item = &mut String> {
        [
            &mut self.client,
            &mut self.client_version,
            &mut self.conversation,
            &mut self.tool_call,
            &mut self.prompt,
            &mut self.intent,
            &mut self.traceparent,
        ]
        .into_iter()
        .flatten()
        .chain(self.tags.iter_mut().map(|(_, v)| v))
    }
}

/// The trace id of a W3C `traceparent` (`version-traceid-parentid-flags`), lowercase; `None`
/// when it is not well formed or the id is all zeros.
pub fn trace_id(traceparent: &str) -> Option<String> {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|c| c.is_ascii_hexdigit());
    match parts.as_slice() {
        [version, id, parent, flags, ..]
            if hex(version, 2) && hex(id, 32) && hex(parent, 16) && hex(flags, 2) =>
        {
            let id = id.to_ascii_lowercase();
            (id.bytes().any(|c| c != b'0')).then_some(id)
        }
        _ => None,
    }
}

fn bounded(value: &str) -> String {
    let kept = crate::text::clip(value, MAX_FIELD_BYTES);
    if kept.len() == value.len() {
        return value.to_owned();
    }
    format!("{kept}…[truncated]")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pairs_map_to_fields_and_tags() {
        let ctx = AgentContext::from_pairs(&[
            ("prompt", "count users"),
            (
                "traceparent",
                "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            ),
            ("tool_call_id", "call_1"),
            ("framework", "django"),
        ]);
        assert_eq!(ctx.prompt.as_deref(), Some("count users"));
        assert_eq!(
            ctx.trace_id.as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(ctx.tool_call.as_deref(), Some("call_1"));
        assert_eq!(ctx.tags, vec![("framework".into(), "django".into())]);
    }

    #[test]
    fn bad_traceparents_have_no_trace_id() {
        for tp in [
            "",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-xyz-b7ad6b7169203331-01",
            "garbage",
        ] {
            assert_eq!(trace_id(tp), None, "{tp}");
        }
    }

    #[test]
    fn statement_context_wins_over_session_context() {
        let session = AgentContext::from_pairs(&[("client", "cursor"), ("prompt", "old")]);
        let stmt = AgentContext::from_pairs(&[("prompt", "new")]).or(&session);
        assert_eq!(stmt.prompt.as_deref(), Some("new"));
        assert_eq!(stmt.client.as_deref(), Some("cursor"));
    }

    #[test]
    fn long_values_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_FIELD_BYTES);
        let ctx = AgentContext::from_pairs(&[("prompt", long.as_str())]);
        let prompt = ctx.prompt.unwrap();
        assert!(prompt.len() < MAX_FIELD_BYTES + 20);
        assert!(prompt.ends_with("…[truncated]"));
    }
}
