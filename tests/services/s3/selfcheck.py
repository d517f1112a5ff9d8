"""Prove a running S3 test server works, with boto3, and record what it supports.

    python selfcheck.py ENDPOINT ACCESS_KEY SECRET_KEY [--name LABEL] [--no-auth-check]

Core checks (must pass): CreateBucket, PutObject, GetObject (+Range), HeadObject,
ListObjectsV2 (prefix, delimiter, pagination), CopyObject, DeleteObject(s), and a
3-part multipart upload (Create/UploadPart/Complete) plus an aborted one.
Probes (reported as "info", never fail the run): conditional PUT If-None-Match: *
and If-Match, ListMultipartUploads, ListParts, GetObject If-None-Match,
default-on flexible checksums (aws-chunked trailer), wrong secret key.

Prints "s3 selfcheck (LABEL): N passed, 0 failed" at the end; exit 0 when all core
checks passed.
"""
import argparse
import hashlib
import os
import sys
import traceback
import uuid

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError

RESULTS = []


def check(name, fn):
    try:
        info = fn()
        RESULTS.append((name, True))
        print("ok   %s%s" % (name, (": %s" % (info,)) if info is not None else ""), flush=True)
    except Exception as e:  # noqa: BLE001
        RESULTS.append((name, False))
        print("FAIL %s: %r" % (name, e), flush=True)
        traceback.print_exc()


def probe(name, fn):
    try:
        info = fn()
    except Exception as e:  # noqa: BLE001
        info = "raised %r" % (e,)
    print("info %s: %s" % (name, info), flush=True)


def err(e):
    r = e.response
    return "HTTP %s %s" % (r.get("ResponseMetadata", {}).get("HTTPStatusCode"),
                           r.get("Error", {}).get("Code"))


