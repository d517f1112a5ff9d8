#!/usr/bin/env python3
"""Create a blob container in Azurite, signed with Shared Key (standard library only).

    create-container.py ENDPOINT CONTAINER

ENDPOINT is Azurite's blob endpoint, e.g. http://127.0.0.1:10000 (path-style: the account
is the first path segment). Account devstoreaccount1 with the well-known emulator key.
Exit 0 when the container was created (201) or already exists (409 ContainerAlreadyExists),
else 1 with the response on stderr.

`signed_request(method, endpoint, path, query, headers, body)` is reusable for other
Shared Key requests (the probes in tests/services/README.md used it).
"""

import base64
import email.utils
import hashlib
import hmac
import sys
import urllib.error
import urllib.parse
import urllib.request

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
VERSION = "2021-08-06"


def signed_request(method, endpoint, path, query=None, headers=None, body=b""):
    """Send `method` to ENDPOINT/ACCOUNT/PATH?QUERY with Shared Key; returns (status, headers, body)."""
    query = dict(query or {})
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    headers.setdefault("x-ms-date", email.utils.formatdate(usegmt=True))
    headers.setdefault("x-ms-version", VERSION)
    if method in ("PUT", "POST"):
        # urllib would add a form Content-Type, which is part of the signature.
        headers.setdefault("content-type", "application/octet-stream")
    if body:
        headers["content-length"] = str(len(body))
    uri_path = "/" + ACCOUNT + "/" + path.lstrip("/")
    std = [
        "content-encoding", "content-language", "content-length", "content-md5",
        "content-type", "date", "if-modified-since", "if-match", "if-none-match",
        "if-unmodified-since", "range",
    ]
    canon_headers = "".join(
        f"{k}:{headers[k].strip()}\n" for k in sorted(h for h in headers if h.startswith("x-ms-"))
    )
    canon_resource = "/" + ACCOUNT + urllib.parse.quote(uri_path)
    for k in sorted(query, key=str.lower):
        canon_resource += f"\n{k.lower()}:{query[k]}"
    to_sign = "\n".join([method] + [headers.get(h, "") for h in std]) + "\n" + canon_headers + canon_resource
    sig = base64.b64encode(
        hmac.new(base64.b64decode(KEY), to_sign.encode(), hashlib.sha256).digest()
    ).decode()
    headers["authorization"] = f"SharedKey {ACCOUNT}:{sig}"
    url = endpoint.rstrip("/") + urllib.parse.quote(uri_path)
    if query:
        url += "?" + urllib.parse.urlencode(query)
    req = urllib.request.Request(url, data=body if method in ("PUT", "POST") else None,
                                 method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: create-container.py ENDPOINT CONTAINER")
    endpoint, container = sys.argv[1], sys.argv[2]
    status, headers, body = signed_request("PUT", endpoint, container, {"restype": "container"})
    if status == 201 or (status == 409 and headers.get("x-ms-error-code") == "ContainerAlreadyExists"):
        return
    sys.stderr.write(f"create-container.py: PUT {container}: {status} {headers}\n{body.decode(errors='replace')}\n")
    sys.exit(1)


if __name__ == "__main__":
    main()
