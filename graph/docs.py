"""The core-op table, generated from the registry (``coretune ops``, docs/ops.md)."""

from .registry import all_ops

_HEADER = ("op", "level", "pattern", "inputs", "attributes", "meaning")


def _rows():
    for op in all_ops():
        yield (
            op.name,
            str(op.level),
            op.pattern.name.lower(),
            ", ".join(op.inputs),
            "; ".join(a.describe() for a in op.attrs) or "-",
            op.doc,
        )


def ops_table():
    from rich.table import Table

    table = Table(title="coretune core ops")
    for column in _HEADER:
        # Op names and kinds must stay whole so they can be grepped; prose may wrap.
        table.add_column(column, overflow="fold", no_wrap=column in ("op", "level", "pattern"))
    for row in _rows():
        table.add_row(*row)
    return table


def ops_markdown() -> str:
    lines = [
        "# Core ops",
        "",
        "Generated from the op registry by `coretune ops --markdown`; a test keeps it current.",
        "Levels: 1 basic, 2 spatial (NCHW), 3 data movement, 4 reductions. `x?` is an optional",
        "input, `*xs` a variadic one.",
        "",
        "| " + " | ".join(_HEADER) + " |",
        "|" + "---|" * len(_HEADER),
    ]
    for row in _rows():
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n"
