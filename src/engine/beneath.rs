//! Paths resolved beneath a directory descriptor, never by string.
//!
//! A source, a restore target and a local repository are hostile: whoever can write into them
//! (a compromised mongod, a neighbour on the claim) can plant a symbolic link or swap a
//! directory while the agent works. So the agent opens its root once ([`Root`]) and reaches
//! everything below it from that descriptor: `openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV` where the kernel has it (5.6
//! and later, and a seccomp profile that lets it through), else the same rules walked one
//! component at a time with `O_NOFOLLOW`. No link is ever followed below a root, none of `..`,
//! `.` or an absolute part is taken from a name, no other file system is entered, and
//! removal, creation and renames happen relative to directory descriptors.
//!
//! Why by hand on rustix's system calls: `cap-std` follows links that stay inside its root and
//! `pathrs` emulates `RESOLVE_IN_ROOT` (links scoped, still followed); the agent must refuse
//! every link below its root, and name the one it found.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};

/// Why a path could not be resolved beneath its root, for the person who runs the command.
#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    #[error("{path}: not a plain relative path (an empty, `.`, `..` or absolute part): refused")]
    NotPlain { path: String },
    #[error(
        "{path} is a symbolic link: never followed (a link planted in a volume could lead anywhere)"
    )]
    Link { path: String },
    #[error("{path} is on another file system (a mount point): not crossed")]
    OtherFileSystem { path: String },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

impl BeneathError {
    /// The path the error names.
    pub fn path(&self) -> &str {
        match self {
            BeneathError::NotPlain { path }
            | BeneathError::Link { path }
            | BeneathError::OtherFileSystem { path }
            | BeneathError::Io { path, .. } => path,
        }
    }

    /// The error without the path (for messages that name it themselves).
    pub fn reason(&self) -> String {
        match self {
            BeneathError::Io { source, .. } => source.to_string(),
            other => other
                .to_string()
                .strip_prefix(other.path())
                .map(|r| r.trim_start_matches([':', ' ']).to_string())
                .unwrap_or_else(|| other.to_string()),
        }
    }

    /// An I/O error's OS error number, if it is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            BeneathError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// An I/O error's kind (`NotFound`, ...), if it is one.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            BeneathError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

/// A directory opened once, under which every other path is resolved.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    dev: u64,
    ino: u64,
    shown: PathBuf,
}

/// The identity of a file: device and inode.
pub type FileId = (u64, u64);

