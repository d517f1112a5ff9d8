//! Hostile volumes: whoever can write a source, a restore target or a repository's claim (a
//! compromised mongod, a neighbour) plants links, hard links, FIFOs and devices, and swaps
//! directories while the agent works. Every path is resolved beneath a descriptor the agent
//! opened (`engine/beneath.rs`); these tests try to make a backup read, or a restore write,
//! remove or chmod, anything outside its root. The CLI cases are the ones found by hand on
//! 4c5991e; the seeded generator tries 1,000 trees.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use support::cli::{repo_args, restore_args};
use support::{Env, assert_same_tree, backup_id, describe, fails, ok};

/// The repository verifies with every pack read, and restores exactly what `src` holds.
fn repository_is_whole(e: &Env, src: &str, repo: &str, key: &str) {
    ok(&repo_args(&["verify"], repo, key, &["--read-data"]), &[]);
    let again = tempfile::tempdir_in(e.dir.path()).unwrap();
    let again_s = again.path().join("t").display().to_string();
    ok(&restore_args(repo, key, "latest", &again_s, &[]), &[]);
    assert_same_tree(Path::new(src), &again.path().join("t"));
}

/// The critical case: a forced restore with --delete-extra whose target is (or holds, or
/// passes through) a link to the repository never removes the repository. Without
/// --target-within the target and repository overlap (refused); with it (as the restore pod
/// runs) the link is refused by name; links planted inside a real target are removed
/// themselves, never followed.
#[test]
fn a_forced_restore_with_delete_extra_never_removes_the_repository() {
    let e = Env::new();
    let (src, key) = (e.p("src"), e.key());
    let claim = e.dir.path().join("claim");
    fs::create_dir_all(&claim).unwrap();
    let repo = e.p("claim/snapcrypt");
    backup_id(&src, &repo, &key, &[]);
    // The repository's objects (its locks and staging directory change with every reader).
    let objects = |repo: &str| {
        let mut d = describe(Path::new(repo));
        d.retain(|k, _| k != "locks" && k != "tmp" && !k.starts_with("locks/"));
        d
    };
    let before = objects(&repo);

    // db -> the repository (as found by hand): refused as overlapping.
    symlink(&repo, claim.join("db")).unwrap();
    let db = claim.join("db").display().to_string();
    let err = fails(
        &restore_args(&repo, &key, "latest", &db, &["--force", "--delete-extra"]),
        &[],
    );
    assert!(err.contains("overlaps the repository"), "{err}");
    // The claim itself (which holds the repository): refused as overlapping.
    let claim_s = claim.display().to_string();
    let err = fails(
        &restore_args(
            &repo,
            &key,
            "latest",
            &claim_s,
            &["--force", "--delete-extra"],
        ),
        &[],
    );
    assert!(err.contains("overlaps the repository"), "{err}");
    // As the restore pod runs it: the link is named and never followed.
    let err = fails(
        &restore_args(
            &repo,
            &key,
            "latest",
            &db,
            &["--force", "--delete-extra", "--target-within", &claim_s],
        ),
        &[],
    );
    assert!(
        err.contains("claim/db: is a symbolic link: never followed"),
        "{err}"
    );
    // A real target holding links to the repository at several depths: they go, it stays.
    let target = e.dir.path().join("target");
    fs::create_dir_all(target.join("journal/deep")).unwrap();
    symlink(&repo, target.join("extra-link")).unwrap();
    symlink(
        "../../claim/snapcrypt/data",
        target.join("journal/data-link"),
    )
    .unwrap();
    symlink(
        Path::new(&repo).join("config"),
        target.join("journal/deep/config"),
    )
    .unwrap();
    symlink(&repo, target.join("WiredTiger")).unwrap(); // where the snapshot has a file
    symlink(&repo, target.join("diagnostic.data")).unwrap(); // where it has a directory
    let target_s = target.display().to_string();
    let within = e.dir.path().display().to_string();
    ok(
        &restore_args(
            &repo,
            &key,
            "latest",
            &target_s,
            &["--force", "--delete-extra", "--target-within", &within],
        ),
        &[],
    );
    assert_same_tree(Path::new(&src), &target);
    assert_eq!(objects(&repo), before, "the repository changed");
    repository_is_whole(&e, &src, &repo, &key);
}

