"""The registry's tables (SQLAlchemy 2.x declarative): experiments, runs, stages.

A stage row mirrors one stage folder: ``config_hash`` is the stage's fingerprint (its
command and gin files, ``stage_keys.command_fingerprint``), ``key`` the key its
``DONE.json`` records; ``results_path`` points at its artifacts (a train stage's
MODEL_DIR, an eval stage's checkpoint directory holding results.json). A shared stage
(a role's pre-training) belongs to the first run that uses it.

Stage status: ``pending`` (known from the folders, not submitted), ``queued``,
``running``, ``done``, ``failed``, ``cancelled``, ``stale`` (finished under another key).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

STAGE_STATUSES = ("pending", "queued", "running", "done", "failed", "cancelled", "stale")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Experiment(Base):
    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    scale: Mapped[str] = mapped_column(String(50))
    overrides: Mapped[dict] = mapped_column(JSON, default=dict)
    root: Mapped[str] = mapped_column(String(1000), unique=True)
    title: Mapped[str] = mapped_column(String(500), default="")
    submitted: Mapped[bool] = mapped_column(Boolean, default=False)
    cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    submitted_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    report_path: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    runs: Mapped[list[Run]] = relationship(
        back_populates="experiment", cascade="all, delete-orphan", order_by="Run.position"
    )
    stages: Mapped[list[Stage]] = relationship(
        back_populates="experiment", cascade="all, delete-orphan", order_by="Stage.position"
    )


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("experiment_id", "label"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(300))
    position: Mapped[int] = mapped_column(Integer)
    final_model_dir: Mapped[str] = mapped_column(String(1000))
    experiment: Mapped[Experiment] = relationship(back_populates="runs")
    stages: Mapped[list[Stage]] = relationship(back_populates="run", order_by="Stage.position")


class Stage(Base):
    __tablename__ = "stages"
    __table_args__ = (UniqueConstraint("experiment_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    name: Mapped[str] = mapped_column(String(500))
    position: Mapped[int] = mapped_column(Integer)
    depends_on: Mapped[list] = mapped_column(JSON, default=list)
    command: Mapped[str] = mapped_column(Text, default="")
    config_hash: Mapped[str] = mapped_column(String(64), default="")
    key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    host: Mapped[str | None] = mapped_column(String(300), nullable=True)
    devices: Mapped[str | None] = mapped_column(String(300), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(300), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    log_path: Mapped[str] = mapped_column(String(1000), default="")
    results_path: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    experiment: Mapped[Experiment] = relationship(back_populates="stages")
    run: Mapped[Run | None] = relationship(back_populates="stages")
