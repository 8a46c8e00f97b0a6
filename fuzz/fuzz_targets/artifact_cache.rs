//! The artifact cache's reader: whatever a cache file holds, a read is a hit only for a file
//! framed by the cache itself for this module (and then yields exactly its payload), is refused
//! otherwise, and never panics. The first input byte chooses between a file the cache wrote and
//! raw bytes written over it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sha2::{Digest as _, Sha256};
use wasmq::modules::{ArtifactCache, CacheLookup, ModuleHash};

fn cache() -> &'static (tempfile::TempDir, ArtifactCache) {
    static CACHE: OnceLock<(tempfile::TempDir, ArtifactCache)> = OnceLock::new();
    CACHE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path()).unwrap();
        (dir, cache)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let (_, cache) = cache();
    let module = ModuleHash::of(b"fuzzed module");
    let key = "fuzz";
    if mode % 2 == 0 {
        cache.write(&module, key, payload).unwrap();
        match cache.read(&module, key) {
            CacheLookup::Hit(bytes) => assert_eq!(bytes, payload),
            other => panic!("a file the cache wrote was not read back: {other:?}"),
        }
    } else {
        std::fs::write(cache.path(&module, key), payload).unwrap();
        if let CacheLookup::Hit(bytes) = cache.read(&module, key) {
            // Only bytes framed exactly as the cache frames them, for this module.
            let mut framed = Vec::new();
            framed.extend_from_slice(b"wasmq-artifact-1");
            // The module hash is the SHA-256 of the module's bytes.
            framed.extend_from_slice(&Sha256::digest(b"fuzzed module"));
            framed.extend_from_slice(&Sha256::digest(&bytes));
            framed.extend_from_slice(&bytes);
            assert_eq!(framed, payload, "a hit for bytes the cache did not frame");
        }
    }
});
