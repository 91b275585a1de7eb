"""The TOML config: defaults, the generated example, and errors naming key and line."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from sorter import config as cfg
from sorter.errors import ConfigError


def _line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def test_example_parses_back_to_the_defaults() -> None:
    text = cfg.example_toml()
    assert cfg.parse_config(text, "example.toml") == cfg.Config()


def test_example_documents_every_field() -> None:
    text = cfg.example_toml()
    for section in dataclasses.fields(cfg.Config):
        if section.name == "gates":
            classes = [cfg.GateConfig]
        else:
            classes = [section.default_factory().__class__]  # type: ignore[misc]
        if section.name == "thresholds":
            classes.append(cfg.GradeThreshold)
        for cls in classes:
            docs = cfg.field_docs(cls)
            for f in dataclasses.fields(cls):
                assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
                # the docstring's first line appears as a comment in the example
                assert f"# {docs[f.name].splitlines()[0]}" in text, f.name


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text("")
    assert cfg.load_config(p) == cfg.Config()


def test_values_are_read(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text(
        '[belt]\nspeed_mm_s = 350\ndirection = "right-to-left"\n'
        '[serial]\nurl = "sim://"\n'
        "[thresholds.per_grade.C]\nconfidence = 0.8\n"
    )
    c = cfg.load_config(p)
    assert c.belt.speed_mm_s == 350.0 and isinstance(c.belt.speed_mm_s, float)
    assert c.belt.direction == "right-to-left"
    assert c.serial.url == "sim://"
    assert c.thresholds.per_grade["C"].confidence == 0.8
    assert c.thresholds.per_grade["C"].margin is None


@pytest.mark.parametrize(
    ("edit", "key", "needle", "words"),
    [
        (("threads = 1", "threads = 1\nthredz = 2"), "model.thredz", "thredz", "unknown key"),
        (("speed_mm_s = 200.0", "speed_mm_s = -5"), "belt.speed_mm_s", "speed_mm_s", "> 0"),
        (("pulse_ms = 40", 'pulse_ms = "x"'), "gates.0.pulse_ms", "pulse_ms", "integer"),
        (("enabled = false", "enabled = 1"), "dashboard.enabled", "enabled =", "true or false"),
        (
            ('method = "color"', 'method = "magic"'),
            "locate.method",
            "method =",
            "one of color, background",
        ),
        (("port = 8080", "port = 70000"), "dashboard.port", "port = 70000", "<= 65535"),
        (("confidence = 0.5", "confidence = 1.5"), "thresholds.confidence", "= 1.5", "<= 1"),
    ],
)
def test_errors_name_key_and_line(
    tmp_path: Path, edit: tuple[str, str], key: str, needle: str, words: str
) -> None:
    text = cfg.example_toml().replace(*edit, 1)
    assert text != cfg.example_toml()
    p = tmp_path / "sorter.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        cfg.load_config(p)
    msg = str(info.value)
    line = _line_of(text, needle)
    assert msg.startswith(f"{p}:{line}: {key}: "), msg
    assert words in msg
    assert "\n" not in msg


def test_nested_unknown_key_line(tmp_path: Path) -> None:
    text = '# comment\n\n[thresholds.per_grade."2L"]\nconfidence = 0.9\nmargn = 0.2\n'
    with pytest.raises(ConfigError, match=r"^s\.toml:5: thresholds\.per_grade\.2L\.margn: unknown"):
        cfg.parse_config(text, "s.toml")


def test_dotted_keys_and_multiline_arrays_keep_line_numbers() -> None:
    lines = cfg._KeyLines("a = [\n 1,\n 2,\n]\n[belt]\nspeed_mm_s = 1\ncamera.index = 3\n")
    assert lines.find("a") == 1
    assert lines.find("belt.speed_mm_s") == 6
    assert lines.find("belt.camera.index") == 7
    assert lines.find("belt.nothing") == 5


def test_toml_syntax_error(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[belt\nspeed = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML \(.*line 1"):
        cfg.load_config(p)


def test_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found; create one with"):
        cfg.load_config(tmp_path / "nope.toml")


def test_bin_without_gate_is_an_error() -> None:
    text = '[bins.grades]\n2L = "big"\n'
    with pytest.raises(ConfigError, match=r"^x:2: bins\.grades\.2L: bin 'big' has no gate"):
        cfg.parse_config(text, "x")


def test_two_gates_for_one_bin_is_an_error() -> None:
    text = '[gates.0]\nbin = "2L"\n[gates.1]\nbin = "2L"\n[bins.grades]\n2L = "2L"\n'
    with pytest.raises(ConfigError, match="more than one gate"):
        cfg.parse_config(text, "x")


def test_gate_beyond_what_config_carries_is_an_error() -> None:
    """CONFIG's 32-byte payload holds 25 pulse lengths: gate 25 would fail at connect
    time (a frame too long to build), so the config file names it first."""
    ok = '[gates.24]\nbin = "big"\n[bins.grades]\n2L = "big"\n'
    assert cfg.parse_config(ok, "x").gates["24"].bin == "big"
    with pytest.raises(ConfigError, match=r"^x:1: gates\.25: gate keys .* 0\.\.24 .*25 gates"):
        cfg.parse_config('[gates.25]\nbin = "x"\n', "x")


def test_gate_for_bin() -> None:
    c = cfg.Config()
    assert c.gate_for_bin("2L") == 0
    assert c.gate_for_bin("C") == 8
    assert c.gate_for_bin("reject") is None


def test_overrides_are_checked() -> None:
    c = cfg.apply_overrides(cfg.Config(), {"serial.url": "sim://", "model.threads": 2, "x.y": None})
    assert c.serial.url == "sim://" and c.model.threads == 2
    assert cfg.Config().serial.url != "sim://"  # the original is untouched
    with pytest.raises(ConfigError, match=r"^command line: model\.threads: must be >= 1"):
        cfg.apply_overrides(cfg.Config(), {"model.threads": 0})


def test_deploy_example_is_current() -> None:
    """deploy/sorter.example.toml is `sorter config init`'s output (regenerate if this fails)."""
    path = Path(__file__).resolve().parents[1] / "deploy" / "sorter.example.toml"
    assert path.read_text() == cfg.example_toml()


