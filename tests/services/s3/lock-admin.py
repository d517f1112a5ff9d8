"""What the object-lock tests ask an S3 server directly, with boto3 (the test venv's).

    python lock-admin.py ENDPOINT mkbucket BUCKET [--lock]
    python lock-admin.py ENDPOINT retention BUCKET PREFIX
        one line per object under PREFIX (its current version): KEY MODE RETAIN-UNTIL
        (MODE and RETAIN-UNTIL are "-" when it has none)
    python lock-admin.py ENDPOINT delete-version BUCKET KEY
        tries to delete KEY's current version by its version id: prints "deleted" or
        "denied CODE"
"""
import sys

import boto3
import botocore.exceptions


def client(endpoint):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="lock-admin",
        aws_secret_access_key="lock-admin-secret",
        region_name="us-east-1",
    )


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
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
