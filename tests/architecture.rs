//! The architecture's rules, checked on the parsed source (docs/ARCHITECTURE.md):
//! - the controllers under `src/controller/<kind>/` are siblings: none refers to another;
//! - nothing under `src/cli/` refers to a controller of a kind, except the operator entry point;
//! - inside `src/controller` and `src/engine`, a module refers only to modules on a lower line
//!   of the layer order that docs/ARCHITECTURE.md declares (its `layers` block, read here, so
//!   the picture and the check cannot drift): no arrow up or sideways, so no circle;
//! - no production file has more than 600 lines and no function more than 120 (tests, that is
//!   `#[cfg(test)]` items and the files they include, are not counted);
//! - no function of the integration tests (`tests/`, test functions included) has more than 120
//!   lines either.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// The controllers, one directory each under `src/controller/`.
const KINDS: &[&str] = &["backup_job", "snapshot", "restore", "kmip_server"];
/// The one CLI file allowed to start the controllers.
const OPERATOR_ENTRY: &str = "src/cli/operator.rs";
const MAX_FILE_LINES: usize = 600;
const MAX_FN_LINES: usize = 120;

/// One source file: its module path (`crate::controller::snapshot::plan`) and syntax tree.
struct Source {
    file: String,
    module: Vec<String>,
    tree: syn::File,
    lines: usize,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn module_of(rel: &Path) -> Vec<String> {
    let mut m = vec!["crate".to_string()];
    let parts: Vec<String> = rel
        .iter()
        .skip(1) // "src"
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    for (i, p) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if last && (p == "mod" || p == "lib" || p == "main") {
            continue;
        }
        m.push(p.clone());
    }
    m
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// The files a `#[cfg(test)] #[path = "..."] mod x;` includes: test code, not counted.
fn test_only_files(sources: &[Source]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in sources {
        for item in &s.tree.items {
            let syn::Item::Mod(m) = item else { continue };
            if m.content.is_some() || !is_cfg_test(&m.attrs) {
                continue;
            }
            let dir = Path::new(&s.file).parent().expect("dir");
            let path = m
                .attrs
                .iter()
                .find(|a| a.path().is_ident("path"))
                .and_then(|a| match &a.meta {
                    syn::Meta::NameValue(nv) => match &nv.value {
                        syn::Expr::Lit(syn::ExprLit {
                            lit: syn::Lit::Str(l),
                            ..
                        }) => Some(l.value()),
                        _ => None,
                    },
                    _ => None,
                })
                .unwrap_or_else(|| format!("{}.rs", m.ident));
            out.insert(dir.join(path).display().to_string());
        }
    }
    out
}

fn load() -> Vec<Source> {
    load_dir("src")
}

/// Every `.rs` file under `dir` (relative to the crate), parsed.
fn load_dir(dir: &str) -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join(dir), &mut files);
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root).expect("under the crate").to_path_buf();
            let text = std::fs::read_to_string(&p).expect("read source");
            let tree = syn::parse_file(&text)
                .unwrap_or_else(|e| panic!("{}: does not parse: {e}", rel.display()));
            Source {
                file: rel.display().to_string(),
                module: module_of(&rel),
                tree,
                lines: text.lines().count(),
            }
        })
        .collect()
}

/// Every `crate::`, `super::` and `self::` path a file refers to (in `use` and in code),
/// resolved to an absolute module path; test code skipped.
struct Paths {
    module: Vec<String>,
    found: BTreeSet<String>,
}

impl Paths {
    fn resolve(&mut self, segments: &[String]) {
        let mut base: Vec<String> = Vec::new();
        let mut rest = segments;
        match segments.first().map(String::as_str) {
            Some("crate") => {
                base.push("crate".into());
                rest = &segments[1..];
            }
            Some("self") => {
                base = self.module.clone();
                rest = &segments[1..];
            }
            Some("super") => {
                base = self.module.clone();
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop();
                    rest = &rest[1..];
                }
            }
            _ => return,
        }
        base.extend(rest.iter().cloned());
        self.found.insert(base.join("::"));
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                self.resolve(&prefix.clone());
                prefix.pop();
            }
            syn::UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.resolve(&prefix.clone());
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.resolve(&prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item(&mut self, i: &'ast syn::Item) {
        let attrs = match i {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(x) => &x.attrs,
            syn::Item::Use(u) => &u.attrs,
            _ => return syn::visit::visit_item(self, i),
        };
        if !is_cfg_test(attrs) {
            syn::visit::visit_item(self, i);
        }
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if m.content.is_some() {
            self.module.push(m.ident.to_string());
            syn::visit::visit_item_mod(self, m);
            self.module.pop();
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    // `pub(super)` and `pub(in crate::x)` say who may see an item, not what it uses.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        self.resolve(&segs);
        syn::visit::visit_path(self, p);
    }
}

fn paths_of(s: &Source) -> BTreeSet<String> {
    let mut v = Paths {
        module: s.module.clone(),
        found: BTreeSet::new(),
    };
    v.visit_file(&s.tree);
    v.found
}

/// The controller kind a module path is in, if any.
fn kind_of(path: &str) -> Option<&'static str> {
    KINDS.iter().copied().find(|k| {
        let m = format!("crate::controller::{k}");
        path == m || path.starts_with(&format!("{m}::"))
    })
}

