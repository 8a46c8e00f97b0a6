//! `hello` — the demo's first job: greets whoever the args name.
//!
//! Args: `{"name": "Ada"}` (the name, or the args as a whole, may be left out: "world"). Result: `{"message": "Hello, Ada!"}`.

use serde::{Deserialize, Serialize};
use wasmq_guest::JobError;

#[derive(Deserialize)]
struct Args {
    #[serde(default = "default_name")]
    name: String,
}

fn default_name() -> String {
    "world".to_owned()
}

#[derive(Serialize)]
struct Greeting {
    message: String,
}

#[wasmq_guest::job]
fn hello(args: Option<Args>) -> Result<Greeting, JobError> {
    let name = args.map_or_else(default_name, |a| a.name);
    Ok(Greeting {
        message: format!("Hello, {name}!"),
    })
}
