"""Create the bucket of the compose set-up before the dicomvault nodes start.

docker-compose.yml runs this once per `docker compose up`, in the S3 server's
own image (moto's, which has Python and boto3). Credentials come from the
standard AWS environment variables. An existing bucket is left as it is, so
running it again changes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

# Error codes of HeadBucket for a bucket that does not exist.
MISSING_BUCKET_CODES = {"404", "NoSuchBucket", "NotFound"}
RETRY_INTERVAL_SECONDS = 1.0


def ensure_bucket(client: Any, bucket: str, region: str) -> bool:
    """Create ``bucket`` unless it exists.

    Returns
    -------
    bool
        True if the bucket was created, False if it existed already.

    Raises
    ------
    botocore.exceptions.ClientError
        If the server rejects the request for another reason, such as
        invalid credentials or a bucket name owned by someone else.
    """
    try:
        client.head_bucket(Bucket=bucket)
        return False
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in MISSING_BUCKET_CODES:
            raise

    request: dict[str, Any] = {"Bucket": bucket}
    # us-east-1 is the one region that rejects an explicit location constraint.
    if region != "us-east-1":
        request["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**request)
    except ClientError as exc:
        # Another run created it between the two requests.
        if exc.response["Error"]["Code"] == "BucketAlreadyOwnedByYou":
            return False
        raise
    return True


def main(argv: list[str] | None = None) -> int:
    """Create the bucket, retrying while the endpoint refuses connections; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint-url", required=True, help="URL of the S3-compatible server")
    parser.add_argument("--bucket", required=True, help="name of the bucket to create")
    parser.add_argument("--region", default="us-east-1", help="region of the bucket")
    parser.add_argument(
        "--wait",
        type=float,
        default=30.0,
        help="seconds to keep retrying while the server refuses connections (default 30)",
    )
    options = parser.parse_args(argv)

    # Path-style requests (http://s3:5000/BUCKET/...), because the compose
    # network resolves the service name but not BUCKET.s3.
    client = boto3.client(
        "s3",
        endpoint_url=options.endpoint_url,
        region_name=options.region,
        config=Config(s3={"addressing_style": "path"}),
    )
    deadline = time.monotonic() + options.wait
    while True:
        try:
            created = ensure_bucket(client, options.bucket, options.region)
            break
        except EndpointConnectionError as exc:
            if time.monotonic() >= deadline:
                print(
                    f"Cannot create bucket {options.bucket}: {exc}; the server did not respond "
                    f"within {options.wait:.0f} s. Check that it runs at {options.endpoint_url}",
                    file=sys.stderr,
                )
                return 1
            time.sleep(RETRY_INTERVAL_SECONDS)
        except (ClientError, BotoCoreError) as exc:
            print(f"Cannot create bucket {options.bucket}: {exc}", file=sys.stderr)
            return 1

    state = "created" if created else "exists already"
    print(f"Bucket {options.bucket} at {options.endpoint_url} {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
