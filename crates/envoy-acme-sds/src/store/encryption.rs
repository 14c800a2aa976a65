//! Encryption at rest of private keys: AES-256-GCM with a key from a file.
//!
//! There is no built-in default key: encryption is either configured with a
//! key the operator made, or off. Each sealed value carries a fingerprint of
//! the key that sealed it, so a wrong key is reported as such (not as
//! corruption, and never decrypted into garbage: GCM authenticates). The item
//! name is bound in as associated data, so a sealed key copied into another
//! item does not open there.

use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::secret::Secret;

const KEY_LEN: usize = 32;
const ALGORITHM: &str = "AES-256-GCM";

#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error("reading encryption key file {path}: {source}")]
    ReadKey {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("encryption key file {path} holds neither 32 raw bytes, nor 32 bytes in base64 or hex")]
    BadKey { path: String },
    #[error(
        "sealed with key {sealed_with}, but the configured key is {configured}: wrong encryption key"
    )]
    WrongKey {
        sealed_with: String,
        configured: String,
    },
    #[error("decryption failed: the data was altered or belongs to another item")]
    Tampered,
    #[error("the private key is encrypted at rest but no encryption key is configured")]
    KeyRequired,
    #[error("unsupported sealing algorithm `{0}`")]
    UnsupportedAlgorithm(String),
    #[error("sealed value is malformed: {0}")]
    Malformed(String),
    #[error("no system randomness for a nonce")]
    Random,
}

/// A sealed (encrypted and authenticated) value as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub alg: String,
    /// Fingerprint of the key (see [`KeyEncryption::key_id`]).
    pub key_id: String,
    /// Base64 of the 96-bit nonce.
    pub nonce: String,
    /// Base64 of ciphertext and tag.
    pub ciphertext: String,
}

/// The configured at-rest encryption key.
pub struct KeyEncryption {
    key: LessSafeKey,
    key_id: String,
    random: SystemRandom,
}

impl fmt::Debug for KeyEncryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEncryption")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl KeyEncryption {
    /// Reads the key from `path`: exactly 32 raw bytes, or 32 bytes written in
    /// base64 or hex (surrounding whitespace ignored).
    pub fn from_key_file(path: &Path) -> Result<Self, EncryptionError> {
        let contents =
            Zeroizing::new(
                std::fs::read(path).map_err(|source| EncryptionError::ReadKey {
                    path: path.display().to_string(),
                    source,
                })?,
            );
        let key = decode_key(&contents).ok_or_else(|| EncryptionError::BadKey {
            path: path.display().to_string(),
        })?;
        Self::from_bytes(&key).ok_or_else(|| EncryptionError::BadKey {
            path: path.display().to_string(),
        })
    }

    /// From 32 key bytes; `None` for any other length.
    pub fn from_bytes(key: &[u8]) -> Option<Self> {
        if key.len() != KEY_LEN {
            return None;
        }
        let unbound = UnboundKey::new(&AES_256_GCM, key).ok()?;
        // A fingerprint, not the key: SHA-256 over a domain-separation label
        // and the key, truncated. It lets "wrong key" be told from "corrupt".
        let mut input = Zeroizing::new(b"envoy-acme-sds key id\0".to_vec());
        input.extend_from_slice(key);
        let digest = ring::digest::digest(&ring::digest::SHA256, &input);
        let key_id = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Some(Self {
            key: LessSafeKey::new(unbound),
            key_id,
            random: SystemRandom::new(),
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Encrypts `plaintext`, binding it to `item`.
    pub fn seal(&self, item: &str, plaintext: &[u8]) -> Result<Sealed, EncryptionError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| EncryptionError::Random)?;
        let mut buffer = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(item.as_bytes()),
                &mut buffer,
            )
            .map_err(|_| EncryptionError::Random)?;
        Ok(Sealed {
            alg: ALGORITHM.to_owned(),
            key_id: self.key_id.clone(),
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(buffer),
        })
    }

    /// Decrypts a value sealed for `item`.
    pub fn open(&self, item: &str, sealed: &Sealed) -> Result<Secret<Vec<u8>>, EncryptionError> {
        if sealed.alg != ALGORITHM {
            return Err(EncryptionError::UnsupportedAlgorithm(sealed.alg.clone()));
        }
        if sealed.key_id != self.key_id {
            return Err(EncryptionError::WrongKey {
                sealed_with: sealed.key_id.clone(),
                configured: self.key_id.clone(),
            });
        }
        let nonce: [u8; NONCE_LEN] = STANDARD
            .decode(&sealed.nonce)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| {
                EncryptionError::Malformed("nonce is not 12 bytes of base64".to_owned())
            })?;
        let mut buffer = STANDARD
            .decode(&sealed.ciphertext)
            .map_err(|_| EncryptionError::Malformed("ciphertext is not base64".to_owned()))?;
        let plaintext_len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(item.as_bytes()),
                &mut buffer,
            )
            .map_err(|_| EncryptionError::Tampered)?
            .len();
        buffer.truncate(plaintext_len);
        Ok(Secret::new(buffer))
    }
}