#[test]
fn controllers_are_siblings_and_the_cli_stays_out_of_them() {
    let mut wrong = Vec::new();
    for s in load() {
        let own = s.module.join("::");
        let own_kind = kind_of(&own);
        let in_cli = s.file.starts_with("src/cli/") && s.file != OPERATOR_ENTRY;
        for p in paths_of(&s) {
            let Some(kind) = kind_of(&p) else { continue };
            if (own_kind.is_some() && own_kind != Some(kind)) || in_cli {
                wrong.push(format!("{}: refers to {p}", s.file));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "a controller refers to a sibling, or the CLI to a controller; move what they share \
         below them (src/controller/agent/, src/controller/job_spec/, src/api/):\n{}",
        wrong.join("\n")
    );
}

/// Lines of `s` outside `#[cfg(test)]` items.
fn production_lines(s: &Source) -> usize {
    let test_lines: usize = s
        .tree
        .items
        .iter()
        .filter(|i| match i {
            syn::Item::Mod(m) => is_cfg_test(&m.attrs),
            syn::Item::Fn(f) => is_cfg_test(&f.attrs),
            _ => false,
        })
        .map(|i| {
            let span = syn::spanned::Spanned::span(i);
            span.end().line - span.start().line + 1
        })
        .sum();
    s.lines - test_lines
}

/// Functions (free, in impls and traits) of `s` longer than [`MAX_FN_LINES`]; `#[cfg(test)]`
/// code skipped in production files, counted in the integration tests (`tests/`).
struct LongFns {
    file: String,
    long: Vec<String>,
    count_test_code: bool,
}

impl LongFns {
    fn check(&mut self, name: &syn::Ident, span: proc_macro2::Span) {
        let lines = span.end().line - span.start().line + 1;
        if lines > MAX_FN_LINES {
            self.long.push(format!(
                "{}:{}: fn {name} has {lines} lines (at most {MAX_FN_LINES})",
                self.file,
                span.start().line
            ));
        }
    }
}

impl<'ast> Visit<'ast> for LongFns {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if self.count_test_code || !is_cfg_test(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if self.count_test_code || !is_cfg_test(&f.attrs) {
            self.check(&f.sig.ident, syn::spanned::Spanned::span(f));
            syn::visit::visit_item_fn(self, f);
        }
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.check(&f.sig.ident, syn::spanned::Spanned::span(f));
        syn::visit::visit_impl_item_fn(self, f);
    }

    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        self.check(&f.sig.ident, syn::spanned::Spanned::span(f));
        syn::visit::visit_trait_item_fn(self, f);
    }
}

#[test]
fn files_and_functions_stay_small_enough_to_read() {
    let sources = load();
    let tests = test_only_files(&sources);
    let mut wrong = Vec::new();
    for s in sources.iter().filter(|s| !tests.contains(&s.file)) {
        let lines = production_lines(s);
        if lines > MAX_FILE_LINES {
            wrong.push(format!(
                "{}: {lines} lines outside tests (at most {MAX_FILE_LINES})",
                s.file
            ));
        }
        wrong.extend(long_fns(s, false));
    }
    assert!(
        wrong.is_empty(),
        "split by responsibility (docs/ARCHITECTURE.md):\n{}",
        wrong.join("\n")
    );
}

/// The functions of `s` longer than [`MAX_FN_LINES`] (see [`LongFns`]).
fn long_fns(s: &Source, count_test_code: bool) -> Vec<String> {
    let mut v = LongFns {
        file: s.file.clone(),
        long: Vec::new(),
        count_test_code,
    };
    v.visit_file(&s.tree);
    v.long
}

#[test]
fn test_functions_stay_small_enough_to_read() {
    let sources = load_dir("tests");
    assert!(
        sources.iter().any(|s| s.file == "tests/architecture.rs"),
        "the integration tests are read"
    );
    let wrong: Vec<String> = sources.iter().flat_map(|s| long_fns(s, true)).collect();
    assert!(
        wrong.is_empty(),
        "split a test by what it checks, into helpers or several tests:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_check() {
    // A rule that finds nothing because it reads nothing would pass forever.
    let sources = load();
    let snapshot_mod = sources
        .iter()
        .find(|s| s.file == "src/controller/snapshot/mod.rs")
        .expect("the Snapshot controller");
    assert_eq!(
        snapshot_mod.module,
        ["crate", "controller", "snapshot"].map(String::from)
    );
    let paths = paths_of(snapshot_mod);
    assert!(
        paths.contains("crate::controller::agent::owning_agent_pods"),
        "{paths:?}"
    );
    assert!(paths.iter().any(|p| kind_of(p) == Some("snapshot")));
    let tests = test_only_files(&sources);
    assert!(tests.contains("src/kms/kmip/ttlv_tests.rs"), "{tests:?}");
    let fixtures = sources
        .iter()
        .find(|s| s.file == "src/controller/fixtures.rs")
        .expect("fixtures");
    assert!(tests.contains(&fixtures.file), "{tests:?}");
}

/// The layer order of docs/ARCHITECTURE.md's `layers` block: one line per layer, lowest
/// first, each the modules on it (`controller::names`, relative to the crate).
fn declared_layers() -> Vec<Vec<String>> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ARCHITECTURE.md"))
            .expect("docs/ARCHITECTURE.md");
    let start = doc
        .find("```layers\n")
        .expect("a ```layers block in docs/ARCHITECTURE.md");
    let body = &doc[start + "```layers\n".len()..];
    let end = body.find("```").expect("the layers block's end");
    parse_layers(&body[..end])
}

fn parse_layers(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_whitespace()
                .map(|m| format!("crate::{m}"))
                .collect()
        })
        .collect()
}

