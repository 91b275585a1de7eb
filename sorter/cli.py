"""`sorter`: the device-side command line. Thin: each command parses and delegates.

Each sub-command lives in its own module under sorter/commands/ and is registered here.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="sorter",
    help="Grade and sort produce on the belt (device runtime; LiteRT, never TensorFlow).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# --- registrations (one line per command module) ---
from sorter.commands import calibrate as _calibrate_cmd  # noqa: E402
from sorter.commands import calibrate_camera as _calibrate_camera_cmd  # noqa: E402
from sorter.commands import classify as _classify_cmd  # noqa: E402
from sorter.commands import collect as _collect_cmd  # noqa: E402
from sorter.commands import config as _config_cmd  # noqa: E402
from sorter.commands import controller as _controller_cmd  # noqa: E402
from sorter.commands import doctor as _doctor_cmd  # noqa: E402
from sorter.commands import model as _model_cmd  # noqa: E402
from sorter.commands import run as _run_cmd  # noqa: E402
from sorter.commands import shadow as _shadow_cmd  # noqa: E402
from sorter.commands import simulate as _simulate_cmd  # noqa: E402

app.add_typer(_config_cmd.app, name="config")
app.add_typer(_controller_cmd.app, name="controller")  # sorter controller ...
app.add_typer(_model_cmd.app, name="model")  # sorter model promote / rollback
app.command("run")(_run_cmd.run_command)  # sorter run
_classify_cmd.register(app)  # sorter classify, sorter bench
_simulate_cmd.register(app)  # sorter simulate-belt, sorter calibrate-belt
_doctor_cmd.register(app)  # sorter doctor
_calibrate_cmd.register(app)  # sorter calibrate
_calibrate_camera_cmd.register(app)  # sorter calibrate-camera
_collect_cmd.register(app)  # sorter collect
_shadow_cmd.register(app)  # sorter shadow-report


def main() -> None:
    app()


if __name__ == "__main__":
    main()
