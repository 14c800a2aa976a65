//! The on-disk backend (`--storage disk:<dir>`).
//!
//! Layout, one file per item (named as in [`super::layout`]):
//!
//! ```text
//! <dir>/                          0700
//!   certificates/<name>/          0700
//!     current -> gen-<ns>-<r>     symlink to the generation in service
//!     gen-<ns>-<r>/               0700  one generation: written once, never modified
//!       certificate chain key metadata   0600
//!   orders/<name>.json            0600  order history of that certificate
//!   accounts/<directory>.json     0600  ACME account credentials
//!   renewals/<name>.json          0600  an operator's renewal request
//! ```
//!
//! Writes are atomic. A JSON item is written to a temporary file in the same
//! directory, fsynced, renamed over the item, then the directory is fsynced
//! so the rename survives a power loss. A certificate's four files must change
//! together, which no single file rename gives: they are written into a new
//! generation directory, fsynced, and `current` is switched to it by renaming
//! a new symlink over it (the scheme Kubernetes uses for secret volumes).
//! A crash at any point leaves `current` on a complete generation. The
//! previous generation is kept, so a reader that resolved `current` just
//! before a switch still finds its files; older ones are removed.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use rand::Rng;
use zeroize::Zeroizing;

use time::OffsetDateTime;

use super::backend::{ItemBackend, Writer};
use super::codec::{Codec, EncodedCertificate, StoredCertificate};
use super::encryption::KeyEncryption;
use super::layout::{CertificatePart, certificate_dir};
use super::typed::Store;
use super::{SecretName, StoreError};

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
/// The symlink naming a certificate's generation in service.
const CURRENT: &str = "current";
const GENERATION_PREFIX: &str = "gen-";

/// Certificates, order histories and accounts as files under one directory.
pub type DiskStore = Store<DiskFiles>;

impl DiskStore {
    /// Opens (creating if needed) the store at `root`. Directories are made
    /// 0700; an existing root with wider permissions is tightened.
    pub fn open(
        root: impl Into<PathBuf>,
        encryption: Option<Arc<KeyEncryption>>,
    ) -> Result<Self, StoreError> {
        Ok(Store::over(DiskFiles::open(root)?, Codec::new(encryption)))
    }

    pub fn root(&self) -> &Path {
        &self.backend().root
    }

    /// The file an item lives in.
    pub fn item_path(&self, item: &str) -> PathBuf {
        self.backend().item_path(item)
    }

    /// The directory of a certificate's generations.
    pub fn certificate_dir(&self, name: &SecretName) -> PathBuf {
        self.backend().certificate_dir(name)
    }

    /// The file one item of the certificate in service is read from.
    pub fn certificate_path(&self, name: &SecretName, part: CertificatePart) -> PathBuf {
        self.certificate_dir(name)
            .join(CURRENT)
            .join(part.file_name())
    }
}

/// The files under one directory, as an [`ItemBackend`].
#[derive(Debug, Clone)]
pub struct DiskFiles {
    root: PathBuf,
}

impl DiskFiles {
    /// Opens (creating if needed) the directory tree at `root`, 0700.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        for dir in [
            root.clone(),
            root.join("certificates"),
            root.join("orders"),
            root.join("accounts"),
            root.join("renewals"),
        ] {
            ensure_private_dir(&dir)?;
        }
        Ok(Self { root })
    }

    fn item_path(&self, item: &str) -> PathBuf {
        self.root.join(format!("{item}.json"))
    }

    fn certificate_dir(&self, name: &SecretName) -> PathBuf {
        self.root.join(certificate_dir(name))
    }
}

#[async_trait]
impl ItemBackend for DiskFiles {
    async fn read_item(&self, item: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let path = self.item_path(item);
        blocking(move || match fs::read(&path) {
            Ok(bytes) => Ok(Some(Zeroizing::new(bytes))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io {
                operation: "reading",
                item: path.display().to_string(),
                source,
            }),
        })
        .await
    }

    /// One instance alone writes its directory: every writer is let through.
    async fn write_item(
        &self,
        item: &str,
        bytes: Zeroizing<Vec<u8>>,
        _writer: Writer,
    ) -> Result<(), StoreError> {
        let path = self.item_path(item);
        blocking(move || write_atomically(&path, &bytes)).await
    }