pub fn file_id(st: &Stat) -> FileId {
    (st.st_dev, st.st_ino)
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> BeneathError + '_ {
    move |source| BeneathError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn rx(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

impl Root {
    /// Open `path` itself as a root: the caller's own path, taken as it is given (a link the
    /// user named is followed, as a shell would); nothing below it is.
    pub fn open(path: &Path) -> Result<Root, BeneathError> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(path)(rx(e)))?;
        Root::from_fd(fd, path.to_path_buf())
    }

    fn from_fd(fd: OwnedFd, shown: PathBuf) -> Result<Root, BeneathError> {
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err(&shown)(rx(e)))?;
        Ok(Root {
            fd,
            dev: st.st_dev,
            ino: st.st_ino,
            shown,
        })
    }

    /// Open `path`, which must lie lexically beneath `within` (or be relative to it), as a
    /// root: `within` is the caller's (a volume's mount); every component below it is resolved
    /// without following a link. With `create`, missing directories are made (mode 0755).
    pub fn open_within(within: &Path, path: &Path, create: bool) -> Result<Root, BeneathError> {
        let top = Root::open(within)?;
        let rel = relative_to(within, path)?;
        if rel.is_empty() {
            return Ok(top);
        }
        if create {
            top.create_dirs(&rel)?;
        }
        let fd = top.open_at(&rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        Root::from_fd(fd, path.to_path_buf())
    }

    /// The path this root was opened as (for messages).
    pub fn path(&self) -> &Path {
        &self.shown
    }

    /// `rel` shown under the root (for messages).
    pub fn show(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.shown.display().to_string()
        } else {
            self.shown.join(rel).display().to_string()
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn id(&self) -> FileId {
        (self.dev, self.ino)
    }

    /// Open `rel` (a plain relative path; empty is the root itself) beneath the root with
    /// `flags` (and `mode` for a file it creates), following no link at any depth and never
    /// leaving the root's file system.
    pub fn open_at(&self, rel: &str, flags: OFlags, mode: Mode) -> Result<OwnedFd, BeneathError> {
        open_beneath(self.fd(), rel, flags, mode).map_err(|e| self.explain(rel, e))
    }

    /// Open the directory that holds `rel`, and return it with `rel`'s last name.
    pub fn open_parent<'r>(&self, rel: &'r str) -> Result<(OwnedFd, &'r str), BeneathError> {
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        if name.is_empty() || name == "." || name == ".." {
            return Err(BeneathError::NotPlain {
                path: self.show(rel),
            });
        }
        let fd = self.open_at(parent, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        Ok((fd, name))
    }

    /// What is at `rel`, not following a link in its last part (`None` when nothing is).
    pub fn stat(&self, rel: &str) -> Result<Option<Stat>, BeneathError> {
        if rel.is_empty() {
            return rustix::fs::fstat(self.fd())
                .map(Some)
                .map_err(|e| self.explain(rel, rx(e)));
        }
        let (dir, name) = self.open_parent(rel)?;
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(self.explain(rel, rx(e))),
        }
    }

    /// Make every missing directory of `rel` (mode 0755), each beneath the one before.
    pub fn create_dirs(&self, rel: &str) -> Result<(), BeneathError> {
        check_plain(rel).map_err(|_| BeneathError::NotPlain {
            path: self.show(rel),
        })?;
        let mut done = String::new();
        for c in rel.split('/') {
            let dir = self.open_at(&done, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
            match rustix::fs::mkdirat(&dir, c, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(self.explain(&join(&done, c), rx(e))),
            }
            done = join(&done, c);
        }
        Ok(())
    }

    /// Remove `rel` and, if it is a directory, everything in it, without following a link or
    /// crossing into another file system: a link is removed itself, never what it names.
    /// Nothing at `rel` is not an error.
    pub fn remove_all(&self, rel: &str) -> Result<(), BeneathError> {
        let (dir, name) = self.open_parent(rel)?;
        remove_tree_at(dir.as_fd(), name, self.dev).map_err(|e| self.explain(rel, e))
    }

    /// Remove the file or link `rel` (not a directory); nothing there is not an error.
    pub fn remove_file(&self, rel: &str) -> Result<(), BeneathError> {
        let (dir, name) = self.open_parent(rel)?;
        match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(self.explain(rel, rx(e))),
        }
    }

    /// Whether `other` is this root or lies beneath it (walking up from `other` through `..`,
    /// by device and inode, so a second mount of the same volume counts too).
    pub fn holds(&self, other: &Root) -> Result<bool, BeneathError> {
        is_beneath(other.fd(), self.id()).map_err(io_err(other.path()))
    }

    /// Turn an error from resolving `rel` into one that names what was refused: the first
    /// part of `rel` that is a link, or on another file system.
    fn explain(&self, rel: &str, e: io::Error) -> BeneathError {
        let refused = matches!(
            e.raw_os_error(),
            Some(libc::ELOOP | libc::ENOTDIR | libc::EXDEV)
        );
        if check_plain(rel).is_err() && !rel.is_empty() {
            return BeneathError::NotPlain {
                path: self.show(rel),
            };
        }
        if refused && let Some(found) = first_refused(self.fd(), rel, self.dev, |r| self.show(r)) {
            return found;
        }
        BeneathError::Io {
            path: self.show(rel),
            source: e,
        }
    }
}

