//! The small markdown dialect cards speak, translated for each renderer.
//!
//! Card text is markdown as Feishu's `markdown` element reads it, limited to what every
//! platform can show: `**bold**`, `*italic*`, `` `code` ``, `[text](https://…)` and line
//! breaks. Feishu, DingTalk and WeCom take it as is; this module turns it into HTML (web
//! chat, Matrix; always escaped), Slack mrkdwn, and plain text. Anything else passes
//! through as literal text.

/// One piece of parsed markdown.
#[derive(Debug, PartialEq)]
enum Span<'a> {
    Text(&'a str),
    Bold(&'a str),
    Italic(&'a str),
    Code(&'a str),
    Link { text: &'a str, url: &'a str },
    Break,
}

fn parse(md: &str) -> Vec<Span<'_>> {
    let mut out = Vec::new();
    let mut text_start = 0usize;
    let mut i = 0usize;
    while i < md.len() {
        let rest = &md[i..];
        let found = if let Some(after) = rest.strip_prefix("**") {
            after
                .find("**")
                .filter(|&n| n > 0)
                .map(|n| (Span::Bold(&after[..n]), n + 4))
        } else if let Some(after) = rest.strip_prefix('`') {
            after
                .find('`')
                .filter(|&n| n > 0)
                .map(|n| (Span::Code(&after[..n]), n + 2))
        } else if let Some(after) = rest.strip_prefix('*') {
            after
                .find('*')
                .filter(|&n| n > 0 && !after.starts_with(' '))
                .map(|n| (Span::Italic(&after[..n]), n + 2))
        } else if rest.starts_with('[') {
            parse_link(rest)
        } else if rest.starts_with('\n') {
            Some((Span::Break, 1))
        } else {
            None
        };
        match found {
            Some((span, len)) => {
                if i > text_start {
                    out.push(Span::Text(&md[text_start..i]));
                }
                out.push(span);
                i += len;
                text_start = i;
            }
            None => i += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    if md.len() > text_start {
        out.push(Span::Text(&md[text_start..]));
    }
    out
}

/// `[text](http(s)://url)` at the start of `s`, with its length.
fn parse_link(s: &str) -> Option<(Span<'_>, usize)> {
    let close = s.find("](")?;
    let text = &s[1..close];
    if text.contains('\n') || text.contains('[') {
        return None;
    }
    let after = &s[close + 2..];
    let end = after.find(')')?;
    let url = &after[..end];
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://"))
        || url.chars().any(char::is_whitespace)
    {
        return None;
    }
    Some((Span::Link { text, url }, close + 2 + end + 1))
}

/// Escape text for HTML element content and double- or single-quoted attributes.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Markdown → safe HTML: every piece of text is escaped; only `<strong>`, `<em>`,
/// `<code>`, `<a href="http(s)…" target="_blank" rel="noopener">` and `<br>` are produced.
pub fn to_html(md: &str) -> String {
    let mut out = String::new();
    for span in parse(md) {
        match span {
            Span::Text(t) => out.push_str(&escape_html(t)),
            Span::Bold(t) => out.push_str(&format!("<strong>{}</strong>", escape_html(t))),
            Span::Italic(t) => out.push_str(&format!("<em>{}</em>", escape_html(t))),
            Span::Code(t) => out.push_str(&format!("<code>{}</code>", escape_html(t))),
            Span::Link { text, url } => out.push_str(&format!(
                "<a href=\"{}\" target=\"_blank\" rel=\"noopener\">{}</a>",
                escape_html(url),
                escape_html(text)
            )),
            Span::Break => out.push_str("<br>"),
        }
    }
    out
}

/// Escape for Slack: only `&`, `<` and `>` are special in mrkdwn.
pub fn escape_slack(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Markdown → Slack mrkdwn (`*bold*`, `_italic_`, `` `code` ``, `<url|text>`).
pub fn to_slack(md: &str) -> String {
    let mut out = String::new();
    for span in parse(md) {
        match span {
            Span::Text(t) => out.push_str(&escape_slack(t)),
            Span::Bold(t) => out.push_str(&format!("*{}*", escape_slack(t))),
            Span::Italic(t) => out.push_str(&format!("_{}_", escape_slack(t))),
            Span::Code(t) => out.push_str(&format!("`{}`", escape_slack(t))),
            Span::Link { text, url } => out.push_str(&format!(
                "<{}|{}>",
                escape_slack(url),
                escape_slack(&text.replace('|', "¦"))
            )),
            Span::Break => out.push('\n'),
        }
    }
    out
}

/// Markdown → plain text: markers dropped, links as `text (url)`.
pub fn to_plain(md: &str) -> String {
    let mut out = String::new();
    for span in parse(md) {
        match span {
            Span::Text(t) | Span::Bold(t) | Span::Italic(t) | Span::Code(t) => out.push_str(t),
            Span::Link { text, url } => out.push_str(&format!("{text} ({url})")),
            Span::Break => out.push('\n'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translations() {
        let md = "**GMV** is *up* see [the report](https://x.test/a?b=1&c=2)\n`<b>` & 5 * 3";
        assert_eq!(
            to_html(md),
            "<strong>GMV</strong> is <em>up</em> see <a href=\"https://x.test/a?b=1&amp;c=2\" target=\"_blank\" rel=\"noopener\">the report</a><br><code>&lt;b&gt;</code> &amp; 5 * 3"
        );
        assert_eq!(
            to_slack(md),
            "*GMV* is _up_ see <https://x.test/a?b=1&amp;c=2|the report>\n`&lt;b&gt;` &amp; 5 * 3"
        );
        assert_eq!(
            to_plain(md),
            "GMV is up see the report (https://x.test/a?b=1&c=2)\n<b> & 5 * 3"
        );
    }

    #[test]
    fn unsafe_links_stay_text() {
        assert_eq!(
            to_html("[x](javascript:alert(1))"),
            "[x](javascript:alert(1))"
        );
        assert_eq!(to_html("<script>"), "&lt;script&gt;");
        assert_eq!(to_plain("**"), "**");
        assert_eq!(to_plain("日本 **語**"), "日本 語");
    }
}