/// The declared module `path` belongs to (the longest declared prefix), and its layer.
fn layer_of<'a>(layers: &'a [Vec<String>], path: &str) -> Option<(&'a str, usize)> {
    layers
        .iter()
        .enumerate()
        .flat_map(|(i, line)| line.iter().map(move |m| (m.as_str(), i)))
        .filter(|(m, _)| path == *m || path.starts_with(&format!("{m}::")))
        .max_by_key(|(m, _)| m.len())
}

/// Every arrow that points up or sideways in `layers`, every circle between declared modules,
/// and every module of a layered tree that the order leaves out.
fn layering_problems(sources: &[Source], layers: &[Vec<String>]) -> Vec<String> {
    let trees: BTreeSet<String> = layers
        .iter()
        .flatten()
        .filter_map(|m| m.split("::").nth(1).map(|t| format!("crate::{t}")))
        .collect();
    let in_trees = |p: &str| {
        trees
            .iter()
            .any(|t| p == t || p.starts_with(&format!("{t}::")))
    };
    let mut wrong = Vec::new();
    let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
    for s in sources {
        let own = s.module.join("::");
        if !in_trees(&own) {
            continue;
        }
        let Some((group, level)) = layer_of(layers, &own) else {
            wrong.push(format!(
                "{}: module {own} is not in the layer order",
                s.file
            ));
            continue;
        };
        for p in paths_of(s) {
            let Some((target, to)) = layer_of(layers, &p) else {
                continue;
            };
            // Each tree has its own order; across trees the crate's picture rules.
            let tree = |m: &str| m.split("::").nth(1).map(str::to_string);
            if target == group || tree(target) != tree(group) {
                continue;
            }
            edges.insert((group.to_string(), target.to_string()));
            if to >= level {
                let how = if to == level { "sideways" } else { "up" };
                wrong.push(format!(
                    "{}: refers {how} to {p} ({group} -> {target})",
                    s.file
                ));
            }
        }
    }
    wrong.extend(circles(&edges));
    wrong
}