/// A file of the target with a second link (to a file elsewhere on the volume) is replaced,
/// never truncated and written through: the other file keeps its bytes.
#[test]
fn a_hard_link_in_the_target_is_replaced_not_written_through() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    backup_id(&src, &repo, &key, &[]);
    let target = e.dir.path().join("target");
    fs::create_dir_all(target.join("journal")).unwrap();
    let victim = e.dir.path().join("victim");
    fs::write(&victim, b"another file on the volume").unwrap();
    fs::hard_link(&victim, target.join("WiredTiger")).unwrap();
    fs::hard_link(&victim, target.join("journal/WiredTigerLog.0000000001")).unwrap();
    let target_s = target.display().to_string();
    ok(
        &restore_args(&repo, &key, "latest", &target_s, &["--force"]),
        &[],
    );
    assert_eq!(fs::read(&victim).unwrap(), b"another file on the volume");
    assert_eq!(fs::metadata(&victim).unwrap().nlink(), 1);
    assert_same_tree(Path::new(&src), &target);
}

/// A directory swapped for a link (to the pod's secrets) or for another directory while the
/// scan runs fails the backup naming it; nothing outside the source is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_swapped_during_the_scan_fails_the_backup_naming_it() {
    use snapcrypt::engine::backup::scan_with;
    let e = Env::new();
    let src = e.dir.path().join("src");
    let secrets = e.dir.path().join("etc-snapcrypt");
    fs::create_dir_all(&secrets).unwrap();
    fs::write(secrets.join("key.json"), "secret").unwrap();
    // For a link: journal -> the secrets, just before the scan opens journal.
    let err = scan_with(&src, None, 100_000, &mut |rel| {
        if rel == "journal" {
            fs::rename(src.join("journal"), e.dir.path().join("journal-away")).unwrap();
            symlink(&secrets, src.join("journal")).unwrap();
        }
    })
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("src/journal: is a symbolic link: never followed"),
        "{err}"
    );
    // For another directory of the same name (inode differs): refused too.
    fs::remove_file(src.join("journal")).unwrap();
    fs::create_dir(src.join("journal")).unwrap();
    let err = scan_with(&src, None, 100_000, &mut |rel| {
        if rel == "journal" {
            fs::rename(src.join("journal"), e.dir.path().join("journal-2")).unwrap();
            fs::rename(e.dir.path().join("journal-away"), src.join("journal")).unwrap();
        }
    })
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("src/journal") && err.contains("was replaced by another directory"),
        "{err}"
    );
}

/// A pack and its index object both gone (a lifecycle rule, a partial restore of a bucket):
/// the next backup reuses nothing of its parent's chunks the repository cannot serve, so the
/// snapshot it writes verifies and restores (on 4c5991e it exited 0 and could not restore).
#[test]
fn a_backup_never_reuses_a_chunk_no_index_serves() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    backup_id(&src, &repo, &key, &[]);
    // The largest pack holds the data of the 3 MiB collection.
    let largest = largest_under(&Path::new(&repo).join("data"));
    let id = largest.file_name().unwrap().to_string_lossy().into_owned();
    fs::remove_file(&largest).unwrap();
    fs::remove_file(Path::new(&repo).join("index").join(&id)).unwrap();
    let second = backup_id(&src, &repo, &key, &[]);
    ok(
        &repo_args(
            &["verify"],
            &repo,
            &key,
            &["--snapshot", &second, "--read-data"],
        ),
        &[],
    );
    let out = e.p("out");
    ok(&restore_args(&repo, &key, "latest", &out, &[]), &[]);
    assert_same_tree(Path::new(&src), Path::new(&out));
}

/// The largest file under `dir` (a repository's data pack, or its index object).
fn largest_under(dir: &Path) -> PathBuf {
    support::files_under(dir)
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .expect("a file")
}

// ------------------------------------------------------------------ the seeded generator

/// A small deterministic generator (xorshift), so each case can be run again by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What lies outside the roots: the pod's secrets (whose bytes must never reach a
/// snapshot) and files a restore must never touch.
const SECRET: &[u8] = b"SECRET-KEY-MATERIAL";

