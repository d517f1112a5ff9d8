#!/usr/bin/env python3
"""GCS XML-write bridge in front of fake-gcs-server (tests only; Python standard library only).

    xml-bridge.py LISTEN_PORT UPSTREAM_PORT [UPLOADS_DIR]

Why: object_store 0.14 writes to GCS with the XML API (`PUT /BUCKET/OBJECT`, with
`x-goog-if-generation-match` for create-only and compare-and-swap puts, and XML multipart
uploads); fake-gcs-server 1.54.0 has none of that (400 "invalid uploadType"), but its JSON
`uploadType=multipart` upload honours `ifGenerationMatch` atomically (412 when it fails).

What: an HTTP server on 127.0.0.1:LISTEN_PORT in front of fake-gcs-server on
127.0.0.1:UPSTREAM_PORT that changes only the wire form of writes:
  - XML `PUT /B/O` (no uploadId/partNumber/x-goog-copy-source) -> JSON multipart upload
    (`ifGenerationMatch` from the header), answered the XML way: 200 with `ETag` (the value
    GET gives) and `x-goog-generation`, or the upstream's status (412) with an XML `<Error>`.
  - XML multipart: `POST ?uploads` hands out an UploadId; `PUT ?partNumber=N&uploadId=ID`
    keeps the part in UPLOADS_DIR/ID/ (ETag = quoted MD5 hex); `POST ?uploadId=ID` sends the
    listed parts, in order, as one JSON multipart upload (with the generation-match header if
    any); `DELETE ?uploadId=ID` drops the parts (204).
Everything else (reads, ranges, listing, deletes, JSON API, XML copy) passes through unchanged
but for `Host` (set to the upstream's: fake-gcs-server routes on it) and hop-by-hop headers.
Bodies are streamed. All data is stored and served by fake-gcs-server. Requests need a
Content-Length (object_store always sends one); a chunked request gets 411.
"""
import hashlib
import http.client
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import escape

UPSTREAM = 0  # set in main
UPLOADS = ""
CHUNK = 1 << 20
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
       "upgrade", "host", "expect"}
JSON_PREFIXES = {"", "storage", "upload", "download", "batch", "_internal"}
XML_ERROR_CODES = {400: "InvalidArgument", 404: "NoSuchKey", 409: "Conflict",
                   412: "PreconditionFailed"}


def upstream(method, target, headers, body=()):
    """Send one request to fake-gcs-server (body streamed); return (connection, response)."""
    conn = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=600)
    conn.putrequest(method, target, skip_accept_encoding=True)  # Host: the upstream's
    for k, v in headers:
        conn.putheader(k, v)
    conn.endheaders()
    broken = False
    for block in body:  # always drain `body`: it may be the client's request body
        try:
            broken or conn.send(block)
        except OSError:  # the upstream answered early and closed; read its answer below
            broken = True
    return conn, conn.getresponse()


def object_meta(headers, name):
    """JSON object metadata from the XML request headers."""
    meta = {"name": name, "contentType": headers.get("Content-Type") or "application/octet-stream"}
    for header, key in (("Cache-Control", "cacheControl"), ("Content-Encoding", "contentEncoding"),
                        ("Content-Disposition", "contentDisposition"),
                        ("Content-Language", "contentLanguage"),
                        ("x-goog-storage-class", "storageClass")):
        if headers.get(header):
            meta[key] = headers[header]
    custom = {k.lower()[len("x-goog-meta-"):]: v for k, v in headers.items()
              if k.lower().startswith("x-goog-meta-")}
    if custom:
        meta["metadata"] = custom
    return meta


