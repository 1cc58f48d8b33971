"""Training curves from a run's TensorBoard event files, for the dashboard.

The trainer writes ``<MODEL_DIR>/train/events.out.tfevents.*`` (``training.summaries``).
They are read with TensorBoard's own TFRecord reader (its TensorFlow-free stub, with
CRC checks) and ``Event`` proto; a ``SessionLog.START`` at step s (written on resume)
drops the points at steps >= s logged before it, as TensorBoard purges them. The
figure of one run is the report's (``analysis.figures.training_curves``); the compare
page overlays runs per metric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from flan_moe.analysis import figures

Series = dict[str, list[tuple[int, float]]]  # tag -> [(step, value)] in step order


def _records(path: Path):
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow

    reader = pywrap_tensorflow.PyRecordReader_New(str(path), 0, None)
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return
        except errors.DataLossError:  # a record cut short by a crash: the rest is unreadable
            return
        yield Event.FromString(reader.record())


def read_scalars(log_dir: str | Path) -> Series:
    """Every scalar tag of the event files in ``log_dir`` (oldest file first)."""
    from tensorboard.compat.proto.event_pb2 import SessionLog

    points: dict[str, dict[int, float]] = {}
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*"), key=lambda p: p.name):
        for event in _records(path):
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                for series in points.values():
                    for step in [s for s in series if s >= event.step]:
                        del series[step]
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    points.setdefault(value.tag, {})[event.step] = value.simple_value
    return {tag: sorted(series.items()) for tag, series in sorted(points.items())}


def as_rows(series: Series) -> list[dict[str, float]]:
    """[{"step": s, tag: value, ...}] (the rows ``analysis.figures`` draws)."""
    by_step: dict[int, dict[str, float]] = {}
    for tag, points in series.items():
        for step, value in points:
            by_step.setdefault(step, {"step": step})[tag] = value
    return [by_step[s] for s in sorted(by_step)]


def run_figure(model_dir: str | Path, path: Path, *, title: str) -> Path | None:
    """The report's training-curves figure of one run; None when it logged nothing yet."""
    rows = as_rows(read_scalars(Path(model_dir) / "train"))
    return figures.training_curves(rows, path, title=title) if rows else None


def compare_figure(
    runs: Mapping[str, Series], path: Path, *, tags: Sequence[str] = ("loss", "accuracy")
) -> Path | None:
    """One panel per tag with a line per run; None when no run has any of the tags."""
    tags = [t for t in tags if any(t in s for s in runs.values())]
    if not tags:
        return None
    plt = figures._plt()
    fig, axes = plt.subplots(1, len(tags), figsize=(5.0 * len(tags) + 1.5, 3.4),
                             layout="constrained", squeeze=False)  # fmt: skip
    for ax, tag in zip(axes[0], tags, strict=True):
        for label, series in runs.items():
            if tag in series:
                steps, values = zip(*series[tag], strict=True)
                ax.plot(steps, values, marker=".", label=label)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("step")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return figures.save_figure(fig, path)
