//! The small pieces tags are made of (hosts, paths, header names, regular
//! expressions), each checked as strictly as Envoy checks it, so that a bad
//! tag is reported here rather than turning a whole configuration update
//! into a NACK.

use regex_syntax::ast::{self, Ast};

use crate::model::HostPattern;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    #[error("`{0}` is not a host name (dot-separated labels of letters, digits and `-`)")]
    Host(String),
    #[error("`{0}`: a `*` may only open a host, as in `*.example.com`")]
    Star(String),
    #[error("`{0}`: give the host without a port")]
    Port(String),
    #[error("`{0}` is not a path: it must start with `/`")]
    PathStart(String),
    #[error("`{0}`: a path holds no spaces, control characters, `?` or `#`")]
    PathChar(String),
    #[error("`{0}` is not a header name (letters, digits and !#$%&'*+-.^_`|~)")]
    Token(String),
    #[error("`{0}` is not a header value (visible ASCII characters only)")]
    HeaderValue(String),
    #[error("`{0}` is not a name (letters, digits, `-` and `_`)")]
    Name(String),
    #[error("`{pattern}` is not a regular expression: {reason}")]
    Regex { pattern: String, reason: String },
}

/// A route's host: empty is `Any`, `*.name` a suffix wildcard, otherwise a
/// DNS name. Lower-cased and without a trailing dot so that two spellings
/// of one name are one virtual host.
pub fn host_pattern(text: &str) -> Result<HostPattern, SyntaxError> {
    if text.is_empty() {
        return Ok(HostPattern::Any);
    }
    let lower = text.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.contains(':') {
        return Err(SyntaxError::Port(text.to_owned()));
    }
    if let Some(parent) = name.strip_prefix("*.") {
        if parent.contains('*') {
            return Err(SyntaxError::Star(text.to_owned()));
        }
        if !is_dns_name(parent) || name.len() > 253 {
            return Err(SyntaxError::Host(text.to_owned()));
        }
        return Ok(HostPattern::Wildcard(name.to_owned()));
    }
    if name.contains('*') {
        return Err(SyntaxError::Star(text.to_owned()));
    }
    if !is_dns_name(name) {
        return Err(SyntaxError::Host(text.to_owned()));
    }
    Ok(HostPattern::Exact(name.to_owned()))
}

/// A lower-case DNS name: labels of 1 to 63 letters, digits and `-`, not
/// starting or ending with `-`, at most 253 characters in all.
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// A path Envoy accepts in a match or a rewrite: starts with `/`, and holds
/// nothing a request path could not hold before its query.
pub fn path(text: &str) -> Result<String, SyntaxError> {
    if !text.starts_with('/') {
        return Err(SyntaxError::PathStart(text.to_owned()));
    }
    if text
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err(SyntaxError::PathChar(text.to_owned()));
    }
    Ok(text.to_owned())
}

/// A path prefix, matched at segment boundaries: a trailing `/` adds
/// nothing (`/api/` and `/api` select the same requests) and Envoy's
/// separated-prefix match refuses it, so it is dropped.
pub fn path_prefix(text: &str) -> Result<String, SyntaxError> {
    let path = path(text)?;
    let trimmed = path.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

/// Whether `prefix` selects `path` and everything below it at a segment
/// boundary (`/api` covers `/api` and `/api/v1`, not `/apiary`). Both are
/// normalised prefixes.
pub fn covers(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// An HTTP token (RFC 9110 `tchar`s), as header names and methods are.
pub fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header name, lower-cased as HTTP/2 and Envoy hold them.
pub fn header_name(text: &str) -> Result<String, SyntaxError> {
    if is_token(text) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(SyntaxError::Token(text.to_owned()))
    }
}

pub fn header_value(text: &str) -> Result<String, SyntaxError> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(text.to_owned())
    } else {
        Err(SyntaxError::HeaderValue(text.to_owned()))
    }
}

/// Names of routes and listeners: `[A-Za-z0-9_-]+`, so they can sit in a
/// dotted tag key and in Envoy resource names.
pub fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn name(text: &str) -> Result<String, SyntaxError> {
    if is_name(text) {
        Ok(text.to_owned())
    } else {
        Err(SyntaxError::Name(text.to_owned()))
    }
}

/// RE2's largest counted repetition; the `regex` crate allows more.
const RE2_MAX_REPEAT: u32 = 1000;

