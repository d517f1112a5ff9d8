//! Listing and deleting in a local repository without following links: a link planted in
//! the repository's directory (by anyone who can write its claim) never makes a prune list or
//! delete what lies elsewhere. object_store's local store follows links when it lists
//! (walkdir's `follow_links`) and deletes by path, so these two go through the repository's
//! directory descriptor instead (`engine/beneath.rs`).

use std::os::fd::AsFd;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::ObjectInfo;
use crate::engine::beneath::{BeneathError, Root, name_str, read_names};

/// Every regular file under `dir` (a plain relative path) of the repository at `root`, with
/// size and modification time, sorted by name; links are left out (and logged), never
/// followed. A missing `dir` lists nothing.
pub(super) fn list(root: &Root, dir: &str) -> Result<Vec<ObjectInfo>, BeneathError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.trim_matches('/').to_string()];
    while let Some(rel) = stack.pop() {
        let fd = match root.open_at(&rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => continue,
            Err(e) => return Err(e),
        };
        let io = |source: std::io::Error| BeneathError::Io {
            path: root.show(&rel),
            source,
        };
        for (name, _) in read_names(fd.as_fd()).map_err(io)? {
            let child = format!("{rel}/{}", name_str(&name));
            let st = match rustix::fs::statat(&fd, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(io(e.into())),
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => stack.push(child),
                FileType::RegularFile => out.push(ObjectInfo {
                    name: child,
                    size: st.st_size as u64,
                    modified_ms: st.st_mtime * 1000 + st.st_mtime_nsec as i64 / 1_000_000,
                }),
                _ => tracing::warn!(
                    path = %root.show(&child),
                    "not a regular file or directory in the repository (a link?): left alone, never followed"
                ),
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Delete object `name` of the repository at `root`: unlinked from its directory's
/// descriptor, never through a link (a link in its path is refused, naming it).
pub(super) fn delete(root: &Root, name: &str) -> Result<(), BeneathError> {
    root.remove_file(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A link planted in a repository's data directory, to a directory holding files named
    /// like packs: never listed, and deleting through it is refused.
    #[test]
    fn links_in_a_repository_are_never_listed_or_deleted_through() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("repo");
        let elsewhere = d.path().join("elsewhere");
        std::fs::create_dir_all(repo.join("data/ab")).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        let pack = "ab".to_string() + &"0".repeat(62);
        std::fs::write(repo.join("data/ab").join(&pack), b"pack").unwrap();
        std::fs::write(
            elsewhere.join("cd".to_string() + &"1".repeat(62)),
            b"theirs",
        )
        .unwrap();
        symlink(&elsewhere, repo.join("data/cd")).unwrap();
        symlink(elsewhere.join("x"), repo.join("data/ab/link")).unwrap();
        let root = Root::open(&repo).unwrap();
        let listed: Vec<String> = list(&root, "data")
            .unwrap()
            .into_iter()
            .map(|o| o.name)
            .collect();
        assert_eq!(listed, [format!("data/ab/{pack}")]);
        assert!(list(&root, "missing").unwrap().is_empty());
        let theirs = format!("data/cd/cd{}", "1".repeat(62));
        assert!(matches!(
            delete(&root, &theirs),
            Err(BeneathError::Link { .. })
        ));
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 1);
        delete(&root, &format!("data/ab/{pack}")).unwrap();
        assert!(!repo.join("data/ab").join(&pack).exists());
    }
}