/// Everything about a tree, with modes, for "nothing outside changed".
fn fingerprint(root: &Path) -> BTreeMap<String, String> {
    let mut out = describe(root);
    out.insert(
        ".".into(),
        format!("{:o}", fs::metadata(root).unwrap().mode() & 0o7777),
    );
    out
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
        0,
        "{}",
        p.display()
    );
}

fn mknod_null(p: &Path) -> bool {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; a character device like /dev/null (root only).
    unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) == 0 }
}

/// A link to somewhere outside: absolute or relative, to a file or a directory.
fn outside_link(rng: &mut Rng, outside: &Path, depth: usize) -> PathBuf {
    let to = match rng.below(3) {
        0 => "secret",
        1 => "dir",
        _ => "dir/inner",
    };
    if rng.chance(50) {
        outside.join(to)
    } else {
        let mut p = PathBuf::new();
        for _ in 0..=depth + 1 {
            p.push("..");
        }
        p.join("outside").join(to)
    }
}

/// Build a hostile tree at `root`: directories up to 4 deep, files, links to outside at
/// every depth, hard links to a file outside, FIFOs and (as root) device files. The paths of
/// its directories, for swaps.
fn hostile_tree(rng: &mut Rng, root: &Path, outside: &Path, log: &mut Vec<String>) -> Vec<PathBuf> {
    let mut dirs = vec![root.to_path_buf()];
    let mut made = Vec::new();
    for i in 0..(3 + rng.below(10)) {
        let parent = dirs[rng.below(dirs.len() as u64) as usize].clone();
        let depth = parent.strip_prefix(root).unwrap().components().count();
        let name = parent.join(format!("e{i}"));
        match rng.below(8) {
            0 | 1 if depth < 4 => {
                fs::create_dir(&name).unwrap();
                dirs.push(name.clone());
                made.push(name);
            }
            0..=2 => {
                let len = rng.below(40_000) as usize;
                fs::write(&name, support::pseudo_random(rng.next(), len)).unwrap();
            }
            3 | 4 => {
                let to = outside_link(rng, outside, depth);
                log.push(format!("link {} -> {}", name.display(), to.display()));
                symlink(&to, &name).unwrap();
            }
            5 => {
                log.push(format!("hard link {} = outside/hard", name.display()));
                fs::hard_link(outside.join("hard"), &name).unwrap();
            }
            6 => {
                log.push(format!("fifo {}", name.display()));
                mkfifo(&name);
            }
            _ => {
                if support::is_root() && mknod_null(&name) {
                    log.push(format!("device {}", name.display()));
                }
            }
        }
    }
    made
}

/// Swap directory `d` for a link to outside (its contents moved aside).
fn swap_for_link(rng: &mut Rng, d: &Path, outside: &Path, aside: &Path, log: &mut Vec<String>) {
    if fs::symlink_metadata(d).is_err() {
        return;
    }
    let to = outside_link(rng, outside, 0);
    let away = aside.join(format!("moved-{}", rng.next()));
    if fs::rename(d, &away).is_ok() && symlink(&to, d).is_ok() {
        log.push(format!("swapped {} -> {}", d.display(), to.display()));
    }
}

