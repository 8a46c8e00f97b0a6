// `js-hello` — the `hello` job in JavaScript: greets whoever the args name.
//
// Args: `{"name": "Ada"}` (the name, or the args as a whole, may be left out: "world").
// Result: `{"message": "Hello, Ada!"}`.

import { job } from "../../guest-sdk/js/wasmq_job.js";

export const run = job((args) => {
  const name = args?.name ?? "world";
  return { message: `Hello, ${name}!` };
});