/// Walk `rel` one part at a time without following anything, and name the first part that
/// is a link or on another device than `dev` (`show` turns a relative path into a shown one).
fn first_refused(
    dir: BorrowedFd<'_>,
    rel: &str,
    dev: u64,
    show: impl Fn(&str) -> String,
) -> Option<BeneathError> {
    let mut cur: Option<OwnedFd> = None;
    let mut done = String::new();
    for c in rel.split('/') {
        let base = cur.as_ref().map(|f| f.as_fd()).unwrap_or(dir);
        done = join(&done, c);
        let st = rustix::fs::statat(base, c, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            return Some(BeneathError::Link { path: show(&done) });
        }
        if st.st_dev != dev {
            return Some(BeneathError::OtherFileSystem { path: show(&done) });
        }
        cur = Some(
            rustix::fs::openat(
                base,
                c,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok()?,
        );
    }
    None
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

/// `rel` must be empty (the root) or plain names joined by `/`.
fn check_plain(rel: &str) -> io::Result<()> {
    if rel.is_empty() {
        return Ok(());
    }
    if rel.contains('\0')
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(())
}

/// `path` relative to `within`, by components: `path` must be `within` or below it (or a
/// plain relative path, taken as below it).
pub fn relative_to(within: &Path, path: &Path) -> Result<String, BeneathError> {
    let not_plain = || BeneathError::NotPlain {
        path: path.display().to_string(),
    };
    let rest = if path.is_absolute() {
        path.strip_prefix(within)
            .map_err(|_| BeneathError::NotPlain {
                path: format!("{} (not beneath {})", path.display(), within.display()),
            })?
    } else {
        path
    };
    let mut parts = Vec::new();
    for c in rest.components() {
        match c {
            std::path::Component::Normal(n) => {
                parts.push(n.to_str().ok_or_else(not_plain)?.to_string())
            }
            std::path::Component::CurDir => {}
            _ => return Err(not_plain()),
        }
    }
    Ok(parts.join("/"))
}

/// Whether the kernel resolves with `openat2` here (else the walk is used); cached.
static OPENAT2: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
const OPENAT2_UNKNOWN: u8 = 0;
const OPENAT2_NO: u8 = 2;

/// Open `rel` beneath `dir` (see the module's rules). Empty `rel` opens `dir` itself again.
pub fn open_beneath(
    dir: BorrowedFd<'_>,
    rel: &str,
    flags: OFlags,
    mode: Mode,
) -> io::Result<OwnedFd> {
    check_plain(rel)?;
    let rel = if rel.is_empty() { "." } else { rel };
    if OPENAT2.load(std::sync::atomic::Ordering::Relaxed) != OPENAT2_NO && !force_walk() {
        let how = ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS
            | ResolveFlags::NO_XDEV;
        match rustix::fs::openat2(dir, rel, flags | OFlags::CLOEXEC, mode, how) {
            // Not in this kernel, or refused by a seccomp profile: walk instead from now on.
            Err(rustix::io::Errno::NOSYS) | Err(rustix::io::Errno::PERM)
                if OPENAT2.load(std::sync::atomic::Ordering::Relaxed) == OPENAT2_UNKNOWN =>
            {
                OPENAT2.store(OPENAT2_NO, std::sync::atomic::Ordering::Relaxed);
            }
            Err(rustix::io::Errno::AGAIN) => {} // a rename raced the lookup: walk this once
            r => {
                OPENAT2.store(1, std::sync::atomic::Ordering::Relaxed);
                return r.map_err(rx);
            }
        }
    }
    walk_beneath(dir, rel, flags, mode)
}

/// Tests force the walk with `SNAPCRYPT_TEST_NO_OPENAT2=1`, to check it keeps the same rules.
fn force_walk() -> bool {
    static FORCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCE.get_or_init(|| std::env::var_os("SNAPCRYPT_TEST_NO_OPENAT2").is_some_and(|v| v == "1"))
}

/// The rules of `openat2(RESOLVE_BENEATH | NO_SYMLINKS | NO_XDEV)`, one component at a time:
/// each directory opened from the one before with `O_NOFOLLOW | O_DIRECTORY` and checked to be
/// on the root's device; the last part opened with `O_NOFOLLOW`.
fn walk_beneath(dir: BorrowedFd<'_>, rel: &str, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let dev = rustix::fs::fstat(dir).map_err(rx)?.st_dev;
    let parts: Vec<&str> = rel.split('/').collect();
    let (last, dirs) = parts.split_last().unwrap_or((&".", &[]));
    let mut cur: Option<OwnedFd> = None;
    for c in dirs {
        let base = cur.as_ref().map(|f| f.as_fd()).unwrap_or(dir);
        let next = rustix::fs::openat(
            base,
            *c,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(rx)?;
        if rustix::fs::fstat(&next).map_err(rx)?.st_dev != dev {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        cur = Some(next);
    }
    let base = cur.as_ref().map(|f| f.as_fd()).unwrap_or(dir);
    let fd = rustix::fs::openat(
        base,
        *last,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        mode,
    )
    .map_err(rx)?;
    if rustix::fs::fstat(&fd).map_err(rx)?.st_dev != dev {
        return Err(io::Error::from_raw_os_error(libc::EXDEV));
    }
    Ok(fd)
}

/// The names in directory `dir` (not `.` or `..`), each with its type as the directory says
/// (`Unknown` on file systems that do not say: then `statat` it).
pub fn read_names(dir: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, FileType)>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir).map_err(rx)? {
        let entry = entry.map_err(rx)?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push((name.to_vec(), entry.file_type()));
    }
    Ok(out)
}

/// A name from a directory as a path part (lossy for names that are not UTF-8).
pub fn name_str(name: &[u8]) -> String {
    OsStr::from_bytes(name).to_string_lossy().into_owned()
}

/// Remove `name` in `parent` and everything beneath it, never following a link (a link is
/// unlinked itself) and never entering another device than `dev`. Iterative, so a deep
/// hostile tree cannot overflow the stack. Nothing at `name` is not an error.
pub fn remove_tree_at(parent: BorrowedFd<'_>, name: &str, dev: u64) -> io::Result<()> {
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(rx(e)),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(rx(e)),
        };
    }
    struct Frame {
        fd: OwnedFd,
        name: Vec<u8>,
        subdirs: Vec<Vec<u8>>,
    }
    // Open a directory without following, check it is what was stat'ed, unlink all but its
    // directories, and return it with those.
    let enter = |at: BorrowedFd<'_>, name: &[u8], expect: FileId| -> io::Result<Frame> {
        let fd = rustix::fs::openat(
            at,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(rx)?;
        let got = rustix::fs::fstat(&fd).map_err(rx)?;
        if file_id(&got) != expect {
            return Err(io::Error::other(
                "was replaced while it was being removed: stopped",
            ));
        }
        if got.st_dev != dev {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        let mut subdirs = Vec::new();
        for (n, _) in read_names(fd.as_fd())? {
            let st = match rustix::fs::statat(&fd, n.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(rx(e)),
            };
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                subdirs.push(n);
            } else {
                match rustix::fs::unlinkat(&fd, n.as_slice(), AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => return Err(rx(e)),
                }
            }
        }
        Ok(Frame {
            fd,
            name: name.to_vec(),
            subdirs,
        })
    };
    let mut frames = vec![enter(parent, name.as_bytes(), file_id(&st))?];
    while let Some(top) = frames.last_mut() {
        if let Some(sub) = top.subdirs.pop() {
            let st = match rustix::fs::statat(&top.fd, sub.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(rx(e)),
            };
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                // Swapped for something else since it was listed: remove that, unfollowed.
                match rustix::fs::unlinkat(&top.fd, sub.as_slice(), AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => return Err(rx(e)),
                }
                continue;
            }
            let frame = enter(top.fd.as_fd(), &sub, file_id(&st))?;
            frames.push(frame);
            continue;
        }
        let Some(done) = frames.pop() else { break };
        let at = frames.last().map(|f| f.fd.as_fd()).unwrap_or(parent);
        match rustix::fs::unlinkat(at, done.name.as_slice(), AtFlags::REMOVEDIR) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(rx(e)),
        }
    }
    Ok(())
}

