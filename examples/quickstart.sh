#!/usr/bin/env bash
# The main job, on a laptop with no cluster: build snapcrypt, make a sample MongoDB-like dbPath,
# take an encrypted snapshot of it with the built-in default key store (a local key file,
# created on first use), and list the repository. Prints the restore command to try next.
#
# Everything lands under ${QUICKSTART_DIR:-/tmp/snapcrypt-quickstart}; the key file goes to
# $QUICKSTART_DIR/key.json (pass SNAPCRYPT_KEY_FILE to use another, e.g. ~/.config/snapcrypt/key.json).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${QUICKSTART_DIR:-/tmp/snapcrypt-quickstart}
export SNAPCRYPT_KEY_FILE=${SNAPCRYPT_KEY_FILE:-$DIR/key.json}
mkdir -p "$DIR"

echo "== building snapcrypt (release)"
cargo build --release --quiet
SC=$PWD/target/release/snapcrypt

if [ ! -d "$DIR/dbpath" ]; then
  echo "== making a sample 64 MiB dbPath in $DIR/dbpath"
  python3 bench/gen_dbpath.py make "$DIR/dbpath" 64
fi

echo "== snapcrypt backup --source $DIR/dbpath --repo $DIR/repo"
"$SC" backup --source "$DIR/dbpath" --repo "$DIR/repo" --tag example=quickstart

echo "== snapcrypt snapshots --repo $DIR/repo"
"$SC" snapshots --repo "$DIR/repo"

cat <<NEXT

Next, restore the newest snapshot and compare it with the source:

  export SNAPCRYPT_KEY_FILE=$SNAPCRYPT_KEY_FILE
  $SC restore --repo $DIR/repo --snapshot latest --target $DIR/restored
  diff -r $DIR/dbpath $DIR/restored && echo identical

and check every object of the repository:

  $SC verify --repo $DIR/repo --read-data
NEXT