    async fn read_certificate(&self, name: &SecretName) -> Result<StoredCertificate, StoreError> {
        let dir = self.certificate_dir(name);
        blocking(move || read_generation(&dir)).await
    }

    async fn write_certificate(
        &self,
        name: &SecretName,
        encoded: EncodedCertificate,
    ) -> Result<(), StoreError> {
        let dir = self.certificate_dir(name);
        blocking(move || write_generation(&dir, &encoded)).await
    }
}

fn ensure_private_dir(dir: &Path) -> Result<(), StoreError> {
    let io_error = |operation, source| StoreError::Io {
        operation,
        item: dir.display().to_string(),
        source,
    };
    match DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) => return Err(io_error("creating directory", e)),
    }
    // `mode` only applies to directories created now, and is subject to umask.
    let mode = fs::metadata(dir)
        .map_err(|e| io_error("inspecting directory", e))?
        .permissions()
        .mode();
    if mode & 0o777 != DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| io_error("restricting directory permissions of", e))?;
    }
    Ok(())
}

/// Reads the items of the generation `current` names in a certificate's
/// directory; nothing when there is no `current`.
fn read_generation(dir: &Path) -> Result<StoredCertificate, StoreError> {
    let current = dir.join(CURRENT);
    let io_error = |operation, path: &Path, source| StoreError::Io {
        operation,
        item: path.display().to_string(),
        source,
    };
    // Resolved once, so every item comes from the same generation even if a
    // write switches `current` meanwhile.
    let generation = match fs::read_link(&current) {
        Ok(target) => target,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(StoredCertificate::default()),
        Err(e) => return Err(io_error("reading the symlink", &current, e)),
    };
    let is_generation_name = generation
        .to_str()
        .is_some_and(|name| name.starts_with(GENERATION_PREFIX) && !name.contains('/'));
    if !is_generation_name {
        return Err(StoreError::Corrupt {
            item: current.display().to_string(),
            reason: format!(
                "points to {}, not to a generation directory beside it",
                generation.display()
            ),
        });
    }
    let generation_dir = dir.join(&generation);
    if !generation_dir.is_dir() {
        return Err(StoreError::Corrupt {
            item: current.display().to_string(),
            reason: format!("points to {}, which does not exist", generation.display()),
        });
    }
    let mut stored = StoredCertificate::default();
    for part in CertificatePart::ALL {
        let path = generation_dir.join(part.file_name());
        match fs::read(&path) {
            Ok(bytes) => stored.set(part, &Zeroizing::new(bytes)),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("reading", &path, e)),
        }
    }
    Ok(stored)
}

/// Writes a new generation of a certificate and switches `current` to it.
fn write_generation(dir: &Path, encoded: &EncodedCertificate) -> Result<(), StoreError> {
    write_generation_syncing(dir, encoded, &sync_dir)
}

/// [`write_generation`] with the directory fsync given, so a test can make it fail.
fn write_generation_syncing(
    dir: &Path,
    encoded: &EncodedCertificate,
    sync_dir: &dyn Fn(&Path) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let io_error = |operation, path: &Path, source| StoreError::Io {
        operation,
        item: path.display().to_string(),
        source,
    };
    ensure_private_dir(dir)?;
    let current = dir.join(CURRENT);
    let previous = fs::read_link(&current).ok();
    // Names sort by creation time, which makes the directory easy to read.
    let generation = format!(
        "{GENERATION_PREFIX}{:019}-{:08x}",
        OffsetDateTime::now_utc().unix_timestamp_nanos(),
        rand::rng().random::<u32>()
    );
    let generation_dir = dir.join(&generation);
    let written = (|| {
        DirBuilder::new()
            .mode(DIR_MODE)
            .create(&generation_dir)
            .map_err(|e| io_error("creating directory", &generation_dir, e))?;
        for (part, bytes) in encoded.parts() {
            let path = generation_dir.join(part.file_name());
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&path)
                .map_err(|e| io_error("creating", &path, e))?;
            file.write_all(bytes)
                .and_then(|()| file.sync_all())
                .map_err(|e| io_error("writing", &path, e))?;
        }
        sync_dir(&generation_dir)?;
        let link = dir.join(format!(
            ".{CURRENT}.{:08x}.tmp",
            rand::rng().random::<u32>()
        ));
        std::os::unix::fs::symlink(&generation, &link)
            .map_err(|e| io_error("creating the symlink", &link, e))?;
        if let Err(e) = fs::rename(&link, &current) {
            let _ = fs::remove_file(&link);
            return Err(io_error("switching", &current, e));
        }
        Ok(())
    })();
    if written.is_err() {
        // Best effort: `current` still names the previous, complete generation.
        let _ = fs::remove_dir_all(&generation_dir);
        return written;
    }
    // From here `current` names the new generation, so it must stay even if
    // the switch cannot be made durable: removing it would leave `current`
    // dangling and nothing to serve after a restart. The previous one stays
    // too, for a power loss that undoes the rename.
    sync_dir(dir)?;
    prune_generations(dir, &generation, previous.as_deref());
    Ok(())
}

