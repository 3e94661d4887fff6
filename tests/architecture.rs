//! The layering the code promises, checked on its source: no cycles
//! between modules, the protocol crate below everything, node and router
//! never importing each other, and the layout tour in `lib.rs` naming
//! every top-level module.
//!
//! A module's dependencies are the `crate::…`, `super::…` and (in a module
//! with children) `child::…` paths in its non-test code. A child may always
//! use its ancestors (`super::Router`: the parent is the room that holds
//! it); every other edge counts, and the graph of them must be acyclic.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `src/router/pool.rs` → `router::pool`; `src/router/mod.rs` → `router`;
/// `src/lib.rs` → `` (the crate).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src").flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "bin") {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The file's code without its unit tests and comments.
fn code_of(text: &str) -> String {
    let cut = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..cut]
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands a path (and any `{…}` groups after it) starting at `at` into
/// full paths of segments.
fn paths_at(
    code: &[char],
    mut at: usize,
    prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let mut path = prefix;
    loop {
        let start = at;
        while at < code.len() && is_ident(code[at]) {
            at += 1;
        }
        if at > start {
            path.push(code[start..at].iter().collect());
        }
        if code[at..].starts_with(&[':', ':']) {
            at += 2;
            if at < code.len() && code[at] == '{' {
                at += 1;
                loop {
                    while at < code.len() && code[at].is_whitespace() {
                        at += 1;
                    }
                    if at >= code.len() || code[at] == '}' {
                        break;
                    }
                    at = paths_at(code, at, path.clone(), out);
                    while at < code.len() && code[at] != ',' && code[at] != '}' {
                        at += 1;
                    }
                    if at < code.len() && code[at] == ',' {
                        at += 1;
                    }
                }
                return at + 1;
            }
            continue;
        }
        out.push(path);
        return at;
    }
}

/// Every module `module`'s code refers to, resolved against `known`.
fn references(module: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let chars: Vec<char> = code.chars().collect();
    let children: Vec<&String> = known
        .iter()
        .filter(|k| {
            let parent = k.rsplit_once("::").map_or("", |(p, _)| p);
            parent == module && !k.is_empty() && *k != module
        })
        .collect();
    let mut paths = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if i > 0 && is_ident(chars[i - 1]) {
            i += 1;
            continue;
        }
        let rest: String = chars[i..chars.len().min(i + 64)].iter().collect();
        let head = ["crate::", "super::"]
            .into_iter()
            .chain(children.iter().map(|c| c.rsplit("::").next().unwrap_or(c)))
            .find(|h| {
                let h = h.trim_end_matches("::");
                rest.starts_with(h) && rest[h.len()..].starts_with("::")
            });
        match head {
            Some(_) => i = paths_at(&chars, i, Vec::new(), &mut paths),
            None => i += 1,
        }
    }
    let mut refs = BTreeSet::new();
    for p in paths {
        let mut base: Vec<String> = if module.is_empty() {
            Vec::new()
        } else {
            module.split("::").map(str::to_string).collect()
        };
        let mut segs = p.into_iter().peekable();
        match segs.peek().map(String::as_str) {
            Some("crate") => {
                base.clear();
                segs.next();
            }
            Some("super") => {
                while segs.peek().map(String::as_str) == Some("super") {
                    segs.next();
                    base.pop();
                }
            }
            _ => {}
        }
        base.extend(segs);
        // The longest prefix that is a module of ours.
        while !base.is_empty() && !known.contains(&base.join("::")) {
            base.pop();
        }
        let target = base.join("::");
        let ancestor =
            module == target || target.is_empty() || module.starts_with(&format!("{target}::"));
        if !ancestor {
            refs.insert(target);
        }
    }
    refs
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let known: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    files
        .iter()
        .map(|f| {
            let module = module_of(&src, f);
            let code = code_of(&std::fs::read_to_string(f).expect("read"));
            let refs = references(&module, &code, &known);
            (module, refs)
        })
        .collect()
}

fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0
            && let Some(c) = visit(n, g, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_module_graph_has_no_cycles() {
    let g = graph();
    assert!(
        g.contains_key("router::pool") && g.contains_key("node::cache"),
        "{g:?}"
    );
    if let Some(cycle) = find_cycle(&g) {
        panic!("module cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_checker_sees_a_cycle() {
    // The check itself must be able to fail: the router's old pool called
    // back into `forward`, which used `members`, which used `pool`.
    let known: BTreeSet<String> = [
        "",
        "router",
        "router::pool",
        "router::forward",
        "router::members",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let mut g = BTreeMap::new();
    for (m, code) in [
        ("router::pool", "use super::forward::Forward;"),
        ("router::forward", "use super::{members::View, Router};"),
        ("router::members", "use super::pool::NodeHandle;"),
        ("router", "use members::Members;"),
    ] {
        g.insert(m.to_string(), references(m, code, &known));
    }
    let cycle = find_cycle(&g).expect("a cycle");
    assert!(cycle.len() == 4, "{cycle:?}");
}

#[test]
fn node_and_router_never_import_each_other() {
    let g = graph();
    for (m, refs) in &g {
        for r in refs {
            let crosses = (m.starts_with("node") && r.starts_with("router"))
                || (m.starts_with("router") && r.starts_with("node"));
            assert!(!crosses, "{m} uses {r}");
        }
    }
}

#[test]
fn the_layout_tour_names_every_top_level_module() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("lib.rs");
    let tour: String = lib
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    for m in graph()
        .keys()
        .filter(|m| !m.is_empty() && !m.contains("::"))
    {
        assert!(
            tour.contains(&format!("`{m}`")),
            "lib.rs's tour does not name `{m}`"
        );
    }
}
