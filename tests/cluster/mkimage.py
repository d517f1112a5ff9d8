#!/usr/bin/env python3
"""Write a one-layer container image as a docker-archive tar (what `ctr images import` and
`docker load` read), with no registry and no base image: the layer holds exactly the files
named on the command line.

    mkimage.py OUT.tar NAME:TAG --file HOST_PATH=IMAGE_PATH [--file ...] [--dir IMAGE_PATH ...]
               [--entrypoint ARG ...] [--user UID:GID] [--workdir DIR] [--label KEY=VALUE ...]

Files keep their mode; owners are root. Used for the snapcrypt test image (the same entrypoint,
user and files as the Dockerfile's final stage: tests/README.md) and the pause image.
"""
import argparse
import hashlib
import io
import json
import os
import tarfile


def layer_tar(files, dirs):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        made = set()

        def mkdirs(path):
            parts = path.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d and d not in made:
                    info = tarfile.TarInfo(d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
                    made.add(d)

        for d in dirs:
            mkdirs(d.rstrip("/") + "/x")
        for host, image in files:
            mkdirs(image)
            host = os.path.realpath(host)  # a library named through a link: its file
            info = tar.gettarinfo(host, arcname=image.strip("/"))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(host, "rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("name")
    ap.add_argument("--file", action="append", default=[])
    ap.add_argument("--dir", action="append", default=[])
    ap.add_argument("--entrypoint", nargs="+", default=[])
    ap.add_argument("--user", default="")
    ap.add_argument("--workdir", default="/")
    ap.add_argument("--label", action="append", default=[])
    a = ap.parse_args()
    files = [tuple(f.split("=", 1)) for f in a.file]
    layer = layer_tar(files, a.dir)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": a.entrypoint or None,
            "User": a.user,
            "WorkingDir": a.workdir,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "Labels": dict(l.split("=", 1) for l in a.label) or None,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "tests/cluster/mkimage.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = hashlib.sha256(layer).hexdigest() + "/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [a.name], "Layers": [layer_name]}]
    tmp = a.out + ".tmp"
    with tarfile.open(tmp, mode="w") as out:
        for name, data in (
            (config_name, config_bytes),
            (layer_name, layer),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            out.addfile(info, io.BytesIO(data))
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
