"""The sorter's configuration: one TOML file loaded into typed dataclasses.

`load_config(path)` reads the file with tomllib and checks every key against the dataclasses
below: an unknown key, a value of the wrong type, out of range or not finite (nan, inf) is a
`ConfigError` naming the file, the line and the dotted key (tomllib gives no line numbers, so
`_KeyLines` finds them by scanning the text). Ranges and choices are field metadata
(`sorter.fields`). One dataclass per concern: `[locate]` loads straight into
`sorter.perception.vision.LocatorConfig` and `[track]` into
`sorter.perception.tracking.TrackerConfig`, the dataclasses the locator and tracker take.
`example_toml()` writes a commented example generated from the field docstrings, so the
example cannot drift from the code.

Command-line flags override the file through `apply_overrides(config, {"serial.url": ...})`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_bridge.protocol import MAX_CONFIG_GATES
from sorter.errors import ConfigError
from sorter.fields import FieldError, choice_problem, choices, number_problem, rng
from sorter.perception.lens import LensConfig
from sorter.perception.tracking import TrackerConfig
from sorter.perception.vision import LocatorConfig

DEFAULT_PATH = Path("/etc/produce-sorter/sorter.toml")
"""Where the sorter looks for its config when `--config` is not given."""

GRADES = ("2L", "BM", "BL", "M", "S", "L", "2S", "BS", "C")
"""The nine CUCUMBER-9 grades, the default model's labels."""


# --------------------------------------------------------------------------------------
# Sections


@dataclass
class CameraConfig:
    """The camera above the belt (`sorter run --camera N`)."""

    backend: str = field(default="auto", metadata=choices("auto", "picamera2", "opencv"))
    """auto: Picamera2 when importable and a CSI camera is present, else OpenCV VideoCapture."""
    index: int = field(default=0, metadata=rng(0))
    """Camera number (Picamera2 camera index, or the N of /dev/videoN for OpenCV)."""
    width: int = field(default=640, metadata=rng(64, 4096))
    """Frame width in pixels."""
    height: int = field(default=480, metadata=rng(48, 4096))
    """Frame height in pixels."""
    fps: float = field(default=30.0, metadata=rng(1.0, 240.0))
    """Frames per second requested from the camera."""
    queue_frames: int = field(default=2, metadata=rng(1, 8))
    """Capture queue length; when full the oldest frame is dropped (and counted)."""
    stall_s: float = field(default=2.0, metadata=rng(0.1, 600.0))
    """No frame for this many seconds is a stall: reported, and the controller is put safe."""
    scale_marker: str = ""
    """Scale check: the ArUco dictionary of a marker fixed in view, lying level with the belt
    at its edge (e.g. "DICT_5X5_100"); empty: no check."""
    scale_marker_id: int = field(default=0, metadata=rng(0, 1000))
    """The marker's id in that dictionary."""
    scale_marker_mm: float = field(default=40.0, metadata=rng(1.0, 1000.0))
    """The printed marker's side (black square), mm."""
    scale_check_s: float = field(default=10.0, metadata=rng(0.1, 3600.0))
    """Seconds between scale checks."""
    scale_tolerance: float = field(default=0.01, metadata=rng(0.001, 0.5))
    """Alarm when the marker's scale is off belt.px_per_mm by more than this fraction."""


@dataclass
class ModelConfig:
    """The int8 LiteRT model that grades each item."""

    path: str = ""
    """Path to the .tflite model (with its metadata); empty: the bundled default model."""
    threads: int = field(default=1, metadata=rng(1, 16))
    """LiteRT interpreter threads."""
    shadow: str = ""
    """A candidate .tflite graded beside the active model on every item (shadow mode: the
    active model decides, both verdicts go to the decision log; `sorter shadow-report`).
    Empty: no shadow. Checked at start like `sorter model promote` checks a model."""

    def __post_init__(self) -> None:
        if self.shadow and not self.shadow.endswith(".tflite"):
            raise FieldError("model", "shadow", f"must name a .tflite file, got {self.shadow!r}")
        if self.shadow and self.path and Path(self.shadow) == Path(self.path):
            raise FieldError("model", "shadow", "is the active model itself; name a candidate")


