"""Entry point of the `sppo` command."""

import typer

from cli import admin, engine, evals, files, graders, jobs, model_list, models, worker

app = typer.Typer(help="SPPO Service: managed reinforcement fine-tuning.", no_args_is_help=True)
app.add_typer(admin.app)
app.add_typer(worker.app)
app.add_typer(models.app)
app.add_typer(model_list.app, name="models")
app.add_typer(files.app, name="files")
app.add_typer(jobs.app, name="jobs")
app.add_typer(evals.app, name="evals")
app.add_typer(graders.app, name="graders")


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as pkg_version

    typer.echo(pkg_version("sppo-service"))


engine.register(app)


def main() -> None:
    app()
