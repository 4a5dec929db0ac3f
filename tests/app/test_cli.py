"""The ``recon-audit`` group: every command listed and run, the science's commands
(:mod:`app.science_cli`) loaded only when one of them runs, so the service's start without
torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from app.cli import SCIENCE_COMMANDS, main

SERVICE_COMMANDS = {"admin", "migrate", "serve", "signer", "verify", "worker"}


def test_console_script_is_installed() -> None:
    exe = shutil.which("recon-audit") or str(Path(__file__).parents[2] / ".venv/bin/recon-audit")
    done = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0
    assert "recon-audit" in done.stdout


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line}
    assert listed == SERVICE_COMMANDS | set(SCIENCE_COMMANDS)
    context = click.Context(main)
    for name in SCIENCE_COMMANDS:  # each resolves to its command
        command = main.get_command(context, name)
        assert command is not None
        assert command.name == name
    assert main.get_command(context, "no-such-command") is None


def test_the_service_commands_load_no_science() -> None:
    """A fresh interpreter runs ``admin --help`` and ``manifest-schema``: torch and the
    science's commands are imported for the second only, onnx for neither (only loading a
    network needs it)."""
    probe = (
        "import json, sys\n"
        "from click.testing import CliRunner\n"
        "from app.cli import main\n"
        "heavy = ('torch', 'onnx', 'app.science_cli')\n"
        "seen = []\n"
        "for args in (['admin', '--help'], ['manifest-schema']):\n"
        "    assert CliRunner().invoke(main, args).exit_code == 0\n"
        "    seen.append(sorted(m for m in heavy if m in sys.modules))\n"
        "print(json.dumps(seen))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == [[], ["app.science_cli", "torch"]]
