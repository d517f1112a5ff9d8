"""What the object-lock tests ask an S3 server directly, with boto3 (the test venv's).

    python lock-admin.py ENDPOINT mkbucket BUCKET [--lock]
    python lock-admin.py ENDPOINT retention BUCKET PREFIX
        one line per object under PREFIX (its current version): KEY MODE RETAIN-UNTIL
        (MODE and RETAIN-UNTIL are "-" when it has none)
    python lock-admin.py ENDPOINT delete-version BUCKET KEY
        tries to delete KEY's current version by its version id: prints "deleted" or
        "denied CODE"
    python lock-admin.py ENDPOINT delete BUCKET KEY
        tries to delete KEY (no version): prints "deleted" or "denied CODE"
    python lock-admin.py ENDPOINT iam-users BUCKET PREFIX...
        least privilege (docs/OPERATIONS.md): for each PREFIX creates IAM users
        "writer-PREFIX" (get, put and list; delete only under PREFIX/locks/,
        PREFIX/unfinished/ and PREFIX/checkpoints/) and "pruner-PREFIX" (get, put, list and
        delete under PREFIX/),
        prints "NAME ACCESS-KEY SECRET" for each, then turns on moto's IAM enforcement
        (POST /moto-api/reset-auth 0): from then on every request must be signed by one of
        these users and is judged by its policy.

Credentials: LOCK_ADMIN_ACCESS_KEY and LOCK_ADMIN_SECRET_KEY when set (needed once IAM is
enforced), else any.
"""
import json
import os
import sys
import urllib.request

import boto3
import botocore.exceptions


def client(endpoint, service="s3"):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        aws_access_key_id=os.environ.get("LOCK_ADMIN_ACCESS_KEY", "lock-admin"),
        aws_secret_access_key=os.environ.get("LOCK_ADMIN_SECRET_KEY", "lock-admin-secret"),
        region_name="us-east-1",
    )


def policy(bucket, prefix, deletes):
    """The policy docs/OPERATIONS.md gives: read, write and list; delete only `deletes`."""
    objects = f"arn:aws:s3:::{bucket}/{prefix}/"
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow",
             "Action": ["s3:ListBucket", "s3:GetBucketLocation",
                        "s3:GetBucketObjectLockConfiguration"],
             "Resource": f"arn:aws:s3:::{bucket}"},
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
             "Resource": objects + "*"},
            {"Effect": "Allow", "Action": ["s3:DeleteObject"],
             "Resource": [objects + d for d in deletes]},
        ],
    })


def iam_users(endpoint, bucket, prefixes):
    iam = client(endpoint, "iam")
    users = [(f"{role}-{prefix}", prefix, deletes) for prefix in prefixes
             for role, deletes in [("writer", ["locks/*", "unfinished/*", "checkpoints/*"]), ("pruner", ["*"])]]
    for name, prefix, deletes in users:
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="snapcrypt",
                            PolicyDocument=policy(bucket, prefix, deletes))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        print(name, key["AccessKeyId"], key["SecretAccessKey"])
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
        headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request).read()


def main():
    endpoint, command = sys.argv[1], sys.argv[2]
    s3 = client(endpoint)
    if command == "mkbucket":
        s3.create_bucket(Bucket=sys.argv[3], ObjectLockEnabledForBucket="--lock" in sys.argv)
    elif command == "retention":
        bucket, prefix = sys.argv[3], sys.argv[4]
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                head = s3.head_object(Bucket=bucket, Key=obj["Key"])
                mode = head.get("ObjectLockMode", "-")
                until = head.get("ObjectLockRetainUntilDate")
                print(obj["Key"], mode, until.strftime("%Y-%m-%dT%H:%M:%SZ") if until else "-")
    elif command == "delete-version":
        bucket, key = sys.argv[3], sys.argv[4]
        version = s3.head_object(Bucket=bucket, Key=key)["VersionId"]
        try:
            s3.delete_object(Bucket=bucket, Key=key, VersionId=version)
            print("deleted")
        except botocore.exceptions.ClientError as e:
            print("denied", e.response["Error"]["Code"])
    elif command == "delete":
        try:
            s3.delete_object(Bucket=sys.argv[3], Key=sys.argv[4])
            print("deleted")
        except botocore.exceptions.ClientError as e:
            print("denied", e.response["Error"]["Code"])
    elif command == "iam-users":
        iam_users(endpoint, sys.argv[3], sys.argv[4:])
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
