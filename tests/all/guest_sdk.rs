//! `#[wasmq_guest::job]` on a wrong signature: the compile error names the mistake and points at
//! the user's code. Each case builds a small throwaway crate for `wasm32-wasip2`.

use crate::common;

use std::process::Command;

/// Builds a job crate whose `lib.rs` is `source`; returns the compiler's stderr.
fn build_failing(source: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let sdk = common::repo_root().join("guest-sdk");
    std::fs::write(
        dir.path().join("Cargo.toml"),
        format!(
            "[package]\nname = \"badjob\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n\
             [dependencies]\nwasmq-guest = {{ path = {:?} }}\n\n[workspace]\n",
            sdk.display().to_string()
        ),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/lib.rs"), source).unwrap();
    common::jobs_dir(); // makes sure the target is installed and the shared deps are built
    let out = Command::new("cargo")
        .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
        .current_dir(dir.path())
        // Share the sample jobs' target directory so that wit-bindgen and serde build once.
        .env(
            "CARGO_TARGET_DIR",
            common::repo_root().join("sample-jobs/target"),
        )
        .output()
        .expect("failed to run cargo");
    assert!(!out.status.success(), "expected the build to fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn signature_mistakes_point_at_the_users_code() {
    let stderr = build_failing(
        "use wasmq_guest::{JobError, JobInfo};\n\
         #[wasmq_guest::job]\n\
         async fn a(args: String) -> Result<String, JobError> { Ok(args) }\n\
         #[wasmq_guest::job]\n\
         fn b<T>(args: String) -> Result<String, JobError> { Ok(args) }\n\
         #[wasmq_guest::job]\n\
         fn c(info: &JobInfo, args: String, extra: u8) -> Result<String, JobError> { Ok(args) }\n\
         #[wasmq_guest::job]\n\
         fn d(args: String) { }\n\
         #[wasmq_guest::job]\n\
         fn e(info: JobInfo, args: String) -> Result<String, JobError> { Ok(args) }\n",
    );
    for (line, message) in [
        (3, "cannot be `async`"),
        (5, "cannot be generic"),
        (7, "takes at most two parameters"),
        (9, "returns `Result<T, E>`"),
        (11, "the first must be `&JobInfo`"),
    ] {
        let here = format!("src/lib.rs:{line}:");
        let at = stderr
            .find(message)
            .unwrap_or_else(|| panic!("no `{message}` in:\n{stderr}"));
        assert!(
            stderr[at..].lines().nth(1).unwrap_or("").contains(&here),
            "`{message}` not at {here}:\n{stderr}"
        );
    }
}

#[test]
fn args_that_cannot_be_decoded_point_at_the_type() {
    let stderr = build_failing(
        "use wasmq_guest::JobError;\n\
         struct NotDeserialize;\n\
         #[wasmq_guest::job]\n\
         fn bad(args: NotDeserialize) -> Result<String, JobError> { let _ = args; Ok(String::new()) }\n",
    );
    assert!(stderr.contains("DeserializeOwned"), "{stderr}");
    assert!(stderr.contains("src/lib.rs:4:"), "{stderr}");
}
