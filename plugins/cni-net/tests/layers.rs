//! Keeps the crate's layering: every `use`, `crate::` and `super::` path of `src/**`
//! must point to a lower rank of the table in `src/nat/mod.rs`'s doc, or to the same
//! rank in the same folder; never into a backend folder's driver (`mod.rs`) from inside
//! that folder, never from one backend into another.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// `(pattern, rank)` rows of the table: `| 3 | `nat/driver.rs` |`.
fn rank_table(src: &Path) -> Vec<(String, u32)> {
    let doc = fs::read_to_string(src.join("nat/mod.rs")).unwrap();
    let mut rows = Vec::new();
    for line in doc.lines().filter_map(|l| l.strip_prefix("//! | ")) {
        let Some((rank, files)) = line.split_once(" | ") else {
            continue;
        };
        let Ok(rank) = rank.trim().parse::<u32>() else {
            continue;
        };
        for file in files.split('`').skip(1).step_by(2) {
            rows.push((file.to_string(), rank));
        }
    }
    assert!(rows.len() > 10, "no rank table in nat/mod.rs");
    rows
}

/// The rank of `file` and the folder it shares a rank with: an exact entry wins over
/// a `dir/**` one, whose folder is the whole `dir`.
fn place(table: &[(String, u32)], file: &str) -> (u32, String) {
    if let Some((_, rank)) = table.iter().find(|(p, _)| p == file) {
        let dir = file.rsplit_once('/').map_or("", |(d, _)| d);
        return (*rank, dir.to_string());
    }
    table
        .iter()
        .filter_map(|(p, r)| p.strip_suffix("/**").map(|d| (d, *r)))
        .filter(|(d, _)| file.starts_with(&format!("{d}/")))
        .max_by_key(|(d, _)| d.len())
        .map(|(d, r)| (r, d.to_string()))
        .unwrap_or_else(|| panic!("{file} is not in the rank table of nat/mod.rs"))
}

/// The file of module `path` (segments below the crate root), if it is one.
fn module_file(src: &Path, path: &[String]) -> Option<String> {
    if path.is_empty() {
        return Some("lib.rs".into());
    }
    let base = path.join("/");
    [format!("{base}.rs"), format!("{base}/mod.rs")]
        .into_iter()
        .find(|f| src.join(f).is_file())
}

/// The module path of a file: `nat/iptables/mod.rs` -> `[nat, iptables]`.
fn module_of(file: &str) -> Vec<String> {
    let stem = file.trim_end_matches(".rs");
    let stem = stem.trim_end_matches("/mod").trim_end_matches("lib");
    stem.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The file `path` (absolute, from the crate root) lands in, following `pub use`
/// re-exports of the module where the path leaves the module tree.
fn resolve(src: &Path, path: &[String], depth: usize) -> Option<String> {
    let mut at = 0;
    while at < path.len() && module_file(src, &path[..=at]).is_some() {
        at += 1;
    }
    let file = module_file(src, &path[..at])?;
    let Some(item) = path.get(at).filter(|_| depth < 8) else {
        return Some(file);
    };
    let text = fs::read_to_string(src.join(&file)).ok()?;
    for stmt in statements(&text)
        .into_iter()
        .filter(|s| s.starts_with("pub"))
    {
        for target in expand(stmt.split_once("use ")?.1) {
            let name = target.rsplit("::").next()?;
            let (target, alias) = match name.split_once(" as ") {
                Some((_, alias)) => (target.rsplit_once(" as ")?.0.to_string(), alias),
                None => (target.clone(), name),
            };
            if alias == item {
                let abs = absolute(&module_of(&file), &target)?;
                return resolve(src, &[abs, path[at + 1..].to_vec()].concat(), depth + 1);
            }
        }
    }
    Some(file)
}

/// `crate::a::b`, `super::a`, `self::a` or `a` (a child module) from module `here`.
fn absolute(here: &[String], path: &str) -> Option<Vec<String>> {
    let mut parts = path.split("::").map(str::trim);
    let mut out = here.to_vec();
    let first = parts.next()?;
    match first {
        "crate" => out.clear(),
        "self" => {}
        "super" => {
            out.pop()?;
        }
        // A child module of `here`.
        child => out.push(child.to_string()),
    }
    for part in parts {
        match part {
            "super" => {
                out.pop()?;
            }
            "self" | "*" => {}
            p => out.push(p.to_string()),
        }
    }
    Some(out)
}

/// `a::{b, c::{d, e}}` -> `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim().trim_end_matches(';').trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.to_string()];
    };
    let (prefix, rest) = (
        &tree[..open],
        &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())],
    );
    let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in rest.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&rest[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&rest[start..]);
    let items = items.into_iter().map(str::trim).filter(|s| !s.is_empty());
    items
        .flat_map(|i| expand(i).into_iter().map(|e| format!("{prefix}{e}")))
        .map(|p| p.trim_end_matches("::self").to_string())
        .collect()
}

