//! docs/configuration.md shows this binary's real flags.

use std::path::Path;

#[test]
fn the_configuration_reference_matches_help() {
    let actual = test_support::docs::actual_help(Path::new(env!("CARGO_BIN_EXE_envoy-acme-sds")))
        .expect("--help runs");
    let documented = test_support::docs::documented_help("envoy-acme-sds")
        .expect("docs/configuration.md has a envoy-acme-sds section");
    assert!(
        documented == actual,
        "docs/configuration.md is out of date: run `cargo xtask docs`\n--- documented\n{documented}\n--- actual\n{actual}"
    );
}
