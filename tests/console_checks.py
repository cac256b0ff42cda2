"""What a clean run's console must not show, for the tests that capture one (embedded Ray and `ray job submit`)."""

import re

FALSE_ALARMS = ("Traceback (most recent call last)", "Failed to query", "State API", "Warning",
                "Reporting training result", "TrainingReport(")
OVERLOAD_NOTICE = "If this only happens transiently during network partition or CPU being overloaded"
PREFIX = re.compile(r"^(?:\x1b\[\d+m)?\(([^)]*)\)(?:\x1b\[0m)? ?(.*)$")  # "(TrainController pid=1) message"


def without_overload_notices(out: str) -> str:
    """`out` less Ray Train's own 'safe to ignore when the CPU is overloaded' warning and its traceback: a resource
    request to Ray's autoscaling coordinator timed out (5 s) on a saturated machine. It says nothing about the run
    and shows up only when other work starves the node (as on a shared developer box), so it is not counted."""
    kept, skipping = [], None
    for line in out.splitlines():
        match = PREFIX.match(line)
        source, text = match.groups() if match else (None, line)
        if OVERLOAD_NOTICE in text:
            skipping = source
            continue
        if skipping is not None and source == skipping and (
                text.startswith(("Traceback", " ", "ray.exceptions.GetTimeoutError")) or not text.strip()):
            continue
        skipping = None
        kept.append(line)
    return "\n".join(kept)


def false_alarms(out: str) -> list[str]:
    clean = without_overload_notices(out)
    return [alarm for alarm in FALSE_ALARMS if alarm in clean]
