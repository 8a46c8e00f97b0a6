//! The on-disk cache of compiled artifacts, one file per (module hash, engine compatibility key).
//!
//! Loading a compiled artifact means mapping machine code that wasmtime trusts blindly, so this
//! cache only ever hands out bytes that it wrote itself, for the module asked for: each file starts
//! with a magic tag, the hash of the module it was compiled from and the SHA-256 of its payload, files are written to a temporary name and renamed into place (a reader
//! never sees half a file), and the directory is created private to this user. A file that fails
//! any check is deleted and reported as rejected; the caller recompiles.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

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

/// A directory of compiled artifacts owned by this host.
#[derive(Clone, Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
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
        Ok(ArtifactCache { dir })
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
        Ok(())
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
