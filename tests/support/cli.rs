//! Builders of the snapcrypt command lines the tests run again and again, for
//! [`super::ok`], [`super::fails`], [`super::run`] and the like: each gives the words of one
//! command, the flags every test passes in the same order, then `more`.
#![allow(dead_code)]

/// `backup --source SRC --repo REPO --key-file KEY`, then `more`.
pub fn backup_args<'a>(
    src: &'a str,
    repo: &'a str,
    key: &'a str,
    more: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["backup", "--source", src, "--repo", repo, "--key-file", key];
    args.extend_from_slice(more);
    args
}

/// `restore --repo REPO --key-file KEY --snapshot SNAPSHOT --target TARGET`, then `more`.
pub fn restore_args<'a>(
    repo: &'a str,
    key: &'a str,
    snapshot: &'a str,
    target: &'a str,
    more: &[&'a str],
) -> Vec<&'a str> {
    let mut args = repo_args(
        &["restore"],
        repo,
        key,
        &["--snapshot", snapshot, "--target", target],
    );
    args.extend_from_slice(more);
    args
}

/// `COMMAND --repo REPO --key-file KEY`, then `more`: `snapshots`, `verify`, `prune`, `key
/// rotate`, ... of a repository whose key is in a key file.
pub fn repo_args<'a>(
    command: &[&'a str],
    repo: &'a str,
    key: &'a str,
    more: &[&'a str],
) -> Vec<&'a str> {
    let mut args = command.to_vec();
    args.extend(["--repo", repo, "--key-file", key]);
    args.extend_from_slice(more);
    args
}

/// `copy --from FROM --key-file KEY --to TO --to-key-file TO_KEY`, then `more`.
pub fn copy_args<'a>(
    from: &'a str,
    key: &'a str,
    to: &'a str,
    to_key: &'a str,
    more: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "copy",
        "--from",
        from,
        "--key-file",
        key,
        "--to",
        to,
        "--to-key-file",
        to_key,
    ];
    args.extend_from_slice(more);
    args
}