/// The circles in a graph of module arrows, each once.
fn circles(edges: &BTreeSet<(String, String)>) -> Vec<String> {
    let mut found = BTreeSet::new();
    for (a, b) in edges {
        // A path back from b to a closes a circle through the arrow a -> b.
        let mut stack = vec![vec![b.clone()]];
        let mut seen = BTreeSet::new();
        while let Some(path) = stack.pop() {
            let last = path.last().cloned().unwrap_or_default();
            if &last == a {
                let mut c = vec![a.clone()];
                c.extend(path);
                let lowest = c[..c.len() - 1].iter().min().cloned().unwrap_or_default();
                let at = c.iter().position(|m| *m == lowest).unwrap_or(0);
                let mut norm: Vec<String> = c[at..c.len() - 1].to_vec();
                norm.extend(c[..at].iter().cloned());
                norm.push(lowest);
                found.insert(format!("circle: {}", norm.join(" -> ")));
                continue;
            }
            if !seen.insert(last.clone()) {
                continue;
            }
            for (x, y) in edges {
                if *x == last {
                    let mut next = path.clone();
                    next.push(y.clone());
                    stack.push(next);
                }
            }
        }
    }
    found.into_iter().collect()
}

#[test]
fn controller_and_engine_modules_refer_only_down_the_declared_layers() {
    let sources = load();
    let tests = test_only_files(&sources);
    let production: Vec<Source> = sources
        .into_iter()
        .filter(|s| !tests.contains(&s.file))
        .collect();
    let wrong = layering_problems(&production, &declared_layers());
    assert!(
        wrong.is_empty(),
        "each module refers only to the layers below it (docs/ARCHITECTURE.md, `layers`); move \
         what two modules share below both:\n{}",
        wrong.join("\n")
    );
}

/// A source parsed from `text` as module `module` (for the checks' self-test).
fn synthetic(module: &str, text: &str) -> Source {
    Source {
        file: format!("src/{}.rs", module.replace("::", "/")),
        module: format!("crate::{module}")
            .split("::")
            .map(String::from)
            .collect(),
        tree: syn::parse_file(text).expect("parses"),
        lines: text.lines().count(),
    }
}

#[test]
fn the_layering_check_catches_an_upward_import_a_circle_and_a_long_function() {
    let layers = parse_layers("# lowest first\nx::low\nx::p x::q  # one line\nx::high\n");
    assert_eq!(layers.len(), 3);
    let ok = [
        synthetic("x::low", "pub fn f() {}"),
        synthetic("x::high", "use crate::x::low::f; use crate::x::p::g;"),
    ];
    assert_eq!(layering_problems(&ok, &layers), Vec::<String>::new());
    let up = [synthetic("x::low", "use crate::x::high::h; pub fn f() {}")];
    let found = layering_problems(&up, &layers);
    assert!(
        found
            .iter()
            .any(|w| w.contains("refers up to crate::x::high::h")),
        "{found:?}"
    );
    let circle = [
        synthetic("x::p", "use super::q::g; pub fn f() {}"),
        synthetic("x::q", "pub fn g() { crate::x::p::f() }"),
    ];
    let found = layering_problems(&circle, &layers);
    assert!(
        found.iter().any(|w| w.contains("refers sideways")),
        "{found:?}"
    );
    assert!(
        found.contains(&"circle: crate::x::p -> crate::x::q -> crate::x::p".to_string()),
        "{found:?}"
    );
    let stray = [synthetic("x::elsewhere", "pub fn f() {}")];
    let found = layering_problems(&stray, &layers);
    assert!(
        found.iter().any(|w| w.contains("not in the layer order")),
        "{found:?}"
    );
    let body = "    let _x = 1;\n".repeat(MAX_FN_LINES);
    let long = synthetic(
        "x::low",
        &format!("fn long() {{\n{body}}}\nfn short() {{}}\n"),
    );
    let found = long_fns(&long, false);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("fn long has 122 lines"), "{found:?}");
    // Test code: skipped in a production file, counted in an integration test.
    let test_code = synthetic(
        "x::low",
        &format!(
            "#[test]\nfn long_test() {{\n{body}}}\n\
             #[cfg(test)]\nmod tests {{\n    fn long_helper() {{\n{body}    }}\n}}\n"
        ),
    );
    assert_eq!(long_fns(&test_code, false).len(), 1);
    let found = long_fns(&test_code, true);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].contains("fn long_test has 123 lines"), "{found:?}");
    assert!(
        found[1].contains("fn long_helper has 122 lines"),
        "{found:?}"
    );
}
