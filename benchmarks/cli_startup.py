"""Start-up time of the ``dus-gym`` command against importing gymnasium, measured in one run.

    python benchmarks/cli_startup.py              # 10 rounds, each command in a fresh process
    python benchmarks/cli_startup.py --readme docs/getting-started.md   # also into that page's cli-startup block

Each round runs every command once, in turn, in a fresh interpreter (so the rounds share the
machine's state alike); the table gives the median wall time of each and its ratio to
``python -c "import gymnasium"``, the baseline. ``dus-gym --help`` imports no command module
(dus_gym.cli imports a command's module only when that command runs).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from dus_gym.experiments.results import check_readme_block, table_header, table_row, write_readme_block

BLOCK = "cli-startup"

COMMANDS = {
    'python -c "import gymnasium"': [sys.executable, "-c", "import gymnasium"],
    'python -c "import dus_gym"': [sys.executable, "-c", "import dus_gym"],
    "dus-gym --help": [sys.executable, "-m", "dus_gym", "--help"],
    "dus-gym prepare --help": [sys.executable, "-m", "dus_gym", "prepare", "--help"],
    "dus-gym run --help": [sys.executable, "-m", "dus_gym", "run", "--help"],
}
BASELINE = 'python -c "import gymnasium"'


def main() -> None:
    """Time every command in turn, in fresh processes; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--readme", metavar="FILE", help=f"also write the table into this file's {BLOCK} block")
    args = parser.parse_args()
    if args.readme:
        check_readme_block(Path(args.readme), BLOCK)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times[BASELINE])
    lines = table_header(["command", f"median s ({args.rounds} runs)", "ratio to `import gymnasium`"])
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(table_row([f"`{name}`", f"{median:.2f}", f"{median / base:.2f}x"]))
    table = "\n".join(lines)
    print(table)
    if args.readme:
        command = "python benchmarks/cli_startup.py " + " ".join(sys.argv[1:])
        write_readme_block(Path(args.readme), BLOCK, table, command)


if __name__ == "__main__":
    main()