/// A regular expression Envoy's RE2 compiles. It must compile with the
/// `regex` crate (whose syntax is RE2's, without backreferences or
/// look-around) and use none of that crate's extensions RE2 lacks: class
/// set operations and nested classes, the `x`, `u` and `R` flags,
/// `(?<name>...)` groups, `\<`/`\>`/`\b{...}` boundaries, repetition counts
/// above 1000.
pub fn regex(pattern: &str) -> Result<String, SyntaxError> {
    let fail = |reason: String| SyntaxError::Regex {
        pattern: pattern.to_owned(),
        reason,
    };
    let ast = ast::parse::Parser::new()
        .parse(pattern)
        .map_err(|err| fail(err.kind().to_string()))?;
    ast::visit(&ast, Re2Subset).map_err(fail)?;
    regex::Regex::new(pattern).map_err(|err| fail(first_line(&err.to_string())))?;
    Ok(pattern.to_owned())
}

fn first_line(text: &str) -> String {
    // The `regex` crate's message draws the pattern over several lines;
    // the last line names the problem.
    text.lines()
        .rev()
        .find(|line| line.starts_with("error:"))
        .map(|line| line.trim_start_matches("error:").trim().to_owned())
        .unwrap_or_else(|| text.to_owned())
}

struct Re2Subset;

impl ast::Visitor for Re2Subset {
    type Output = ();
    type Err = String;

    fn finish(self) -> Result<(), String> {
        Ok(())
    }

