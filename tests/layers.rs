//! The code's layers, checked on the source: no two modules of the library import each other,
//! however indirectly, and each part imports only parts below it (ARCHITECTURE.md, "Code
//! layout"): model; then sys and config; then pki, daemon and dbus_api; then store; then
//! master and worker, which never import each other. A module using its parent's or its
//! children's items is how Rust nests modules and is not counted; tests modules are left out.
//!
//! cargo-modules' `--acyclic` was the tool the issue named: it checks a graph of items (a type
//! and its own methods already form a cycle there) and does not see module cycles made of
//! imports, so this reads the source with `syn` instead.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// A module's path below the crate (`worker::vnode::boot`; the crate root is "").
type Module = String;

/// Rank of each top-level part: a part may import only parts of a lower rank.
const RANKS: [(&str, u8); 10] = [
    ("model", 0),
    ("sys", 1),
    ("config", 1),
    ("pki", 2),
    ("daemon", 2),
    ("dbus_api", 2),
    ("store", 3),
    ("master", 4),
    ("worker", 4),
    // The crate root only declares the parts.
    ("", 5),
];

/// Every module of the library (not the binaries) and its file.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path != src.join("bin") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            out.insert(parts.join("::"), path);
        }
    }
    out
}

/// Collects the paths a file names that start at `crate`, `super` or `self`, outside its
/// `#[cfg(test)]` items.
#[derive(Default)]
struct Paths(Vec<Vec<String>>);

impl Paths {
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.push(prefix, &n.ident),
            syn::UseTree::Rename(r) => self.push(prefix, &r.ident),
            syn::UseTree::Glob(_) => self.0.push(prefix.clone()),
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }

    fn push(&mut self, prefix: &[String], last: &syn::Ident) {
        let mut path = prefix.to_vec();
        if last != "self" {
            path.push(last.to_string());
        }
        self.0.push(path);
    }
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            _ => &Vec::new(),
        };
        if !is_test_only(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.0
            .push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, path);
    }
}

/// The module a path names (its longest prefix that is a module), seen from `from`.
fn target(from: &str, path: &[String], known: &BTreeMap<Module, PathBuf>) -> Option<Module> {
    let mut full: Vec<String> = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("self") => split(from),
        Some("super") => {
            let mut base = split(from);
            for segment in path.iter().take_while(|s| *s == "super") {
                let _ = segment;
                base.pop();
            }
            base
        }
        _ => return None,
    };
    full.extend(
        path.iter()
            .skip_while(|s| matches!(s.as_str(), "crate" | "self" | "super"))
            .cloned(),
    );
    (0..=full.len())
        .rev()
        .map(|n| full[..n].join("::"))
        .find(|m| known.contains_key(m))
}

fn split(module: &str) -> Vec<String> {
    if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").map(str::to_owned).collect()
    }
}

/// Whether `a` is `b` or one of its ancestors or descendants.
fn nested(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        outer.is_empty() || inner == outer || inner.starts_with(&format!("{outer}::"))
    };
    within(a, b) || within(b, a)
}

/// Module → the modules it imports (not nested in or around it).
fn graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let known = modules(src);
    let mut edges = BTreeMap::new();
    for (module, file) in &known {
        let text = std::fs::read_to_string(file).unwrap();
        let parsed = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut paths = Paths::default();
        paths.visit_file(&parsed);
        let targets: BTreeSet<Module> = paths
            .0
            .iter()
            .filter_map(|p| target(module, p, &known))
            .filter(|t| !nested(module, t))
            .collect();
        edges.insert(module.clone(), targets);
    }
    edges
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<Module>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w.as_str()]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w.as_str()) {
                    let low = self.low[v].min(self.index[w.as_str()]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

fn rank(module: &str) -> u8 {
    let part = module.split("::").next().unwrap_or_default();
    RANKS
        .iter()
        .find(|(name, _)| *name == part)
        .map(|(_, r)| *r)
        .unwrap_or_else(|| panic!("part {part:?} has no place in the layers: add it to RANKS"))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_module_imports_another_that_imports_it_back() {
    let edges = graph(&src());
    // The reading works: known imports are seen.
    assert!(
        edges["master"].iter().any(|t| t.starts_with("store")),
        "{edges:?}"
    );
    assert!(
        edges["worker::network"]
            .iter()
            .any(|t| t.starts_with("worker::paths"))
    );
    let found = cycles(&edges);
    let report: Vec<String> = found
        .iter()
        .map(|component| {
            let inside: Vec<String> = component
                .iter()
                .flat_map(|a| {
                    edges[a]
                        .iter()
                        .filter(|b| component.contains(b))
                        .map(move |b| format!("  {a} -> {b}"))
                })
                .collect();
            format!("{}:\n{}", component.join(", "), inside.join("\n"))
        })
        .collect();
    assert!(found.is_empty(), "module cycles:\n{}", report.join("\n"));
}

#[test]
fn each_part_imports_only_parts_below_it() {
    let edges = graph(&src());
    let wrong: Vec<String> = edges
        .iter()
        .flat_map(|(from, targets)| targets.iter().map(move |to| (from, to)))
        .filter(|(from, to)| {
            let (a, b) = (rank(from), rank(to));
            a != 5 && from.split("::").next() != to.split("::").next() && b >= a
        })
        .map(|(from, to)| format!("  {from} -> {to}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn a_cycle_is_found() {
    let edges: BTreeMap<Module, BTreeSet<Module>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(cycles(&edges), vec![vec!["a", "b", "c"]]);
}
