//! Version entries: what lets a replica following a Consul prefix read only
//! what changed (ADR 0009).
//!
//! Each thing followers read (a certificate's four items, an ACME account)
//! has one small entry under `versions/`, set by the same fenced `/v1/txn`
//! that writes the thing's items:
//!
//! ```text
//! versions/certificates/<secret name>   bumped with certificates/<secret name>/*
//! versions/accounts/<directory id>      bumped with accounts/<directory id>
//! ```
//!
//! Followers compare an entry's `ModifyIndex`. Its value is a digest of
//! what the write set ([`EntryValue`]) because Consul 1.8 skips a set that
//! changes nothing: an entry rewritten with the same value keeps its
//! `ModifyIndex`, and followers would miss the write. A digest changes
//! whenever the items do, and is short (32 hex digits), so the listing of
//! `versions/` stays small. Consul 1.8 lists no modify indexes without
//! values (`?keys` gives names only), so following these entries is the
//! cheapest way to learn which certificate changed.
//!
//! Listing `versions/` still costs every replica an entry per certificate,
//! so the same transaction also replaces one key, [`LAST_WRITE_ITEM`],
//! with a [`LastWrite`] record: the entries it set and the `ModifyIndex`
//! of the record it replaced (a CAS on that index, so records form a
//! chain). Replicas block on that one key. A record that follows the one
//! a replica took in last names everything that changed; any other (two
//! writes between two answers, a record written by hand, none at all) sends
//! it to compare the listing of `versions/` with what it read.
//!
//! Only the Consul backend writes them; the disk backend has nobody to tell.

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use super::SecretName;
use super::layout::{ACCOUNTS_DIR, CERTIFICATES_DIR, certificate_dir, parse_certificate_item};

/// Where version entries live, relative to the store's root.
pub const VERSIONS_DIR: &str = "versions/";

/// The key, relative to the store's root, holding the last write's [`LastWrite`].
pub const LAST_WRITE_ITEM: &str = "last-write";

/// What one write set, as recorded in [`LAST_WRITE_ITEM`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWrite {
    /// The `ModifyIndex` of the record this one replaced; 0 when there was none.
    pub follows: u64,
    /// What the write set the version entries of.
    pub set: Vec<Versioned>,
}

#[derive(Serialize, Deserialize)]
struct LastWriteDocument {
    follows: u64,
    /// Version entry item names.
    set: Vec<String>,
}

impl LastWrite {
    pub fn encode(&self) -> Vec<u8> {
        let document = LastWriteDocument {
            follows: self.follows,
            set: self.set.iter().map(Versioned::entry).collect(),
        };
        // Numbers and strings only: serializing cannot fail.
        serde_json::to_vec(&document).unwrap_or_default()
    }

    /// `None` when `bytes` is no record (written by hand, by another tool):
    /// the reader then compares the entries instead.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let document: LastWriteDocument = serde_json::from_slice(bytes).ok()?;
        let set = document
            .set
            .iter()
            .map(|entry| Versioned::from_entry(entry))
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            follows: document.follows,
            set,
        })
    }
}

/// Something followers read, announced by one version entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Versioned {
    /// The four items under `certificates/<name>/`.
    Certificate(SecretName),
    /// The item `accounts/<id>` (its credentials count in the keys at rest).
    Account(String),
}

impl Versioned {
    /// What the stored item `item` belongs to, if followers read it; `None`
    /// for order histories, renewal requests and anything else.
    pub fn of_item(item: &str) -> Option<Self> {
        if let Some((name, _)) = parse_certificate_item(item) {
            return Some(Self::Certificate(name));
        }
        let id = item.strip_prefix(ACCOUNTS_DIR)?;
        (!id.is_empty() && !id.contains('/')).then(|| Self::Account(id.to_owned()))
    }

    /// The item name of its version entry.
    pub fn entry(&self) -> String {
        format!("{VERSIONS_DIR}{}", self.subject())
    }

    /// What a version entry's item name announces; `None` for anything else.
    pub fn from_entry(entry: &str) -> Option<Self> {
        let subject = entry.strip_prefix(VERSIONS_DIR)?;
        if let Some(segment) = subject.strip_prefix(CERTIFICATES_DIR) {
            if segment.contains('/') {
                return None;
            }
            return SecretName::from_path_segment(segment)
                .ok()
                .map(Self::Certificate);
        }
        let id = subject.strip_prefix(ACCOUNTS_DIR)?;
        (!id.is_empty() && !id.contains('/')).then(|| Self::Account(id.to_owned()))
    }

    /// Where its items are: the certificate's directory, or the account item.
    pub fn subject(&self) -> String {
        match self {
            Self::Certificate(name) => certificate_dir(name),
            Self::Account(id) => format!("{ACCOUNTS_DIR}{id}"),
        }
    }
}

/// Hex digits of a version entry's value: 128 bits of SHA-256.
const VALUE_HEX_DIGITS: usize = 32;

