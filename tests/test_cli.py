"""The `encoder-audit` command: exit codes, messages, one transaction per command."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from audit_lib.cli import app

runner = CliRunner()


def test_subjects_add_list_show_erase(db_url, face_dir):
    r = runner.invoke(app, ["subjects", "add", "--name", "Ada Example", "--alias", "Ada E.",
                            "--legal-basis", "GDPR 6(1)(f)", "--photos", str(face_dir)])
    assert r.exit_code == 0, r.output
    assert "3 reference photos" in r.output
    r = runner.invoke(app, ["subjects", "list"])
    assert "Ada Example" in r.output
    sid = r.output.split()[0]
    assert '"Ada E."' in runner.invoke(app, ["subjects", "show", sid]).output
    assert runner.invoke(app, ["subjects", "erase", sid]).exit_code == 2  # needs --yes
    r = runner.invoke(app, ["subjects", "erase", sid, "--yes"])
    assert r.exit_code == 0
    r = runner.invoke(app, ["subjects", "list"])
    assert "Ada Example" not in r.output and "[erased]" in r.output


def test_bad_input_exits_nonzero_with_message(db_url, tmp_path):
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["subjects", "add", "--name", "X", "--legal-basis", "consent",
                            "--photos", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "no image files" in r.output
    r = runner.invoke(app, ["models", "add", "--name", "m", "--role", "suspect",
                            "--endpoint", "gopher://x/embed"])
    assert r.exit_code == 2 and "not an http(s) URL" in r.output
    r = runner.invoke(app, ["models", "add", "--name", "m", "--role", "owned",
                            "--architecture", "tiny-clip", "--weights", str(tmp_path / "none.st")])
    assert r.exit_code == 2 and "no such file" in r.output
    assert "no models registered" in runner.invoke(app, ["models", "list"]).output


def test_console_script_upgrade_on_fresh_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    exe = [sys.executable, "-m", "audit_lib.cli"]
    env = {"AUDIT_DATABASE_URL": url, "PATH": "/usr/bin:/bin"}
    r = subprocess.run([*exe, "models", "list"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "db upgrade" in r.stderr
    r = subprocess.run([*exe, "db", "upgrade"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*exe, "models", "list"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "no models registered" in r.stdout
