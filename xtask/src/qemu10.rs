//! `cargo xtask fetch-qemu`: QEMU 10 from Debian's bookworm-backports, unpacked into
//! `target/qemu10/` without touching the system (SPEC.md, "QEMU 10.0.2").
//!
//! apt runs with a private configuration: its own sources list (one line, derived from the
//! system's own apt sources: the mirror URI, components and keyring of the entry that carries
//! the `bookworm` suite, with the suite `bookworm-backports`), its own state, lists and cache
//! directories under `target/qemu10/apt/`, and an empty dpkg status, so neither the system's
//! package lists nor its installed packages change. `apt-get update` fetches only the backports
//! index; `apt-get download` fetches [`PACKAGES`] (QEMU 10 and the SeaBIOS >= 1.16.3 it
//! depends on: bookworm's 1.16.2 stalls 32 s on the empty default CD-ROM); `dpkg-deb -x`
//! unpacks each into `target/qemu10/root/`. QEMU then runs from there with
//! `-L root/usr/share/seabios -L root/usr/share/qemu` ([`crate::qemu::Qemu::at`]).
//!
//! A complete unpack is marked by `target/qemu10/ready` (the downloaded file names): a second
//! run only checks that the binary still starts. Runs without root. Delete `target/qemu10/` to
//! fetch again.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::linux::fetch::run;
use crate::qemu::Qemu;

/// The Debian release whose backports carry QEMU 10.
pub const RELEASE: &str = "bookworm";
/// The suite the packages come from.
pub const SUITE: &str = "bookworm-backports";
/// What is downloaded and unpacked.
pub const PACKAGES: [&str; 4] = [
    "qemu-system-x86",
    "qemu-system-common",
    "qemu-system-data",
    "seabios",
];
/// The major version the fetched QEMU must report.
pub const MAJOR: u16 = 10;

/// Where the fetched QEMU lives: `target/qemu10`.
pub fn dir(root: &Path) -> PathBuf {
    root.join("target").join("qemu10")
}

/// The unpacked binary under `dir`.
pub fn binary(dir: &Path) -> PathBuf {
    dir.join("root")
        .join("usr")
        .join("bin")
        .join("qemu-system-x86_64")
}

/// One `deb` source of the system's apt configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    /// Mirror URI, e.g. `http://mirror.example/debian`.
    pub uri: String,
    /// Suites (`bookworm`, `bookworm-updates`, ...).
    pub suites: Vec<String>,
    /// Components (`main`, ...).
    pub components: Vec<String>,
    /// The `Signed-By` / `signed-by=` keyring, when given.
    pub signed_by: Option<String>,
}

impl AptSource {
    /// The one-line source for [`SUITE`] from the same mirror, components and keyring.
    pub fn backports_line(&self) -> String {
        let options = match &self.signed_by {
            Some(k) => format!(" [signed-by={k}]"),
            None => String::new(),
        };
        format!(
            "deb{options} {} {SUITE} {}\n",
            self.uri,
            self.components.join(" ")
        )
    }
}

/// Parses one-line sources (`sources.list` format): `deb [opts] URI SUITE COMPONENTS...`;
/// comments, `deb-src` and malformed lines are skipped.
pub fn parse_one_line(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue;
        };
        let rest = rest.trim_start();
        let (options, rest) = match rest.strip_prefix('[') {
            Some(r) => match r.split_once(']') {
                Some((o, r)) => (o, r),
                None => continue,
            },
            None => ("", rest),
        };
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        let signed_by = options
            .split_whitespace()
            .find_map(|o| o.strip_prefix("signed-by="))
            .map(str::to_string);
        out.push(AptSource {
            uri: uri.to_string(),
            suites: vec![suite.to_string()],
            components: words.map(str::to_string).collect(),
            signed_by,
        });
    }
    out
}

/// Parses deb822 sources (`*.sources`): stanzas separated by blank lines with `Types`, `URIs`,
/// `Suites`, `Components`, `Signed-By` and `Enabled` fields (§ sources.list(5)). Stanzas
/// without type `deb`, disabled ones, and multi-line `Signed-By` key blocks (kept as `None`)
/// are handled; one source per URI.
pub fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| -> Option<String> {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (!l.starts_with('#') && k.trim().eq_ignore_ascii_case(name))
                    .then(|| v.trim().to_string())
            })
        };
        let types = field("Types").unwrap_or_default();
        if !types.split_whitespace().any(|t| t == "deb") {
            continue;
        }
        if field("Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no")) {
            continue;
        }
        let words = |v: Option<String>| -> Vec<String> {
            v.unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        let suites = words(field("Suites"));
        let components = words(field("Components"));
        // An inline key block starts on the next line: only a path is usable here.
        let signed_by = field("Signed-By").filter(|k| k.starts_with('/'));
        for uri in words(field("URIs")) {
            out.push(AptSource {
                uri,
                suites: suites.clone(),
                components: components.clone(),
                signed_by: signed_by.clone(),
            });
        }
    }
    out
}