/// Over 1,000 seeded cases, a backup of a hostile source never reads outside it (no
/// secret's byte reaches a snapshot), and a restore into a hostile target (links, hard links,
/// FIFOs, devices planted; directories swapped for links during the run) never writes,
/// removes or chmods anything outside it. Each case prints what it tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_trees_never_lead_outside_their_roots() {
    use snapcrypt::engine::backend::{Backend, Location, StoreOptions};
    use snapcrypt::engine::repo::{DEFAULT_CHUNK_SIZE, Repository};
    use snapcrypt::kms::local::LocalKeyManager;

    let cases: u64 = std::env::var("SNAPCRYPT_HOSTILE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let base = tempfile::tempdir().unwrap();
    let km = LocalKeyManager::create(&base.path().join("key.json")).unwrap();
    let backend = Backend::open(
        &Location::Local(base.path().join("repo")),
        &StoreOptions::default(),
        true,
    )
    .unwrap();
    let (mut repo, _) = Repository::open_or_init(backend, &km, DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    let (mut backups_ok, mut backups_refused, mut restores_ok, mut restores_refused) = (0, 0, 0, 0);
    for seed in 1..=cases {
        let mut case = HostileCase::new(base.path(), seed);
        let outside_before = fingerprint(&case.outside);

        // Backup: a hostile source, a directory swapped at a chosen step of the scan.
        let snap = case.backup(&mut repo, &km).await;
        if snap.is_some() {
            backups_ok += 1;
        } else {
            backups_refused += 1;
        }
        println!("{}", case.log.join("\n  "));
        case.log.clear();

        // Restore: the snapshot (or any earlier one) into a hostile target.
        let snap = match snap {
            Some(s) => s,
            None => match repo.snapshots().await.unwrap().pop() {
                Some(s) => s,
                None => continue,
            },
        };
        let probe = base.path().join("probe");
        let (target, result) = case.restore(&repo, &snap, &probe).await;
        match &result {
            Ok(_) => restores_ok += 1,
            Err(e) => {
                restores_refused += 1;
                case.log.push(format!("restore refused: {e}"));
            }
        }
        println!("  {}", case.log.join("\n  "));
        assert_eq!(
            fingerprint(&case.outside),
            outside_before,
            "case {seed}: something outside the roots changed"
        );
        // No secret's byte reached the snapshot: nothing restored holds it.
        if result.is_ok() {
            for f in real_files(&target) {
                {
                    let data = fs::read(&f).unwrap_or_default();
                    assert!(
                        !data.windows(SECRET.len()).any(|w| w == SECRET),
                        "case {seed}: {} holds a secret read from outside the source",
                        f.display()
                    );
                }
            }
        }
        fs::remove_dir_all(&case.dir).unwrap();
    }
    println!(
        "{cases} cases: {backups_ok} backups written, {backups_refused} refused; {restores_ok} restores finished, {restores_refused} refused"
    );
    // Both ways happened: the cases are not all refused (or all harmless).
    assert!(
        backups_ok > cases / 4 && backups_refused > 0,
        "{backups_ok} {backups_refused}"
    );
    assert!(
        restores_ok > cases / 4 && restores_refused > 0,
        "{restores_ok} {restores_refused}"
    );
    // The repository itself is whole after all of it.
    let report = snapcrypt::engine::verify::verify(&repo, None, None)
        .await
        .unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// One seeded case of [`hostile_trees_never_lead_outside_their_roots`]: its directory, the
/// secrets outside its roots, where swapped directories are moved aside, its random choices
/// and what it tried.
struct HostileCase {
    seed: u64,
    rng: Rng,
    log: Vec<String>,
    dir: PathBuf,
    outside: PathBuf,
    aside: PathBuf,
}

impl HostileCase {
    fn new(base: &Path, seed: u64) -> Self {
        let rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let log = vec![format!("case {seed}")];
        let case = base.join(format!("case-{seed}"));
        let outside = case.join("outside");
        fs::create_dir_all(outside.join("dir/inner")).unwrap();
        fs::write(outside.join("secret"), SECRET).unwrap();
        fs::write(outside.join("dir/secret"), SECRET).unwrap();
        fs::write(outside.join("dir/inner/secret"), SECRET).unwrap();
        fs::write(outside.join("hard"), b"hard-linked file outside").unwrap();
        let aside = case.join("aside");
        fs::create_dir_all(&aside).unwrap();
        HostileCase {
            seed,
            rng,
            log,
            dir: case,
            outside,
            aside,
        }
    }

    /// A backup of a hostile source, a directory swapped at a chosen step of the scan, or a
    /// file swapped for a link after it; the snapshot, or None where it was refused.
    async fn backup(
        &mut self,
        repo: &mut snapcrypt::engine::repo::Repository,
        km: &snapcrypt::kms::local::LocalKeyManager,
    ) -> Option<snapcrypt::engine::format::SnapshotManifest> {
        use snapcrypt::engine::backup::{BackupOptions, backup, scan_with};
        use snapcrypt::engine::progress::Progress;

        let (rng, log, outside) = (&mut self.rng, &mut self.log, &self.outside);
        let src = self.dir.join("vol/src");
        fs::create_dir_all(&src).unwrap();
        let dirs = hostile_tree(rng, &src, outside, log);
        let swap_at = (!dirs.is_empty() && rng.chance(60))
            .then(|| dirs[rng.below(dirs.len() as u64) as usize].clone());
        let mut swap_rng = Rng(rng.next() | 1);
        let scanned = scan_with(&src, Some(&self.dir.join("vol")), 100_000, &mut |rel| {
            if let Some(d) = &swap_at
                && src.join(rel) == *d
            {
                swap_for_link(&mut swap_rng, d, outside, &self.aside, log);
            }
        });
        // Or after the scan, before the files are read: a file swapped for a link.
        let file_swap = rng.chance(30);
        let scan = match scanned {
            Err(e) => {
                log.push(format!("scan refused: {e}"));
                return None;
            }
            Ok(scan) => scan,
        };
        if file_swap
            && let Some(f) = scan
                .entries
                .iter()
                .find(|x| x.kind == snapcrypt::engine::format::EntryKind::File)
        {
            let _ = fs::remove_file(&f.abs);
            let _ = symlink(outside.join("secret"), &f.abs);
            log.push(format!("swapped file {} for a link", f.abs.display()));
        }
        match backup(
            repo,
            km,
            scan,
            BackupOptions {
                threads: 2,
                ..Default::default()
            },
            Arc::new(Progress::default()),
        )
        .await
        {
            Ok(m) => Some(m),
            Err(e) => {
                log.push(format!("backup refused: {e}"));
                None
            }
        }
    }

    /// A restore of `snap` into a hostile target (links, hard links and FIFOs planted where
    /// the snapshot has entries, directories swapped for links while it runs); the target and
    /// the restore's result.
    async fn restore(
        &mut self,
        repo: &snapcrypt::engine::repo::Repository,
        snap: &snapcrypt::engine::format::SnapshotManifest,
        probe: &Path,
    ) -> (PathBuf, Result<(), snapcrypt::engine::EngineError>) {
        use snapcrypt::engine::progress::Progress;
        use snapcrypt::engine::restore::{RestoreOptions, restore};

        let vol = self.dir.join("tvol");
        let target = vol.join("target");
        fs::create_dir_all(&target).unwrap();
        let tdirs = self.plant_in_target(repo, snap, &target, probe).await;
        let rng = &mut self.rng;
        let opts = RestoreOptions {
            force: true,
            delete_extra: rng.chance(70),
            check: rng.chance(30),
            threads: 2,
            target_within: Some(vol.clone()),
            ..Default::default()
        };
        self.log.push(format!(
            "restore {} delete_extra={} check={}",
            snap.id, opts.delete_extra, opts.check
        ));
        // A swapper that turns target directories into links to outside while it runs.
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = rng.chance(40).then(|| {
            let (stop, outside, aside) = (stop.clone(), self.outside.clone(), self.aside.clone());
            let mut r = Rng(rng.next() | 1);
            let tdirs = tdirs.clone();
            std::thread::spawn(move || {
                let mut log = Vec::new();
                for d in tdirs.iter().take(3) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    swap_for_link(&mut r, d, &outside, &aside, &mut log);
                }
                log
            })
        });
        let result = restore(repo, snap, &target, opts, Arc::new(Progress::default())).await;
        stop.store(true, Ordering::Relaxed);
        if let Some(h) = swapper {
            self.log.extend(h.join().unwrap());
        }
        (target, result.map(drop))
    }

    /// A hostile tree in `target`, and links, hard links and FIFOs where the snapshot has
    /// entries, at every depth; the target's directories.
    async fn plant_in_target(
        &mut self,
        repo: &snapcrypt::engine::repo::Repository,
        snap: &snapcrypt::engine::format::SnapshotManifest,
        target: &Path,
        probe: &Path,
    ) -> Vec<PathBuf> {
        let (rng, log, outside) = (&mut self.rng, &mut self.log, &self.outside);
        let mut tdirs = hostile_tree(rng, target, outside, log);
        let list = snapshot_paths(repo, snap, probe, self.seed).await;
        for (rel, is_dir) in &list {
            let p = target.join(rel);
            // Only where the test itself reaches without passing through a planted link.
            if fs::symlink_metadata(&p).is_ok() || !real_dirs_down_to(target, rel) {
                continue;
            }
            match rng.below(6) {
                0 => {
                    let to = outside_link(rng, outside, rel.matches('/').count());
                    log.push(format!("planted link {rel} -> {}", to.display()));
                    symlink(&to, &p).unwrap();
                }
                1 if !is_dir => {
                    log.push(format!("planted hard link {rel}"));
                    fs::hard_link(outside.join("hard"), &p).unwrap();
                }
                2 if !is_dir => {
                    log.push(format!("planted fifo {rel}"));
                    mkfifo(&p);
                }
                3 if *is_dir => {
                    fs::create_dir(&p).unwrap();
                    tdirs.push(p);
                }
                _ => {}
            }
        }
        tdirs
    }
}

/// Whether every directory from `root` down to `rel`'s parent is a real one (no link).
fn real_dirs_down_to(root: &Path, rel: &str) -> bool {
    let mut p = root.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for c in &parts[..parts.len() - 1] {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            _ => return false,
        }
    }
    true
}

