//! The shape of the source tree, checked: no two files import each other
//! (directly or through others), and each layer only uses the layers
//! below it (see the module doc of `src/lib.rs`).
//!
//! Imports are read from the text: every `crate::a::b` path and every
//! `super::` path outside `#[cfg(test)]` modules, resolved to the file
//! that defines the module. Binaries are not checked (they sit on top).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the bottom; a file may use its own layer and those before.
const LAYERS: [&str; 5] = ["core", "adapters", "agent", "api", "cli"];

/// Layers a layer may use, besides its own and those before it.
fn allowed(from: &str, to: &str) -> bool {
    let rank = |l: &str| LAYERS.iter().position(|x| *x == l);
    match (rank(from), rank(to)) {
        // The client side speaks the API's types, never the agent.
        (Some(4), Some(2)) => false,
        (Some(f), Some(t)) => t <= f,
        _ => true,
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library source file, as its module path (`core::planner::alloc`).
fn modules() -> BTreeMap<Vec<String>, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read src dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let name = p
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("utf-8 file name")
                .to_string();
            if p.is_dir() {
                if prefix.is_empty() && name == "bin" {
                    continue;
                }
                let mut next = prefix.to_vec();
                next.push(name);
                walk(&p, &next, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let mut m = prefix.to_vec();
                if name != "mod" && !(prefix.is_empty() && name == "lib") {
                    m.push(name);
                }
                out.insert(m, p);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&src(), &[], &mut out);
    out
}

/// The code of a file before its first `#[cfg(test)]` item, without
/// comments (a doc link is not an import).
fn code(p: &Path) -> String {
    let text = std::fs::read_to_string(p).expect("read source");
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths a file names: `crate::x::y`, `super::x` and
/// `child::x` paths (a child declared with `mod child;`), including the
/// members of grouped `use` lists.
fn paths(module: &[String], text: &str) -> Vec<Vec<String>> {
    let children: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub(crate) ").unwrap_or(l);
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_string)
        })
        .collect();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = text.as_bytes();
    let at = |i: usize, pat: &str| b[i..].starts_with(pat.as_bytes());
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if i > 0 && ident(b[i - 1]) || !ident(b[i]) {
            i += 1;
            continue;
        }
        let mut seg = if at(i, "crate::") {
            i += 7;
            Vec::new()
        } else if at(i, "super::") {
            // `super` of a `mod.rs` or of a leaf file is its parent.
            let mut base = module.to_vec();
            while at(i, "super::") {
                base.pop();
                i += 7;
            }
            base
        } else if children.iter().any(|c| at(i, c) && at(i + c.len(), "::")) {
            module.to_vec()
        } else {
            i += 1;
            continue;
        };
        loop {
            if at(i, "{") {
                // A group: each member is a path from here.
                let end = text[i..].find('}').map_or(b.len(), |e| i + e);
                for member in text[i + 1..end].split(',') {
                    let mut m = seg.clone();
                    for part in member.trim().split("::") {
                        let part = part.split_whitespace().next().unwrap_or("");
                        if part.is_empty() || part == "self" || part == "*" || part.starts_with('{')
                        {
                            break;
                        }
                        m.push(part.to_string());
                    }
                    out.push(m);
                }
                i = end;
                seg.clear();
                break;
            }
            let len = b[i..].iter().take_while(|c| ident(**c)).count();
            if len == 0 {
                break;
            }
            seg.push(text[i..i + len].to_string());
            i += len;
            if !at(i, "::") {
                break;
            }
            i += 2;
        }
        if !seg.is_empty() {
            out.push(seg);
        }
    }
    out
}

/// The module (file) a path lands in: its longest prefix that is a file.
fn resolve<'a>(
    path: &[String],
    mods: &'a BTreeMap<Vec<String>, PathBuf>,
) -> Option<&'a Vec<String>> {
    (1..=path.len())
        .rev()
        .find_map(|n| mods.get_key_value(&path[..n]).map(|(k, _)| k))
}

fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mods = modules();
    let mut g = BTreeMap::new();
    for (m, file) in &mods {
        let mut deps = BTreeSet::new();
        for p in paths(m, &code(file)) {
            if let Some(target) = resolve(&p, &mods) {
                // A parent module's own file is not an import of its
                // children (they are declared there, not used).
                if target != m {
                    deps.insert(target.clone());
                }
            }
        }
        g.insert(m.clone(), deps);
    }
    g
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    let g = graph();
    // Tarjan would do; the tree is small: a DFS from every node.
    let mut cycles = Vec::new();
    for start in g.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, trail)) = stack.pop() {
            for next in g.get(&node).into_iter().flatten() {
                if next == start {
                    let names: Vec<String> = trail.iter().map(|m| m.join("::")).collect();
                    cycles.push(format!("{} -> {}", names.join(" -> "), start.join("::")));
                } else if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    stack.push((next.clone(), t));
                }
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn layers_only_use_the_layers_below() {
    let mut wrong = Vec::new();
    for (m, deps) in graph() {
        let Some(from) = m.first() else { continue };
        for d in deps {
            let Some(to) = d.first() else { continue };
            if !allowed(from, to) {
                wrong.push(format!("{} uses {}", m.join("::"), d.join("::")));
            }
        }
    }
    assert!(wrong.is_empty(), "layer violations:\n{}", wrong.join("\n"));
}

#[test]
fn the_checker_sees_imports() {
    let m = vec![
        "core".to_string(),
        "planner".to_string(),
        "alloc".to_string(),
    ];
    let p = paths(
        &m,
        "use crate::core::{model::Action, units};\nuse super::history::Entry;\nx = crate::agent::state::load();",
    );
    assert!(p.contains(&vec!["core".into(), "model".into(), "Action".into()]));
    assert!(p.contains(&vec!["core".into(), "units".into()]));
    assert!(p.contains(&vec![
        "core".into(),
        "planner".into(),
        "history".into(),
        "Entry".into()
    ]));
    assert!(p.contains(&vec!["agent".into(), "state".into(), "load".into()]));
}

#[test]
#[ignore]
fn print_edges() {
    let want = std::env::var("MODULE").unwrap_or_default();
    let mods = modules();
    for (m, file) in &mods {
        if m.join("::") != want {
            continue;
        }
        for p in paths(m, &code(file)) {
            println!("{:?} -> {:?}", p, resolve(&p, &mods));
        }
    }
}
