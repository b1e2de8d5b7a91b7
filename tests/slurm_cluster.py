"""A real single-node SLURM cluster for the tests (helper module, not a test file).

:class:`SlurmCluster` starts ``munged`` (as user munge), ``slurmctld -i`` and
``slurmd -N localhost`` in the foreground as child processes, with a generated
``/etc/slurm/slurm.conf`` (+ ``gres.conf`` with fake GPUs made by ``mknod``), waits until
``sinfo`` shows the node idle, and on :meth:`SlurmCluster.stop` cancels the jobs, ends
exactly the daemons it started and restores whatever config files were there before.

The config has to live at ``/etc/slurm`` because the Snakemake SLURM executor strips the
``SLURM_*`` variables (so ``SLURM_CONF`` elsewhere would break every job). A lock file
serialises clusters of concurrent test sessions on one machine. State, spool and logs live
in a temporary directory; the ports are picked free, so a stray daemon cannot clash.

Usage::

    reason = unavailable_reason()      # None when this machine can run it
    with SlurmCluster(tmp_dir) as cluster:
        subprocess.run(["sbatch", ...])
        cluster.squeue()

Run ``python tests/slurm_cluster.py`` to start one by hand (Ctrl-C stops it).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

CONF_DIR = Path("/etc/slurm")
MANAGED = ("slurm.conf", "gres.conf")
BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel", "scontrol")
MUNGE_DIRS = (Path("/run/munge"), Path("/var/log/munge"), Path("/var/lib/munge"))
LOCK = Path("/tmp/qshift-slurm-cluster.lock")
# what a running test cluster changed (daemon pids, config backups): lets the next start undo
# the leftovers of a session that was killed before it could stop its cluster
STATE = Path("/tmp/qshift-slurm-cluster.json")
BACKUP_SUFFIX = ".qshift-test-backup"


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here, or None."""
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return (f"SLURM/munge binaries missing ({', '.join(missing)}); install them with "
                "`bash scripts/system-deps.sh` (slurmctld slurmd slurm-client munge)")
    if os.geteuid() != 0:
        return "starting a SLURM cluster needs root (daemons, /etc/slurm, device nodes)"
    if not Path("/etc/munge/munge.key").is_file():
        return "/etc/munge/munge.key is missing (reinstall the munge package)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    def __init__(self, workdir: Path, cpus: int = 2, memory_mb: int = 8000, gpus: int = 2,
                 cluster_name: str = "qshift"):
        self.dir = Path(workdir)
        self.cpus, self.memory_mb, self.gpus, self.name = cpus, memory_mb, gpus, cluster_name
        self._procs: dict[str, subprocess.Popen] = {}
        self._backups: dict[str, Path | None] = {}
        self._lock_fh = None
        self.log_dir = self.dir / "log"

    # ------------------------------------------------------------------ config
    def slurm_conf(self) -> str:
        d = self.dir
        gres = f" Gres=gpu:fake:{self.gpus}" if self.gpus else ""
        return "\n".join([
            f"ClusterName={self.name}",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "ReturnToService=2",
            "MinJobAge=600",            # finished jobs stay visible to squeue (status queries)
            "KillWait=5",
            "InactiveLimit=0",
            "SlurmdTimeout=60",
            "GresTypes=gpu",
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}",
            f"SlurmdPidFile={d / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.log_dir / 'slurmctld.log'}",
            f"SlurmdLogFile={self.log_dir / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb}"
            f"{gres} State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    def gres_conf(self) -> str:
        if not self.gpus:
            return "AutoDetect=off\n"
        last = self.gpus - 1
        files = f"{self.dir / 'dev'}/nvidia[0-{last}]" if last else f"{self.dir / 'dev'}/nvidia0"
        return f"AutoDetect=off\nNodeName=localhost Name=gpu Type=fake File={files}\n"

    def _fake_gpus(self) -> None:
        dev = self.dir / "dev"
        dev.mkdir(parents=True, exist_ok=True)
        for i in range(self.gpus):
            node = dev / f"nvidia{i}"
            if not node.exists():
                try:
                    subprocess.run(["mknod", str(node), "c", "195", str(i)], check=True, capture_output=True)
                except (subprocess.CalledProcessError, OSError):
                    node.touch()  # a plain file serves where device nodes are not allowed

    def _install_conf(self) -> None:
        CONF_DIR.mkdir(parents=True, exist_ok=True)
        for name in MANAGED:
            path = CONF_DIR / name
            if path.exists() or path.is_symlink():
                backup = path.with_name(name + BACKUP_SUFFIX)  # beside it: survives a crashed session
                shutil.move(str(path), backup)
                self._backups[name] = backup
            else:
                self._backups[name] = None
        (CONF_DIR / "slurm.conf").write_text(self.slurm_conf())
        (CONF_DIR / "gres.conf").write_text(self.gres_conf())

    def _restore_conf(self) -> None:
        for name, backup in self._backups.items():
            path = CONF_DIR / name
            path.unlink(missing_ok=True)
            if backup is not None:
                shutil.move(str(backup), path)
        self._backups = {}

    def _save_state(self) -> None:
        STATE.write_text(json.dumps({
            "pids": {n: p.pid for n, p in self._procs.items()},
            "backups": {n: str(b) if b else None for n, b in self._backups.items()},
        }))

    @staticmethod
    def _undo_leftovers() -> None:
        """Stop the daemons and restore the config a killed earlier session left behind."""
        if not STATE.is_file():
            return
        try:
            state = json.loads(STATE.read_text())
        except ValueError:
            state = {}
        for name, pid in state.get("pids", {}).items():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if name in cmd:  # still that daemon (not a recycled pid)
                os.kill(pid, signal.SIGTERM)
        time.sleep(1)
        for name, backup in state.get("backups", {}).items():
            (CONF_DIR / name).unlink(missing_ok=True)
            if backup and Path(backup).exists():
                shutil.move(backup, CONF_DIR / name)
        STATE.unlink(missing_ok=True)

    # ------------------------------------------------------------------ daemons
    def _munge_ok(self) -> bool:
        try:
            cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=5)
            return cred.returncode == 0 and subprocess.run(
                ["unmunge"], input=cred.stdout, capture_output=True, timeout=5).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def _start_munge(self) -> None:
        if self._munge_ok():  # a munged is already serving this machine: use it
            return
        for d in MUNGE_DIRS:
            d.mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "munge", "munge")
        Path("/run/munge").chmod(0o755)
        sock = Path("/run/munge/munge.socket.2")
        self._spawn("munged", ["runuser", "-u", "munge", "--", _which("munged"), "--foreground", "--force"])
        self._wait(lambda: sock.exists() and self._munge_ok(), 15, "munged did not come up")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_dir / f"{name}.out", "w")
        self._procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True)

    def _wait(self, predicate, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting: {what}\n"
                                       f"{self.logs()}")
            time.sleep(0.2)
        raise RuntimeError(f"{what} within {timeout:.0f} s\n{self.logs()}")

    def node_state(self) -> str:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""

    def start(self, timeout: float = 60) -> "SlurmCluster":
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.dir.mkdir(parents=True, exist_ok=True)
        LOCK.touch(exist_ok=True)
        self._lock_fh = open(LOCK, "w")
        fcntl.flock(self._lock_fh, fcntl.LOCK_EX)  # one test cluster per machine at a time
        try:
            self._undo_leftovers()
            for sub in ("state", "spool", "log"):
                (self.dir / sub).mkdir(parents=True, exist_ok=True)
            self.ctld_port, self.slurmd_port = _free_port(), _free_port()
            self._fake_gpus()
            self._install_conf()
            self._save_state()
            self._start_munge()
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i"])
            self._spawn("slurmd", [_which("slurmd"), "-D", "-N", "localhost"])
            self._save_state()
            self._wait(lambda: self.node_state() == "idle", timeout, "the node did not become idle")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--quiet", "--user=root"],
                           capture_output=True, timeout=15)
            end = time.monotonic() + 15
            while time.monotonic() < end and self.active_jobs():
                time.sleep(0.3)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self._procs.pop(name, None)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self._restore_conf()
        STATE.unlink(missing_ok=True)
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ queries
    def squeue(self, fmt: str = "%i|%j|%T|%k") -> list[list[str]]:
        """Jobs known to the controller (running, pending and recently finished)."""
        out = subprocess.run(["squeue", "-h", "-t", "all", "-o", fmt], capture_output=True, text=True,
                             timeout=10)
        return [line.split("|") for line in out.stdout.splitlines() if line.strip()]

    def active_jobs(self) -> list[str]:
        """Ids of pending, running or completing jobs."""
        out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=10)
        return out.stdout.split()

    def logs(self, tail: int = 40) -> str:
        parts = []
        for f in sorted(self.log_dir.glob("*")):
            lines = f.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(parts)


if __name__ == "__main__":  # start a cluster by hand
    import tempfile

    why = unavailable_reason()
    if why:
        raise SystemExit(why)
    def _interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    with SlurmCluster(Path(tempfile.mkdtemp(prefix="qshift-slurm-"))) as c:
        print(f"SLURM up ({c.dir}); node {c.node_state()}. Ctrl-C (or SIGTERM) stops it.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
