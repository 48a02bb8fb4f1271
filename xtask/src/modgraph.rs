//! Module-dependency graph check for the workspace's library crates (issue 10: "module
//! dependency graphs of every crate have no cycle").
//!
//! Each library crate's `src/**/*.rs` is tokenised (comments, strings and character literals
//! dropped) and every path that leaves a top-level module through `crate::<module>`,
//! `crate::{<module>::..}`, `crate::<Name>` (a re-export of `lib.rs`, resolved to the module it
//! comes from) or `super::<module>` (climbing to the crate root) becomes an edge between two
//! top-level modules. Test code is not part of the graph: `#[cfg(test)]` items (modules, `use`
//! lines, functions) and the `tests` / `testing` modules are skipped. A cycle in the graph of a
//! crate listed in [`CHECKED`] fails `cargo xtask lint` with the cycle and the lines causing it;
//! the other crates' cycles are printed as notes until they are fixed and added to the list.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Library crates (directories under the workspace root) whose module graph must be acyclic.
/// Add a crate here once its cycles are gone.
pub const CHECKED: &[&str] = &[
    "dma",
    "drivers/iommu-vtd",
    "drivers/platform",
    "drivers/pci",
    "drivers/pci-address",
    "drivers/edu",
    "drivers/e1000e",
    "drivers/ivshmem",
    "drivers/nvme",
    "kernel",
    "tests-qemu",
];

/// Every library crate whose graph is computed (checked or only reported).
const ALL: &[&str] = &[
    "dma",
    "drivers/pci-address",
    "drivers/platform",
    "drivers/iommu-vtd",
    "drivers/edu",
    "drivers/e1000e",
    "drivers/ivshmem",
    "drivers/nvme",
    "drivers/pci",
    "kernel",
    "tests-qemu",
];

/// Modules that hold test code only; they and edges into them are not part of the graph.
const TEST_MODULES: &[&str] = &["tests", "testing"];

/// The module graph of one crate.
#[derive(Debug, Default)]
pub struct Graph {
    /// Top-level modules found.
    pub modules: BTreeSet<String>,
    /// One entry per (from, to) pair, the first occurrence.
    pub edges: BTreeMap<(String, String), String>,
}

/// One strongly connected component of a module graph.
#[derive(Debug, PartialEq, Eq)]
pub struct Cycle {
    /// Every module of the component.
    pub members: Vec<String>,
    /// The shortest cycle through the first member, closed (`[a, b, a]`).
    pub example: Vec<String>,
}

impl Graph {
    /// The strongly connected components with more than one module (in module-name order),
    /// each as its members and the shortest cycle through its first member.
    pub fn cycles(&self) -> Vec<Cycle> {
        let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (from, to) in self.edges.keys() {
            adj.entry(from).or_default().push(to);
        }
        let mut out = Vec::new();
        let mut done: BTreeSet<&str> = BTreeSet::new();
        for m in &self.modules {
            if done.contains(m.as_str()) {
                continue;
            }
            let fwd = reach(&adj, m);
            let comp: BTreeSet<&str> = fwd
                .iter()
                .copied()
                .filter(|n| reach(&adj, n).contains(m.as_str()))
                .collect();
            done.extend(comp.iter().copied());
            if comp.len() > 1 {
                let walk =
                    shortest(&adj, &comp, m, &BTreeSet::from([m.as_str()])).unwrap_or_default();
                out.push(Cycle {
                    members: comp.iter().map(|n| (*n).to_string()).collect(),
                    example: walk.iter().map(|n| (*n).to_string()).collect(),
                });
            }
        }
        out
    }
}

/// Modules reachable from `start` (including it).
fn reach<'a>(adj: &BTreeMap<&'a str, Vec<&'a str>>, start: &'a str) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::from([start]);
    let mut stack = vec![start];
    while let Some(n) = stack.pop() {
        for &next in adj.get(n).into_iter().flatten() {
            if seen.insert(next) {
                stack.push(next);
            }
        }
    }
    seen
}

