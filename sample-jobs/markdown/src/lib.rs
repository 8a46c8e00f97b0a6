//! `markdown` — renders Markdown to HTML (CommonMark plus tables, footnotes, strikethrough and
//! task lists) and lists the document's headings, as a docs or CMS pipeline would.
//!
//! Args: `{"markdown": "# Title\n..."}`. Result: `{"html": "...", "headings": [{"level": 1,
//! "text": "Title"}]}`.

mod render;

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

#[wasmq_guest::job]
fn markdown(args: Args) -> Result<Rendered, JobError> {
    let (html, headings) = render::render(&args.markdown);
    let headings = headings
        .into_iter()
        .map(|(level, text)| Heading { level, text })
        .collect();
    Ok(Rendered { html, headings })
}
