//! Where each item is stored, by name: the layout of ADR 0006, the same in
//! every backend (the item name is bound into the sealing of private keys, so
//! a sealed key opens in any backend only under the same name).
//!
//! ```text
//! certificates/<secret name>/certificate   the leaf, PEM
//! certificates/<secret name>/chain         intermediates, PEM
//! certificates/<secret name>/key           private key, PEM or sealed
//! certificates/<secret name>/metadata      names, validity, serial, digests (JSON)
//! orders/<secret name>                     order history of that certificate
//! accounts/<directory id>                  ACME account credentials
//! renewals/<secret name>                   an operator's renewal request
//! routed-hosts                             the lock holder's routed hosts and unrouted clock
//! ```

use super::{AccountId, SecretName};

/// Where certificates live, relative to the store's root.
pub const CERTIFICATES_DIR: &str = "certificates/";

/// Where ACME accounts live, relative to the store's root.
pub const ACCOUNTS_DIR: &str = "accounts/";

/// The lock holder's record of the routed hosts it knows and since when
/// each is unrouted (`--follow-routes`), so a restart or a new holder
/// continues the clock instead of restarting or forgetting it.
pub const ROUTED_HOSTS_ITEM: &str = "routed-hosts";

/// One of the items a certificate is stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertificatePart {
    Certificate,
    Chain,
    Key,
    Metadata,
}

impl CertificatePart {
    pub const ALL: [Self; 4] = [Self::Certificate, Self::Chain, Self::Key, Self::Metadata];

    /// The item's name inside the certificate's directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Certificate => "certificate",
            Self::Chain => "chain",
            Self::Key => "key",
            Self::Metadata => "metadata",
        }
    }

    fn from_file_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|part| part.file_name() == name)
    }
}

/// The directory of a certificate's items: `certificates/<secret name>`.
pub fn certificate_dir(name: &SecretName) -> String {
    format!("{CERTIFICATES_DIR}{}", name.path_segment())
}

/// The key one item of a certificate is stored under:
/// `certificates/<secret name>/<part>`.
pub fn certificate_item(name: &SecretName, part: CertificatePart) -> String {
    format!("{}/{}", certificate_dir(name), part.file_name())
}

/// The certificate and part an item key names, if it is a certificate item.
pub fn parse_certificate_item(item: &str) -> Option<(SecretName, CertificatePart)> {
    let (segment, file_name) = item.strip_prefix(CERTIFICATES_DIR)?.split_once('/')?;
    let part = CertificatePart::from_file_name(file_name)?;
    Some((SecretName::from_path_segment(segment).ok()?, part))
}

/// The key an order history is stored under: `orders/<secret name>`.
pub fn order_history_item(name: &SecretName) -> String {
    format!("orders/{}", name.path_segment())
}

/// The key an ACME account is stored under: `accounts/<directory id>`.
pub fn account_item(id: &AccountId) -> String {
    format!("{ACCOUNTS_DIR}{id}")
}

/// The key an operator's renewal request is stored under: `renewals/<secret name>`.
pub fn renewal_request_item(name: &SecretName) -> String {
    format!("renewals/{}", name.path_segment())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_keys_round_trip() {
        let wildcard = SecretName::new("*.example.com").expect("name");
        let item = certificate_item(&wildcard, CertificatePart::Key);
        assert_eq!(item, "certificates/%2A.example.com/key");
        assert_eq!(
            parse_certificate_item(&item),
            Some((wildcard, CertificatePart::Key))
        );
        assert_eq!(parse_certificate_item("certificates/example.com"), None);
        assert_eq!(
            parse_certificate_item("certificates/example.com/other"),
            None
        );
        assert_eq!(parse_certificate_item("orders/example.com"), None);
    }
}
