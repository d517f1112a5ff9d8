//! #29's check that every message a person reads (status and condition messages, Event notes)
//! is words, not a library's debug dump: the e2e support code runs it on everything it reads.

/// What in `text` looks like a Rust debug dump, if anything.
pub fn debug_dump(text: &str) -> Option<String> {
    for marker in [
        "Kind:", "labels:", "Some(", "None,", "Error {", "Error(", "Ok(", "Err(",
    ] {
        if text.contains(marker) {
            return Some(marker.to_string());
        }
    }
    // A struct's Debug: `Name { field: ...`.
    let b = text.as_bytes();
    for (i, _) in text.match_indices('{') {
        let rest = &text[i + 1..];
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        let ident = rest
            .bytes()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_')
            .count();
        if ident > 0 && rest[ident..].starts_with(": ") && i > 0 && b[i - 1] == b' ' {
            return Some(text[i..(i + 1 + ident + 3).min(text.len())].to_string());
        }
    }
    None
}

/// Panics if `text`, read from `whence`, holds a debug dump.
pub fn assert_plain(whence: &str, text: &str) {
    if let Some(marker) = debug_dump(text) {
        panic!("{whence} holds a debug dump ({marker:?}), not words a person can act on: {text}");
    }
}

/// [`assert_plain`] on every `message` string under `value`'s status (status, conditions,
/// nested results).
pub fn assert_status_plain(whence: &str, value: &serde_json::Value) {
    fn walk(whence: &str, key: &str, v: &serde_json::Value) {
        match v {
            serde_json::Value::String(s) if key.to_ascii_lowercase().contains("message") => {
                assert_plain(&format!("{whence}.{key}"), s)
            }
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    walk(whence, k, v);
                }
            }
            serde_json::Value::Array(a) => {
                for v in a {
                    walk(whence, key, v);
                }
            }
            _ => {}
        }
    }
    if let Some(status) = value.get("status") {
        walk(whence, "status", status);
    }
}

/// What `kubectl ARGS` prints, required to succeed.
fn kubectl(args: &[&str]) -> String {
    let out = std::process::Command::new("kubectl")
        .args(args)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The value kubectl prints under `header` for object `name` of `kind` in namespace `ns`
/// (`kubectl get KIND NAME`): kubectl aligns its columns, so the value starts where its header
/// does.
pub fn kubectl_column(ns: &str, kind: &str, name: &str, header: &str) -> String {
    let table = kubectl(&["get", kind, name, "-n", ns]);
    let mut lines = table.lines();
    let head = lines.next().unwrap_or_default();
    let row = lines.next().unwrap_or_default();
    let at = head
        .find(header)
        .unwrap_or_else(|| panic!("no column {header} in:\n{table}"));
    row.get(at..)
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `kubectl get` of every snapcrypt kind in namespace `ns`, as a person reads it, checked: no
/// `<invalid>` (a date column holding a time to come) and no debug dump in any cell. Returns
/// the table.
pub fn kubectl_tables_read_right(ns: &str) -> String {
    let table = kubectl(&[
        "get",
        "backupjobs,snapshots,restores,kmipservers",
        "-n",
        ns,
        "-o",
        "wide",
    ]);
    assert!(
        !table.contains("<invalid>"),
        "kubectl printed <invalid>:\n{table}"
    );
    assert_plain("kubectl get", &table);
    table
}
