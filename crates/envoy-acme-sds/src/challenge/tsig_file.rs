//! Reading a TSIG key from a file, in the forms DNS tools hand them out:
//!
//! - BIND's and knot's (`tsig-keygen`, `keymgr -t`):
//!   `key "name" { algorithm hmac-sha256; secret "base64"; };`
//! - a one-liner, `name:algorithm:base64secret` (or knsupdate's
//!   `algorithm:name:base64secret`).
//!
//! Errors name the file and what is wrong, never the secret.

use std::path::Path;

use zeroize::Zeroizing;

use super::dns01::{Dns01Error, TsigKey};

#[derive(Debug, thiserror::Error)]
pub enum TsigFileError {
    #[error("reading the TSIG key file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "TSIG key file {path}: {reason} (expected `key \"name\" {{ algorithm hmac-sha256; secret \"...\"; }};` or `name:algorithm:secret`)"
    )]
    Syntax { path: String, reason: String },
    #[error("TSIG key file {path}: {source}")]
    Key {
        path: String,
        #[source]
        source: Dns01Error,
    },
}

/// Reads and parses the key in `path`.
pub fn read_tsig_key(path: &Path) -> Result<TsigKey, TsigFileError> {
    let display = path.display().to_string();
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| TsigFileError::Read {
                path: display.clone(),
                source,
            })?,
        );
    parse_tsig_key(&text).map_err(|error| match error {
        ParseError::Syntax(reason) => TsigFileError::Syntax {
            path: display,
            reason,
        },
        ParseError::Key(source) => TsigFileError::Key {
            path: display,
            source,
        },
    })
}

#[derive(Debug)]
enum ParseError {
    Syntax(String),
    Key(Dns01Error),
}

fn parse_tsig_key(text: &str) -> Result<TsigKey, ParseError> {
    let text = strip_comments(text);
    let trimmed = text.trim();
    if trimmed.starts_with("key") && trimmed.contains('{') {
        parse_block(trimmed)
    } else {
        parse_one_liner(trimmed)
    }
}

/// Drops whole-line `#` and `//` comments, as BIND and knot write them.
fn strip_comments(text: &str) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(text.len()));
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn parse_block(text: &str) -> Result<TsigKey, ParseError> {
    let syntax = |reason: &str| ParseError::Syntax(reason.to_owned());
    let after_key = text.strip_prefix("key").unwrap_or(text).trim_start();
    let open = after_key
        .find('{')
        .ok_or_else(|| syntax("no `{` after the key name"))?;
    let name = after_key[..open].trim().trim_matches('"');
    if name.is_empty() {
        return Err(syntax("the key has no name"));
    }
    let close = after_key
        .rfind('}')
        .ok_or_else(|| syntax("no closing `}`"))?;
    if close < open {
        return Err(syntax("`}` before `{`"));
    }
    let mut algorithm = None;
    let mut secret = None;
    for statement in after_key[open + 1..close].split(';') {
        let statement = statement.trim();
        if statement.is_empty() {
            continue;
        }
        let (keyword, value) = statement
            .split_once(char::is_whitespace)
            .ok_or_else(|| syntax("a statement without a value"))?;
        let value = value.trim().trim_matches('"');
        match keyword {
            "algorithm" => algorithm = Some(value.to_owned()),
            "secret" => secret = Some(Zeroizing::new(value.to_owned())),
            other => {
                return Err(ParseError::Syntax(format!(
                    "unknown statement `{other}` in the key block"
                )));
            }
        }
    }
    let algorithm = algorithm.ok_or_else(|| syntax("no `algorithm` statement"))?;
    let secret = secret.ok_or_else(|| syntax("no `secret` statement"))?;
    TsigKey::new(name, &algorithm, &secret).map_err(ParseError::Key)
}

fn parse_one_liner(text: &str) -> Result<TsigKey, ParseError> {
    let mut lines = text.lines().filter(|line| !line.trim().is_empty());
    let line = lines
        .next()
        .ok_or_else(|| ParseError::Syntax("the file is empty".to_owned()))?;
    if lines.next().is_some() {
        return Err(ParseError::Syntax(
            "more than one line, but not a `key { ... }` block".to_owned(),
        ));
    }
    let parts: Vec<&str> = line.trim().splitn(3, ':').collect();
    let [first, second, secret] = parts.as_slice() else {
        return Err(ParseError::Syntax(
            "a one-line key needs three `:`-separated fields".to_owned(),
        ));
    };
    // knsupdate writes the algorithm first; this service's own form names the key first.
    let (name, algorithm) = if first.to_ascii_lowercase().starts_with("hmac-") {
        (second, first)
    } else {
        (first, second)
    };
    TsigKey::new(name, algorithm, secret).map_err(ParseError::Key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0";

    fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
        let path = dir.path().join("key");
        std::fs::write(&path, text).expect("write");
        path
    }

    fn describe(key: &TsigKey) -> String {
        format!("{key:?}")
    }

    #[test]
    fn bind_style_block_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            &dir,
            &format!(
                "# made by tsig-keygen\nkey \"update-key\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{SECRET}\";\n}};\n"
            ),
        );
        let key = read_tsig_key(&path).expect("parsed");
        let debug = describe(&key);
        assert!(debug.contains("update-key."), "{debug}");
        assert!(debug.contains("hmac-sha256"), "{debug}");
        assert!(!debug.contains(SECRET), "{debug}");
    }

    #[test]
    fn one_liners_in_both_orders_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        for text in [
            format!("update-key:hmac-sha512:{SECRET}\n"),
            format!("hmac-sha512:update-key:{SECRET}"),
        ] {
            let key = read_tsig_key(&write(&dir, &text)).expect("parsed");
            let debug = describe(&key);
            assert!(debug.contains("update-key."), "{debug}");
            assert!(debug.contains("hmac-sha512"), "{debug}");
        }
    }

    #[test]
    fn errors_name_the_file_and_the_fault_but_not_the_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            (
                format!("key \"k\" {{ secret \"{SECRET}\"; }};"),
                "no `algorithm`",
            ),
            (
                format!("key \"k\" {{ algorithm hmac-md5; secret \"{SECRET}\"; }};"),
                "unsupported algorithm",
            ),
            (format!("k:{SECRET}"), "three"),
            ("k:hmac-sha256:not base64!".to_owned(), "not valid base64"),
            (String::new(), "empty"),
        ];
        for (text, expected) in cases {
            let path = write(&dir, &text);
            let error = read_tsig_key(&path).expect_err("rejected").to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert!(!error.contains(SECRET), "{error}");
        }
        let missing = read_tsig_key(&dir.path().join("absent")).expect_err("missing");
        assert!(matches!(missing, TsigFileError::Read { .. }), "{missing}");
    }
}
