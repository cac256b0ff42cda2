"""A run's report: JSON people compare, and the loss curves drawn as PNG."""

from __future__ import annotations

from pathlib import Path

from revela.config import RunConfig
from revela.train.checkpoint import versions
from revela.train.runfolder import PLOT_FILE, REPORT_FILE, write_json
from revela.train.sim_health import sim_health


def plot_history(history: list[dict], path: Path) -> Path | None:
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_sim) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [h["step"] for h in history]
    ax_loss.plot(steps, [h["loss"] for h in history], label="pass 3 (in-batch) loss")
    with_p2 = [h for h in history if "pass2_loss" in h]
    if with_p2:
        ax_loss.plot([h["step"] for h in with_p2], [h["pass2_loss"] for h in with_p2], label="pass 2 (alone) loss")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("NTP loss")
    ax_loss.legend()
    ax_sim.plot(steps, [h["sim_entropy"] for h in history], color="tab:green")
    ax_sim.set_xlabel("optimizer step")
    ax_sim.set_ylabel("Sim row entropy (nats)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(run_dir: Path, cfg: RunConfig, checkpoint: str | None, history: list[dict],
                 heldout_before: dict | None, heldout_after: dict | None, data_summary: dict, wall_s: float,
                 checkpoints: list[dict] | None = None, temperature: float | None = None) -> dict:
    """`temperature`: the run's tau of Sim (calibrated, for `temperature: auto`); None: the logged one."""
    last = history[-1] if history else {}
    health = sim_health(history, temperature, cfg.model.objective.sim, cfg.data.group_size)
    report = {
        "run": cfg.name,
        "run_dir": str(run_dir),
        "checkpoint": checkpoint,
        "steps": last.get("step", 0),
        "wall_s": wall_s,
        "final": {k: last[k] for k in ("loss", "pass2_loss", "loss_gap", "sim_entropy", "sim_entropy_fraction",
                                        "tokens_per_s", "groups_per_s", "data_wait_fraction") if k in last},
        "temperature": health["temperature"],
        "sim_health": health,
        "heldout": {"before": heldout_before, "after": heldout_after},
        "checkpoints": checkpoints or [],
        "data": data_summary,
        "versions": versions(),
    }
    plot = plot_history(history, run_dir / PLOT_FILE)
    report["plot"] = str(plot) if plot else None
    write_json(run_dir / REPORT_FILE, report, default=str)
    return report