def client(endpoint, ak, sk, checksums="when_required"):
    cfg = dict(
        s3={"addressing_style": "path"},
        retries={"max_attempts": 1},
        connect_timeout=5,
        read_timeout=30,
    )
    # botocore >= 1.36 adds CRC checksums (aws-chunked with a trailer) to every
    # upload by default; "when_required" turns that off. Probed separately below.
    cfg["request_checksum_calculation"] = checksums
    cfg["response_checksum_validation"] = checksums
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=ak, aws_secret_access_key=sk,
        region_name="us-east-1", config=Config(**cfg))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("endpoint")
    ap.add_argument("access_key")
    ap.add_argument("secret_key")
    ap.add_argument("--name", default="s3")
    ap.add_argument("--no-auth-check", action="store_true",
                    help="server does not check signatures (moto): skip the wrong-key probe")
    a = ap.parse_args()
    s3 = client(a.endpoint, a.access_key, a.secret_key)
    bucket = "snapcrypt-selfcheck-" + uuid.uuid4().hex[:8]
    print("botocore %s, endpoint %s, bucket %s" % (botocore.__version__, a.endpoint, bucket))

    check("CreateBucket", lambda: s3.create_bucket(Bucket=bucket) and None)
    check("ListBuckets contains it",
          lambda: [b["Name"] for b in s3.list_buckets()["Buckets"]].count(bucket) == 1 or 1 / 0)
    check("HeadBucket", lambda: s3.head_bucket(Bucket=bucket) and None)

    body = os.urandom(100_000)

    def put_get():
        r = s3.put_object(Bucket=bucket, Key="data/obj1", Body=body)
        etag = r["ETag"]
        g = s3.get_object(Bucket=bucket, Key="data/obj1")
        assert g["Body"].read() == body
        assert g["ContentLength"] == len(body)
        h = s3.head_object(Bucket=bucket, Key="data/obj1")
        assert h["ContentLength"] == len(body), h
        return "ETag %s (md5 %s)" % (etag, hashlib.md5(body).hexdigest() == etag.strip('"'))
    check("PutObject/GetObject/HeadObject", put_get)

    def range_get():
        g = s3.get_object(Bucket=bucket, Key="data/obj1", Range="bytes=10-19")
        assert g["Body"].read() == body[10:20]
        return "HTTP %s" % g["ResponseMetadata"]["HTTPStatusCode"]
    check("GetObject Range", range_get)

    def missing():
        try:
            s3.get_object(Bucket=bucket, Key="nope")
        except ClientError as e:
            assert e.response["Error"]["Code"] in ("NoSuchKey", "404"), err(e)
            try:
                s3.head_object(Bucket=bucket, Key="nope")
            except ClientError as e2:
                return "GET %s, HEAD %s" % (err(e), err(e2))
        raise AssertionError("missing key found")
    check("GetObject/HeadObject missing key -> 404", missing)

    def listing():
        for i in range(5):
            s3.put_object(Bucket=bucket, Key="snap/%d" % i, Body=b"x%d" % i)
        s3.put_object(Bucket=bucket, Key="snap/sub/a", Body=b"a")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="snap/")["Contents"]]
        assert sorted(keys) == keys and len(keys) == 6, keys
        d = s3.list_objects_v2(Bucket=bucket, Prefix="snap/", Delimiter="/")
        assert [p["Prefix"] for p in d.get("CommonPrefixes", [])] == ["snap/sub/"], d
        pages, token, got = 0, None, []
        while True:
            kw = dict(Bucket=bucket, Prefix="snap/", MaxKeys=2)
            if token:
                kw["ContinuationToken"] = token
            p = s3.list_objects_v2(**kw)
            pages += 1
            got += [o["Key"] for o in p.get("Contents", [])]
            if not p.get("IsTruncated"):
                break
            token = p["NextContinuationToken"]
        assert got == keys, got
        return "%d keys sorted, delimiter ok, %d pages of 2" % (len(keys), pages)
    check("ListObjectsV2 prefix/delimiter/pagination", listing)

    def copy():
        s3.copy_object(Bucket=bucket, Key="data/copy", CopySource={"Bucket": bucket, "Key": "data/obj1"})
        assert s3.get_object(Bucket=bucket, Key="data/copy")["Body"].read() == body
    check("CopyObject", copy)

    def delete():
        s3.delete_object(Bucket=bucket, Key="data/copy")
        r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "snap/%d" % i} for i in range(5)]})
        deleted = len(r.get("Deleted", []))
        left = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="snap/").get("Contents", [])]
        assert left == ["snap/sub/a"], left
        s3.delete_object(Bucket=bucket, Key="never-existed")  # idempotent
        return "DeleteObjects deleted %d; deleting a missing key is OK" % deleted
    check("DeleteObject/DeleteObjects", delete)

    parts_data = [os.urandom(5 * 1024 * 1024), os.urandom(5 * 1024 * 1024), os.urandom(1234)]
    mp = {}

    def multipart():
        up = s3.create_multipart_upload(Bucket=bucket, Key="big/obj")
        mp["id"] = up["UploadId"]
        parts = []
        for n, d in enumerate(parts_data, 1):
            r = s3.upload_part(Bucket=bucket, Key="big/obj", UploadId=up["UploadId"], PartNumber=n, Body=d)
            parts.append({"PartNumber": n, "ETag": r["ETag"]})
        mp["parts"] = parts
        c = s3.complete_multipart_upload(Bucket=bucket, Key="big/obj", UploadId=up["UploadId"],
                                         MultipartUpload={"Parts": parts})
        got = s3.get_object(Bucket=bucket, Key="big/obj")["Body"].read()
        assert got == b"".join(parts_data)
        return "3 parts (5 MiB, 5 MiB, 1234 B), ETag %s" % c.get("ETag")
    check("Multipart upload", multipart)

    def abort():
        up = s3.create_multipart_upload(Bucket=bucket, Key="big/aborted")
        s3.upload_part(Bucket=bucket, Key="big/aborted", UploadId=up["UploadId"], PartNumber=1, Body=b"x" * 100)
        s3.abort_multipart_upload(Bucket=bucket, Key="big/aborted", UploadId=up["UploadId"])
        try:
            s3.head_object(Bucket=bucket, Key="big/aborted")
        except ClientError:
            return None
        raise AssertionError("aborted upload produced an object")
    check("AbortMultipartUpload", abort)

    # ---- probes --------------------------------------------------------------
    def list_uploads():
        up = s3.create_multipart_upload(Bucket=bucket, Key="big/pending")
        try:
            r = s3.list_multipart_uploads(Bucket=bucket)
            return "supported: %r" % [u["Key"] for u in r.get("Uploads", [])]
        except ClientError as e:
            return "NOT supported (%s)" % err(e)
        finally:
            s3.abort_multipart_upload(Bucket=bucket, Key="big/pending", UploadId=up["UploadId"])
    probe("ListMultipartUploads", list_uploads)

    def list_parts():
        up = s3.create_multipart_upload(Bucket=bucket, Key="big/parts")
        try:
            s3.upload_part(Bucket=bucket, Key="big/parts", UploadId=up["UploadId"], PartNumber=1, Body=b"y" * 10)
            r = s3.list_parts(Bucket=bucket, Key="big/parts", UploadId=up["UploadId"])
            return "supported: %d part(s)" % len(r.get("Parts", []))
        except ClientError as e:
            return "NOT supported (%s)" % err(e)
        finally:
            s3.abort_multipart_upload(Bucket=bucket, Key="big/parts", UploadId=up["UploadId"])
    probe("ListParts", list_parts)

    def if_none_match_put():
        key = "locks/lock-" + uuid.uuid4().hex[:6]
        out = []
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=b"first", IfNoneMatch="*")
            out.append("create-if-absent: 200")
        except ClientError as e:
            out.append("create-if-absent: %s" % err(e))
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=b"second", IfNoneMatch="*")
            out.append("second put: 200 (NOT enforced)")
        except ClientError as e:
            out.append("second put: %s" % err(e))
        final = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        out.append("object now %r" % final)
        enforced = final == b"first" and "412" in out[1]
        return ("ENFORCED; " if enforced else "NOT ENFORCED; ") + "; ".join(out)
    probe("PutObject If-None-Match: * (create-only lock)", if_none_match_put)

    def if_none_match_race():
        import threading
        rounds, racers, multi, most = 20, 8, 0, 0
        clients = [client(a.endpoint, a.access_key, a.secret_key) for _ in range(racers)]
        for r in range(rounds):
            key = "locks/race-%d-%s" % (r, uuid.uuid4().hex[:6])
            wins = []
            barrier = threading.Barrier(racers)

            def racer(i):
                barrier.wait()
                try:
                    clients[i].put_object(Bucket=bucket, Key=key, Body=b"owner %d" % i, IfNoneMatch="*")
                    wins.append(i)
                except ClientError:
                    pass
            ts = [threading.Thread(target=racer, args=(i,)) for i in range(racers)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            if len(wins) != 1:
                multi += 1
            most = max(most, len(wins))
        return "%d racers x %d rounds: %d round(s) with != 1 winner, at most %d winners (%s)" % (
            racers, rounds, multi, most, "no race seen" if multi == 0 else "NOT atomic")
    probe("PutObject If-None-Match: * under concurrent racers", if_none_match_race)

    def if_none_match_mpu():
        key = "locks/mpu-" + uuid.uuid4().hex[:6]
        s3.put_object(Bucket=bucket, Key=key, Body=b"exists")
        up = s3.create_multipart_upload(Bucket=bucket, Key=key)
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=1, Body=b"z" * 10)
        try:
            s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"], IfNoneMatch="*",
                                         MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": r["ETag"]}]})
            res = "completed over an existing key (NOT enforced)"
        except ClientError as e:
            res = "refused: %s" % err(e)
            try:
                s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"])
            except ClientError:
                pass
        return res
    probe("CompleteMultipartUpload If-None-Match: *", if_none_match_mpu)

    def if_match_put():
        key = "locks/cas-" + uuid.uuid4().hex[:6]
        etag = s3.put_object(Bucket=bucket, Key=key, Body=b"v1")["ETag"]
        out = []
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=b"v2", IfMatch='"0000"')
            out.append("wrong ETag: 200 (NOT enforced)")
        except ClientError as e:
            out.append("wrong ETag: %s" % err(e))
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=b"v3", IfMatch=etag)
            out.append("right ETag: 200")
        except ClientError as e:
            out.append("right ETag: %s" % err(e))
        out.append("object now %r" % s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        return "; ".join(out)
    probe("PutObject If-Match: ETag (compare-and-swap)", if_match_put)

    def get_conditional():
        etag = s3.head_object(Bucket=bucket, Key="data/obj1")["ETag"]
        try:
            s3.get_object(Bucket=bucket, Key="data/obj1", IfNoneMatch=etag)
            return "If-None-Match on GET: 200 (ignored)"
        except ClientError as e:
            return "If-None-Match on GET: %s" % err(e)
    probe("GetObject If-None-Match", get_conditional)

    def delete_if_match():
        key = "locks/del-" + uuid.uuid4().hex[:6]
        s3.put_object(Bucket=bucket, Key=key, Body=b"v1")
        try:
            s3.delete_object(Bucket=bucket, Key=key, IfMatch='"0000"')
        except ClientError as e:
            return "wrong ETag: %s" % err(e)
        except Exception as e:  # noqa: BLE001 (older botocore: no IfMatch param)
            return "client has no IfMatch on DeleteObject: %r" % (e,)
        try:
            s3.head_object(Bucket=bucket, Key=key)
            return "wrong ETag: 204 but object kept (?)"
        except ClientError:
            return "wrong ETag: 204 and object DELETED (NOT enforced)"
    probe("DeleteObject If-Match", delete_if_match)

    def default_checksums():
        s3c = client(a.endpoint, a.access_key, a.secret_key, checksums="when_supported")
        try:
            s3c.put_object(Bucket=bucket, Key="data/crc", Body=b"hello checksum")
            got = s3c.get_object(Bucket=bucket, Key="data/crc")["Body"].read()
            return "PutObject with default CRC32 trailer: ok (%r)" % got
        except ClientError as e:
            return "PutObject with default CRC32 trailer: %s" % err(e)
    probe("botocore default flexible checksums (aws-chunked + trailer)", default_checksums)

    if not a.no_auth_check:
        def wrong_secret():
            bad = client(a.endpoint, a.access_key, a.secret_key + "x")
            try:
                bad.list_objects_v2(Bucket=bucket)
                return "accepted (signatures NOT checked)"
            except ClientError as e:
                return "rejected: %s" % err(e)
        probe("Wrong secret key", wrong_secret)

    def cleanup():
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
        for k in keys:
            s3.delete_object(Bucket=bucket, Key=k)
        s3.delete_bucket(Bucket=bucket)
        return "deleted %d objects and the bucket" % len(keys)
    check("Cleanup (DeleteBucket)", cleanup)

    passed = sum(1 for _, ok in RESULTS if ok)
    failed = len(RESULTS) - passed
    print("s3 selfcheck (%s): %d passed, %d failed" % (a.name, passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
