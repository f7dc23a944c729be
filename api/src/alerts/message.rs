//! What a receiver is sent: the alert as JSON for a `Webhook` (signed), a Slack message (`text` and Block Kit
//! `blocks`), or an Adaptive Card in the `message` envelope that Microsoft Teams' Workflows webhooks take. Text that
//! comes from clusters (an agent's error message, names) is escaped for the receiver's markup, so that a message
//! cannot mention a channel or plant a link.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::model::{Message, ReceiverKind, Severity};

/// The header that carries a `Webhook` message's signature: `sha256=` and the lower-case hex HMAC-SHA256, keyed
/// with the receiver's signing key, of the timestamp header's value, a `.`, and the body's bytes.
pub const SIGNATURE_HEADER: &str = "X-Fluxplane-Signature";
/// Unix seconds when the attempt was signed: a receiver refuses a message whose timestamp is more than a few
/// minutes from its clock, so that a captured message cannot be replayed later.
pub const TIMESTAMP_HEADER: &str = "X-Fluxplane-Timestamp";
/// The delivery id, the same on every attempt of a message: a receiver drops repeats by it.
pub const DELIVERY_HEADER: &str = "X-Fluxplane-Delivery";
/// The event type (or `Test`).
pub const EVENT_HEADER: &str = "X-Fluxplane-Event";

/// Slack's limits on a header block's text and a section's.
const SLACK_HEADER_CHARS: usize = 150;
const SLACK_SECTION_CHARS: usize = 3000;