def json_upload(bucket, meta, chunks, length, generation):
    """Upload with `uploadType=multipart`; return (status, object resource or error message)."""
    b = "gcs-xml-bridge-" + uuid.uuid4().hex
    head = (f"--{b}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{json.dumps(meta)}\r\n"
            f"--{b}\r\nContent-Type: {meta['contentType']}\r\n\r\n").encode()
    tail = f"\r\n--{b}--\r\n".encode()
    target = (f"/upload/storage/v1/b/{quote(bucket, safe='')}/o?uploadType=multipart"
              f"&name={quote(meta['name'], safe='')}")
    if generation is not None:
        target += "&ifGenerationMatch=" + quote(generation, safe="")
    headers = [("Content-Type", f"multipart/related; boundary={b}"),
               ("Content-Length", str(len(head) + length + len(tail)))]
    conn, resp = upstream("POST", target, headers, itertools.chain([head], chunks, [tail]))
    data = resp.read()
    conn.close()
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if resp.status == 200 and isinstance(doc, dict):
        return 200, doc
    message = doc.get("error", {}).get("message") if isinstance(doc, dict) else None
    return (resp.status if resp.status != 200 else 502), (
        message or data.decode("utf-8", "replace") or resp.reason)


def result_headers(obj):
    return [("ETag", f'"{obj["etag"]}"'), ("x-goog-generation", str(obj["generation"])),
            ("x-goog-metageneration", str(obj.get("metageneration", "1"))),
            ("x-goog-hash", f"crc32c={obj.get('crc32c', '')},md5={obj.get('md5Hash', '')}")]


def read_files(paths):
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                yield block


