"""An AWS SDK (boto3, with its own botocore) against the gateway, for the AWS integration
tests: a put and get, a multipart upload and ranged multipart download, a presigned GET, and
a delete that policy refuses. Prints one JSON object of results.

Usage: sdk.py BUCKET (endpoint and key from AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY)
"""
import json
import os
import ssl
import sys
import tempfile
import urllib.request

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

bucket = sys.argv[1]
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
out = {"boto3": boto3.__version__}

data = os.urandom(3 * 1024 * 1024 + 17)
s3.put_object(Bucket=bucket, Key="sdk/object.bin", Body=data)
out["put_get"] = s3.get_object(Bucket=bucket, Key="sdk/object.bin")["Body"].read() == data

with tempfile.TemporaryDirectory() as tmp:
    src, back = os.path.join(tmp, "big.bin"), os.path.join(tmp, "back.bin")
    with open(src, "wb") as f:
        f.write(os.urandom(20 * 1024 * 1024))
    config = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024)
    s3.upload_file(src, bucket, "sdk/big.bin", Config=config)
    s3.download_file(bucket, "sdk/big.bin", back, Config=config)
    with open(src, "rb") as a, open(back, "rb") as b:
        out["multipart"] = a.read() == b.read()

url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "sdk/object.bin"}, ExpiresIn=300)
# https:// with the gateway's certificate, as the SDK itself was told (AWS_CA_BUNDLE).
tls = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE"))
with urllib.request.urlopen(url, context=tls) as answer:
    out["presigned"] = answer.read() == data

try:
    s3.delete_object(Bucket=bucket, Key="sdk/object.bin")
    out["delete"] = "allowed"
except ClientError as e:
    out["delete"] = e.response["Error"]["Code"]

print(json.dumps(out))
