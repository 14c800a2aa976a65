//! Keeps docs/configuration.md in step with the services' real `--help`.

use std::path::Path;

/// The `--help` text recorded for `service` in docs/configuration.md.
pub fn documented_help(service: &str) -> Option<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let text = std::fs::read_to_string(path).ok()?;
    let begin = format!("<!-- begin {service} --help -->\n```text\n");
    let end = format!("\n```\n<!-- end {service} --help -->");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    Some(text[start..stop].to_owned())
}

/// The binary's `--help`, as the docs record it.
pub fn actual_help(binary: &Path) -> std::io::Result<String> {
    let output = std::process::Command::new(binary).arg("--help").output()?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .trim_end()
        .to_owned())
}