/// Breadth-first shortest path inside `comp` from `from` to any of `to` (at least one step).
fn shortest<'a>(
    adj: &BTreeMap<&'a str, Vec<&'a str>>,
    comp: &BTreeSet<&'a str>,
    from: &'a str,
    to: &BTreeSet<&'a str>,
) -> Option<Vec<&'a str>> {
    let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([from]);
    let mut first = true;
    while let Some(n) = queue.pop_front() {
        if !first && to.contains(n) {
            let mut path = vec![n];
            let mut cur = n;
            while let Some(&p) = prev.get(cur) {
                path.push(p);
                if p == from {
                    break;
                }
                cur = p;
            }
            path.reverse();
            return Some(path);
        }
        first = false;
        for &next in adj.get(n).into_iter().flatten() {
            if comp.contains(next)
                && !prev.contains_key(next)
                && (next != from || to.contains(from))
            {
                prev.insert(next, n);
                queue.push_back(next);
            }
        }
    }
    None
}

/// A token of Rust source: an identifier, `::`, or one punctuation character.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

/// Tokenises Rust source, dropping comments, string/char literals and numbers. Each token
/// carries its 1-based line.
fn tokenize(src: &str) -> Vec<(Tok, usize)> {
    let b: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || (next == Some('#') && raw_string_at(&b, i))) {
            // Raw string r"..." / r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            j += 1; // opening quote
            while j < b.len() {
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                if b[j] == '\n' {
                    line += 1;
                }
                j += 1;
            }
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                if b.get(i) == Some(&'\n') {
                    line += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a): a literal closes with a
            // quote within a few characters, a lifetime does not.
            if next == Some('\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1; // lifetime: the identifier follows as a token of its own
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            let word: String = b[start..i].iter().collect();
            // Byte strings b"..." and raw identifiers r#x are rare enough here to treat simply.
            out.push((Tok::Ident(word), line));
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '.') {
                if b[i] == '.' && !b.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                    break;
                }
                i += 1;
            }
        } else if c == ':' && next == Some(':') {
            out.push((Tok::PathSep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(c), line));
            i += 1;
        }
    }
    out
}

/// Whether `r#` at `i` starts a raw string (`r#"`, `r##"`), not a raw identifier.
fn raw_string_at(b: &[char], i: usize) -> bool {
    let mut j = i + 1;
    while b.get(j) == Some(&'#') {
        j += 1;
    }
    b.get(j) == Some(&'"')
}

/// What the graph builder knows about the crate's root.
struct RootInfo {
    /// Top-level modules.
    modules: BTreeSet<String>,
    /// Names re-exported by `lib.rs` (`pub use module::Name`) → the module they come from.
    reexports: BTreeMap<String, String>,
}

/// Index of the token after the attribute starting at `i` (`#` `[` ... `]`), and whether it is a
/// test-only `cfg` (mentions `test` without `not`).
fn attribute_end(toks: &[(Tok, usize)], i: usize) -> (usize, bool) {
    let mut j = i + 1;
    if toks.get(j).map(|t| &t.0) == Some(&Tok::Punct('!')) {
        j += 1;
    }
    if toks.get(j).map(|t| &t.0) != Some(&Tok::Punct('[')) {
        return (i + 1, false);
    }
    let mut depth = 0;
    let mut words = Vec::new();
    while j < toks.len() {
        match &toks[j].0 {
            Tok::Punct('[') => depth += 1,
            Tok::Punct(']') => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            Tok::Ident(w) => words.push(w.as_str()),
            _ => {}
        }
        j += 1;
    }
    let is_test =
        words.first() == Some(&"cfg") && words.contains(&"test") && !words.contains(&"not");
    (j + 1, is_test)
}