/// Builds the value of a version entry from the items one write sets.
pub struct EntryValue(Context);

impl std::fmt::Debug for EntryValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryValue").finish_non_exhaustive()
    }
}

impl Default for EntryValue {
    fn default() -> Self {
        Self(Context::new(&SHA256))
    }
}

impl EntryValue {
    /// Takes in one item the write sets.
    pub fn item(&mut self, item: &str, bytes: &[u8]) {
        // Lengths first, so no two different item lists digest alike.
        self.0.update(&(item.len() as u64).to_be_bytes());
        self.0.update(item.as_bytes());
        self.0.update(&(bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }

    /// Takes in the `ModifyIndex` an announced item is stored at: an
    /// announcement names the items as found, not a write.
    pub fn stored_at(&mut self, modify_index: u64) {
        self.0.update(b"@");
        self.0.update(&modify_index.to_be_bytes());
    }

    /// The value, as lowercase hex.
    pub fn finish(self) -> String {
        let digest = self.0.finish();
        let mut hex: String = digest
            .as_ref()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        hex.truncate(VALUE_HEX_DIGITS);
        hex
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AccountId;
    use crate::store::layout::{
        CertificatePart, account_item, certificate_item, order_history_item, renewal_request_item,
    };

    #[test]
    fn every_certificate_item_announces_its_certificate_and_round_trips() {
        let wildcard = SecretName::new("*.example.com").expect("name");
        for part in CertificatePart::ALL {
            let versioned =
                Versioned::of_item(&certificate_item(&wildcard, part)).expect("followed");
            assert_eq!(versioned, Versioned::Certificate(wildcard.clone()));
        }
        let entry = Versioned::Certificate(wildcard.clone()).entry();
        assert_eq!(entry, "versions/certificates/%2A.example.com");
        assert_eq!(
            Versioned::from_entry(&entry),
            Some(Versioned::Certificate(wildcard))
        );
    }

    #[test]
    fn accounts_are_followed_and_other_items_are_not() {
        let id = AccountId::for_directory("https://localhost:14000/dir");
        let account = Versioned::of_item(&account_item(&id)).expect("followed");
        assert_eq!(
            account,
            Versioned::Account("localhost_14000_dir".to_owned())
        );
        assert_eq!(account.subject(), account_item(&id));
        assert_eq!(Versioned::from_entry(&account.entry()), Some(account));

        let name = SecretName::new("example.com").expect("name");
        assert_eq!(Versioned::of_item(&order_history_item(&name)), None);
        assert_eq!(Versioned::of_item(&renewal_request_item(&name)), None);
        assert_eq!(Versioned::of_item("accounts/"), None);
        assert_eq!(Versioned::of_item("certificates/example.com/other"), None);
    }

    #[test]
    fn entry_values_differ_whenever_what_was_written_does() {
        let value = |items: &[(&str, &[u8])], index: Option<u64>| {
            let mut value = EntryValue::default();
            for (item, bytes) in items {
                value.item(item, bytes);
            }
            if let Some(index) = index {
                value.stored_at(index);
            }
            value.finish()
        };
        let four: &[(&str, &[u8])] = &[("c/a", b"1"), ("c/b", b"2")];
        assert_eq!(value(four, None), value(four, None));
        assert_eq!(value(four, None).len(), 32);
        for other in [
            value(&[("c/a", b"1"), ("c/b", b"3")], None),
            value(&[("c/a", b"12"), ("c/b", b"")], None),
            value(&[("c/a", b"1")], None),
            value(four, Some(7)),
        ] {
            assert_ne!(other, value(four, None));
        }
        assert_ne!(value(four, Some(7)), value(four, Some(8)));
    }

    #[test]
    fn last_write_records_round_trip_and_anything_else_is_no_record() {
        let record = LastWrite {
            follows: 41,
            set: vec![
                Versioned::Certificate(SecretName::new("*.example.com").expect("name")),
                Versioned::Account("ca_dir".to_owned()),
            ],
        };
        let bytes = record.encode();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            r#"{"follows":41,"set":["versions/certificates/%2A.example.com","versions/accounts/ca_dir"]}"#
        );
        assert_eq!(LastWrite::decode(&bytes), Some(record));
        for other in [
            &b""[..],
            b"by hand",
            br#"{"follows":1}"#,
            br#"{"follows":1,"set":["orders/x"]}"#,
        ] {
            assert_eq!(LastWrite::decode(other), None, "{other:?}");
        }
    }

    #[test]
    fn entries_of_nothing_known_are_ignored() {
        for entry in [
            "versions/",
            "versions/certificates/",
            "versions/certificates/a/b",
            "versions/certificates/bad name",
            "versions/accounts/",
            "versions/orders/example.com",
            "certificates/example.com",
        ] {
            assert_eq!(Versioned::from_entry(entry), None, "{entry}");
        }
    }
}