@dataclass
class BeltConfig:
    """Belt geometry: direction, speed, camera scale and the decision line."""

    direction: str = field(
        default="left-to-right", metadata=choices("left-to-right", "right-to-left")
    )
    """Which way items move across the camera image."""
    speed_mm_s: float = field(default=200.0, metadata=rng(0.0, 10000.0, lo_open=True))
    """Belt speed in mm per second (used to time the gates when there is no encoder)."""
    encoder_ticks_per_mm: float = field(default=0.0, metadata=rng(0.0, 1000.0))
    """Encoder ticks per mm of belt; 0: no encoder, gates are timed from speed_mm_s."""
    px_per_mm: float = field(default=0.5, metadata=rng(0.0, 100.0, lo_open=True))
    """Camera scale at the belt surface, in pixels per mm."""
    decision_line: float = field(default=0.5, metadata=rng(0.05, 0.95))
    """Where items are decided, as a fraction of the frame width (0.5: the centre)."""
    timing: str = field(default="configured", metadata=choices("configured", "measured"))
    """Without an encoder, how gates are timed: configured = from speed_mm_s; measured = from
    the belt speed the tracker measures, integrated frame by frame (each SORT is sent
    send_ahead_ms before its gate, so a belt that slows or speeds up is followed)."""
    speed_tolerance: float = field(default=0.05, metadata=rng(0.001, 1.0))
    """Alarm when the measured belt speed is off speed_mm_s by more than this fraction."""
    send_ahead_ms: float = field(default=100.0, metadata=rng(1.0, 10000.0))
    """timing = measured: how long before its gate an item's SORT is sent (more than
    serial.safety_margin_ms plus a frame)."""


@dataclass
class GateConfig:
    """One gate along the belt (keyed by its controller gate number, from 0)."""

    bin: str = ""
    """The bin this gate diverts items into."""
    distance_mm: float = field(default=300.0, metadata=rng(0.0, 100000.0, lo_open=True))
    """Distance along the belt from the decision line to this gate, in mm."""
    pulse_ms: int = field(default=40, metadata=rng(1, 255))
    """How long the gate output is driven when it fires, in ms."""
    offset_ms: float = field(default=0.0, metadata=rng(-10000.0, 10000.0))
    """Calibration: added to this gate's computed fire time, in ms (sorter calibrate)."""


@dataclass
class BinsConfig:
    """Which grade goes to which bin; uncertain items go to the reject bin."""

    reject: str = "reject"
    """The reject/recheck bin: no gate fires, the item rides to the end of the belt."""
    grades: dict[str, str] = field(default_factory=lambda: {g: g for g in GRADES})
    """Grade -> bin. A grade not listed goes to the reject bin."""


@dataclass
class GradeThreshold:
    """Thresholds for one grade, overriding the global ones."""

    confidence: float | None = field(default=None, metadata=rng(0.0, 1.0))
    """Minimum top score for this grade (unset: the global confidence)."""
    margin: float | None = field(default=None, metadata=rng(0.0, 1.0))
    """Minimum gap between the top two scores for this grade (unset: the global margin)."""


@dataclass
class ThresholdsConfig:
    """When an item is certain enough to sort; below these it goes to the reject bin."""

    confidence: float = field(default=0.5, metadata=rng(0.0, 1.0))
    """Minimum score of the top grade (scores are the mean over the item's views)."""
    margin: float = field(default=0.1, metadata=rng(0.0, 1.0))
    """Minimum gap between the top two grades' scores."""
    min_views: int = field(default=1, metadata=rng(1, 100))
    """Minimum number of full views (crops) of an item before it can be graded."""
    review_below: float = field(default=0.6, metadata=rng(0.0, 1.0))
    """With --save-crops, crops whose confidence is below this also go to _review/."""
    per_grade: dict[str, GradeThreshold] = field(default_factory=dict)
    """Per-grade overrides, e.g. [thresholds.per_grade.C] confidence = 0.7."""


