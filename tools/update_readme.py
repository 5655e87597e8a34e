"""Re-run every example in README.md and put its real output back in place.

Each ```console block in README.md holds one or more lines starting with "$ "; this runs each such command
with bash from the repository root (COLUMNS=80, the width sdvram lays its output out for), stdout and stderr
together as a terminal shows them, and rewrites the block as the commands followed by their output.
Run it after changing anything the examples print: ``python tools/update_readme.py``. Needs sdvram
installed with the profile extra.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

README = Path("README.md")
BLOCK = re.compile(r"```console\n(.*?)```", re.DOTALL)
WIDTH = "80"  # columns for the examples: what sdvram is laid out for


def run(command: str) -> str:
    env = {**os.environ, "COLUMNS": WIDTH, "TERM": "dumb"}
    proc = subprocess.run(["bash", "-c", command], capture_output=False, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env, check=False)
    return proc.stdout.rstrip()


def render(block: re.Match[str]) -> str:
    commands = [line[2:] for line in block.group(1).splitlines() if line.startswith("$ ")]
    parts = []
    for command in commands:
        print(f"$ {command}", flush=True)
        parts.append(f"$ {command}\n{run(command)}")
    return "```console\n" + "\n".join(parts) + "\n```"


def main() -> None:
    text = README.read_text(encoding="utf-8")
    README.write_text(BLOCK.sub(render, text), encoding="utf-8")


if __name__ == "__main__":
    main()
