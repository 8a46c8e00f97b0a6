//! The checks made on uploaded bytes before anything is compiled (the header, the names of
//! imports and exports read with wasmparser): any bytes are accepted or refused, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wasmq::sandbox::precheck(data);
});