/// Every regular file under `dir`, never following a link.
fn real_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir").flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// The paths of a snapshot's entries (and whether each is a directory), from a plain
/// restore into a scratch directory.
async fn snapshot_paths(
    repo: &snapcrypt::engine::repo::Repository,
    snap: &snapcrypt::engine::format::SnapshotManifest,
    scratch: &Path,
    seed: u64,
) -> Vec<(String, bool)> {
    use snapcrypt::engine::progress::Progress;
    use snapcrypt::engine::restore::{RestoreOptions, restore};
    let dir = scratch.join(seed.to_string());
    restore(
        repo,
        snap,
        &dir,
        RestoreOptions {
            threads: 1,
            ..Default::default()
        },
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    let out = describe(&dir)
        .into_iter()
        .map(|(k, v)| (k, v.starts_with("dir ")))
        .collect();
    fs::remove_dir_all(&dir).unwrap();
    out
}

/// One damaged index object (a flipped byte) stops nothing: backup, restore and prune read
/// its pack's own blob list instead; verify still names it; `repair index` writes it again
/// from the pack, and then verify reads every pack clean (on 4c5991e every backup, restore
/// and prune failed on it).
#[test]
fn a_damaged_index_object_is_worked_around_and_repaired() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    backup_id(&src, &repo, &key, &[]);
    // The largest index object: the data pack's.
    let damaged = largest_under(&Path::new(&repo).join("index"));
    let mut bytes = fs::read(&damaged).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&damaged, &bytes).unwrap();
    let id = damaged.file_name().unwrap().to_string_lossy().into_owned();

    fs::write(Path::new(&src).join("journal/new-entry"), b"written after").unwrap();
    backup_id(&src, &repo, &key, &[]);
    let out = e.p("out");
    ok(&restore_args(&repo, &key, "latest", &out, &[]), &[]);
    assert_same_tree(Path::new(&src), Path::new(&out));
    ok(
        &repo_args(&["prune"], &repo, &key, &["--keep-last", "5"]),
        &[],
    );
    let err = fails(&repo_args(&["verify"], &repo, &key, &[]), &[]);
    assert!(err.contains(&format!("index/{id}")), "{err}");

    let repair = || {
        ok(
            &repo_args(&["repair", "index"], &repo, &key, &["--json"]),
            &[],
        )
    };
    let said = repair();
    let report: serde_json::Value = serde_json::from_str(&said).unwrap();
    assert_eq!(report["rebuilt"], serde_json::json!([id]), "{said}");
    assert_eq!(report["unreadable"], serde_json::json!([]), "{said}");
    ok(&repo_args(&["verify"], &repo, &key, &["--read-data"]), &[]);
    // A second repair finds nothing to do.
    let said = repair();
    assert!(said.contains("\"rebuilt\": []"), "{said}");
}
