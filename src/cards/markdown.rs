//! Markdown, the one text format of replies and cards, written out for each platform.
//!
//! Bots write CommonMark (`**bold**`, `*italic*`, `` `code` ``, `[text](https://…)`, lists,
//! code blocks); Feishu, DingTalk and WeCom's markdown take it as is. For everything else
//! the text is parsed once by `pulldown-cmark` and written out here: HTML (web chat,
//! Matrix, the card studio), Slack mrkdwn, and plain text.
//!
//! Safety, for every writer: raw HTML in the markdown is shown as text, never passed
//! through; links become links only for `http`, `https` and `mailto` URLs (no
//! `javascript:`); every piece of text is escaped for its target.
//!
//! Values that come from payloads or people (an id, a branch name) go into markdown
//! through [`escape`] (as text) or [`code`] (as a code span), so a value such as
//! ``main`); x`` can neither end a code span nor start emphasis.

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

fn events(md: &str) -> Parser<'_> {
    Parser::new_ext(md, Options::ENABLE_STRIKETHROUGH)
}

fn safe_url(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("mailto:")
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

/// Escape for Slack: only `&`, `<` and `>` are special in mrkdwn.
pub fn escape_slack(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A value as literal markdown text: the characters CommonMark could read as inline
/// markup are backslash-escaped (CommonMark §2.4), and so is a block marker at its start
/// (`#`, `-`, `+`, `1.`); newlines become spaces. The set is kept small on purpose:
/// Feishu's markdown is not CommonMark, and every escape is a backslash it may show.
pub fn escape(value: &str) -> String {
    let value = value.replace(['\n', '\r'], " ");
    let mut out = String::with_capacity(value.len() + 8);
    let digits = value.chars().take_while(char::is_ascii_digit).count();
    for (i, c) in value.chars().enumerate() {
        let block_marker = (i == 0 && matches!(c, '#' | '-' | '+'))
            || (i == digits && digits > 0 && matches!(c, '.' | ')'));
        if block_marker
            || matches!(
                c,
                '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '~' | '|' | '&'
            )
        {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A value as a markdown code span: the fence is one backtick longer than the longest
/// run of backticks inside, with padding spaces where the value starts or ends with one
/// (CommonMark §6.1), so nothing in the value can close it.
pub fn code(value: &str) -> String {
    let value = value.replace(['\n', '\r'], " ");
    if value.is_empty() {
        // "``" is no code span; a lone space is the closest to nothing.
        return "` `".to_string();
    }
    let mut longest = 0;
    let mut run = 0;
    for c in value.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad = if value.starts_with('`') || value.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{value}{pad}{fence}")
}

/// Markdown → safe HTML blocks (`<p>`, lists, `<pre>`), for a message body.
/// `decorate` turns a run of plain text (outside links and code) into HTML and must
/// escape it; the web chat uses it to mark bare links and `@mentions`.
pub fn to_html_with(md: &str, decorate: &dyn Fn(&str) -> String) -> String {
    write_html(md, false, decorate)
}

/// Markdown → safe inline HTML, for a piece of a card (the caller supplies the block):
/// paragraphs are separated by blank lines (`<br><br>`), list items start lines.
pub fn to_html(md: &str) -> String {
    write_html(md, true, &escape_html)
}

fn write_html(md: &str, inline: bool, decorate: &dyn Fn(&str) -> String) -> String {
    let mut out = String::new();
    // Open links: whether each was written as an anchor (an unsafe one is only text).
    let mut links: Vec<bool> = Vec::new();
    let mut lists: Vec<Option<u64>> = Vec::new();
    let mut in_code_block = false;
    let mut blocks = 0usize;
    let mut start_block = |out: &mut String| {
        if inline && blocks > 0 && !out.ends_with("<br>") {
            out.push_str("<br><br>");
        }
        blocks += 1;
    };
    for event in events(md) {
        match event {
            Event::Start(tag) => match tag {
                Tag::Paragraph => {
                    if lists.is_empty() {
                        start_block(&mut out);
                        if !inline {
                            out.push_str("<p>");
                        }
                    }
                }
                Tag::Heading { .. } => {
                    start_block(&mut out);
                    out.push_str(if inline { "<strong>" } else { "<p><strong>" });
                }
                Tag::BlockQuote(_) => {
                    start_block(&mut out);
                    if !inline {
                        out.push_str("<blockquote>");
                    }
                }
                Tag::CodeBlock(_) => {
                    start_block(&mut out);
                    in_code_block = true;
                    out.push_str(if inline { "<code>" } else { "<pre><code>" });
                }
                Tag::List(first) => {
                    if lists.is_empty() {
                        start_block(&mut out);
                    }
                    if !inline {
                        out.push_str(&match first {
                            Some(1) => "<ol>".to_string(),
                            Some(n) => format!("<ol start=\"{n}\">"),
                            None => "<ul>".to_string(),
                        });
                    }
                    lists.push(first);
                }
                Tag::Item => {
                    if inline {
                        if !out.is_empty() && !out.ends_with("<br>") {
                            out.push_str("<br>");
                        }
                        let depth = lists.len().saturating_sub(1);
                        out.push_str(&"&nbsp;&nbsp;".repeat(depth));
                        match lists.last_mut() {
                            Some(Some(n)) => {
                                out.push_str(&format!("{n}. "));
                                *n += 1;
                            }
                            _ => out.push_str("• "),
                        }
                    } else {
                        out.push_str("<li>");
                    }
                }
                Tag::Emphasis => out.push_str("<em>"),
                Tag::Strong => out.push_str("<strong>"),
                Tag::Strikethrough => out.push_str("<del>"),
                Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. } => {
                    let safe = safe_url(&dest_url);
                    if safe {
                        out.push_str(&format!(
                            "<a href=\"{}\" target=\"_blank\" rel=\"noopener noreferrer nofollow\">",
                            escape_html(&dest_url)
                        ));
                    }
                    links.push(safe);
                }
                _ => {}
            },
            Event::End(tag) => match tag {
                TagEnd::Paragraph => {
                    if lists.is_empty() && !inline {
                        out.push_str("</p>");
                    } else if !lists.is_empty() && inline {
                        // A loose list item's paragraphs: keep them on their own lines.
                    }
                }
                TagEnd::Heading(_) => {
                    out.push_str(if inline { "</strong>" } else { "</strong></p>" })
                }
                TagEnd::BlockQuote(_) => {
                    if !inline {
                        out.push_str("</blockquote>")
                    }
                }
                TagEnd::CodeBlock => {
                    in_code_block = false;
                    if inline {
                        while out.ends_with("<br>") {
                            out.truncate(out.len() - 4);
                        }
                        out.push_str("</code>");
                    } else {
                        if out.ends_with('\n') {
                            out.pop();
                        }
                        out.push_str("</code></pre>");
                    }
                }
                TagEnd::List(ordered) => {
                    lists.pop();
                    if !inline {
                        out.push_str(if ordered { "</ol>" } else { "</ul>" });
                    }
                }
                TagEnd::Item => {
                    if !inline {
                        out.push_str("</li>")
                    }
                }
                TagEnd::Emphasis => out.push_str("</em>"),
                TagEnd::Strong => out.push_str("</strong>"),
                TagEnd::Strikethrough => out.push_str("</del>"),
                TagEnd::Link | TagEnd::Image => {
                    if links.pop() == Some(true) {
                        out.push_str("</a>");
                    }
                }
                _ => {}
            },
            Event::Text(text) => {
                if in_code_block {
                    let escaped = escape_html(&text);
                    if inline {
                        out.push_str(&escaped.replace('\n', "<br>"));
                    } else {
                        out.push_str(&escaped);
                    }
                } else if links.is_empty() {
                    out.push_str(&decorate(&text));
                } else {
                    out.push_str(&escape_html(&text));
                }
            }
            Event::Code(text) => {
                out.push_str("<code>");
                out.push_str(&escape_html(&text));
                out.push_str("</code>");
            }
            // Raw HTML is shown, never interpreted.
            Event::Html(text) | Event::InlineHtml(text) => out.push_str(&escape_html(&text)),
            Event::SoftBreak | Event::HardBreak => out.push_str("<br>"),
            Event::Rule => out.push_str(if inline { "<br>—<br>" } else { "<hr>" }),
            _ => {}
        }
    }
    out
}

/// Markdown → Slack mrkdwn (`*bold*`, `_italic_`, `~strike~`, `` `code` ``, `<url|text>`).
pub fn to_slack(md: &str) -> String {
    let mut out = String::new();
    // Open links: (url, text so far), or None for an unsafe one (written as text).
    let mut links: Vec<Option<(String, String)>> = Vec::new();
    let mut lists: Vec<Option<u64>> = Vec::new();
    let push = |out: &mut String, links: &mut Vec<Option<(String, String)>>, s: &str| match links
        .iter_mut()
        .rev()
        .find_map(|l| l.as_mut())
    {
        Some((_, text)) => text.push_str(s),
        None => out.push_str(s),
    };
    for event in events(md) {
        match event {
            Event::Start(tag) => match tag {
                Tag::Paragraph | Tag::Heading { .. } | Tag::CodeBlock(_) | Tag::BlockQuote(_)
                    if lists.is_empty() =>
                {
                    block_gap(&mut out);
                    match tag {
                        Tag::Heading { .. } => out.push('*'),
                        Tag::CodeBlock(_) => out.push_str("```\n"),
                        Tag::BlockQuote(_) => out.push_str("> "),
                        _ => {}
                    }
                }
                Tag::CodeBlock(_) => out.push_str("```\n"),
                Tag::List(first) => {
                    if lists.is_empty() {
                        block_gap(&mut out);
                    }
                    lists.push(first);
                }
                Tag::Item => list_item(&mut out, &mut lists),
                Tag::Emphasis => push(&mut out, &mut links, "_"),
                Tag::Strong => push(&mut out, &mut links, "*"),
                Tag::Strikethrough => push(&mut out, &mut links, "~"),
                Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. } => {
                    links.push(safe_url(&dest_url).then(|| (dest_url.to_string(), String::new())))
                }
                _ => {}
            },
            Event::End(tag) => match tag {
                TagEnd::Heading(_) => out.push('*'),
                TagEnd::CodeBlock => {
                    if !out.ends_with('\n') {
                        out.push('\n');
                    }
                    out.push_str("```");
                }
                TagEnd::List(_) => {
                    lists.pop();
                }
                TagEnd::Emphasis => push(&mut out, &mut links, "_"),
                TagEnd::Strong => push(&mut out, &mut links, "*"),
                TagEnd::Strikethrough => push(&mut out, &mut links, "~"),
                TagEnd::Link | TagEnd::Image => {
                    if let Some(Some((url, text))) = links.pop() {
                        let link = format!("<{}|{}>", escape_slack(&url), text.replace('|', "¦"));
                        push(&mut out, &mut links, &link);
                    }
                }
                _ => {}
            },
            Event::Text(t) | Event::Html(t) | Event::InlineHtml(t) => {
                push(&mut out, &mut links, &escape_slack(&t))
            }
            Event::Code(t) => push(&mut out, &mut links, &format!("`{}`", escape_slack(&t))),
            Event::SoftBreak | Event::HardBreak => push(&mut out, &mut links, "\n"),
            Event::Rule => {
                block_gap(&mut out);
                out.push_str("———");
            }
            _ => {}
        }
    }
    out
}

/// Markdown → plain text: markers dropped, links as `text (url)`, list items as `- `.
pub fn to_plain(md: &str) -> String {
    let mut out = String::new();
    let mut links: Vec<String> = Vec::new();
    let mut lists: Vec<Option<u64>> = Vec::new();
    for event in events(md) {
        match event {
            Event::Start(tag) => match tag {
                Tag::Paragraph | Tag::Heading { .. } | Tag::CodeBlock(_) | Tag::BlockQuote(_)
                    if lists.is_empty() =>
                {
                    block_gap(&mut out)
                }
                Tag::List(first) => {
                    if lists.is_empty() {
                        block_gap(&mut out);
                    }
                    lists.push(first);
                }
                Tag::Item => list_item(&mut out, &mut lists),
                Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. } => {
                    links.push(dest_url.to_string())
                }
                _ => {}
            },
            Event::End(tag) => match tag {
                TagEnd::List(_) => {
                    lists.pop();
                }
                TagEnd::Link | TagEnd::Image => {
                    if let Some(url) = links.pop() {
                        out.push_str(&format!(" ({url})"));
                    }
                }
                TagEnd::CodeBlock => {
                    if out.ends_with('\n') {
                        out.pop();
                    }
                }
                _ => {}
            },
            Event::Text(t) | Event::Code(t) | Event::Html(t) | Event::InlineHtml(t) => {
                out.push_str(&t)
            }
            Event::SoftBreak | Event::HardBreak => out.push('\n'),
            Event::Rule => {
                block_gap(&mut out);
                out.push_str("———");
            }
            _ => {}
        }
    }
    out
}

/// Blocks of plain text and mrkdwn are separated by a blank line.
fn block_gap(out: &mut String) {
    if !out.is_empty() {
        while out.ends_with('\n') {
            out.pop();
        }
        out.push_str("\n\n");
    }
}

/// A list item of plain text or mrkdwn: a new line, indented by depth, with its marker.
fn list_item(out: &mut String, lists: &mut [Option<u64>]) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&"  ".repeat(lists.len().saturating_sub(1)));
    match lists.last_mut() {
        Some(Some(n)) => {
            out.push_str(&format!("{n}. "));
            *n += 1;
        }
        _ => out.push_str("• "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translations() {
        let md = "**GMV** is *up* see [the report](https://x.test/a?b=1&c=2)\n`<b>` & 5 * 3";
        assert_eq!(
            to_html(md),
            "<strong>GMV</strong> is <em>up</em> see <a href=\"https://x.test/a?b=1&amp;c=2\" target=\"_blank\" rel=\"noopener noreferrer nofollow\">the report</a><br><code>&lt;b&gt;</code> &amp; 5 * 3"
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
    fn unsafe_links_and_raw_html_stay_text() {
        assert_eq!(to_html("[x](javascript:alert(1))"), "x");
        assert_eq!(to_slack("[x](javascript:alert(1))"), "x");
        assert_eq!(to_html("<script>"), "&lt;script&gt;");
        assert_eq!(
            to_html("a <img src=x onerror=alert(1)> b"),
            "a &lt;img src=x onerror=alert(1)&gt; b"
        );
        assert_eq!(to_plain("**"), "**");
        assert_eq!(to_plain("日本 **語**"), "日本 語");
    }

    #[test]
    fn blocks_render_for_each_target() {
        let md = "**Commands here**\n\n- `@echo <text>` — repeats\n- *b* and _c_\n\n1. one\n2. two\n\n```\nlet x = \"<y>\";\n```\nend";
        let h = to_html_with(md, &escape_html);
        assert_eq!(
            h,
            "<p><strong>Commands here</strong></p><ul><li><code>@echo &lt;text&gt;</code> — repeats</li><li><em>b</em> and <em>c</em></li></ul><ol><li>one</li><li>two</li></ol><pre><code>let x = &quot;&lt;y&gt;&quot;;</code></pre><p>end</p>"
        );
        assert_eq!(
            to_plain(md),
            "Commands here\n\n• @echo <text> — repeats\n• b and c\n\n1. one\n2. two\n\nlet x = \"<y>\";\n\nend"
        );
        assert_eq!(
            to_slack(md),
            "*Commands here*\n\n• `@echo &lt;text&gt;` — repeats\n• _b_ and _c_\n\n1. one\n2. two\n\n```\nlet x = \"&lt;y&gt;\";\n```\n\nend"
        );
        assert_eq!(to_html_with("a\nb", &escape_html), "<p>a<br>b</p>");
        assert_eq!(
            to_html_with("snake_case_name", &escape_html),
            "<p>snake_case_name</p>"
        );
        assert_eq!(
            to_html_with("# Title", &escape_html),
            "<p><strong>Title</strong></p>"
        );
        assert_eq!(to_html("one\n\ntwo"), "one<br><br>two");
    }

    #[test]
    fn values_cannot_break_out_of_their_markdown() {
        // A branch name that would end a one-backtick span and start emphasis.
        let branch = "main`); *x*";
        let md = format!("Deployed {} to **prod**", code(branch));
        assert_eq!(
            to_plain(&md),
            "Deployed main`); *x* to prod",
            "the value shows whole, as code"
        );
        assert!(
            to_html(&md).contains("<code>main`); *x*</code>"),
            "{}",
            to_html(&md)
        );
        assert_eq!(to_plain(&code("`a`")), "`a`");
        assert_eq!(to_plain(&code("")), " ");
        // As text: nothing in it becomes markup.
        for value in [
            "*not bold*",
            "[x](https://e.test)",
            "<b>",
            "# h",
            "1. x",
            "a_b_c",
            "\\*",
        ] {
            let md = escape(value);
            assert_eq!(to_plain(&md), value, "{md}");
            assert_eq!(to_html(&md), escape_html(value), "{md}");
        }
    }
}