/// A message ready to post: its body and the headers beside `Content-Type: application/json`.
#[derive(Debug)]
pub struct Rendered {
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

/// Renders `message` for a receiver of `kind`; a `Webhook`'s is signed with `key` as of `timestamp` (Unix seconds).
pub fn render(kind: ReceiverKind, message: &Message, key: Option<&[u8]>, timestamp: i64) -> Rendered {
    let body = match kind {
        ReceiverKind::Webhook => serde_json::to_vec(message),
        ReceiverKind::Slack => serde_json::to_vec(&slack(message)),
        ReceiverKind::MicrosoftTeams => serde_json::to_vec(&teams(message)),
    }
    .expect("a message serialises");
    let mut headers = vec![
        (DELIVERY_HEADER, message.id.clone()),
        (EVENT_HEADER, message.kind.clone()),
    ];
    if let Some(key) = key.filter(|_| kind.signs()) {
        headers.push((TIMESTAMP_HEADER, timestamp.to_string()));
        headers.push((SIGNATURE_HEADER, signature(key, timestamp, &body)));
    }
    Rendered { body, headers }
}

/// `sha256=<hex>` of HMAC-SHA256(key, "{timestamp}.{body}").
pub fn signature(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn severity_mark(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "ℹ️",
        Severity::Warning => "⚠️",
        Severity::Error => "🔴",
        Severity::Critical => "🚨",
    }
}

/// The facts a chat message lists: (label, value), cluster-supplied values as they are (each renderer escapes).
fn facts(message: &Message) -> Vec<(&'static str, String)> {
    let last_segment = |id: &str| id.rsplit('/').next().unwrap_or_default().to_owned();
    let mut facts = vec![
        ("Severity", format!("{:?}", message.severity)),
        ("Event", message.kind.clone()),
    ];
    if let Some(cluster) = &message.cluster_id {
        facts.push(("Cluster", last_segment(cluster)));
    }
    if let Some(name) = &message.configuration_name {
        facts.push(("Configuration", name.clone()));
    }
    if let Some(assignment) = &message.policy_assignment_id {
        facts.push(("Policy assignment", last_segment(assignment)));
    }
    for (label, key) in [
        ("Compliance", "complianceState"),
        ("Provisioning", "provisioningState"),
        ("Commit", "commitId"),
        ("Connectivity", "connectivityStatus"),
        ("Message", "message"),
    ] {
        if let Some(value) = message.details.get(key).and_then(Value::as_str) {
            facts.push((label, value.to_owned()));
        }
    }
    if let Some(digest) = &message.digest {
        let counts: Vec<String> = digest
            .by_type
            .iter()
            .map(|(event, n)| format!("{n} × {}", event.as_str()))
            .collect();
        facts.push((
            "Held back",
            format!(
                "{} events since {} ({})",
                digest.events,
                digest.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                counts.join(", ")
            ),
        ));
    }
    if let Some(rule) = &message.rule {
        facts.push(("Rule", rule.name.clone()));
    }
    facts
}

/// Slack's `mrkdwn` control characters, escaped as Slack asks: `&`, `<` and `>` (which also neutralises
/// `<!channel>` mentions and `<url|text>` links).
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn truncate(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(chars.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

fn slack(message: &Message) -> Value {
    let title = format!(
        "{} {:?}: {}",
        severity_mark(message.severity),
        message.severity,
        message.kind
    );
    let facts: Vec<String> = facts(message)
        .into_iter()
        .map(|(label, value)| format!("*{label}:* {}", slack_escape(&value)))
        .collect();
    json!({
        "text": slack_escape(&format!("[{:?}] {}", message.severity, message.summary)),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": truncate(&title, SLACK_HEADER_CHARS), "emoji": true}},
            {"type": "section", "text": {"type": "mrkdwn", "text": truncate(&slack_escape(&message.summary), SLACK_SECTION_CHARS)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": truncate(&facts.join("\n"), SLACK_SECTION_CHARS)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": truncate(&slack_escape(&format!(
                "{} · {} · delivery {}",
                message.subject,
                message.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                message.id
            )), SLACK_SECTION_CHARS)}]}
        ]
    })
}

/// Adaptive Cards' TextBlocks read Markdown: its control characters are escaped with a backslash, so that text from
/// a cluster shows as written and links only as plain text.
fn markdown_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(
            c,
            '\\' | '`' | '*' | '_' | '[' | ']' | '(' | ')' | '#' | '<' | '>' | '!' | '|' | '~'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn teams(message: &Message) -> Value {
    let color = match message.severity {
        Severity::Info => "Default",
        Severity::Warning => "Warning",
        Severity::Error | Severity::Critical => "Attention",
    };
    let facts: Vec<Value> = facts(message)
        .into_iter()
        .map(|(label, value)| json!({"title": label, "value": markdown_escape(&value)}))
        .collect();
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "msteams": {"width": "Full"},
                "body": [
                    {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "color": color, "wrap": true,
                     "text": format!("{:?}: {}", message.severity, message.kind)},
                    {"type": "TextBlock", "wrap": true, "text": markdown_escape(&message.summary)},
                    {"type": "FactSet", "facts": facts},
                    {"type": "TextBlock", "wrap": true, "isSubtle": true, "size": "Small",
                     "text": markdown_escape(&format!("{} · delivery {}", message.subject, message.id))}
                ]
            }
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::model::{Digest, EventType, RuleRef};
    use chrono::Utc;

    fn message() -> Message {
        let mut details = serde_json::Map::new();
        details.insert("complianceState".into(), "Non-Compliant".into());
        details.insert(
            "message".into(),
            "<!channel> see <https://evil.example|here> & [x](http://evil)".into(),
        );
        Message {
            id: "d1".into(),
            kind: "BecameNonCompliant".into(),
            severity: Severity::Error,
            time: Utc::now(),
            subject: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c1/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/web".into(),
            summary: "Flux configuration 'web' on cluster 'c1' is Non-Compliant".into(),
            rule: Some(RuleRef { id: "/r".into(), name: "prod-alerts".into() }),
            cluster_id: Some("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c1".into()),
            configuration_name: Some("web".into()),
            policy_assignment_id: None,
            details,
            digest: Some(Digest {
                events: 3,
                since: Utc::now(),
                by_type: [(EventType::BecameNonCompliant, 2), (EventType::BecameCompliant, 1)].into(),
            }),
        }
    }

    #[test]
    fn a_webhook_message_is_the_alert_as_json_signed_over_timestamp_and_body() {
        let key = b"0123456789abcdef0123456789abcdef";
        let rendered = render(ReceiverKind::Webhook, &message(), Some(key), 1_700_000_000);
        let body: Value = serde_json::from_slice(&rendered.body).unwrap();
        assert_eq!(body["type"], "BecameNonCompliant");
        assert_eq!(body["id"], "d1");
        assert_eq!(body["digest"]["events"], 3);
        let header = |name: &str| {
            rendered
                .headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header(TIMESTAMP_HEADER).as_deref(), Some("1700000000"));
        assert_eq!(header(DELIVERY_HEADER).as_deref(), Some("d1"));
        // what a receiver computes, by the documented recipe
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(format!("1700000000.{}", String::from_utf8(rendered.body.clone()).unwrap()).as_bytes());
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(header(SIGNATURE_HEADER), Some(expected));
        assert_ne!(
            signature(key, 1_700_000_001, &rendered.body),
            header(SIGNATURE_HEADER).unwrap(),
            "the timestamp is signed"
        );
    }

    #[test]
    fn a_known_signature_stays_the_same() {
        // the README's verification snippet is checked against this value
        assert_eq!(
            signature(b"0123456789abcdef0123456789abcdef", 1_700_000_000, b"{\"id\":\"d1\"}"),
            "sha256=a1c2fab9c79cfafe560387f55e1bb498a19d7d81c12e6f09bce0c138eaf875ca"
        );
    }

    #[test]
    fn chat_receivers_are_never_signed() {
        let rendered = render(ReceiverKind::Slack, &message(), Some(b"key"), 1);
        assert!(rendered.headers.iter().all(|(n, _)| *n != SIGNATURE_HEADER));
    }

    #[test]
    fn slack_gets_text_and_blocks_with_its_markup_escaped() {
        let body: Value = serde_json::from_slice(&render(ReceiverKind::Slack, &message(), None, 0).body).unwrap();
        assert!(
            body["text"]
                .as_str()
                .unwrap()
                .contains("[Error] Flux configuration 'web'")
        );
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        let facts = blocks[2]["text"]["text"].as_str().unwrap();
        assert!(facts.contains("*Cluster:* c1"), "{facts}");
        assert!(
            facts.contains("&lt;!channel&gt;") && !facts.contains("<!channel>"),
            "{facts}"
        );
        assert!(facts.contains("&amp;"));
        assert!(facts.contains("Held back:* 3 events"), "{facts}");
        assert_eq!(blocks[3]["type"], "context");
    }

    #[test]
    fn teams_gets_an_adaptive_card_in_a_message_envelope() {
        let body: Value =
            serde_json::from_slice(&render(ReceiverKind::MicrosoftTeams, &message(), None, 0).body).unwrap();
        assert_eq!(body["type"], "message");
        let attachment = &body["attachments"][0];
        assert_eq!(attachment["contentType"], "application/vnd.microsoft.card.adaptive");
        let card = &attachment["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["version"], "1.4");
        assert_eq!(card["body"][0]["color"], "Attention");
        let facts = card["body"][2]["facts"].as_array().unwrap();
        let text = facts.iter().find(|f| f["title"] == "Message").unwrap()["value"]
            .as_str()
            .unwrap();
        assert!(text.contains("\\[x\\]\\(http://evil\\)"), "{text}");
    }

    #[test]
    fn long_text_is_cut_to_slacks_limits() {
        let mut long = message();
        long.summary = "x".repeat(5000);
        let body: Value = serde_json::from_slice(&render(ReceiverKind::Slack, &long, None, 0).body).unwrap();
        assert_eq!(
            body["blocks"][1]["text"]["text"].as_str().unwrap().chars().count(),
            SLACK_SECTION_CHARS
        );
    }
}
