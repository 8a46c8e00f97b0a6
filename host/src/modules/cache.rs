//! The on-disk cache of compiled artifacts, one file per (module hash, engine compatibility key).
//!
//! Loading a compiled artifact means mapping machine code that wasmtime trusts blindly, so this
//! cache only ever hands out bytes that it wrote itself, for the module asked for: each file starts
//! with a magic tag, the hash of the module it was compiled from and the SHA-256 of its payload, files are written to a temporary name and renamed into place (a reader
//! never sees half a file), and the directory is created private to this user. A file that fails
//! any check is deleted and reported as rejected; the caller recompiles.
//!
//! The directory is bounded: after each write the least recently used artifacts are deleted until
//! the total is under the cap (reads refresh a file's modification time). A Python or JavaScript
//! job's artifact is about 40 MB, and every new version of a module adds one.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::ModuleHash;

/// Identifies the file format; bump the trailing digit if the framing changes.
const MAGIC: &[u8; 16] = b"wasmq-artifact-1";
const HEADER_LEN: usize = MAGIC.len() + 32 + 32;

/// The result of looking an artifact up.
#[derive(Debug)]
pub enum CacheLookup {
    /// The artifact's payload, checked against the digest the cache wrote with it.
    Hit(Vec<u8>),
    /// No artifact for this module and engine.
    Miss,
    /// A file was there but failed a check; it has been deleted.
    Rejected(String),
}

/// The default cap on a cache directory's size: about fifty Python or JavaScript artifacts, or
/// thousands of Rust ones.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

/// A directory of compiled artifacts owned by this host.
#[derive(Clone, Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
    max_bytes: u64,
}

