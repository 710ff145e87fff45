//! Safe HTML for the web chat's message bodies, built on the server so the browser only
//! ever inserts finished, escaped HTML.
//!
//! Plain text (what people type) is escaped, with bare links (http and https only, so no
//! `javascript:`) and `@name` marked. Markdown bodies are parsed by the one markdown
//! module (`cards::markdown`, CommonMark), which escapes everything and drops raw HTML;
//! their plain text gets the same link and mention marks.
//!
//! Flow: bot → outbox → web-chat `execute` → history → **HTML** → browser.

// One HTML escaper for every HTML perch writes: the cards'.
use crate::cards::markdown::escape_html;
use regex::Regex;
use std::sync::LazyLock;

/// Plain text (what people type, and bots' text bodies): escaped, links and @mentions
/// marked, newlines kept. No emphasis: a `*` a person typed stays a `*`.
pub fn text_to_html(text: &str) -> String {
    text.lines().map(links).collect::<Vec<_>>().join("<br>")
}

/// A markdown body (bots' markdown replies) as HTML: parsed by the one markdown module
/// (`cards::markdown`), with bare links and `@mentions` marked in its plain text.
pub fn markdown_to_html(md: &str) -> String {
    crate::cards::markdown::to_html_with(md, &|text| links(text))
}

static LINK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"\[([^\]\n]+)\]\((https?://[^\s()<>"']+)\)|https?://[^\s<>"'\[\]()]+"#)
        .expect("link regex")
});

/// Find links in raw text; escape and decorate the text around them. Link URLs are
/// escaped into the `href` and can only be http(s) because the pattern demands it.
fn links(raw: &str) -> String {
    let decorate = |s: &str| mentions(&escape_html(s));
    let mut out = String::new();
    let mut last = 0;
    for m in LINK.captures_iter(raw) {
        let whole = m.get(0).expect("match 0");
        let (text, url, end) = match (m.get(1), m.get(2)) {
            (Some(text), Some(url)) => (Some(text.as_str()), url.as_str(), whole.end()),
            _ => {
                // A bare URL: trailing punctuation belongs to the sentence, not the link.
                let url = whole
                    .as_str()
                    .trim_end_matches(['.', ',', ';', ':', '!', '?']);
                (None, url, whole.start() + url.len())
            }
        };
        out.push_str(&decorate(&raw[last..whole.start()]));
        out.push_str(r#"<a href=""#);
        out.push_str(&escape_html(url));
        out.push_str(r#"" target="_blank" rel="noopener noreferrer nofollow">"#);
        match text {
            Some(t) => out.push_str(&decorate(t)),
            None => out.push_str(&escape_html(url)),
        }
        out.push_str("</a>");
        last = end;
    }
    out.push_str(&decorate(&raw[last..]));
    out
}

static MENTION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(^|[^\w&#])@(\w[\w.-]*\w|\w)").expect("mention regex"));

/// `@name` → a highlighted span, on already-escaped text.
fn mentions(escaped: &str) -> String {
    MENTION
        .replace_all(escaped, r#"$1<span class="mention">@$2</span>"#)
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped_before_anything_else() {
        let h = markdown_to_html("see <script>alert('x')</script> **<b>**");
        assert!(!h.contains("<script>"), "{h}");
        assert!(h.contains("&lt;script&gt;"), "{h}");
        assert!(h.contains("<strong>&lt;b&gt;</strong>"), "{h}");
        assert_eq!(
            text_to_html("<img src=x onerror=alert(1)>"),
            "&lt;img src=x onerror=alert(1)&gt;"
        );
    }

    #[test]
    fn only_http_links_become_anchors() {
        let h = markdown_to_html("[ok](https://example.com/a?b=1&c=2) [bad](javascript:alert(1))");
        assert!(
            h.contains(r#"<a href="https://example.com/a?b=1&amp;c=2""#),
            "{h}"
        );
        assert!(!h.contains(r#"href="javascript"#), "{h}");
        assert!(
            h.ends_with(" bad</p>"),
            "an unsafe link keeps only its text: {h}"
        );
        // Quotes cannot break out of the attribute.
        let h = markdown_to_html(r#"https://x.test/"onmouseover="alert(1)"#);
        assert!(
            !h.contains(r#"" onmouseover"#) && !h.contains("\"onmouseover"),
            "{h}"
        );
        let h = text_to_html("see https://example.com/x.");
        assert!(
            h.contains(r#"<a href="https://example.com/x""#) && h.ends_with("</a>."),
            "{h}"
        );
    }

    #[test]
    fn the_subset_renders() {
        let h = markdown_to_html(
            "**Commands here**\n- `@echo <text>` — repeats\n- *b* and _c_\n\n1. one\n2. two\n\n```\nlet x = \"<y>\";\n```\nend",
        );
        assert!(h.starts_with("<p><strong>Commands here</strong></p><ul><li><code>@echo &lt;text&gt;</code> — repeats</li>"), "{h}");
        assert!(h.contains("<li><em>b</em> and <em>c</em></li></ul>"), "{h}");
        assert!(h.contains("<ol><li>one</li><li>two</li></ol>"), "{h}");
        assert!(
            h.contains("<pre><code>let x = &quot;&lt;y&gt;&quot;;</code></pre><p>end</p>"),
            "{h}"
        );
        assert_eq!(markdown_to_html("a\nb"), "<p>a<br>b</p>");
        assert_eq!(
            markdown_to_html("snake_case_name"),
            "<p>snake_case_name</p>"
        );
        assert_eq!(markdown_to_html("# Title"), "<p><strong>Title</strong></p>");
    }

    #[test]
    fn mentions_are_highlighted_but_not_in_emails() {
        assert_eq!(
            text_to_html("@echo hi"),
            r#"<span class="mention">@echo</span> hi"#
        );
        assert_eq!(text_to_html("a@b.c"), "a@b.c");
        assert_eq!(text_to_html("*not bold*"), "*not bold*");
    }
}