/// The system's `deb` sources: `/etc/apt/sources.list` and every `*.list` / `*.sources` in
/// `/etc/apt/sources.list.d/` (other files, such as `*.disabled`, are ignored as apt ignores
/// them).
pub fn system_sources(etc_apt: &Path) -> Vec<AptSource> {
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string(etc_apt.join("sources.list")) {
        out.extend(parse_one_line(&text));
    }
    let mut parts: Vec<PathBuf> = std::fs::read_dir(etc_apt.join("sources.list.d"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    parts.sort();
    for p in parts {
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        match p.extension().and_then(|e| e.to_str()) {
            Some("list") => out.extend(parse_one_line(&text)),
            Some("sources") => out.extend(parse_deb822(&text)),
            _ => {}
        }
    }
    out
}

/// The system source whose suites include [`RELEASE`], turned into the backports line.
pub fn backports_line(sources: &[AptSource]) -> Result<String, String> {
    sources
        .iter()
        .find(|s| s.suites.iter().any(|x| x == RELEASE) && !s.components.is_empty())
        .map(AptSource::backports_line)
        .ok_or_else(|| {
            format!(
                "no apt source for the `{RELEASE}` suite in /etc/apt/sources.list{{,.d/*}}: \
                 QEMU 10 is fetched from the same mirror's {SUITE}"
            )
        })
}

/// apt-get with the private configuration under `apt`.
fn apt_get(apt: &Path) -> Command {
    let mut c = Command::new("apt-get");
    c.arg("-q");
    for (key, path) in [
        ("Dir::Etc::SourceList", apt.join("sources.list")),
        ("Dir::Etc::SourceParts", apt.join("sources.list.d")),
        ("Dir::Etc::Preferences", apt.join("preferences")),
        ("Dir::Etc::PreferencesParts", apt.join("preferences.d")),
        ("Dir::State", apt.to_path_buf()),
        ("Dir::State::Lists", apt.join("lists")),
        ("Dir::State::status", apt.join("status")),
        ("Dir::Cache", apt.join("cache")),
    ] {
        c.arg("-o").arg(format!("{key}={}", path.display()));
    }
    // Private lists: the system's apt lock is not ours to take.
    c.args(["-o", "Debug::NoLocking=1"])
        .env("DEBIAN_FRONTEND", "noninteractive");
    if crate::qemu::is_root() {
        // apt drops to the `_apt` user for downloads, which cannot write into target/.
        c.args(["-o", "APT::Sandbox::User=root"]);
    }
    c
}

/// Makes sure QEMU 10 is unpacked in `dir` (fetching it when absent) and returns it.
pub fn ensure(dir: &Path) -> Result<Qemu, String> {
    let ready = dir.join("ready");
    let bin = binary(dir);
    if ready.is_file() && bin.is_file() {
        let q = Qemu::at(&bin)?;
        return check_major(q);
    }
    for tool in ["apt-get", "dpkg-deb"] {
        if !crate::qemu::tool_present(tool) {
            return Err(format!(
                "`{tool}` not found: fetching QEMU 10 needs a Debian host with apt and dpkg"
            ));
        }
    }
    let apt = dir.join("apt");
    for d in [
        apt.join("lists").join("partial"),
        apt.join("cache").join("archives").join("partial"),
        apt.join("sources.list.d"),
        apt.join("preferences.d"),
    ] {
        std::fs::create_dir_all(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let line = backports_line(&system_sources(Path::new("/etc/apt")))?;
    let write = |p: PathBuf, text: &str| {
        std::fs::write(&p, text).map_err(|e| format!("writing {}: {e}", p.display()))
    };
    write(apt.join("sources.list"), &line)?;
    write(apt.join("status"), "")?;
    println!("qemu10: apt-get update ({})", line.trim());
    run(apt_get(&apt).arg("update"))?;
    let debs = dir.join("debs");
    if debs.exists() {
        std::fs::remove_dir_all(&debs).map_err(|e| format!("removing {}: {e}", debs.display()))?;
    }
    std::fs::create_dir_all(&debs).map_err(|e| format!("creating {}: {e}", debs.display()))?;
    println!("qemu10: apt-get download {}", PACKAGES.join(" "));
    run(apt_get(&apt)
        .current_dir(&debs)
        .arg("download")
        .args(PACKAGES))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&debs)
        .map_err(|e| format!("reading {}: {e}", debs.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    files.sort();
    for p in PACKAGES {
        if !files.iter().any(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{p}_")))
        }) {
            return Err(format!(
                "apt-get download left no {p}_*.deb in {}",
                debs.display()
            ));
        }
    }
    let unpacked = dir.join("root");
    if unpacked.exists() {
        std::fs::remove_dir_all(&unpacked)
            .map_err(|e| format!("removing {}: {e}", unpacked.display()))?;
    }
    for f in &files {
        run(Command::new("dpkg-deb").arg("-x").arg(f).arg(&unpacked))?;
    }
    let q = check_major(Qemu::at(&bin)?)?;
    let names: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    write(ready, &(names.join("\n") + "\n"))?;
    println!(
        "qemu10: QEMU {} unpacked in {}",
        q.version,
        unpacked.display()
    );
    Ok(q)
}

fn check_major(q: Qemu) -> Result<Qemu, String> {
    if q.version.major == MAJOR {
        Ok(q)
    } else {
        Err(format!(
            "{} reports QEMU {}, expected {MAJOR}.x from {SUITE}",
            q.binary.display(),
            q.version
        ))
    }
}

/// `cargo xtask fetch-qemu`.
pub fn fetch(root: &Path) -> Result<std::process::ExitCode, String> {
    let q = ensure(&dir(root))?;
    println!(
        "qemu10: ready: {} (QEMU {}); run with `cargo xtask run --qemu {}`",
        q.binary.display(),
        q.version,
        q.binary.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "Types: deb\n\
        # http://snapshot.example/archive/debian/20250520T000000Z\n\
        URIs: http://mirror.example/debian\n\
        Suites: bookworm bookworm-updates\n\
        Components: main contrib\n\
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
        \n\
        Types: deb\n\
        URIs: http://mirror.example/debian-security\n\
        Suites: bookworm-security\n\
        Components: main\n\
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";

    #[test]
    fn deb822_stanzas_give_the_bookworm_mirror() {
        let s = parse_deb822(DEB822);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(
            backports_line(&s).unwrap(),
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://mirror.example/debian bookworm-backports main contrib\n"
        );
    }

    #[test]
    fn one_line_sources_with_and_without_options() {
        let s = parse_one_line(
            "# comment\ndeb-src http://src.example/debian bookworm main\n\
             deb [arch=amd64 signed-by=/k.gpg] http://a.example/debian bookworm main # x\n\
             deb http://b.example/debian bookworm-updates main\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].signed_by.as_deref(), Some("/k.gpg"));
        assert_eq!(s[0].components, ["main"]);
        assert_eq!(
            backports_line(&s).unwrap(),
            "deb [signed-by=/k.gpg] http://a.example/debian bookworm-backports main\n"
        );
        let plain = parse_one_line("deb http://c.example/d bookworm main non-free\n");
        assert_eq!(
            plain[0].backports_line(),
            "deb http://c.example/d bookworm-backports main non-free\n"
        );
    }

    #[test]
    fn disabled_and_other_suites_are_not_used() {
        let disabled = "Types: deb\nURIs: http://x.example/debian\nSuites: bookworm\n\
                        Components: main\nEnabled: no\n";
        assert!(parse_deb822(disabled).is_empty());
        let src_only = "Types: deb-src\nURIs: http://x.example/debian\nSuites: bookworm\n\
                        Components: main\n";
        assert!(parse_deb822(src_only).is_empty());
        let other = parse_one_line("deb http://x.example/debian trixie main\n");
        assert!(backports_line(&other).unwrap_err().contains("bookworm"));
    }

    #[test]
    fn sources_are_read_from_list_and_sources_files_only() {
        let etc = std::env::temp_dir().join(format!("xtask-apt-{}", std::process::id()));
        let d = etc.join("sources.list.d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("debian.sources"), DEB822).unwrap();
        std::fs::write(
            d.join("other.list.disabled"),
            "deb http://off.example/debian bookworm main\n",
        )
        .unwrap();
        std::fs::write(
            d.join("extra.list"),
            "deb http://on.example/x stable main\n",
        )
        .unwrap();
        let s = system_sources(&etc);
        std::fs::remove_dir_all(&etc).unwrap();
        let uris: Vec<&str> = s.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(
            uris,
            [
                "http://mirror.example/debian",
                "http://mirror.example/debian-security",
                "http://on.example/x"
            ]
        );
    }
}