@dataclass
class SerialConfig:
    """The link to the gate controller (firmware_bridge)."""

    url: str = "/dev/sorter-controller"
    """Device path, socket://HOST:PORT (emulated firmware) or sim:// (Python simulator)."""
    heartbeat_ms: int = field(default=500, metadata=rng(50, 60000))
    """Controller heartbeat timeout: silent this long, it puts the gates in the safe state."""
    ack_timeout_ms: int = field(default=250, metadata=rng(5, 10000))
    """How long to wait for an ACK before resending a command."""
    retries: int = field(default=3, metadata=rng(0, 20))
    """Resends of an unanswered command before it is reported as timeout."""
    safety_margin_ms: float = field(default=30.0, metadata=rng(0.0, 10000.0))
    """A SORT whose fire time is less than this ahead of now is not sent: logged late."""
    window_ms: float = field(default=5.0, metadata=rng(0.1, 60.0))
    """How far past its target the controller may still fire a gate (else LATE)."""
    loop_timeout_ms: int = field(default=5000, metadata=rng(200, 600000))
    """The sorting loop making no progress this long (at least camera.stall_s + 1 s) silences
    the link, so the controller's own heartbeat timeout puts every gate safe."""


@dataclass
class LoggingConfig:
    """Logging and the decision log."""

    level: str = field(default="INFO", metadata=choices("DEBUG", "INFO", "WARNING", "ERROR"))
    """Log level."""
    db: str = "/var/lib/produce-sorter/decisions.db"
    """SQLite decision log (one row per item, WAL mode)."""
    jsonl: str = ""
    """Also write each decision as a JSON line to this file (empty: off)."""
    crops_dir: str = ""
    """Keep each item's best crop under DIR/<grade>/<item>.png (empty: off)."""


@dataclass
class DashboardConfig:
    """The live web dashboard and Prometheus /metrics."""

    enabled: bool = False
    """Serve the dashboard while running."""
    host: str = "127.0.0.1"
    """Address to bind; anything but localhost requires the token."""
    port: int = field(default=8080, metadata=rng(1, 65535))
    """TCP port."""
    token: str = ""
    """Access token required on every request when bound off localhost."""


LANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,15}")
"""A lane id: 1-16 letters, digits, - or _, starting with a letter or digit (it goes into
file names, systemd instance names and Prometheus labels)."""


@dataclass
class LaneConfig:
    """Which lane of a packhouse this sorter is (docs/fleet.md): one config file per lane."""

    id: str = ""
    """Lane id, e.g. "1" or "east-2": goes into every decision record, every /metrics series
    (label lane) and every saved crop's name. Empty: a single-lane farm (no lane label)."""

    def __post_init__(self) -> None:
        if self.id and not LANE_ID.fullmatch(self.id):
            raise FieldError(
                "lane",
                "id",
                f"must be 1-16 letters, digits, - or _ (starting with a letter or digit), "
                f"got {self.id!r}",
            )