impl ArtifactCache {
    /// Opens (creating if needed) the cache directory.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        }
        Ok(ArtifactCache {
            dir,
            max_bytes: DEFAULT_MAX_BYTES,
        })
    }

    /// Keeps the directory under `max_bytes` (the newest artifact is kept even if it alone is
    /// larger).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The directory this cache lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the artifact of `module` for the engine identified by `engine_key` lives.
    pub fn path(&self, module: &ModuleHash, engine_key: &str) -> PathBuf {
        self.dir
            .join(format!("{}-{engine_key}.cwasm", module.hex()))
    }

    /// Reads and checks an artifact.
    pub fn read(&self, module: &ModuleHash, engine_key: &str) -> CacheLookup {
        let path = self.path(module, engine_key);
        // Only regular files: a symlink could point the host at bytes it did not write.
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return CacheLookup::Miss,
            Err(e) => return self.reject(&path, format!("cannot stat: {e}")),
            Ok(meta) if !meta.file_type().is_file() => {
                return self.reject(&path, "not a regular file".to_owned());
            }
            Ok(_) => {}
        }
        let mut bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return CacheLookup::Miss,
            Err(e) => return self.reject(&path, format!("cannot read: {e}")),
        };
        if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
            return self.reject(&path, "not written by this cache (bad header)".to_owned());
        }
        if bytes[MAGIC.len()..MAGIC.len() + 32] != module.0 {
            return self.reject(&path, "compiled from another module".to_owned());
        }
        let digest: [u8; 32] = Sha256::digest(&bytes[HEADER_LEN..]).into();
        if digest[..] != bytes[MAGIC.len() + 32..HEADER_LEN] {
            return self.reject(&path, "checksum mismatch (corrupted or altered)".to_owned());
        }
        bytes.drain(..HEADER_LEN);
        // Recently used: the last to be evicted. A failure only makes eviction less precise.
        let _ = fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()));
        CacheLookup::Hit(bytes)
    }

    /// Writes an artifact atomically: readers see the old file, no file, or the whole new one.
    pub fn write(&self, module: &ModuleHash, engine_key: &str, payload: &[u8]) -> io::Result<()> {
        let path = self.path(module, engine_key);
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(MAGIC)?;
        tmp.write_all(&module.0)?;
        tmp.write_all(&Sha256::digest(payload))?;
        tmp.write_all(payload)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        self.evict(&path);
        Ok(())
    }

    /// Deletes the least recently used artifacts, never `keep`, until the directory's artifacts
    /// total at most the cap. Best effort: files that vanish or cannot be read are skipped.
    fn evict(&self, keep: &Path) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| {
                let meta = e.metadata().ok().filter(fs::Metadata::is_file)?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if path != keep && fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }

    /// Deletes an artifact that passed the cache's own checks but that wasmtime then refused
    /// (written by another engine build under a colliding key).
    pub fn discard(&self, module: &ModuleHash, engine_key: &str) {
        let _ = fs::remove_file(self.path(module, engine_key));
    }

    fn reject(&self, path: &Path, reason: String) -> CacheLookup {
        let _ = fs::remove_file(path);
        CacheLookup::Rejected(format!(
            "cached artifact `{}` rejected: {reason}",
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path().join("c")).unwrap();
        let m = ModuleHash::of(b"module");
        assert!(matches!(cache.read(&m, "k"), CacheLookup::Miss));
        cache.write(&m, "k", b"payload").unwrap();
        assert!(matches!(cache.read(&m, "k"), CacheLookup::Hit(p) if p == b"payload"));
        assert!(matches!(cache.read(&m, "other"), CacheLookup::Miss));

        // Another module's artifact under this module's name.
        let other = ModuleHash::of(b"other module");
        fs::copy(cache.path(&m, "k"), cache.path(&other, "k")).unwrap();
        assert!(
            matches!(cache.read(&other, "k"), CacheLookup::Rejected(r) if r.contains("another module"))
        );

        // Flip a payload byte: rejected and deleted.
        let path = cache.path(&m, "k");
        let mut bytes = fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(cache.read(&m, "k"), CacheLookup::Rejected(r) if r.contains("checksum")));
        assert!(!path.exists());

        // A file the cache did not write.
        fs::write(&path, b"\x7fELF not ours").unwrap();
        assert!(
            matches!(cache.read(&m, "k"), CacheLookup::Rejected(r) if r.contains("bad header"))
        );
        assert!(!path.exists());
    }

    #[test]
    fn the_least_recently_used_artifacts_are_evicted_over_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let m = |n: u8| ModuleHash::of(&[n]);
        let file_len = (HEADER_LEN + 100) as u64;
        let cache = ArtifactCache::open(dir.path())
            .unwrap()
            .with_max_bytes(3 * file_len);
        let age = |n: u8, secs_ago: u64| {
            let f = fs::File::options()
                .write(true)
                .open(cache.path(&m(n), "k"))
                .unwrap();
            f.set_modified(SystemTime::now() - std::time::Duration::from_secs(secs_ago))
                .unwrap();
        };
        for n in 0..3 {
            cache.write(&m(n), "k", &[n; 100]).unwrap();
            age(n, 100 - u64::from(n)); // 0 oldest, then 1, then 2
        }
        // Reading 0 makes it the most recent; the next write evicts 1, the least recently used.
        assert!(matches!(cache.read(&m(0), "k"), CacheLookup::Hit(_)));
        cache.write(&m(3), "k", &[3; 100]).unwrap();
        let present = |n: u8| cache.path(&m(n), "k").exists();
        assert_eq!([0, 1, 2, 3].map(present), [true, false, true, true]);
        // An artifact larger than the cap is kept (it is the one just written); the rest go.
        cache.write(&m(9), "k", &[9; 1000]).unwrap();
        assert_eq!([0, 2, 3, 9].map(present), [false, false, false, true]);
        // Files that are not artifacts are left alone.
        fs::write(dir.path().join("notes.txt"), vec![0; 10_000]).unwrap();
        cache.write(&m(4), "k", &[4; 100]).unwrap();
        assert!(dir.path().join("notes.txt").exists());
        assert!(present(4));
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path().join("c")).unwrap();
        let m = ModuleHash::of(b"module");
        let elsewhere = dir.path().join("elsewhere");
        cache.write(&m, "k", b"payload").unwrap();
        fs::rename(cache.path(&m, "k"), &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, cache.path(&m, "k")).unwrap();
        assert!(
            matches!(cache.read(&m, "k"), CacheLookup::Rejected(r) if r.contains("regular file"))
        );
    }
}
