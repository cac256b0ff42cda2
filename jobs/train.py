"""Entry point for `ray job submit`: the same command as `revela train`.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/train.py --config jobs/configs/smoke-cpu.yaml
"""

import typer

from revela.cli import train

if __name__ == "__main__":
    app = typer.Typer(add_completion=False)  # one command: `--help` shows `train.py [OPTIONS]`, no subcommand
    app.command()(train)
    app()