/// Index of the token after the item starting at `i` (after its attributes).
fn item_end(toks: &[(Tok, usize)], mut i: usize) -> usize {
    while toks.get(i).map(|t| &t.0) == Some(&Tok::Punct('#')) {
        i = attribute_end(toks, i).0;
    }
    let ends_at_semicolon = toks[i..].iter().take(6).any(|t| {
        matches!(&t.0, Tok::Ident(w) if ["use", "static", "const", "type", "let"].contains(&w.as_str()))
    }) && !toks[i..]
        .iter()
        .take(6)
        .any(|t| matches!(&t.0, Tok::Ident(w) if w == "fn"));
    let mut depth = 0i32;
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Punct('{') | Tok::Punct('(') | Tok::Punct('[') => depth += 1,
            Tok::Punct('}') | Tok::Punct(')') | Tok::Punct(']') => {
                depth -= 1;
                if depth == 0 && !ends_at_semicolon && toks[i].0 == Tok::Punct('}') {
                    return i + 1;
                }
            }
            Tok::Punct(';') if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// The first identifiers of each element of a `{ .. }` use group starting at `i` (the `{`).
fn group_heads(toks: &[(Tok, usize)], i: usize) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect_head = true;
    for (t, _) in &toks[i..] {
        match t {
            Tok::Punct('{') => {
                depth += 1;
                if depth > 1 {
                    expect_head = false;
                }
            }
            Tok::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            Tok::Punct(',') if depth == 1 => expect_head = true,
            Tok::Ident(w) if depth == 1 && expect_head => {
                heads.push(w.clone());
                expect_head = false;
            }
            _ => {}
        }
    }
    heads
}