@dataclass
class Config:
    """The whole sorter configuration (one TOML file)."""

    lane: LaneConfig = field(default_factory=LaneConfig)
    """Lane."""
    camera: CameraConfig = field(default_factory=CameraConfig)
    """Camera."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model."""
    belt: BeltConfig = field(default_factory=BeltConfig)
    """Belt geometry."""
    bins: BinsConfig = field(default_factory=BinsConfig)
    """Bins."""
    gates: dict[str, GateConfig] = field(default_factory=lambda: _default_gates())
    """Gates, keyed by controller gate number."""
    thresholds: ThresholdsConfig = field(default_factory=ThresholdsConfig)
    """Thresholds."""
    serial: SerialConfig = field(default_factory=SerialConfig)
    """Serial link."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Logging."""
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    """Dashboard."""
    locate: LocatorConfig = field(default_factory=LocatorConfig)
    """Locating items."""
    track: TrackerConfig = field(default_factory=TrackerConfig)
    """Tracking items."""
    lens: LensConfig = field(default_factory=LensConfig)
    """Camera lens and belt plane (written by `sorter calibrate-camera`)."""

    def gate_for_bin(self, bin_name: str) -> int | None:
        """The gate number that diverts into `bin_name`, or None (reject: no gate)."""
        for key, gate in self.gates.items():
            if gate.bin == bin_name:
                return int(key)
        return None


def _default_gates() -> dict[str, GateConfig]:
    return {str(i): GateConfig(bin=g, distance_mm=200.0 + 100.0 * i) for i, g in enumerate(GRADES)}


# --------------------------------------------------------------------------------------
# Line numbers


_HEADER = re.compile(r"^\s*(\[\[?)\s*(.+?)\s*\]\]?\s*(#.*)?$")
_KEYPART = r'(?:"(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)'
_KEY = re.compile(rf"^\s*({_KEYPART}(?:\s*\.\s*{_KEYPART})*)\s*=")


def _split_key(text: str) -> list[str]:
    parts = re.findall(_KEYPART, text)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


class _KeyLines:
    """Maps dotted key paths to the line (1-based) where the file sets them."""

    def __init__(self, text: str) -> None:
        self.lines: dict[str, int] = {}
        table: list[str] = []
        depth = 0  # open brackets of a multi-line array
        for n, line in enumerate(text.splitlines(), start=1):
            if depth > 0:
                depth += _bracket_balance(line)
                continue
            m = _HEADER.match(line)
            if m and not _KEY.match(line):
                table = _split_key(m.group(2))
                self.lines.setdefault(".".join(table), n)
                continue
            k = _KEY.match(line)
            if k:
                path = ".".join([*table, *_split_key(k.group(1))])
                self.lines.setdefault(path, n)
                depth = max(0, _bracket_balance(line[k.end() :]))

    def find(self, path: str) -> int | None:
        """The line of `path`, or of its nearest parent the file names."""
        parts = path.split(".")
        while parts:
            n = self.lines.get(".".join(parts))
            if n is not None:
                return n
            parts.pop()
        return None


def _bracket_balance(s: str) -> int:
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'', "", s).split("#", 1)[0]
    return s.count("[") - s.count("]")


# --------------------------------------------------------------------------------------
# Loading