/// Whether `fd` is the directory `target` or lies beneath it: walks up through `..` to the
/// root of the file-system tree, comparing device and inode.
fn is_beneath(fd: BorrowedFd<'_>, target: FileId) -> io::Result<bool> {
    let mut cur = rustix::fs::openat(
        fd,
        ".",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(rx)?;
    loop {
        let here = file_id(&rustix::fs::fstat(&cur).map_err(rx)?);
        if here == target {
            return Ok(true);
        }
        let up = rustix::fs::openat(
            &cur,
            "..",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(rx)?;
        if file_id(&rustix::fs::fstat(&up).map_err(rx)?) == here {
            return Ok(false);
        }
        cur = up;
    }
}

/// Whether two roots overlap: one is the other, or lies beneath it.
pub fn overlap(a: &Root, b: &Root) -> Result<bool, BeneathError> {
    Ok(a.holds(b)? || b.holds(a)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> (tempfile::TempDir, Root) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("in/a/b")).unwrap();
        std::fs::write(d.path().join("in/a/b/f"), b"inside").unwrap();
        std::fs::create_dir(d.path().join("out")).unwrap();
        std::fs::write(d.path().join("out/secret"), b"key").unwrap();
        let root = Root::open(&d.path().join("in")).unwrap();
        (d, root)
    }

    fn read(root: &Root, rel: &str) -> Result<Vec<u8>, BeneathError> {
        let fd = root.open_at(rel, OFlags::RDONLY, Mode::empty())?;
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut out).unwrap();
        Ok(out)
    }

    /// Links at every depth (absolute and relative, to files and directories) are refused and
    /// named, by openat2 and by the walk alike; `..` and absolute names are refused.
    #[test]
    fn no_link_is_followed_at_any_depth() {
        let (d, root) = tree();
        let out = d.path().join("out");
        symlink(&out, d.path().join("in/abs")).unwrap();
        symlink("../../out", d.path().join("in/a/rel")).unwrap();
        symlink(out.join("secret"), d.path().join("in/a/b/file-link")).unwrap();
        symlink("b", d.path().join("in/a/inside-link")).unwrap();
        assert_eq!(read(&root, "a/b/f").unwrap(), b"inside");
        for walk in [false, true] {
            let open = |rel: &str| {
                if walk {
                    walk_beneath(root.fd(), rel, OFlags::RDONLY, Mode::empty())
                        .map_err(|e| root.explain(rel, e))
                } else {
                    root.open_at(rel, OFlags::RDONLY, Mode::empty())
                }
            };
            for (rel, named) in [
                ("abs/secret", "in/abs"),
                ("a/rel/secret", "in/a/rel"),
                ("a/b/file-link", "in/a/b/file-link"),
                ("a/inside-link/f", "in/a/inside-link"),
            ] {
                match open(rel) {
                    Err(BeneathError::Link { path }) => assert!(path.ends_with(named), "{path}"),
                    other => panic!("{rel} (walk {walk}): {other:?}"),
                }
            }
        }
        for rel in ["../out/secret", "a/../../out/secret", "/etc/passwd", "a//b"] {
            assert!(
                matches!(read(&root, rel), Err(BeneathError::NotPlain { .. })),
                "{rel}"
            );
        }
    }

    /// A link to the repository planted where a tree is removed: the link goes, the
    /// repository stays; a whole directory goes without following links inside it.
    #[test]
    fn removal_never_follows_a_link() {
        let (d, root) = tree();
        let out = d.path().join("out");
        symlink(&out, d.path().join("in/a/b/link-dir")).unwrap();
        symlink(out.join("secret"), d.path().join("in/a/link-file")).unwrap();
        symlink(&out, d.path().join("in/top-link")).unwrap();
        root.remove_all("top-link").unwrap();
        root.remove_all("a").unwrap();
        root.remove_all("missing").unwrap();
        assert!(!d.path().join("in/a").exists());
        assert!(!d.path().join("in/top-link").exists());
        assert_eq!(std::fs::read(out.join("secret")).unwrap(), b"key");
        // Through a link to the parent, nothing is reached.
        symlink(&out, d.path().join("in/via")).unwrap();
        assert!(matches!(
            root.remove_all("via/secret"),
            Err(BeneathError::Link { .. })
        ));
        assert!(out.join("secret").exists());
    }

    #[test]
    fn overlap_is_found_by_identity_not_by_name() {
        let (d, root) = tree();
        let inner = Root::open(&d.path().join("in/a/b")).unwrap();
        let other = Root::open(&d.path().join("out")).unwrap();
        // The same directory through a link: one directory.
        symlink(d.path().join("in"), d.path().join("alias")).unwrap();
        let alias = Root::open(&d.path().join("alias")).unwrap();
        assert!(overlap(&root, &inner).unwrap());
        assert!(overlap(&inner, &root).unwrap());
        assert!(overlap(&alias, &root).unwrap());
        assert!(!overlap(&root, &other).unwrap());
    }

    #[test]
    fn open_within_refuses_a_link_on_the_way_and_creates_what_is_missing() {
        let (d, _) = tree();
        symlink(d.path().join("out"), d.path().join("in/db")).unwrap();
        match Root::open_within(&d.path().join("in"), &d.path().join("in/db"), true) {
            Err(BeneathError::Link { path }) => assert!(path.ends_with("in/db"), "{path}"),
            other => panic!("{other:?}"),
        }
        let made = Root::open_within(&d.path().join("in"), &d.path().join("in/x/y"), true).unwrap();
        assert!(d.path().join("in/x/y").is_dir());
        assert_eq!(made.path(), d.path().join("in/x/y"));
        assert!(matches!(
            Root::open_within(&d.path().join("in"), &d.path().join("out"), false),
            Err(BeneathError::NotPlain { .. })
        ));
    }
}
