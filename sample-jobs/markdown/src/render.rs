//! The markdown job's work, apart from the job plumbing so the host's benchmark can compile the
//! very same code natively (`wasmq bench sandbox` compares the two).

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};

/// Renders CommonMark (plus tables, footnotes, strikethrough, task lists) to HTML and returns
/// the headings as `(level, text)`.
pub fn render(markdown: &str) -> (String, Vec<(u8, String)>) {
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS;
    let events: Vec<Event> = Parser::new_ext(markdown, options).collect();

    let mut headings = Vec::new();
    let mut current: Option<(u8, String)> = None;
    for event in &events {
        match event {
            Event::Start(Tag::Heading { level, .. }) => {
                current = Some((heading_level(*level), String::new()))
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some((_, text)) = current.as_mut() {
                    text.push_str(t);
                }
            }
            Event::End(TagEnd::Heading(_)) => headings.extend(current.take()),
            _ => {}
        }
    }

    let mut html = String::with_capacity(markdown.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut html, events.into_iter());
    (html, headings)
}

fn heading_level(l: HeadingLevel) -> u8 {
    match l {
        HeadingLevel::H1 => 1,
        HeadingLevel::H2 => 2,
        HeadingLevel::H3 => 3,
        HeadingLevel::H4 => 4,
        HeadingLevel::H5 => 5,
        HeadingLevel::H6 => 6,
    }
}
