"""Summarise a py-spy ``--format raw`` profile (collapsed stacks): share of samples per function.

    .venv/bin/python -m benchmarks.profile FILE [--top 20]

``self`` is the share of samples where the function was running (the leaf), ``total`` the share where it
was anywhere on the stack (counted once per sample). Threads are kept apart in the first frame.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{m['func']} ({m['file']})"


def summarise(path: Path, top: int = 20) -> dict[str, Any]:
    self_count: Counter[str] = Counter()
    total_count: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0].split(":", 1)[-1].strip() if frames[0].startswith("thread") else "?"
        names = [_name(f) for f in frames[1:]] if frames[0].startswith("thread") else [_name(f) for f in frames]
        samples += count
        threads[thread] += count
        if names:
            self_count[names[-1]] += count
        for name in set(names):
            total_count[name] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / samples, 1)) for name, n in counter.most_common(top)] if samples else []

    return {"samples": samples, "threads": share(threads), "self": share(self_count),
            "total": share(Counter({k: v for k, v in total_count.items()
                                    if "asyncio" not in k and "runpy" not in k and "<module>" not in k
                                    and "threading" not in k}))}


def render(summary: dict[str, Any]) -> str:
    lines = [f"{summary['samples']} samples"]
    for key, title in (("threads", "by thread"), ("self", "self time (leaf)"), ("total", "total (on the stack)")):
        lines.append(f"  {title}:")
        lines.extend(f"    {pct:5.1f}%  {name}" for name, pct in summary[key])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    print(render(summarise(args.file, args.top)))


if __name__ == "__main__":
    main()