def test_example_has_no_uncommented_none() -> None:
    assert not re.search(r"^\w+ = $", cfg.example_toml(), re.M)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "+nan"])
@pytest.mark.parametrize(
    ("section", "key"),
    [("thresholds", "confidence"), ("belt", "speed_mm_s"), ("gates.0", "offset_ms")],
)
def test_non_finite_numbers_are_rejected(
    tmp_path: Path, value: str, section: str, key: str
) -> None:
    """TOML allows nan and inf; no setting means anything with them (issue 11 item 5:
    `confidence = nan` used to pass `sorter config check`)."""
    text = f"[{section}]\n{key} = {value}\n"
    if section == "gates.0":
        text = f'[gates.0]\nbin = "2L"\n{key} = {value}\n'
    p = tmp_path / "sorter.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        cfg.load_config(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}:{_line_of(text, key)}: {section}.{key}: must be a finite number")
    assert "\n" not in msg


def test_non_finite_override_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"^command line: belt\.speed_mm_s: must be a finite"):
        cfg.apply_overrides(cfg.Config(), {"belt.speed_mm_s": float("inf")})


def test_config_check_rejects_nan_confidence(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sorter.cli import app

    p = tmp_path / "sorter.toml"
    p.write_text("[thresholds]\nconfidence = nan\n")
    result = CliRunner().invoke(app, ["config", "check", str(p)])
    assert result.exit_code == 2
    assert f"{p}:2: thresholds.confidence: must be a finite number" in result.output


def test_locate_and_track_load_into_the_perception_dataclasses() -> None:
    from sorter.perception.tracking import TrackerConfig
    from sorter.perception.vision import LocatorConfig

    c = cfg.parse_config('[locate]\nscale = 0.25\nmethod = "background"\n[track]\nmax_missed = 9\n')
    assert isinstance(c.locate, LocatorConfig) and isinstance(c.track, TrackerConfig)
    assert (c.locate.scale, c.locate.method, c.track.max_missed) == (0.25, "background", 9)
    # one default: what `sorter run` has always done with no [locate] method (color)
    assert cfg.Config().locate == LocatorConfig() and LocatorConfig().method == "color"


def test_a_check_across_keys_names_the_key_and_line() -> None:
    text = "[locate]\nscale = 0.5\nmin_area_px = 5000.0\nmax_area_px = 4000.0\n"
    with pytest.raises(ConfigError, match=r"^s\.toml:3: locate\.min_area_px: must be smaller"):
        cfg.parse_config(text, "s.toml")
    with pytest.raises(ConfigError, match=r"^command line: locate\.min_area_px: must be smaller"):
        cfg.apply_overrides(cfg.Config(), {"locate.min_area_px": 1e6})


def _float_keys(tp: type, prefix: str) -> list[tuple[str, str]]:
    """(section, key) of every float field reachable from the dataclass `tp` (gates and
    per-grade overrides through one example entry)."""
    import dataclasses
    import typing

    out: list[tuple[str, str]] = []
    hints = typing.get_type_hints(tp)
    for f in dataclasses.fields(tp):
        t = hints[f.name]
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if t is float or (args == [float] and typing.get_origin(t) is not dict):
            out.append((prefix, f.name))
        elif dataclasses.is_dataclass(t):
            out += _float_keys(t, f"{prefix}.{f.name}" if prefix else f.name)
        elif typing.get_origin(t) is dict and dataclasses.is_dataclass(typing.get_args(t)[1]):
            entry = "0" if f.name == "gates" else "M"
            name = f"{prefix}.{f.name}" if prefix else f.name
            out += _float_keys(typing.get_args(t)[1], f"{name}.{entry}")
    return out


FLOAT_KEYS = _float_keys(cfg.Config, "")


def test_every_float_key_is_found() -> None:
    keys = {f"{s}.{k}" for s, k in FLOAT_KEYS}
    for key in ("thresholds.confidence", "thresholds.margin", "belt.speed_mm_s",
                "thresholds.per_grade.M.confidence", "thresholds.per_grade.M.margin",
                "gates.0.distance_mm", "camera.stall_s", "serial.safety_margin_ms"):  # fmt: skip
        assert key in keys
    assert len(keys) >= 20


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(("section", "key"), FLOAT_KEYS)
def test_config_check_rejects_non_finite_in_every_float_key(
    tmp_path: Path, section: str, key: str, value: str
) -> None:
    """Every float key of the config, not a sample of them: `sorter config check` exits 2
    with one line naming the file, line and key."""
    from typer.testing import CliRunner

    from sorter.cli import app

    text = f"[{section}]\n{key} = {value}\n"
    if section == "gates.0":
        text = f'[gates.0]\nbin = "2L"\n{key} = {value}\n'
    p = tmp_path / "sorter.toml"
    p.write_text(text)
    result = CliRunner().invoke(app, ["config", "check", str(p)])
    assert result.exit_code == 2, result.output
    line = _line_of(text, key)
    out = result.output.strip()
    assert out.startswith(
        f"error: {p}:{line}: {section}.{key}: must be a finite number, got {float(value)}"
    )
    assert "\n" not in out