class _Loader:
    def __init__(self, source: str, lines: _KeyLines) -> None:
        self.source = source
        self.lines = lines

    def fail(self, path: str, msg: str) -> ConfigError:
        n = self.lines.find(path)
        where = f"{self.source}:{n}" if n is not None else self.source
        return ConfigError(f"{where}: {path}: {msg}; see `sorter config init` for every key")

    def build(self, cls: type, data: Any, path: str) -> Any:
        if not isinstance(data, dict):
            raise self.fail(path, f"must be a table, got {_tname(data)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            sub = f"{path}.{key}" if path else key
            if key not in fields:
                known = ", ".join(sorted(fields))
                raise self.fail(sub, f"unknown key (known keys here: {known})")
            kwargs[key] = self.value(hints[key], value, sub, fields[key].metadata)
        try:
            return cls(**kwargs)
        except FieldError as err:  # a check across keys (the dataclass's __post_init__)
            raise self.fail(f"{path}.{err.key}" if path else err.key, err.problem) from err

    def value(self, tp: Any, value: Any, path: str, meta: Any) -> Any:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            return self.value(args[0], value, path, meta)
        if dataclasses.is_dataclass(tp):
            return self.build(tp, value, path)  # type: ignore[arg-type]
        if origin is dict:
            _, vt = typing.get_args(tp)
            if not isinstance(value, dict):
                raise self.fail(path, f"must be a table, got {_tname(value)}")
            return {str(k): self.value(vt, v, f"{path}.{k}", {}) for k, v in value.items()}
        if origin is tuple:
            targs = typing.get_args(tp)
            if not isinstance(value, list) or len(value) != len(targs):
                raise self.fail(path, f"must be an array of {len(targs)} values, got {value!r}")
            items = [self.value(a, v, path, meta) for a, v in zip(targs, value, strict=True)]
            return tuple(items)
        if tp is bool:
            if not isinstance(value, bool):
                raise self.fail(path, f"must be true or false, got {_tname(value)}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(path, f"must be an integer, got {_tname(value)}")
            return self.check_range(value, path, meta)
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.fail(path, f"must be a number, got {_tname(value)}")
            return self.check_range(float(value), path, meta)
        if tp is str:
            if not isinstance(value, str):
                raise self.fail(path, f"must be a string, got {_tname(value)}")
            problem = choice_problem(value, meta)
            if problem:
                raise self.fail(path, problem)
            return value
        raise TypeError(f"config type {tp!r} not supported")  # a bug, not a user error

    def check_range(self, value: float, path: str, meta: Any) -> Any:
        problem = number_problem(value, meta)  # nan and inf are never allowed
        if problem:
            raise self.fail(path, problem)
        return value


def _tname(v: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(v), type(v).__name__)


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse and validate TOML text into a Config. Raises ConfigError naming key and line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML ({err}); fix the syntax") from err
    loader = _Loader(source, _KeyLines(text))
    config: Config = loader.build(Config, data, "")
    _check_consistency(config, loader)
    return config


def load_config(path: str | Path | None = None) -> Config:
    """Load the config file at `path`, or the defaults when `path` is None.

    Raises ConfigError for a missing/unreadable file or any invalid key.
    """
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(
            f"{p}: config file not found; create one with `sorter config init {p}`"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{p}: cannot read config file ({err}); check the path") from err
    return parse_config(text, str(p))


def _check_consistency(config: Config, loader: _Loader) -> None:
    """Checks that span several keys."""
    for key, gate in config.gates.items():
        if not key.isdigit() or int(key) >= MAX_CONFIG_GATES:
            raise loader.fail(
                f"gates.{key}",
                f"gate keys are controller gate numbers 0..{MAX_CONFIG_GATES - 1} "
                f"(the link's CONFIG carries at most {MAX_CONFIG_GATES} gates)",
            )
        if not gate.bin:
            raise loader.fail(f"gates.{key}.bin", "every gate needs the bin it diverts into")
        if gate.bin == config.bins.reject:
            raise loader.fail(f"gates.{key}.bin", "the reject bin has no gate (items ride on)")
    if config.belt.timing == "measured" and (
        config.belt.send_ahead_ms <= config.serial.safety_margin_ms
    ):
        raise loader.fail(
            "belt.send_ahead_ms",
            f"must be above serial.safety_margin_ms ({config.serial.safety_margin_ms:g} ms), "
            "or every SORT would be late",
        )
    bins_with_gates = [g.bin for g in config.gates.values()]
    dupes = {b for b in bins_with_gates if bins_with_gates.count(b) > 1}
    if dupes:
        raise loader.fail("gates", f"bin {sorted(dupes)[0]!r} has more than one gate")
    for grade, bin_name in config.bins.grades.items():
        if bin_name != config.bins.reject and bin_name not in bins_with_gates:
            raise loader.fail(
                f"bins.grades.{grade}",
                f"bin {bin_name!r} has no gate; add a [gates.N] with bin = {bin_name!r}",
            )


# --------------------------------------------------------------------------------------
# Overrides from the command line


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """A copy of `config` with dotted keys replaced (None values are skipped).

    Values are checked like file values; an error names the key as a command-line option.
    """
    loader = _Loader("command line", _KeyLines(""))
    out = config
    for dotted, value in overrides.items():
        if value is None:
            continue
        section_name, key = dotted.split(".", 1)
        section = getattr(out, section_name)
        f = next((f for f in dataclasses.fields(section) if f.name == key), None)
        if f is None:
            raise KeyError(dotted)  # a bug in the caller
        hint = typing.get_type_hints(type(section))[key]
        checked = loader.value(hint, value, dotted, f.metadata)
        try:
            replaced = dataclasses.replace(section, **{key: checked})
        except FieldError as err:  # a check across keys
            raise loader.fail(f"{section_name}.{err.key}", err.problem) from err
        out = dataclasses.replace(out, **{section_name: replaced})
    return out


# --------------------------------------------------------------------------------------
# The commented example


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (read from the source with ast)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for stmt, nxt in itertools.pairwise(body):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _toml_value(v: Any) -> str:
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(float(v))  # a numpy float's repr names its type
    if isinstance(v, int):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(v)


def toml_value(v: Any) -> str:
    """A config value as TOML text (numbers as repr: they read back exactly)."""
    return _toml_value(v)


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_value(k)


def _comment(text: str) -> list[str]:
    return [f"# {line}".rstrip() for line in text.splitlines()]


def _emit_table(out: list[str], header: str, obj: Any, *, document: bool = True) -> None:
    cls = type(obj)
    docs = field_docs(cls) if document else {}
    out.append("")
    if document:
        out.extend(_comment(inspect.cleandoc(cls.__doc__ or "")))
    out.append(f"[{header}]")
    nested: list[tuple[str, Any, str, Any]] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, dict):
            nested.append((f.name, value, docs.get(f.name, ""), typing.get_type_hints(cls)[f.name]))
            continue
        out.extend(_comment(docs.get(f.name, "")))
        allowed = f.metadata.get("choices")
        if allowed and document:
            out.append(f"# one of: {', '.join(allowed)}")
        if value is None:
            out.append(f"# {f.name} = ")
        else:
            out.append(f"{f.name} = {_toml_value(value)}")
    for name, value, doc, hint in nested:
        _emit_dict(out, f"{header}.{name}", value, doc, typing.get_args(hint)[1])


def _emit_dict(out: list[str], header: str, value: dict[str, Any], doc: str, vt: Any) -> None:
    out.append("")
    out.extend(_comment(doc))
    if dataclasses.is_dataclass(vt):
        for i, (k, v) in enumerate(value.items()):
            _emit_table(out, f"{header}.{_toml_key(k)}", v, document=i == 0)
        if not value:  # show the shape, commented out
            docs = field_docs(vt)  # type: ignore[arg-type]
            out.extend(_comment(inspect.cleandoc(vt.__doc__ or "")))
            out.append(f"# [{header}.NAME]")
            for f in dataclasses.fields(vt):
                out.extend(_comment(docs.get(f.name, "")))
                out.append(f"# {f.name} = ")
        return
    if not value:
        out.append(f"# [{header}]   (none set)")
        return
    out.append(f"[{header}]")
    out.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())


def example_toml(config: Config | None = None) -> str:
    """A fully commented TOML file for `config` (default: the defaults)."""
    config = config or Config()
    out = [
        "# produce-sorter configuration (generated by `sorter config init`).",
        "# Every key is optional: a missing key takes the default shown here.",
        "# Check a file with `sorter config check PATH`. Command-line flags override it.",
    ]
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "gates":
            out.append("")
            out.extend(
                _comment(
                    "Gates along the belt, keyed by controller gate number (0 = nearest the\n"
                    "camera). Each diverts one bin; the reject bin has no gate."
                )
            )
            for i, (k, g) in enumerate(value.items()):
                _emit_table(out, f"gates.{_toml_key(k)}", g, document=i == 0)
            continue
        _emit_table(out, f.name, value)
    return "\n".join(out) + "\n"