class Bridge(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: only errors go to stderr (log_error)
        pass

    def body(self):
        """The request body, streamed."""
        left = int(self.headers.get("Content-Length", 0))
        while left:
            block = self.rfile.read(min(left, CHUNK))
            if not block:
                raise ConnectionError("request body cut short")
            left -= len(block)
            yield block

    def drain(self):
        for _ in self.body():
            pass

    def reply(self, status, headers=(), body=b""):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def xml(self, status, root, fields, headers=()):
        inner = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in fields)
        body = f"<?xml version='1.0' encoding='UTF-8'?><{root}>{inner}</{root}>".encode()
        self.reply(status, [("Content-Type", "application/xml; charset=UTF-8"), *headers], body)

    def error(self, status, message, code=None):
        self.xml(status, "Error", [("Code", code or XML_ERROR_CODES.get(status, "InternalError")),
                                   ("Message", message)])

    def handle_any(self):
        url = urlsplit(self.path)
        q = parse_qs(url.query, keep_blank_values=True)
        segments = url.path.split("/", 2)
        xml_object = (len(segments) == 3 and segments[2] != ""
                      and segments[1] not in JSON_PREFIXES and "X-Goog-Algorithm" not in q)
        try:
            if "Transfer-Encoding" in self.headers:
                self.close_connection = True
                return self.error(411, "send a Content-Length", "MissingContentLength")
            if xml_object:
                bucket, name = unquote(segments[1]), unquote(segments[2])
                upload = q.get("uploadId", [None])[0]
                cmd = self.command
                if cmd == "PUT" and upload is None and "partNumber" not in q \
                        and "x-goog-copy-source" not in self.headers:
                    return self.put_object(bucket, name)
                if cmd == "POST" and "uploads" in q:
                    return self.initiate(bucket, name)
                if upload is not None and cmd in ("PUT", "POST", "DELETE"):
                    d = os.path.join(UPLOADS, upload)
                    if not re.fullmatch(r"[0-9a-f]{32}", upload) or not os.path.isdir(d):
                        self.drain()
                        return self.error(404, "No such upload: " + upload, "NoSuchUpload")
                    if cmd == "PUT":
                        return self.put_part(d, q.get("partNumber", [""])[0])
                    if cmd == "POST":
                        return self.complete(d, bucket, name)
                    self.drain()
                    shutil.rmtree(d, ignore_errors=True)
                    return self.reply(204)
            self.pass_through()
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True
        except Exception as e:  # keep serving; tell the client
            self.log_error("%s %s: %r", self.command, self.path, e)
            self.close_connection = True
            try:
                self.error(502, f"xml-bridge: {e!r}", "BridgeError")
            except OSError:
                pass

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = handle_any

    def pass_through(self):
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP]
        conn, resp = upstream(self.command, self.path, headers, self.body())
        self.send_response_only(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in HOP:
                self.send_header(k, v)
        has_body = self.command != "HEAD" and resp.status >= 200 and resp.status not in (204, 304)
        rechunk = has_body and resp.getheader("Content-Length") is None
        if rechunk:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while has_body and (block := resp.read(CHUNK)):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if rechunk else block)
        if rechunk:
            self.wfile.write(b"0\r\n\r\n")
        conn.close()

    def upload(self, bucket, meta, chunks, length):
        status, obj = json_upload(bucket, meta, chunks, length,
                                  self.headers.get("x-goog-if-generation-match"))
        if status != 200:
            self.error(status, obj)
            return None
        return obj

    def put_object(self, bucket, name):
        obj = self.upload(bucket, object_meta(self.headers, name), self.body(),
                          int(self.headers.get("Content-Length", 0)))
        if obj is not None:
            self.reply(200, result_headers(obj))

    def initiate(self, bucket, name):
        self.drain()
        upload = uuid.uuid4().hex
        os.makedirs(os.path.join(UPLOADS, upload))
        with open(os.path.join(UPLOADS, upload, "meta.json"), "w") as f:
            json.dump(object_meta(self.headers, name), f)
        self.xml(200, "InitiateMultipartUploadResult",
                 [("Bucket", bucket), ("Key", name), ("UploadId", upload)])

    def put_part(self, d, number):
        if not number.isdigit() or not 1 <= int(number) <= 10000:
            self.drain()
            return self.error(400, "partNumber must be 1..10000")
        md5 = hashlib.md5()
        fd, tmp = tempfile.mkstemp(dir=d, prefix="tmp-")
        with os.fdopen(fd, "wb") as f:
            for block in self.body():
                md5.update(block)
                f.write(block)
        # One file per (number, content): a re-sent part leaves the older one unused.
        os.replace(tmp, os.path.join(d, f"{int(number):05d}-{md5.hexdigest()}"))
        self.reply(200, [("ETag", f'"{md5.hexdigest()}"')])

    def complete(self, d, bucket, name):
        root = ET.fromstring(b"".join(self.body()))
        for el in root.iter():
            el.tag = el.tag.rsplit("}", 1)[-1]
        parts = [(int(p.findtext("PartNumber")), p.findtext("ETag").strip().strip('"'))
                 for p in root.iter("Part")]
        if not parts or [n for n, _ in parts] != sorted({n for n, _ in parts}):
            return self.error(400, "parts must be listed once, ascending", "InvalidPartOrder")
        paths = [os.path.join(d, f"{n:05d}-{etag}") for n, etag in parts]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            return self.error(400, "no such part: " + os.path.basename(missing[0]), "InvalidPart")
        with open(os.path.join(d, "meta.json")) as f:
            meta = json.load(f)
        obj = self.upload(bucket, meta, read_files(paths), sum(os.path.getsize(p) for p in paths))
        if obj is not None:
            shutil.rmtree(d, ignore_errors=True)
            self.xml(200, "CompleteMultipartUploadResult",
                     [("Bucket", bucket), ("Key", name), ("ETag", f'"{obj["etag"]}"')],
                     result_headers(obj))


def main():
    global UPSTREAM, UPLOADS
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: xml-bridge.py LISTEN_PORT UPSTREAM_PORT [UPLOADS_DIR]")
    listen, UPSTREAM = int(sys.argv[1]), int(sys.argv[2])
    UPLOADS = sys.argv[3] if len(sys.argv) == 4 else tempfile.mkdtemp(prefix="gcs-xml-bridge-")
    os.makedirs(UPLOADS, exist_ok=True)
    server = ThreadingHTTPServer(("127.0.0.1", listen), Bridge)
    server.daemon_threads = True
    print(f"GCS XML BRIDGE READY 127.0.0.1:{listen} -> 127.0.0.1:{UPSTREAM}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