/// Removes generations other than the one in service and the one before it
/// (including leftovers of interrupted writes). Failing to is only untidy.
fn prune_generations(dir: &Path, keep: &str, previous: Option<&Path>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_kept = name == keep || previous.is_some_and(|p| p == Path::new(name));
        if name.starts_with(GENERATION_PREFIX)
            && !is_kept
            && let Err(error) = fs::remove_dir_all(entry.path())
        {
            tracing::warn!(
                path = %entry.path().display(),
                %error,
                "cannot remove an old certificate generation"
            );
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Io {
            operation: "syncing directory",
            item: dir.display().to_string(),
            source,
        })
}

/// Temp file (0600, same directory) + fsync + rename + fsync of the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io_error = |operation, source| StoreError::Io {
        operation,
        item: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .ok_or_else(|| io_error("writing", std::io::Error::other("item path has no parent")))?;
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suffix: u64 = rand::rng().random();
    let temp = dir.join(format!(".{file_name}.{suffix:016x}.tmp"));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&temp)
            .map_err(|e| io_error("creating temporary file for", e))?;
        file.write_all(bytes)
            .map_err(|e| io_error("writing temporary file for", e))?;
        file.sync_all()
            .map_err(|e| io_error("syncing temporary file for", e))?;
        fs::rename(&temp, path).map_err(|e| io_error("renaming temporary file onto", e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("syncing directory of", e))
    })();
    if result.is_err() {
        // Best effort: a leftover temp file is harmless but untidy.
        let _ = fs::remove_file(&temp);
    }
    result
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work).await?
}

#[cfg(test)]
mod tests {
    //! What only the disk does: generations behind `current`, a private
    //! root. What every store does is specified once, for every backend, in
    //! the integration suite (`tests/store_suite`), and private permissions
    //! of every item in `tests/disk.rs`.

    use super::*;
    use crate::certificate::tests::issue_test_certificate;
    use crate::certificate::{CertificateBundle, IssuanceFacts};
    use crate::store::CertificateStore;

