"""Shared fixtures: one real SeaweedFS server per session, a fresh bucket per
test, and `store_url`, which runs a test once on a local directory and once
on S3.

S3 tests reach the server the way engine code does, through `open_store(url)`
with no options: the `seaweedfs` fixture sets AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL and AWS_REGION for the rest of the
session (and points the AWS config files away from ~/.aws).
"""
from __future__ import annotations

import uuid

import pytest

from seaweedfs import SeaweedFS, WeedNotFound


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """The session's SeaweedFS server.  Tests may stop() and start() it (same
    ports and data); whoever stops it must start it again."""
    try:
        server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    except WeedNotFound as e:
        missing = str(e)
    else:
        missing = None
    if missing:                     # fail, never skip: CI must run the S3 tests
        pytest.fail(missing, pytrace=False)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN",
                     "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        for name, value in server.env().items():
            mp.setenv(name, value)
        yield server
    server.stop()


@pytest.fixture
def s3_bucket(seaweedfs):
    """A new, empty bucket, deleted with its contents after the test."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    seaweedfs.create_bucket(name)
    yield name
    if not seaweedfs.running:       # a fault test failed before restarting it
        seaweedfs.start()
    seaweedfs.delete_bucket(name)


@pytest.fixture
def s3_url(s3_bucket):
    """`s3://<fresh bucket>/store`: `open_store(s3_url)` works as is."""
    return f"s3://{s3_bucket}/store"


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store_url(request, tmp_path):
    """A URL for an empty store: a plain path under tmp_path, or s3_url."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_url")
