"""The embedded demo behind ``make demo``: a fresh SQLite store, end to end.

Registers a sample subject and a sample model, then lists them, through the same
``encoder-audit`` commands an operator uses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from audit_lib.config import PROJECT_ROOT


def run(cmd: list[str], env: dict[str, str]) -> None:
    shown = " ".join(cmd)
    sys.stdout.write(f"\n$ encoder-audit {shown}\n")
    sys.stdout.flush()
    subprocess.run([sys.executable, "-m", "audit_lib.cli", *cmd], env=env, check=True)


def main() -> None:
    from audit_lib.sample_data import sample_person_photos

    demo_dir = PROJECT_ROOT / "var" / "demo"
    if demo_dir.exists():
        shutil.rmtree(demo_dir)
    demo_dir.mkdir(parents=True)
    env = {**os.environ, "AUDIT_DATA_DIR": str(demo_dir),
           "AUDIT_DATABASE_URL": f"sqlite:///{demo_dir / 'evidence.sqlite'}"}
    photos = demo_dir / "sample-photos"
    sample_person_photos(photos)
    run(["db", "upgrade"], env)
    run(["subjects", "add", "--name", "Marta Lindqvist", "--alias", "M. Lindqvist",
         "--legal-basis", "GDPR Art. 6(1)(f), data subject request", "--photos", str(photos)], env)
    run(["models", "add", "--name", "vendor-embed-api", "--role", "suspect",
         "--endpoint", "http://127.0.0.1:8765/v1/embeddings", "--credential", "VENDOR_API_KEY",
         "--capabilities", "image,text"], env)
    run(["subjects", "list"], env)
    run(["models", "list"], env)
    sys.stdout.write(f"\nevidence store: {demo_dir / 'evidence.sqlite'}\n")


if __name__ == "__main__":
    main()
