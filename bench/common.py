"""
What every HTTP benchmark needs: a real OwnCDN daemon, an nginx to
compare with, wrk, and the CPU time and peak memory of a process read
from /proc.  Everything listens on 127.0.0.1 only, every wait is
bounded, and every process started here is stopped by its own PID.
"""

import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from owncdn import config as configmod  # noqa: E402

PYTHON = str(ROOT / ".venv" / "bin" / "python")
if not Path(PYTHON).exists():
    PYTHON = sys.executable
WRITER = "writer-secret-0123456789"
READER = "reader-secret-0123456789"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30
STOP_TIMEOUT = 45


def machine() -> str:
    """
    One line saying where the figures come from.
    """
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} x {model}, "
            f"Linux {platform.release()}, Python {platform.python_version()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def cpu_seconds(pid: int) -> float:
    """
    User + system CPU time of a process (all its threads), in seconds.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")": state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status_kib(pid: int, field: str) -> int:
    """
    A C{/proc/PID/status} memory field (C{VmHWM}, C{VmRSS}) in KiB.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(p) for p in text)
    return found


def stop_process(process: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def write_config(data_dir: Path, services=None, sources=None, **top) -> None:
    """
    The configuration the benchmarks run with: keys WRITER and READER,
    the api service and one storage service C{files} unless told
    otherwise.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    raw = {
        "instanceName": "bench",
        "services": services or [
            {"id": "api", "type": "api", "host": "*", "port": "*", "cors": False},
            {"id": "files", "type": "storage"},
        ],
        "keys": [
            {"id": "WRITER", "value": WRITER, "access": "write"},
            {"id": "READER", "value": READER, "access": "read"},
        ],
        "replicationSources": sources or [],
    }
    raw.update(top)
    configmod.save(data_dir, raw)


# twistd in this process (not a wrapper script), so the PID is the daemon's.
LAUNCHER = ("import sys; from twisted.scripts.twistd import run; "
            "sys.argv[0] = 'twistd'; run()")


class Daemon:
    """
    C{twistd -n owncdn} on a free 127.0.0.1 port, logging JSON lines to
    a file in its data folder.
    """

    def __init__(self, data_dir: Path, port: int | None = None, env: dict | None = None,
                 launcher: str = LAUNCHER):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir / "daemon.log"
        argv = [PYTHON, "-c", launcher, "-n", "--pidfile=", "--logger", "owncdn.logs.json_stdout",
                "owncdn", "--data-dir", str(self.data_dir.absolute()),
                "--listen", f"tcp:{self.port}:interface=127.0.0.1"]
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = str(ROOT)
        full_env.update(env or {})
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                        cwd=ROOT, env=full_env)
        self.pid = self.process.pid
        try:
            wait_for_port(self.port)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"the daemon did not start: {self.log_path.read_text()[-2000:]}")

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def peak_rss_mib(self) -> float:
        return status_kib(self.pid, "VmHWM") / 1024

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


NGINX_CONF = """
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {access_log};
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_max_body_size 0;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{ application/octet-stream bin; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


class Nginx:
    """
    nginx with one worker serving C{root} as static files.  Its CPU time
    is the master's plus the worker's.
    """

    def __init__(self, root: Path, access_log: bool = False):
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            raise SystemExit("nginx is not installed: run bench/setup.sh")
        self.prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=root.parent))
        # Run as root, nginx's worker runs as nobody: it must be able to
        # read the files (temporary folders are 0700).
        for folder in (root.parent, root):
            os.chmod(folder, 0o755)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = self.prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(
            prefix=self.prefix, port=self.port, root=root.absolute(),
            access_log=f"{self.prefix}/access.log" if access_log else "off"))
        self.process = subprocess.Popen([nginx, "-c", str(conf), "-p", str(self.prefix)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_port(self.port)
        self.pid = self.process.pid

    def pids(self) -> list[int]:
        return [self.pid] + children(self.pid)

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def stop(self) -> None:
        stop_process(self.process, signal.SIGQUIT)
        shutil.rmtree(self.prefix, ignore_errors=True)


class Server:
    """
    Any server process to measure: a command that listens on C{port}.
    """

    def __init__(self, argv: list[str], port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(argv, cwd=ROOT)
        self.pid = self.process.pid
        wait_for_port(port)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        stop_process(self.process)


def wrk(url: str, seconds: float, connections: int = 32, threads: int = 2,
        headers: dict | None = None) -> dict:
    """
    Run wrk against C{url} and return its request count, duration and
    non-2xx count.
    """
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: run bench/setup.sh")
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{round(seconds)}s", "--latency"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run(argv + [url], capture_output=True, text=True,
                         timeout=seconds + 30, check=True).stdout
    match = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if match is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    duration = float(match.group(2)) * (60 if match.group(3) == "m" else 1)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors or errors:
        print(out, file=sys.stderr)
    return {"requests": int(match.group(1)), "seconds": duration,
            "non2xx": int(errors.group(1)) if errors else 0,
            "p50": _latency(out, "50%"), "p99": _latency(out, "99%")}


def _latency(out: str, label: str) -> str:
    match = re.search(rf"\s{re.escape(label)}\s+(\S+)", out)
    return match.group(1) if match else "?"


def per_cpu_second(server, url: str, seconds: float, headers: dict | None = None,
                   connections: int = 32, threads: int = 1) -> dict:
    """
    Load C{server} with wrk and divide the requests by the CPU time the
    server spent meanwhile.  One wrk thread by default: on two cores a
    second one competes with the server for its core.
    """
    before = server.cpu()
    result = wrk(url, seconds, connections=connections, threads=threads, headers=headers)
    cpu = server.cpu() - before
    result["cpu"] = cpu
    result["per_cpu_second"] = result["requests"] / cpu if cpu else float("inf")
    return result


def http(method: str, url: str, body=None, headers: dict | None = None,
         timeout: float = 600) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def upload(base: str, path: str, body: bytes, sid: str = "files") -> dict:
    status, answer = http("PUT", f"{base}/uploadfile?sid={sid}&path={path}", body,
                          {"x-owncdn-key": WRITER})
    if status != 200:
        raise RuntimeError(f"upload of {path} answered {status}: {answer[:200]!r}")
    return json.loads(answer)


def save_result(name: str, result: dict) -> Path:
    """
    Keep the raw figures of a run in bench/results/ (not in git).
    """
    folder = ROOT / "bench" / "results"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
