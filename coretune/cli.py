"""The ``coretune`` command line: a thin layer over the Python API.

Exit codes: 0 success, 1 a user error (one line, no traceback unless --verbose), 2 usage.
"""

import click
import numpy as np

from .errors import CoretuneError


def one_line(message: str, limit: int = 600) -> str:
    """A multi-line message (a header, then one line per offender) as one line, cut at
    ``limit`` characters; --verbose shows it whole, with the traceback."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = " ".join(lines[:1] + ["; ".join(lines[1:])] if len(lines) > 1 else lines)
    if len(text) > limit:
        text = text[:limit].rstrip() + " ... (--verbose shows the whole message)"
    return text


class _Group(click.Group):
    """Turns CoretuneError into exit code 1 with a one-line message."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CoretuneError as exc:
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            click.echo(f"error: {one_line(str(exc))}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group)
@click.option("--verbose", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="coretune")
@click.pass_context
def main(ctx, verbose):
    """coretune: ONNX in, core ops, tuned OpenCL/CUDA/Metal kernels out.

    Exit codes: 0 success, 1 a user error (one line on stderr; --verbose shows the
    traceback), 2 a usage error, 130 interrupted (Ctrl-C).

    \b
    Examples:
      coretune ops                                 # the core-op table
      coretune show examples/tiny_net.onnx --run   # a model as core ops, run with numpy
      coretune devices                             # OpenCL/CUDA devices and their limits
      coretune tune model.onnx --trials 400        # tune, then report the speedups
      coretune compile model.onnx --log tuning_logs/model.pthread-amd-epyc.jsonl -o model.ctm
      coretune run model.ctm --input input=x.npy   # run once, print the outputs
      coretune bench model.onnx --log LOG          # default vs tuned vs onnxruntime
      coretune log summary LOG                     # what a tuning log holds
    """
    ctx.obj = {"verbose": verbose}
    _warnings_as_lines()


def _warnings_as_lines() -> None:
    """coretune's own warnings (e.g. a tuning log's skipped lines, named with file:line) as one
    ``warning:`` line on stderr, not Python's source-location format."""
    import warnings

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.startswith("coretune"):
            click.echo(f"warning: {one_line(str(message))}", err=True)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


@main.command()
@click.option("--markdown", is_flag=True, help="Print the table as Markdown (docs/ops.md).")
def ops(markdown):
    """Print the core-op table: op, level, pattern, attributes.

    \b
    Example:
      coretune ops --markdown > docs/ops.md
    """
    from .graph.docs import ops_markdown, ops_table

    if markdown:
        click.echo(ops_markdown(), nl=False)
    else:
        from rich.console import Console

        Console().print(ops_table())


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--run",
    "run_it",
    is_flag=True,
    help="Run it with the numpy reference executor "
    "on random inputs and print the outputs' summary.",
)
@click.option("--seed", default=0, show_default=True, help="Seed for the random inputs.")
def show(model, run_it, seed):
    """Import an ONNX model and print its core-op graph.

    \b
    Example:
      coretune show examples/tiny_net.onnx --run
    """
    from . import import_onnx
    from .graph import run_reference
    from .graph.random import random_inputs

    graph = import_onnx(model)
    click.echo(str(graph))
    if run_it:
        inputs = random_inputs(graph, seed)
        click.echo(f"\nrunning with the reference executor on random inputs (seed {seed}):")
        for name, value in zip(graph.outputs, run_reference(graph, inputs), strict=True):
            flat = value.astype(np.float64).ravel()
            head = ", ".join(f"{v:.4g}" for v in flat[:6]) + (", ..." if flat.size > 6 else "")
            click.echo(f"  {name}: {value.dtype}{list(value.shape)} [{head}]")


def _register() -> None:
    from .cli_bench import bench
    from .cli_log import log_group
    from .cli_model import compile_command, devices, run
    from .cli_tune import tune
    from .cli_worker import worker

    for command in (tune, compile_command, run, bench, devices, log_group, worker):
        main.add_command(command)


_register()
