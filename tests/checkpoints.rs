//! Checkpoints (#33): a backup killed part-way (an evicted pod, a lost node) leaves checkpoints
//! of its file list (`checkpoints/`), and the next backup of the same source and host continues
//! from them: it neither reads the files they list again nor stores their chunks again, and
//! what it writes restores bit-exact and verifies with --read-data. Without checkpoints the
//! retry starts over (the control below). Real SIGKILLs of the CLI, a directory repository.

mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::cli::{backup_args, repo_args};
use support::{Env, assert_same_tree, backup_json, bin, files_under, ok, pseudo_random, restore};

/// 40 files of 8 MiB, random: 320 MiB, about ten packs of 32 MiB.
const FILES: u64 = 40;
const FILE_BYTES: usize = 8 << 20;
/// The packs a killed run has stored when it is killed (of about ten).
const KILL_AT_PACKS: usize = 6;

fn source(root: &Path) {
    fs::create_dir_all(root).unwrap();
    for i in 0..FILES {
        fs::write(
            root.join(format!("collection-{i}-7.wt")),
            pseudo_random(700 + i, FILE_BYTES),
        )
        .unwrap();
    }
}

/// Packs of `repo`, and the bytes they hold.
fn packs(repo: &str) -> (usize, u64) {
    let data = Path::new(repo).join("data");
    if !data.is_dir() {
        return (0, 0);
    }
    let files = files_under(&data);
    let bytes = files
        .iter()
        .map(|f| fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    (files.len(), bytes)
}

/// Run `args` and SIGKILL it once `repo` holds [`KILL_AT_PACKS`] packs.
fn kill_after_packs(args: &[&str], repo: &str) {
    let mut child = Command::new(bin())
        .args(args)
        .env_remove("SNAPCRYPT_REPO")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while packs(repo).0 < KILL_AT_PACKS {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup finished before it stored {KILL_AT_PACKS} packs: a bigger source is needed"
        );
        assert!(
            Instant::now() < deadline,
            "no {KILL_AT_PACKS} packs within 300 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// What a killed run and its retry stored, against a clean run of the same source.
struct Outcome {
    killed_packs: usize,
    killed_bytes: u64,
    retry_packs: usize,
    /// Bytes stored twice: the killed run's and the retry's together, past a clean run's.
    stored_again: i64,
    /// Chunks the retry read and looked up, of the source's.
    retry_chunks: u64,
}

/// Kill a backup of `src` into `repo` after [`KILL_AT_PACKS`] packs, then run it again.
fn kill_and_retry(e: &Env, src: &str, repo: &str, every: &str, clean_bytes: u64) -> Outcome {
    let key = e.key();
    let args = backup_args(src, repo, &key, &["--checkpoint-every", every]);
    kill_after_packs(&args, repo);
    let (killed_packs, killed_bytes) = packs(repo);
    // The killed run's lock goes stale at once here (as after a lost pod's lease).
    let env = [("SNAPCRYPT_LOCK_STALE_SECS", "1")];
    let retry = backup_json(src, repo, &key, &["--checkpoint-every", every], &env);
    let (all_packs, all_bytes) = packs(repo);
    let out = e.p(&format!("restored-{every}"));
    restore(repo, &key, retry["id"].as_str().unwrap(), &out, &env);
    assert_same_tree(Path::new(src), Path::new(&out));
    ok(&repo_args(&["verify"], repo, &key, &["--read-data"]), &env);
    Outcome {
        killed_packs,
        killed_bytes,
        retry_packs: all_packs - killed_packs,
        stored_again: all_bytes as i64 - clean_bytes as i64,
        retry_chunks: retry["chunks_looked_up"].as_u64().unwrap(),
    }
}

#[test]
fn a_backup_killed_after_n_packs_is_continued_not_started_over() {
    let e = Env::new();
    let src = e.p("src");
    source(Path::new(&src));
    let clean = e.p("clean");
    backup_json(&src, &clean, &e.key(), &[], &[]);
    let (_, clean_bytes) = packs(&clean);
    let chunks = FILES * (FILE_BYTES as u64 / (16 << 10));

    // Checkpointed after every entry of the file list.
    let repo = e.p("repo");
    let o = kill_and_retry(&e, &src, &repo, "0s", clean_bytes);
    eprintln!(
        "checkpoints: killed after {} packs ({} bytes); the retry stored {} packs, {} bytes stored twice, read {} of {chunks} chunks",
        o.killed_packs, o.killed_bytes, o.retry_packs, o.stored_again, o.retry_chunks
    );
    // Fewer than N packs' worth stored again: what was in flight at the kill (each worker's
    // open pack, up to 32 MiB) and nothing the checkpoints name. Without them (below), all N.
    let pack = 32i64 << 20;
    assert!(
        o.stored_again * 2 < o.killed_bytes as i64,
        "{} bytes ({:.1} packs) of the killed run's {} ({} packs) were stored again",
        o.stored_again,
        o.stored_again as f64 / pack as f64,
        o.killed_bytes,
        o.killed_packs
    );
    assert!(
        o.retry_chunks * 4 < chunks * 3,
        "the retry read {} of {chunks} chunks: it read the finished files again",
        o.retry_chunks
    );
    // Spent: the retry deleted the killed run's checkpoints and its own.
    let left = files_under(&Path::new(&repo).join("checkpoints"));
    assert!(left.is_empty(), "checkpoints left: {left:?}");

    // The control: with checkpoints off, the same kill starts the retry over.
    let off = e.p("repo-off");
    let o = kill_and_retry(&e, &src, &off, "off", clean_bytes);
    eprintln!(
        "no checkpoints: killed after {} packs ({} bytes); the retry stored {} packs, {} bytes stored twice, read {} of {chunks} chunks",
        o.killed_packs, o.killed_bytes, o.retry_packs, o.stored_again, o.retry_chunks
    );
    assert!(o.stored_again * 4 >= o.killed_bytes as i64 * 3);
    assert!(o.retry_chunks >= chunks, "{} of {chunks}", o.retry_chunks);
}

/// A killed run's checkpoints are kept for a retry until prune's grace has passed, then
/// deleted by prune (`checkpoints_deleted`); a retry after that starts over and is exact.
#[test]
fn prune_deletes_checkpoints_past_the_grace() {
    let e = Env::new();
    let (src, repo, key) = (e.p("src"), e.p("repo"), e.key());
    source(Path::new(&src));
    let env = [("SNAPCRYPT_LOCK_STALE_SECS", "1")];
    kill_after_packs(
        &backup_args(&src, &repo, &key, &["--checkpoint-every", "0s"]),
        &repo,
    );
    let cps = Path::new(&repo).join("checkpoints");
    assert!(
        !files_under(&cps).is_empty(),
        "the killed run left no checkpoint"
    );
    let prune = |after: &str| -> serde_json::Value {
        let out = ok(
            &repo_args(
                &["prune"],
                &repo,
                &key,
                &["--keep-last", "1", "--delete-after", after, "--json"],
            ),
            &env,
        );
        serde_json::from_str(out.trim()).unwrap()
    };
    assert_eq!(
        prune("1h")["checkpoints_deleted"],
        0,
        "young checkpoints are kept"
    );
    assert!(!files_under(&cps).is_empty());
    assert!(prune("0s")["checkpoints_deleted"].as_u64().unwrap() > 0);
    assert!(files_under(&cps).is_empty());
    let id = backup_json(&src, &repo, &key, &[], &env)["id"]
        .as_str()
        .unwrap()
        .to_string();
    restore(&repo, &key, &id, &e.p("out"), &env);
    assert_same_tree(Path::new(&src), Path::new(&e.p("out")));
}
