//! Safe HTML for the web chat's message bodies, built on the server so the browser only
//! ever inserts finished, escaped HTML.
//!
//! Everything is HTML-escaped *first*; only then is a small markdown subset turned into
//! tags: **bold**, *italic* / _italic_, `code`, fenced code blocks, `[text](url)` and bare
//! links (http and https only, so no `javascript:`), `-`/`*`/`1.` lists, `#` headings
//! (shown bold), and line breaks. `@name` is highlighted. Anything else stays literal text.
//!
//! Flow: bot → outbox → web-chat `execute` → history → **HTML** → browser.

// One HTML escaper for every HTML perch writes: the cards'.
use crate::cards::markdown::escape_html;
use regex::Regex;
use std::sync::LazyLock;

/// Plain text (what people type, and bots' text bodies): escaped, links and @mentions
/// marked, newlines kept. No emphasis: a `*` a person typed stays a `*`.
pub fn text_to_html(text: &str) -> String {
    text.lines()
        .map(|l| links(l, false))
        .collect::<Vec<_>>()
        .join("<br>")
}

/// The markdown subset described in the module doc, as HTML.
pub fn markdown_to_html(md: &str) -> String {
    let mut out = String::new();
    let mut para: Vec<String> = Vec::new();
    // `Some(true)` = an ordered list is open, `Some(false)` = a bulleted one.
    let mut list: Option<bool> = None;
    let mut code: Option<Vec<&str>> = None;

    fn flush_para(out: &mut String, para: &mut Vec<String>) {
        if !para.is_empty() {
            out.push_str("<p>");
            out.push_str(&para.join("<br>"));
            out.push_str("</p>");
            para.clear();
        }
    }
    fn close_list(out: &mut String, list: &mut Option<bool>) {
        match list.take() {
            Some(true) => out.push_str("</ol>"),
            Some(false) => out.push_str("</ul>"),
            None => {}
        }
    }

    for line in md.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            match code.take() {
                Some(lines) => {
                    out.push_str("<pre><code>");
                    out.push_str(&escape_html(&lines.join("\n")));
                    out.push_str("</code></pre>");
                }
                None => {
                    flush_para(&mut out, &mut para);
                    close_list(&mut out, &mut list);
                    code = Some(Vec::new());
                }
            }
            continue;
        }
        if let Some(lines) = code.as_mut() {
            lines.push(line);
            continue;
        }
        if trimmed.is_empty() {
            flush_para(&mut out, &mut para);
            close_list(&mut out, &mut list);
            continue;
        }
        if let Some((ordered, item)) = list_item(trimmed) {
            flush_para(&mut out, &mut para);
            if list != Some(ordered) {
                close_list(&mut out, &mut list);
                out.push_str(if ordered { "<ol>" } else { "<ul>" });
                list = Some(ordered);
            }
            out.push_str("<li>");
            out.push_str(&inline(item));
            out.push_str("</li>");
            continue;
        }
        close_list(&mut out, &mut list);
        if let Some(heading) = heading(trimmed) {
            flush_para(&mut out, &mut para);
            out.push_str("<p><strong>");
            out.push_str(&inline(heading));
            out.push_str("</strong></p>");
            continue;
        }
        para.push(inline(line));
    }
    if let Some(lines) = code {
        // An unterminated fence: still show what was there as code.
        out.push_str("<pre><code>");
        out.push_str(&escape_html(&lines.join("\n")));
        out.push_str("</code></pre>");
    }
    flush_para(&mut out, &mut para);
    close_list(&mut out, &mut list);
    out
}

/// `- x`, `* x`, `+ x` → (false, "x"); `12. x` → (true, "x").
fn list_item(line: &str) -> Option<(bool, &str)> {
    for bullet in ["- ", "* ", "+ ", "• "] {
        if let Some(rest) = line.strip_prefix(bullet) {
            return Some((false, rest));
        }
    }
    let digits = line.chars().take_while(|c| c.is_ascii_digit()).count();
    if (1..=3).contains(&digits)
        && let Some(rest) = line[digits..].strip_prefix(". ")
    {
        return Some((true, rest));
    }
    None
}

/// `# Title` … `###### Title` → "Title".
fn heading(line: &str) -> Option<&str> {
    let hashes = line.chars().take_while(|&c| c == '#').count();
    if (1..=6).contains(&hashes) {
        line[hashes..].strip_prefix(' ')
    } else {
        None
    }
}

/// One line of markdown: code spans first (their content is only escaped), then links
/// and emphasis on the rest.
fn inline(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(open) = rest.find('`') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('`') else { break };
        out.push_str(&links(&rest[..open], true));
        out.push_str("<code>");
        out.push_str(&escape_html(&after[..close]));
        out.push_str("</code>");
        rest = &after[close + 1..];
    }
    out.push_str(&links(rest, true));
    out
}

static LINK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"\[([^\]\n]+)\]\((https?://[^\s()<>"']+)\)|https?://[^\s<>"'\[\]()]+"#)
        .expect("link regex")
});

/// Find links in raw text; escape and decorate the text around them. Link URLs are
/// escaped into the `href` and can only be http(s) because the pattern demands it.
fn links(raw: &str, emphasis: bool) -> String {
    let decorate = |s: &str| {
        let escaped = escape_html(s);
        let escaped = if emphasis {
            emphasize(&escaped)
        } else {
            escaped
        };
        mentions(&escaped)
    };
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

static BOLD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\*\*([^*\n]+?)\*\*|__([^_\n]+?)__").expect("bold regex"));
static ITALIC_STAR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(^|[^*\w])\*([^*\s](?:[^*\n]*[^*\s])?)\*").expect("italic regex")
});
static ITALIC_UNDERSCORE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(^|[^\w])_([^_\s](?:[^_\n]*[^_\s])?)_($|[^\w])").expect("italic regex")
});
static MENTION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(^|[^\w&#])@(\w[\w.-]*\w|\w)").expect("mention regex"));

/// Bold and italic on already-escaped text (escaping never produces `*` or `_`).
fn emphasize(escaped: &str) -> String {
    let s = BOLD.replace_all(escaped, |c: &regex::Captures| {
        format!(
            "<strong>{}</strong>",
            c.get(1).or_else(|| c.get(2)).map_or("", |m| m.as_str())
        )
    });
    let s = ITALIC_STAR.replace_all(&s, "$1<em>$2</em>");
    ITALIC_UNDERSCORE
        .replace_all(&s, "$1<em>$2</em>$3")
        .into_owned()
}

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
        let h = markdown_to_html("<script>alert('x')</script> **<b>**");
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
        assert!(h.contains("[bad](javascript:alert(1))"), "{h}");
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
