//! What the verbs print: ages, tables, conditions. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// `t` as an age like kubectl's (`45s`, `12m`, `3h`, `5d`), from `now`.
pub fn age(t: Option<&Time>, now: jiff::Timestamp) -> String {
    let Some(t) = t else {
        return "-".into();
    };
    let s = now.duration_since(t.0).as_secs().max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Rows as columns padded to their widest cell, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// The condition of `type_`, if any.
pub fn condition<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

/// Why a run failed: its Failed condition's message, else its status message.
pub fn failure_reason(conds: &[Condition], message: Option<String>) -> String {
    condition(conds, "Failed")
        .map(|c| c.message.clone())
        .or(message)
        .unwrap_or_else(|| "no reason given".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_tables_read_like_kubectl() {
        let now: jiff::Timestamp = "2026-12-08T12:00:00Z".parse().unwrap();
        let at = |s: &str| Time(s.parse().unwrap());
        assert_eq!(age(Some(&at("2026-12-08T11:59:15Z")), now), "45s");
        assert_eq!(age(Some(&at("2026-12-08T11:00:00Z")), now), "60m");
        assert_eq!(age(Some(&at("2026-12-08T02:00:00Z")), now), "10h");
        assert_eq!(age(Some(&at("2026-12-01T12:00:00Z")), now), "7d");
        assert_eq!(age(None, now), "-");
        let t = table(
            &["NAME", "PHASE"],
            &[vec!["a-long-name".into(), "Succeeded".into()]],
        );
        assert_eq!(t, "NAME         PHASE\na-long-name  Succeeded\n");
    }
}
