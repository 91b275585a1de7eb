"""`python -m sorter.replay.fleet` (what `make fleet-demo` runs): a packhouse on one machine.

Starts N lanes (default 3), each a real `sorter run --realtime` replaying the bundled belt
against its own controller (the Python simulator served over TCP by `python -m
firmware_bridge sim-server`, one process per lane), and a real Prometheus on loopback that
scrapes every lane's /metrics and evaluates the shipped alert rules
(deploy/prometheus/rules/produce-sorter.yml). Once Prometheus sees every lane up with its
controller connected, it kills one lane's controller and polls Prometheus' /api/v1/alerts
until `SorterControllerLost` fires for that lane (bounded by --timeout), then stops
everything. Everything it writes goes to fleet-demo-out/ (lane configs, decision logs,
crops, logs, the Prometheus config and data). docs/fleet.md describes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from firmware_bridge.emulator import free_port
from sorter.errors import SorterError

REPO = Path(__file__).resolve().parents[2]
"""The repository root (the demo's paths are relative to it)."""
VIDEO = REPO / "demo" / "belt.mp4"
RULES = REPO / "deploy" / "prometheus" / "rules" / "produce-sorter.yml"
ALERT = "SorterControllerLost"
"""The alert the demo waits for."""


@dataclass
class FleetOptions:
    """What the demo runs."""

    lanes: int = 3
    """Number of lanes (ids "1".."N")."""
    kill: int = 2
    """The lane whose controller is killed."""
    video: Path = VIDEO
    """The belt every lane replays (in real time)."""
    model: Path | None = None
    """The model (default: the bundled one)."""
    out: Path = REPO / "fleet-demo-out"
    """Where everything goes (emptied first)."""
    alert_for_s: float | None = None
    """Shorten every alert's `for:` to this many seconds (None: the rules as shipped)."""
    timeout_s: float = 150.0
    """Give up waiting for the alert after this long (from the kill)."""
    linger_s: float = 600.0
    """Lanes keep serving /metrics this long after their replay ends."""


@dataclass
class FleetResult:
    """What the demo saw."""

    fired: bool = False
    """The alert fired for the killed lane."""
    seconds_to_fire: float | None = None
    """From the kill to the alert firing."""
    alert: dict[str, Any] = field(default_factory=dict)
    """The firing alert as Prometheus reports it."""
    other_alerts: list[dict[str, Any]] = field(default_factory=list)
    """Any other alert active when it fired (lane, name, state)."""
    lanes_seen: list[str] = field(default_factory=list)
    """The lanes Prometheus scraped with their controllers up before the kill."""


def _rules_text(alert_for_s: float | None) -> str:
    text = RULES.read_text(encoding="utf-8")
    if alert_for_s is None:
        return text
    return re.sub(r"(?m)^(\s+for: )\S+$", rf"\g<1>{alert_for_s:g}s", text)


def prometheus_config(targets: dict[str, str], rules: str) -> str:
    """A Prometheus config scraping `targets` (lane -> HOST:PORT) every second (JSON is YAML)."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [rules],
        "scrape_configs": [
            {
                "job_name": "produce-sorter",
                "honor_labels": True,
                "static_configs": [
                    {"targets": [hostport], "labels": {"lane": lane}}
                    for lane, hostport in targets.items()
                ],
            }
        ],
    }
    return json.dumps(config, indent=2) + "\n"


def _belt_toml(video: Path) -> str:
    """The [belt] the replayed video was made with (its truth JSON beside it), so the
    lanes' measured belt speed matches their config; empty without a truth."""
    try:
        truth = json.loads(video.with_suffix(".json").read_text(encoding="utf-8"))
        px_per_mm, speed_px_s = float(truth["px_per_mm"]), float(truth["speed_px_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f"[belt]\npx_per_mm = {px_per_mm!r}\nspeed_mm_s = {speed_px_s / px_per_mm!r}\n"


def _lane_toml(out: Path, lane: str, controller_port: int, port: int, belt: str = "") -> str:
    d = out / f"lane{lane}"
    return (
        belt + f'[lane]\nid = "{lane}"\n'
        f'[serial]\nurl = "socket://127.0.0.1:{controller_port}"\n'
        f'[logging]\ndb = "{d / "decisions.db"}"\njsonl = "{d / "decisions.jsonl"}"\n'
        f'crops_dir = "{d / "crops"}"\n'
        f'[dashboard]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n'
    )


class Fleet:
    """The demo's processes: controllers, lanes and Prometheus; `stop()` ends every one."""

    def __init__(self, opts: FleetOptions, say: Callable[[str], None]) -> None:
        self.opts = opts
        self.say = say
        self.controllers: dict[str, subprocess.Popen[bytes]] = {}
        self.lanes: dict[str, subprocess.Popen[bytes]] = {}
        self.prometheus: subprocess.Popen[bytes] | None = None
        self.prom_url = ""
        self._files: list[IO[bytes]] = []
        self.t0 = time.monotonic()

    def _spawn(self, cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
        f = log.open("wb")
        self._files.append(f)
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=self.opts.out, env=env)

    def start(self) -> dict[str, str]:
        """Start every lane's controller and sorter; the lane -> /metrics HOST:PORT map."""
        o = self.opts
        targets = {}
        for n in range(1, o.lanes + 1):
            lane = str(n)
            cport, port = free_port(), free_port()
            (o.out / f"lane{lane}").mkdir(parents=True)
            self.controllers[lane] = self._spawn(
                [sys.executable, "-m", "firmware_bridge", "sim-server", "--port", str(cport)],
                o.out / f"lane{lane}" / "controller.log",
            )
            config = o.out / f"lane{lane}.toml"
            config.write_text(
                _lane_toml(o.out, lane, cport, port, _belt_toml(o.video)), encoding="utf-8"
            )
            targets[lane] = f"127.0.0.1:{port}"
        time.sleep(1.0)  # the controllers listen before the lanes connect
        for lane in targets:
            config = o.out / f"lane{lane}.toml"
            cmd = [
                sys.executable, "-m", "sorter.cli", "run", "--config", str(config),
                "--video", str(o.video), "--realtime", "--json", "--linger", f"{o.linger_s:g}",
            ]  # fmt: skip
            if o.model is not None:
                cmd += ["--model", str(o.model)]
            self.lanes[lane] = self._spawn(cmd, o.out / f"lane{lane}" / "sorter.log")
            self.say(f"lane {lane}: sorter pid {self.lanes[lane].pid}, /metrics {targets[lane]}")
        return targets

    def start_prometheus(self, targets: dict[str, str]) -> None:
        """A real Prometheus on loopback scraping `targets` with the shipped rules."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise SorterError(
                "prometheus not found; install it with `make sysdeps-test` "
                "(apt-get install prometheus) and run the demo again"
            )
        o = self.opts
        rules = o.out / "produce-sorter.rules.yml"
        rules.write_text(_rules_text(o.alert_for_s), encoding="utf-8")
        config = o.out / "prometheus.yml"
        config.write_text(prometheus_config(targets, str(rules)), encoding="utf-8")
        port = free_port()
        self.prom_url = f"http://127.0.0.1:{port}"
        self.prometheus = self._spawn(
            [
                binary, f"--config.file={config}", f"--storage.tsdb.path={o.out / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
            ],
            o.out / "prometheus.log",
        )  # fmt: skip
        deadline = time.monotonic() + 30.0
        while not _ready(self.prom_url):
            if self.prometheus.poll() is not None or time.monotonic() > deadline:
                raise SorterError(f"prometheus did not start; see {o.out / 'prometheus.log'}")
            time.sleep(0.2)
        self.say(f"prometheus at {self.prom_url} (pid {self.prometheus.pid})")

    def kill_controller(self, lane: str) -> None:
        """Kill -9 one lane's controller: its sorter loses the link."""
        proc = self.controllers[lane]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self) -> None:
        """End every process this demo started: the lanes first (SIGTERM: they flush their
        decisions), then the controllers and Prometheus; SIGKILL after 15 s."""
        groups = [list(self.lanes.values()), list(self.controllers.values())]
        if self.prometheus is not None:
            groups.append([self.prometheus])
        for group in groups:
            for p in group:
                if p.poll() is None:
                    p.terminate()
            for p in group:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for f in self._files:
            f.close()

    def elapsed(self) -> str:
        return f"t+{time.monotonic() - self.t0:5.1f}s"


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def query(base: str, expr: str) -> list[dict[str, Any]]:
    """An instant query's result vector."""
    data = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    return list(data["data"]["result"])


def alerts(base: str) -> list[dict[str, Any]]:
    """Every active (pending or firing) alert."""
    return list(_get(f"{base}/api/v1/alerts")["data"]["alerts"])


def _wait_lanes_up(fleet: Fleet, n: int, timeout_s: float) -> list[str]:
    """Wait until Prometheus has every lane up with its controller link up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _check_alive(fleet)
        up = query(fleet.prom_url, 'up{job="produce-sorter"} == 1')
        link = query(fleet.prom_url, "sorter_link_up == 1")
        lanes = sorted(
            {r["metric"].get("lane", "") for r in link} & {r["metric"].get("lane", "") for r in up}
        )
        if len(lanes) == n:
            return lanes
        time.sleep(0.5)
    raise SorterError(
        f"not every lane came up in {timeout_s:.0f} s; see the lane logs in {fleet.opts.out}"
    )


def _check_alive(fleet: Fleet) -> None:
    for lane, p in fleet.lanes.items():
        if p.poll() is not None:
            raise SorterError(
                f"lane {lane}'s sorter exited ({p.returncode}); see "
                f"{fleet.opts.out / f'lane{lane}' / 'sorter.log'}"
            )


def _wait_alert(fleet: Fleet, lane: str, result: FleetResult, t_kill: float) -> None:
    """Poll /api/v1/alerts until ALERT fires for `lane` or the timeout passes."""
    state = ""
    deadline = t_kill + fleet.opts.timeout_s
    while time.monotonic() < deadline:
        active = alerts(fleet.prom_url)
        mine = [
            a for a in active if a["labels"].get("alertname") == ALERT
            and a["labels"].get("lane") == lane
        ]  # fmt: skip
        now_state = mine[0]["state"] if mine else ""
        if now_state != state:
            fleet.say(f'{fleet.elapsed()} {ALERT}{{lane="{lane}"}}: {now_state or "inactive"}')
            state = now_state
        if now_state == "firing":
            result.fired = True
            result.seconds_to_fire = time.monotonic() - t_kill
            result.alert = mine[0]
            result.other_alerts = [
                {"alert": a["labels"].get("alertname"), "lane": a["labels"].get("lane"),
                 "state": a["state"]}
                for a in active if a is not mine[0]
            ]  # fmt: skip
            return
        time.sleep(1.0)


def run_demo(opts: FleetOptions, say: Callable[[str], None] = print) -> FleetResult:
    """The whole demo; the processes are stopped whatever happens."""
    if not 1 <= opts.kill <= opts.lanes:
        raise SorterError(f"--kill {opts.kill}: there are lanes 1..{opts.lanes}")
    if not opts.video.is_file():
        raise SorterError(f"{opts.video}: belt video not found; give one with --video")
    opts = dataclasses.replace(
        opts,
        video=opts.video.resolve(),
        model=None if opts.model is None else opts.model.resolve(),
        out=opts.out.resolve(),
    )  # the lanes run in the output folder
    if opts.out.exists():
        shutil.rmtree(opts.out)
    opts.out.mkdir(parents=True)
    fleet = Fleet(opts, say)
    result = FleetResult()
    try:
        targets = fleet.start()
        fleet.start_prometheus(targets)
        result.lanes_seen = _wait_lanes_up(fleet, opts.lanes, timeout_s=60.0)
        say(f"{fleet.elapsed()} prometheus sees lanes {', '.join(result.lanes_seen)} up")
        lane = str(opts.kill)
        fleet.kill_controller(lane)
        t_kill = time.monotonic()
        say(f"{fleet.elapsed()} killed lane {lane}'s controller; waiting for {ALERT}")
        _wait_alert(fleet, lane, result, t_kill)
    finally:
        fleet.stop()
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sorter.replay.fleet", description=__doc__)
    p.add_argument("--lanes", type=int, default=3, help="number of lanes (default 3)")
    p.add_argument("--kill", type=int, default=2, help="lane whose controller dies (default 2)")
    p.add_argument("--video", type=Path, default=VIDEO, help="belt video (default demo/belt.mp4)")
    p.add_argument("--model", type=Path, default=None, help="model .tflite (default: bundled)")
    p.add_argument("--out", type=Path, default=REPO / "fleet-demo-out", help="output folder")
    p.add_argument(
        "--alert-for", type=float, default=None, metavar="S",
        help="shorten every alert's `for:` to S seconds (default: the rules as shipped)",
    )  # fmt: skip
    p.add_argument("--timeout", type=float, default=150.0, help="seconds to wait for the alert")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    opts = FleetOptions(
        lanes=a.lanes, kill=a.kill, video=a.video, model=a.model, out=a.out,
        alert_for_s=a.alert_for, timeout_s=a.timeout,
    )  # fmt: skip
    try:
        result = run_demo(opts)
    except SorterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not result.fired:
        print(f"error: {ALERT} did not fire for lane {opts.kill} within {opts.timeout_s:.0f} s")
        return 1
    labels = result.alert["labels"]
    print(
        f"{ALERT} fired for lane {labels.get('lane')} {result.seconds_to_fire:.1f} s after its "
        f"controller was killed: {result.alert['annotations'].get('summary')}"
    )
    others = [o for o in result.other_alerts if o["lane"] != str(opts.kill)]
    print(f"alerts for the other lanes: {others or 'none'}")
    print(f"lane logs, decision logs and crops: {opts.out}/lane*/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