/// Adds the edges of one file to `graph`. `path` is the file's module path (`[]` for `lib.rs`,
/// `["a", "b"]` for `src/a/b.rs`); `name` is used in the evidence.
fn scan_file(src: &str, path: &[String], name: &str, root: &RootInfo, graph: &mut Graph) {
    let toks = tokenize(src);
    // Inline modules: (name, brace depth at which they close).
    let mut inline: Vec<(String, i32)> = Vec::new();
    let mut depth = 0i32;
    let mut i = 0;
    while i < toks.len() {
        let (t, line) = &toks[i];
        match t {
            Tok::Punct('#') => {
                let (end, is_test) = attribute_end(&toks, i);
                i = if is_test { item_end(&toks, i) } else { end };
                continue;
            }
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth -= 1;
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            Tok::Ident(w) if w == "mod" => {
                if let (Some((Tok::Ident(m), _)), Some((Tok::Punct('{'), _))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    if TEST_MODULES.contains(&m.as_str()) {
                        i = item_end(&toks, i);
                        continue;
                    }
                    inline.push((m.clone(), depth));
                }
            }
            Tok::Ident(w) if w == "crate" || w == "super" => {
                let mut cur: Vec<String> = path
                    .iter()
                    .cloned()
                    .chain(inline.iter().map(|(m, _)| m.clone()))
                    .collect();
                let from = cur.first().cloned();
                let mut j = i;
                if w == "crate" {
                    cur.clear();
                    j += 1;
                } else {
                    while matches!(&toks.get(j).map(|t| &t.0), Some(Tok::Ident(s)) if s == "super")
                        && toks.get(j + 1).map(|t| &t.0) == Some(&Tok::PathSep)
                    {
                        cur.pop();
                        j += 2;
                    }
                    j -= 1;
                }
                if toks.get(j).map(|t| &t.0) == Some(&Tok::PathSep) && cur.is_empty() {
                    let heads = match toks.get(j + 1).map(|t| &t.0) {
                        Some(Tok::Ident(h)) => vec![h.clone()],
                        Some(Tok::Punct('{')) => group_heads(&toks, j + 1),
                        _ => Vec::new(),
                    };
                    if let Some(from) = from {
                        for h in heads {
                            let to = if root.modules.contains(&h) {
                                Some(h)
                            } else {
                                root.reexports.get(&h).cloned()
                            };
                            if let Some(to) = to {
                                if to != from && !TEST_MODULES.contains(&to.as_str()) {
                                    graph
                                        .edges
                                        .entry((from.clone(), to))
                                        .or_insert_with(|| format!("{name}:{line}"));
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
}

/// Top-level modules and re-exports declared in `lib.rs`.
fn root_info(lib: &str, file_modules: &BTreeSet<String>) -> RootInfo {
    let toks = tokenize(lib);
    let mut modules = file_modules.clone();
    let mut reexports = BTreeMap::new();
    let mut depth = 0;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => depth -= 1,
            Tok::Ident(w) if depth == 0 && w == "mod" => {
                if let Some((Tok::Ident(m), _)) = toks.get(i + 1) {
                    modules.insert(m.clone());
                }
            }
            Tok::Ident(w) if depth == 0 && w == "use" => {
                // `use module::Name;`, `use module::{A, B as C, sub::D};`
                let end = item_end(&toks, i);
                if let (Some((Tok::Ident(m), _)), Some((Tok::PathSep, _))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    let body = &toks[i + 3..end];
                    let mut last: Option<String> = None;
                    let mut nest = 0;
                    for (t, _) in body {
                        match t {
                            Tok::Punct('{') => nest += 1,
                            Tok::Punct('}') | Tok::Punct(',') | Tok::Punct(';') => {
                                if let Some(n) = last.take() {
                                    reexports.insert(n, m.clone());
                                }
                                if *t == Tok::Punct('}') {
                                    nest -= 1;
                                }
                            }
                            Tok::Ident(n) if n != "as" && n != "self" => last = Some(n.clone()),
                            _ => {}
                        }
                    }
                    let _ = nest;
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    RootInfo { modules, reexports }
}

/// `src/**/*.rs` of a crate with each file's module path; test modules and binaries left out.
fn crate_files(src_dir: &Path) -> Result<Vec<(PathBuf, Vec<String>)>, String> {
    let mut out = Vec::new();
    let mut stack = vec![(src_dir.to_path_buf(), Vec::<String>::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let p = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            // A `tests` module file is test code at any depth (`bar.rs` + `bar/tests.rs`).
            if stem == "tests"
                || prefix.is_empty() && (TEST_MODULES.contains(&stem.as_str()) || stem == "bin")
            {
                continue;
            }
            if p.is_dir() {
                let mut next = prefix.clone();
                next.push(stem);
                stack.push((p, next));
            } else if p.extension().is_some_and(|e| e == "rs") {
                let mut path = prefix.clone();
                match stem.as_str() {
                    "lib" if prefix.is_empty() => {}
                    "main" if prefix.is_empty() => continue,
                    "mod" => {}
                    _ => path.push(stem),
                }
                out.push((p, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Builds the module graph of the crate in `crate_dir`.
pub fn graph_of(crate_dir: &Path) -> Result<Graph, String> {
    let src = crate_dir.join("src");
    let files = crate_files(&src)?;
    let file_modules: BTreeSet<String> = files
        .iter()
        .filter_map(|(_, p)| p.first().cloned())
        .collect();
    let lib_path = src.join("lib.rs");
    let lib = fs::read_to_string(&lib_path).map_err(|e| format!("{}: {e}", lib_path.display()))?;
    let root = root_info(&lib, &file_modules);
    let mut graph = Graph {
        modules: root
            .modules
            .iter()
            .filter(|m| !TEST_MODULES.contains(&m.as_str()))
            .cloned()
            .collect(),
        ..Graph::default()
    };
    for (file, path) in &files {
        let text = fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let name = file
            .strip_prefix(crate_dir)
            .unwrap_or(file)
            .display()
            .to_string();
        scan_file(&text, path, &name, &root, &mut graph);
    }
    Ok(graph)
}

/// Describes one cycle with the line behind each of its edges.
fn describe(graph: &Graph, cycle: &Cycle) -> String {
    let mut s = format!(
        "{} modules ({}), e.g. {}",
        cycle.members.len(),
        cycle.members.join(", "),
        cycle.example.join(" -> ")
    );
    for w in cycle.example.windows(2) {
        if let Some(at) = graph.edges.get(&(w[0].clone(), w[1].clone())) {
            s.push_str(&format!("\n      {} -> {}: {at}", w[0], w[1]));
        }
    }
    s
}

/// Checks every library crate; fails if a crate in [`CHECKED`] has a module cycle.
pub fn check(root: &Path) -> Result<(), String> {
    println!("lint: module graphs");
    let mut failed = Vec::new();
    for krate in ALL {
        let graph = graph_of(&root.join(krate))?;
        let cycles = graph.cycles();
        let enforced = CHECKED.contains(krate);
        if cycles.is_empty() {
            println!(
                "  {krate}: {} modules, {} edges, no cycle",
                graph.modules.len(),
                graph.edges.len()
            );
            continue;
        }
        for c in &cycles {
            let level = if enforced {
                "error"
            } else {
                "note (not enforced yet)"
            };
            println!("  {krate}: {level}: module cycle {}", describe(&graph, c));
        }
        if enforced {
            failed.push(*krate);
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("module cycles in {}", failed.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(lib: &str, files: &[(&str, &str)]) -> Graph {
        let mods: BTreeSet<String> = files.iter().map(|(m, _)| (*m).to_string()).collect();
        let root = root_info(lib, &mods);
        let mut g = Graph {
            modules: root.modules.clone(),
            ..Graph::default()
        };
        for (m, text) in files {
            scan_file(text, &[(*m).to_string()], m, &root, &mut g);
        }
        g
    }

    fn edges(g: &Graph) -> Vec<(String, String)> {
        g.edges.keys().cloned().collect()
    }

    fn pair(a: &str, b: &str) -> (String, String) {
        (a.to_string(), b.to_string())
    }

    #[test]
    fn cycle_of_three_is_found_and_closed() {
        let g = graph(
            "mod a; mod b; mod c;",
            &[
                ("a", "use crate::b::X;"),
                ("b", "fn f() { crate::c::g(); }"),
                ("c", "use super::a;"),
            ],
        );
        assert_eq!(edges(&g), [pair("a", "b"), pair("b", "c"), pair("c", "a")]);
        let cycles = g.cycles();
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].members, ["a", "b", "c"]);
        assert_eq!(cycles[0].example, ["a", "b", "c", "a"]);
    }

    #[test]
    fn one_way_graph_has_no_cycle() {
        let g = graph(
            "mod a; mod b; mod c;",
            &[
                ("a", ""),
                ("b", "use crate::a::X;"),
                ("c", "use crate::{a::Y, b};"),
            ],
        );
        assert_eq!(edges(&g), [pair("b", "a"), pair("c", "a"), pair("c", "b")]);
        assert!(g.cycles().is_empty());
        // Negative control: one edge back closes a cycle.
        let g = graph(
            "mod a; mod b; mod c;",
            &[
                ("a", "use crate::c::Z;"),
                ("b", "use crate::a::X;"),
                ("c", "use crate::{a::Y, b};"),
            ],
        );
        assert_eq!(g.cycles().len(), 1);
    }

    #[test]
    fn test_code_comments_and_strings_are_not_edges() {
        let g = graph(
            "mod a; mod b; #[cfg(test)] mod tests; pub mod testing;",
            &[
                ("a", "use crate::b::X;"),
                (
                    "b",
                    "//! see [`crate::a::X`]\n\
                     /* crate::a */ const S: &str = \"crate::a::X\"; const C: char = 'c';\n\
                     fn f<'x>(_: &'x u8) {}\n\
                     #[cfg(test)] use crate::a::Y;\n\
                     #[cfg(test)] mod t { use crate::a::Z; }\n\
                     mod tests { use crate::a::W; }\n\
                     #[cfg(any(test, feature = \"testing\"))] fn only_tests() { crate::a::f(); }\n\
                     use crate::testing::Fake;",
                ),
            ],
        );
        assert_eq!(edges(&g), [pair("a", "b")]);
        // Negative control: the same use outside test code is an edge.
        let g = graph(
            "mod a; mod b;",
            &[
                ("a", "use crate::b::X;"),
                ("b", "#[cfg(not(test))] use crate::a::Y;"),
            ],
        );
        assert_eq!(g.cycles()[0].example, ["a", "b", "a"]);
    }

    #[test]
    fn reexports_of_lib_rs_resolve_to_their_module() {
        let g = graph(
            "mod a; mod b; pub use a::{Alpha, Beta as B2}; pub use b::Gamma;",
            &[
                ("a", "use crate::Gamma;"),
                ("b", "fn f() -> crate::B2 { todo() }"),
            ],
        );
        assert_eq!(edges(&g), [pair("a", "b"), pair("b", "a")]);
    }

    #[test]
    fn super_inside_an_inline_module_stays_in_its_module() {
        let g = graph(
            "mod a; mod b;",
            &[
                (
                    "a",
                    "mod inner { use super::Thing; use super::super::b::X; }",
                ),
                ("b", ""),
            ],
        );
        assert_eq!(edges(&g), [pair("a", "b")]);
    }
}
