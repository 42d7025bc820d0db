#!/bin/sh
# LocalStack ready hook (mounted into /etc/localstack/init/ready.d by docker-compose.yml):
# creates the test bucket once S3 answers. Idempotent: an existing bucket is left alone.
awslocal s3 mb "s3://${NETSY_TEST_BUCKET:-netsy-test}" 2>/dev/null || true
