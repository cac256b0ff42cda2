"""Entry point for `ray job submit`: the same command as `revela sweep`.

    ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env jobs/runtime_env.yaml \
        -- python jobs/sweep.py --config jobs/sweeps/tiny-cpu.yaml storage_path=$PWD/runs/sweeps
"""

import typer

from revela.tuning.cli import sweep_cmd

if __name__ == "__main__":
    app = typer.Typer(add_completion=False)  # one command: `--help` shows `sweep.py [OPTIONS]`, no subcommand
    app.command()(sweep_cmd)
    app()
