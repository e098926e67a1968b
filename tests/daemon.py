"""
Start the real daemon (C{twistd -n owncdn}, or C{twistd -ny owncdn.tac})
for end-to-end tests.

The daemon logs JSON lines on stdout (C{--logger owncdn.logs.json_stdout});
the harness reads them to learn the ports it listens on, so tests listen
on port 0 and never race for a free port.  Every wait is bounded.
"""

import inspect
import json
import os
import sys
from pathlib import Path

from twisted.internet import defer, protocol, reactor, task

from owncdn import config as configmod

STARTUP_TIMEOUT = 30
# Longer than the daemon's own drain timeout, so a SIGKILL means a hang.
STOP_TIMEOUT = 45
# "python -m twisted" is the twist runner, which has no -n or --logger.
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; "
                                "sys.argv[0] = 'twistd'; run()"]
ROOT = Path(__file__).resolve().parent.parent
LOCAL = "tcp:0:interface=127.0.0.1"


def write_config(data_dir: Path, services=None, keys=None, **top) -> dict:
    """
    Write an C{owncdn.json} with known keys: C{WRITER} (write on all),
    C{READER} (read on all) and whatever C{keys} adds.

    @return: key ID -> key value.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    values = {"WRITER": "writer-secret-0123456789", "READER": "reader-secret-0123456789"}
    raw_keys = [
        {"id": "WRITER", "value": values["WRITER"], "access": "write"},
        {"id": "READER", "value": values["READER"], "access": "read"},
    ]
    for key in keys or []:
        raw_keys.append(key)
        values[key["id"]] = key["value"]
    raw = {
        "instanceName": "test",
        "services": services or [
            {"id": "api", "type": "api", "host": "*", "port": "*", "cors": False},
            {"id": "files", "type": "storage"},
        ],
        "keys": raw_keys,
        "replicationSources": [],
    }
    raw.update(top)
    configmod.save(data_dir, raw)
    return values


class DaemonProcess(protocol.ProcessProtocol):
    """
    A running C{twistd -n owncdn}, its log events and its ports.
    """

    def __init__(self, expected_ports: int):
        self.expected_ports = expected_ports
        self.ports: list[int] = []
        self.events: list[dict] = []
        self.stderr = b""
        self._buffer = b""
        self.ready = defer.Deferred()
        self.ended = defer.Deferred()
        self.exit_code = None
        self.exit_signal = None
        self.running = False
        self.transport = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    def outReceived(self, data: bytes):
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.events.append(event)
            if event.get("log_namespace") != "owncdn.tap":
                continue
            # "listening on {description} (port {port})", one per
            # endpoint, then "running; {signals}" once the reactor runs
            # and SIGTERM is sure to stop the daemon gracefully.
            if "port" in event:
                self.ports.append(int(event["port"]))
            elif "signals" in event:
                self.running = True
            if (self.running and len(self.ports) == self.expected_ports
                    and not self.ready.called):
                self.ready.callback(self)

    def errReceived(self, data: bytes):
        self.stderr += data

    def processEnded(self, reason):
        self.exit_code = reason.value.exitCode
        self.exit_signal = reason.value.signal
        if not self.ready.called:
            self.ready.errback(RuntimeError(
                f"the daemon exited with {self.exit_code} before listening: "
                f"{self.stderr.decode(errors='replace')}{self.log_text()}"))
        self.ended.callback(self.exit_code)

    def messages(self) -> list[str]:
        """
        The log events as text, for assertions about what was logged.
        """
        return [json.dumps(e) for e in self.events]

    def log_text(self) -> str:
        """
        Everything the daemon said, stderr and log, as one string.
        """
        return self.stderr.decode(errors="replace") + "\n".join(self.messages())

    def signal(self, name: str):
        self.transport.signalProcess(name)

    def wait_ended(self, timeout: float = STOP_TIMEOUT) -> defer.Deferred:
        """
        A Deferred that fires with the exit code once the process has
        ended, or fails with C{TimeoutError} after C{timeout} seconds.
        """
        waiter = defer.Deferred()

        def fire(code):
            if not waiter.called:
                waiter.callback(code)
            return code

        self.ended.addBoth(fire)
        return waiter.addTimeout(timeout, reactor)

    def stop(self, sig: str = "TERM") -> defer.Deferred:
        """
        Send C{sig} and wait (bounded) for the exit; SIGKILL if it hangs.
        """
        if self.ended.called:
            return defer.succeed(self.exit_code)
        try:
            self.transport.signalProcess(sig)
        except OSError:
            pass

        def kill(failure):
            failure.trap(defer.TimeoutError)
            self._kill()
            return self.wait_ended(STARTUP_TIMEOUT)

        return self.wait_ended().addErrback(kill)

    def _kill(self):
        try:
            self.transport.signalProcess("KILL")
        except OSError:
            pass


def spawn_daemon(data_dir: Path, listen=(LOCAL,), env=None, args=(),
                 tac: bool = False) -> DaemonProcess:
    """
    Start the daemon without waiting; see L{start_daemon}.

    With C{tac}, run C{twistd -ny owncdn.tac} configured through
    C{OWNCDN_DATA_DIR} and C{OWNCDN_LISTEN} instead of options.
    """
    process = DaemonProcess(len(listen))
    argv = TWISTD + ["-n", "--pidfile=", "--logger", "owncdn.logs.json_stdout"]
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    if tac:
        argv += ["-y", str(ROOT / "owncdn.tac")]
        full_env["OWNCDN_DATA_DIR"] = str(data_dir)
        full_env["OWNCDN_LISTEN"] = " ".join(listen)
    else:
        argv += ["owncdn", "--data-dir", str(Path(data_dir).absolute())]
        for description in listen:
            argv += ["--listen", description]
        argv += list(args)
    full_env.update(env or {})
    reactor.spawnProcess(process, argv[0], argv, env=full_env, path=str(ROOT))
    return process


async def start_daemon(testcase, data_dir: Path, **kwargs) -> DaemonProcess:
    """
    Start the daemon, wait until every endpoint listens, and stop it
    (SIGTERM, then SIGKILL) when the test ends.
    """
    process = spawn_daemon(data_dir, **kwargs)
    testcase.addCleanup(process.stop)
    await process.ready.addTimeout(STARTUP_TIMEOUT, reactor)
    return process


def kill_hard(process: DaemonProcess) -> defer.Deferred:
    """
    SIGKILL, for crash-safety tests.
    """
    return process.stop("KILL")


async def eventually(check, timeout: float = 10, interval: float = 0.1):
    """
    Call C{check()} (awaiting it if it is async) every C{interval}
    seconds until it returns something true, and return that; fail the
    test after C{timeout} seconds.  The waits are reactor timers, never
    sleeps.
    """
    deadline = reactor.seconds() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if reactor.seconds() >= deadline:
            raise AssertionError(f"not true within {timeout} seconds: {check}")
        await task.deferLater(reactor, interval, lambda: None)