    fn bundle(names: &[&str]) -> CertificateBundle {
        let now = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
            .expect("now");
        let (chain, key) = issue_test_certificate(names, now, time::Duration::days(90));
        CertificateBundle::from_issued(chain, key, now, IssuanceFacts::default()).expect("bundle")
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    /// A store in a directory of its own, holding one certificate.
    struct OneCertificate {
        _dir: tempfile::TempDir,
        store: DiskStore,
        name: SecretName,
        stored: CertificateBundle,
    }

    async fn one_certificate() -> OneCertificate {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DiskStore::open(dir.path(), None).expect("open");
        let name = SecretName::new("example.com").expect("name");
        let stored = bundle(&["example.com"]);
        store.save_certificate(&name, &stored).await.expect("save");
        OneCertificate {
            _dir: dir,
            store,
            name,
            stored,
        }
    }

    /// The certificate `current` names, which must load.
    async fn current_certificate(store: &DiskStore, name: &SecretName) -> CertificateBundle {
        store
            .load_certificate(name)
            .await
            .expect("load")
            .expect("present")
    }

    fn generations(store: &DiskStore, name: &SecretName) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(store.certificate_dir(name))
            .expect("read_dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(GENERATION_PREFIX))
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn overwrite_switches_to_a_new_generation_and_keeps_one_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DiskStore::open(dir.path(), None).expect("open");
        let name = SecretName::new("example.com").expect("name");
        let bundles: Vec<_> = (0..3).map(|_| bundle(&["example.com"])).collect();
        let mut in_service = Vec::new();
        for bundle in &bundles {
            store.save_certificate(&name, bundle).await.expect("save");
            assert_eq!(
                current_certificate(&store, &name).await.key_pem(),
                bundle.key_pem()
            );
            let current = fs::read_link(store.certificate_dir(&name).join(CURRENT))
                .expect("current is a symlink");
            in_service.push(current.to_string_lossy().into_owned());
        }
        // The one in service and the one before it: a reader that resolved
        // `current` just before the last switch still finds its files.
        assert_eq!(generations(&store, &name), in_service[1..].to_vec());
        let leftovers: Vec<_> = fs::read_dir(store.certificate_dir(&name))
            .expect("read_dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary links left: {leftovers:?}");
    }

    #[tokio::test]
    async fn an_interrupted_write_leaves_the_previous_certificate_in_service() {
        let OneCertificate {
            _dir,
            store,
            name,
            stored: first,
        } = one_certificate().await;
        // What a crash before the switch leaves: a generation `current` does not name.
        let half = store
            .certificate_dir(&name)
            .join("gen-9999999999999999999-00000000");
        fs::create_dir(&half).expect("mkdir");
        fs::write(half.join("certificate"), b"half written").expect("write");

        assert_eq!(
            current_certificate(&store, &name).await.key_pem(),
            first.key_pem()
        );

        let second = bundle(&["example.com"]);
        store.save_certificate(&name, &second).await.expect("save");
        assert!(!half.exists(), "the interrupted generation is cleaned up");
    }

    #[tokio::test]
    async fn a_failed_sync_after_the_switch_keeps_the_generation_in_service() {
        // `_dir` bound, not `..`: the directory lives as long as the test.
        let OneCertificate {
            _dir, store, name, ..
        } = one_certificate().await;
        let cert_dir = store.certificate_dir(&name);
        let second = bundle(&["example.com"]);
        let encoded = store
            .codec()
            .encode_certificate(&name, &second)
            .expect("encode");
        // The rename onto `current` is done; only making it durable fails.
        let failing_after_switch = |path: &Path| {
            if path == cert_dir {
                Err(StoreError::Io {
                    operation: "syncing directory",
                    item: path.display().to_string(),
                    source: std::io::Error::other("injected"),
                })
            } else {
                sync_dir(path)
            }
        };
        let written = write_generation_syncing(&cert_dir, &encoded, &failing_after_switch);
        assert!(written.is_err(), "the failed sync is reported");
        // `current` names the new generation, and it exists.
        assert_eq!(
            current_certificate(&store, &name).await.key_pem(),
            second.key_pem()
        );
    }

    #[tokio::test]
    async fn broken_generations_are_reported_not_taken_for_absent() {
        // `_dir` bound, not `..`: the directory lives as long as the test.
        let OneCertificate {
            _dir, store, name, ..
        } = one_certificate().await;

        let current = store.certificate_dir(&name).join(CURRENT);
        fs::remove_file(&current).expect("rm");
        std::os::unix::fs::symlink("gen-0000000000000000000-deadbeef", &current).expect("symlink");
        let err = store.load_certificate(&name).await.expect_err("dangling");
        assert!(err.to_string().contains("does not exist"), "{err}");

        fs::remove_file(&current).expect("rm");
        std::os::unix::fs::symlink("/etc", &current).expect("symlink");
        let err = store.load_certificate(&name).await.expect_err("outside");
        assert!(err.to_string().contains("not to a generation"), "{err}");
    }

    #[tokio::test]
    async fn existing_loose_root_is_tightened() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        DiskStore::open(dir.path(), None).expect("open");
        assert_eq!(mode(dir.path()), 0o700);
    }
}
