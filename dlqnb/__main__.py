"""``python -m dlqnb``: command-line entry points (``report``; benchmarks are ``python -m dlqnb.bench``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("report",):
        print("usage: python -m dlqnb report [NOTEBOOK ...] [-p NAME VALUE ...] [--out DIR]", file=sys.stderr)
        return 2
    from dlqnb.reports import report

    return report.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
