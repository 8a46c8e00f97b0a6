//! `markdown` — renders Markdown to HTML (CommonMark plus tables, footnotes, strikethrough and
//! task lists) and lists the document's headings, as a docs or CMS pipeline would.
//!
//! Args: `{"markdown": "# Title\n..."}`. Result: `{"html": "...", "headings": [{"level": 1,
//! "text": "Title"}]}`.

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};
use serde::{Deserialize, Serialize};
use wasmq_guest::JobError;

#[derive(Deserialize)]
struct Args {
    markdown: String,
}

#[derive(Serialize)]
struct Heading {
    level: u8,
    text: String,
}

#[derive(Serialize)]
struct Rendered {
    html: String,
    headings: Vec<Heading>,
}

fn level(l: HeadingLevel) -> u8 {
    match l {
        HeadingLevel::H1 => 1,
        HeadingLevel::H2 => 2,
        HeadingLevel::H3 => 3,
        HeadingLevel::H4 => 4,
        HeadingLevel::H5 => 5,
        HeadingLevel::H6 => 6,
    }
}

#[wasmq_guest::job]
fn render(args: Args) -> Result<Rendered, JobError> {
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS;
    let events: Vec<Event> = Parser::new_ext(&args.markdown, options).collect();

    let mut headings = Vec::new();
    let mut current: Option<Heading> = None;
    for event in &events {
        match event {
            Event::Start(Tag::Heading { level: l, .. }) => {
                current = Some(Heading { level: level(*l), text: String::new() });
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = current.as_mut() {
                    h.text.push_str(t);
                }
            }
            Event::End(TagEnd::Heading(_)) => headings.extend(current.take()),
            _ => {}
        }
    }

    let mut html = String::with_capacity(args.markdown.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut html, events.into_iter());
    Ok(Rendered { html, headings })
}
