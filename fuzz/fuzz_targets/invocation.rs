//! The invocation parser and the intake's checks: any bytes parse or are refused with a field,
//! never panic; an accepted invocation survives a JSON round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmq::intake::Intake;
use wasmq::invocation::Invocation;

fuzz_target!(|data: &[u8]| {
    let Ok(invocation) = Invocation::from_json(data) else {
        return;
    };
    let Ok(job) = Intake::default().job(invocation) else {
        return;
    };
    let text = serde_json::to_vec(&job.invocation).expect("an accepted invocation serialises");
    let again = Invocation::from_json(&text).expect("what was accepted parses again");
    assert_eq!(again, job.invocation);
});