/// The `use` statements of a file, each on one line, comments stripped.
fn statements(text: &str) -> Vec<String> {
    let code: Vec<&str> = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect();
    let joined = code.join("\n");
    let mut out = Vec::new();
    for (i, _) in joined.match_indices("use ") {
        let before = joined[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let stmt = &joined[i..joined[i..].find(';').map_or(joined.len(), |e| i + e)];
        let line_start = joined[..i].rfind('\n').map_or(0, |n| n + 1);
        out.push(format!(
            "{}{}",
            joined[line_start..i].trim(),
            stmt.replace('\n', " ")
        ));
    }
    out
}

/// Every crate-internal path a file names, with the inline module (`mod tests {`) it
/// is named in.
fn paths(text: &str) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    let mut inline: Option<String> = None;
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.split("//").next().unwrap_or("");
        if let Some(name) = line
            .strip_prefix("mod ")
            .or_else(|| line.strip_prefix("pub(crate) mod "))
            .and_then(|l| l.strip_suffix(" {"))
        {
            inline = Some(name.to_string());
            continue;
        }
        if line == "}" {
            inline = None;
        }
        let trimmed = line.trim_start();
        if !pending.is_empty()
            || trimmed.starts_with("use ")
            || trimmed.starts_with("pub use ")
            || trimmed.starts_with("pub(crate) use ")
        {
            pending.push_str(trimmed);
            pending.push(' ');
            if trimmed.ends_with(';') {
                let tree = pending.split_once("use ").map_or("", |(_, t)| t);
                for p in expand(tree) {
                    out.push((
                        inline.clone(),
                        p.split(" as ").next().unwrap_or("").to_string(),
                    ));
                }
                pending.clear();
            }
            continue;
        }
        for start in ["crate::", "super::"] {
            for (i, _) in line.match_indices(start) {
                if line[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let end = line[i..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .map_or(line.len(), |e| i + e);
                out.push((
                    inline.clone(),
                    line[i..end].trim_end_matches(':').to_string(),
                ));
            }
        }
    }
    out
}

fn rust_files(dir: &Path, root: &Path, out: &mut Vec<String>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path: PathBuf = entry.path();
        if path.is_dir() {
            rust_files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            out.push(rel);
        }
    }
}

#[test]
fn imports_only_go_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let table = rank_table(&src);
    let mut files = Vec::new();
    rust_files(&src, &src, &mut files);
    let backends = ["nat/iptables", "nat/nftables", "nat/sets"];
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in &files {
        let (rank, folder) = place(&table, file);
        let text = fs::read_to_string(src.join(file)).unwrap();
        for (inline, path) in paths(&text) {
            let mut here = module_of(file);
            here.extend(inline);
            let first = path.split("::").next().unwrap_or("");
            if !["crate", "super", "self"].contains(&first) {
                // A child module (`use restore::Script`) or another crate.
                let child = [module_of(file), vec![first.to_string()]].concat();
                if module_file(&src, &child).is_none() {
                    continue;
                }
            }
            let Some(abs) = absolute(&here, &path) else {
                continue;
            };
            let Some(target) = resolve(&src, &abs, 0) else {
                continue;
            };
            if &target == file {
                continue;
            }
            let (t_rank, t_folder) = place(&table, &target);
            let driver_of = backends.iter().find(|b| target == format!("{b}/mod.rs"));
            let ok = (t_rank < rank || (t_rank == rank && t_folder == folder))
                && !driver_of.is_some_and(|b| file.starts_with(&format!("{b}/")));
            if !ok {
                wrong
                    .entry(file.clone())
                    .or_default()
                    .push(format!("{path} -> {target} (rank {rank} -> {t_rank})"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the rank table of src/nat/mod.rs:\n{wrong:#?}"
    );
}

#[test]
fn use_trees_expand() {
    assert_eq!(
        expand("super::names::{self, A, b::{C, D}};"),
        [
            "super::names",
            "super::names::A",
            "super::names::b::C",
            "super::names::b::D"
        ]
    );
}
