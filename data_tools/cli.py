"""`xlc data ...` commands: convert, build, embed, stats. User errors raise `DataError`/`ConfigError`; the top-level
`xlc` CLI turns them into one line and exit status 2 (here, `python -m data_tools.cli` does the same)."""

from __future__ import annotations

from pathlib import Path

import typer

from xlc.errors import ConfigError

app = typer.Typer(help="Prepare dataset directories (Parquet) for xlc.", no_args_is_help=True)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def build(ctx: typer.Context, name: str = typer.Argument(..., help="dataset: icd10cm, synthetic, ..."),
          out_dir: Path = typer.Argument(..., help="dataset directory to create")) -> None:
    """Build a real dataset or `synthetic` into OUT_DIR; options as `--key value` (see each builder)."""
    from data_tools.builders import BUILDERS, parse_options

    from data_tools.writer import check_out_dir

    options = parse_options(name, list(ctx.args))
    check_out_dir(out_dir, options.get("overwrite", False))
    path = BUILDERS[name](str(out_dir), **options)
    _print_summary(path)


@app.command()
def convert(train: Path = typer.Argument(..., help="XC-format train file"),
            test: Path = typer.Argument(..., help="XC-format test file"),
            out_dir: Path = typer.Argument(..., help="dataset directory to create"),
            format: str = typer.Option("xc", "--format", help="input format: xc"),
            name: str = typer.Option("", help="dataset name (default: OUT_DIR's name)"),
            overwrite: bool = typer.Option(False, help="replace OUT_DIR if it exists")) -> None:
    """Convert Extreme Classification Repository text files into a dataset directory."""
    from data_tools.xc import convert_xc

    if format != "xc":
        raise ConfigError(f"--format={format!r}: expected one of xc")
    path = convert_xc(train, test, out_dir, name=name or out_dir.name, overwrite=overwrite)
    _print_summary(path)


@app.command()
def embed(src: Path = typer.Argument(..., help="dataset directory with a text column"),
          out_dir: Path = typer.Argument(..., help="dataset directory to create"),
          batch_size: int = typer.Option(2048, help="rows read (and length-sorted for encoding) at a time"),
          max_length: int = typer.Option(128, help="word pieces kept per text"),
          overwrite: bool = typer.Option(False, help="replace OUT_DIR if it exists")) -> None:
    """Copy SRC with MiniLM sentence embeddings of its text as the features (packaged model, offline)."""
    from data_tools.embed import embed_dataset

    _print_summary(embed_dataset(src, out_dir, batch_size=batch_size, max_length=max_length, overwrite=overwrite))


@app.command()
def stats(directory: Path = typer.Argument(..., help="dataset directory"),
          plot: Path = typer.Option(None, help="histogram PNG path (default: DIR/label_frequency.png)")) -> None:
    """Samples, labels, labels per sample, label-frequency quantiles and a head/tail histogram PNG."""
    from data_tools.stats import report

    typer.echo(report(directory, plot))


def _print_summary(path: Path) -> None:
    from xlc.data import read_meta

    meta = read_meta(path)
    typer.echo(f"{path}: {meta.num_train} train + {meta.num_test} test rows, {meta.num_labels} labels"
               + (f", {meta.num_features} features" if meta.sparse else ""))


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: the same one-line-and-exit-2 contract as `xlc` for user errors."""
    from xlc.errors import XlcError

    try:
        app(args=argv, standalone_mode=False)
    except XlcError as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            return 2
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