fn decode_key(contents: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if contents.len() == KEY_LEN {
        return Some(Zeroizing::new(contents.to_vec()));
    }
    let text = std::str::from_utf8(contents).ok()?.trim();
    if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let bytes: Option<Vec<u8>> = (0..KEY_LEN)
            .map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        return bytes.map(Zeroizing::new);
    }
    let decoded = Zeroizing::new(STANDARD.decode(text).ok()?);
    (decoded.len() == KEY_LEN).then_some(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> KeyEncryption {
        KeyEncryption::from_bytes(&[byte; KEY_LEN]).expect("32 bytes")
    }

    #[test]
    fn round_trip() {
        let key = key(7);
        let sealed = key.seal("certificates/a", b"private key").expect("seal");
        assert_ne!(sealed.ciphertext, STANDARD.encode(b"private key"));
        let opened = key.open("certificates/a", &sealed).expect("open");
        assert_eq!(opened.expose(), b"private key");
    }

    #[test]
    fn wrong_key_is_named_as_such() {
        let sealed = key(1).seal("item", b"secret").expect("seal");
        let err = key(2).open("item", &sealed).expect_err("wrong key");
        assert!(matches!(err, EncryptionError::WrongKey { .. }), "{err}");
        assert!(err.to_string().contains("wrong encryption key"));
    }

    #[test]
    fn tampering_or_moving_between_items_is_detected() {
        let key = key(3);
        let sealed = key.seal("item-a", b"secret").expect("seal");
        assert!(matches!(
            key.open("item-b", &sealed),
            Err(EncryptionError::Tampered)
        ));
        let mut altered = sealed.clone();
        let mut bytes = STANDARD.decode(&altered.ciphertext).expect("b64");
        bytes[0] ^= 1;
        altered.ciphertext = STANDARD.encode(bytes);
        assert!(matches!(
            key.open("item-a", &altered),
            Err(EncryptionError::Tampered)
        ));
    }

    #[test]
    fn key_file_accepts_raw_base64_and_hex_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = [9u8; KEY_LEN];
        let write = |name: &str, contents: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).expect("write");
            path
        };
        let from_raw = KeyEncryption::from_key_file(&write("raw", &raw)).expect("raw");
        let from_b64 = KeyEncryption::from_key_file(&write(
            "b64",
            format!("{}\n", STANDARD.encode(raw)).as_bytes(),
        ))
        .expect("base64");
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let from_hex = KeyEncryption::from_key_file(&write("hex", hex.as_bytes())).expect("hex");
        assert_eq!(from_raw.key_id(), from_b64.key_id());
        assert_eq!(from_raw.key_id(), from_hex.key_id());
        assert!(matches!(
            KeyEncryption::from_key_file(&write("short", b"too short")),
            Err(EncryptionError::BadKey { .. })
        ));
        assert!(matches!(
            KeyEncryption::from_key_file(&dir.path().join("missing")),
            Err(EncryptionError::ReadKey { .. })
        ));
    }

    #[test]
    fn debug_shows_only_the_fingerprint() {
        let debug = format!("{:?}", key(5));
        assert!(debug.contains("key_id"));
        assert!(!debug.contains("key: "));
    }
}