    fn visit_pre(&mut self, node: &Ast) -> Result<(), String> {
        match node {
            Ast::Flags(set) => check_flags(&set.flags),
            Ast::Group(group) => match &group.kind {
                ast::GroupKind::NonCapturing(flags) => check_flags(flags),
                ast::GroupKind::CaptureName {
                    starts_with_p: false,
                    name,
                } => Err(format!("write the named group as `(?P<{}>...)`", name.name)),
                _ => Ok(()),
            },
            Ast::Assertion(assertion) => match assertion.kind {
                ast::AssertionKind::StartLine
                | ast::AssertionKind::EndLine
                | ast::AssertionKind::StartText
                | ast::AssertionKind::EndText
                | ast::AssertionKind::WordBoundary
                | ast::AssertionKind::NotWordBoundary => Ok(()),
                _ => Err("RE2 knows only the `\\b` and `\\B` word boundaries".to_owned()),
            },
            Ast::Repetition(repetition) => match repetition.op.kind {
                ast::RepetitionKind::Range(
                    ast::RepetitionRange::Exactly(n)
                    | ast::RepetitionRange::AtLeast(n)
                    | ast::RepetitionRange::Bounded(_, n),
                ) if n > RE2_MAX_REPEAT => Err(format!(
                    "RE2 repeats at most {RE2_MAX_REPEAT} times, not {n}"
                )),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn visit_class_set_item_pre(&mut self, item: &ast::ClassSetItem) -> Result<(), String> {
        match item {
            ast::ClassSetItem::Bracketed(_) => Err("RE2 has no nested classes".to_owned()),
            _ => Ok(()),
        }
    }

    fn visit_class_set_binary_op_pre(&mut self, _op: &ast::ClassSetBinaryOp) -> Result<(), String> {
        Err("RE2 has no class operations (`&&`, `--`, `~~`)".to_owned())
    }
}

fn check_flags(flags: &ast::Flags) -> Result<(), String> {
    for item in &flags.items {
        if let ast::FlagsItemKind::Flag(flag) = &item.kind {
            match flag {
                ast::Flag::CaseInsensitive
                | ast::Flag::MultiLine
                | ast::Flag::DotMatchesNewLine
                | ast::Flag::SwapGreed => {}
                ast::Flag::Unicode | ast::Flag::CRLF | ast::Flag::IgnoreWhitespace => {
                    return Err("RE2 knows only the flags i, m, s and U".to_owned());
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hosts_are_lower_case_without_trailing_dot() {
        assert_eq!(
            host_pattern("Shop.Example.COM."),
            Ok(HostPattern::Exact("shop.example.com".into()))
        );
        assert_eq!(
            host_pattern("*.Example.com"),
            Ok(HostPattern::Wildcard("*.example.com".into()))
        );
        assert_eq!(host_pattern(""), Ok(HostPattern::Any));
        assert_eq!(
            host_pattern("localhost"),
            Ok(HostPattern::Exact("localhost".into()))
        );
    }

    #[test]
    fn bad_hosts_are_refused_with_the_reason() {
        assert!(matches!(
            host_pattern("shop.example.com:8080"),
            Err(SyntaxError::Port(_))
        ));
        assert!(matches!(
            host_pattern("shop.*.com"),
            Err(SyntaxError::Star(_))
        ));
        assert!(matches!(host_pattern("*"), Err(SyntaxError::Star(_))));
        assert!(matches!(host_pattern("*.*.com"), Err(SyntaxError::Star(_))));
        assert!(matches!(
            host_pattern("*shop.com"),
            Err(SyntaxError::Star(_))
        ));
        for bad in [
            "-a.com", "a-.com", "a..com", "a_b.com", "ä.com", ".", "*.a..com", "a b",
        ] {
            assert!(
                matches!(host_pattern(bad), Err(SyntaxError::Host(_))),
                "{bad}"
            );
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(host_pattern(&long_label).is_err());
        let long_name = vec!["a".repeat(60); 5].join(".");
        assert!(host_pattern(&long_name).is_err());
    }

    #[test]
    fn paths_start_with_a_slash_and_hold_no_query() {
        assert_eq!(path("/api/v1"), Ok("/api/v1".into()));
        assert!(matches!(path("api"), Err(SyntaxError::PathStart(_))));
        assert!(matches!(path(""), Err(SyntaxError::PathStart(_))));
        for bad in ["/a?b", "/a#b", "/a b", "/a\tb"] {
            assert!(matches!(path(bad), Err(SyntaxError::PathChar(_))), "{bad}");
        }
        assert_eq!(path_prefix("/api/"), Ok("/api".into()));
        assert_eq!(path_prefix("//"), Ok("/".into()));
        assert_eq!(path_prefix("/"), Ok("/".into()));
    }

    #[test]
    fn coverage_is_at_segment_boundaries() {
        assert!(covers("/api", "/api"));
        assert!(covers("/api", "/api/v1"));
        assert!(!covers("/api", "/apiary"));
        assert!(!covers("/api/v1", "/api"));
        assert!(covers("/", "/anything"));
    }

    #[test]
    fn header_names_are_tokens() {
        assert_eq!(header_name("X-Canary"), Ok("x-canary".into()));
        for bad in ["", ":authority", "a b", "a:b", "é", "a/b"] {
            assert!(header_name(bad).is_err(), "{bad}");
        }
        assert!(header_value("").is_err());
        assert!(header_value("ok\u{7f}").is_err());
    }

    #[test]
    fn regexes_re2_would_refuse_are_refused() {
        assert!(regex("^/api/v[0-9]+/users/[^/]+$").is_ok());
        assert!(regex("/(?P<id>[0-9]+)").is_ok());
        assert!(regex("(?i)/shop").is_ok());
        for bad in [
            "(",
            "[a-",
            "a{1001}",
            "a{2,1001}",
            "(?<id>x)",
            "[a&&b]",
            "[a--b]",
            "[[a]b]",
            "(?x) a",
            "(?u)a",
            "(?R)a",
            r"\<a",
            r"\b{start}a",
            r"(a)\1",
            "(?=a)",
        ] {
            let err = regex(bad).unwrap_err();
            assert!(matches!(err, SyntaxError::Regex { .. }), "{bad}");
        }
        let err = regex("a{1001}").unwrap_err().to_string();
        assert!(err.contains("at most 1000"), "{err}");
    }

    proptest! {
        #[test]
        fn validators_never_panic(text in "\\PC{0,40}") {
            let _ = host_pattern(&text);
            let _ = path_prefix(&text);
            let _ = header_name(&text);
            let _ = regex(&text);
        }

        #[test]
        fn accepted_hosts_are_normalised(text in "[a-zA-Z0-9.*:-]{0,30}") {
            if let Ok(host) = host_pattern(&text) {
                let domain = host.domain();
                prop_assert_eq!(domain.to_ascii_lowercase(), domain);
                prop_assert!(!domain.ends_with('.') || domain == "*");
                if host != HostPattern::Any {
                    prop_assert_eq!(host_pattern(domain), Ok(host.clone()));
                }
            }
        }
    }
}
