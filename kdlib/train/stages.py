"""Pre-training stages of loss terms (FT's paraphraser, SSKD's teacher head, a FitNets hint stage), run in a
session before its first epoch (see :class:`kdlib.losses.Stage`)."""

from __future__ import annotations

import contextlib

from tqdm.auto import tqdm

from kdlib.errors import KdlibError
from kdlib.losses import Stage
from kdlib.train.optim import build_optimizer
from kdlib.train.seeding import derive
from kdlib.train.session import Stepper, TrainingSession, check_finite


def run_stages(session: TrainingSession) -> None:
    """Every stage of the session's objective, in order (stacked sessions have none: see the plan)."""
    stages = [s for m in session.members for s in m.objective.stages()]
    if stages and len(session.members) > 1:
        raise KdlibError(f"{session.members[0].spec.where}: loss terms with stages cannot be stacked; valid: train.stack: 1")
    for stage in stages:
        run_stage(session, stage)


def run_stage(session: TrainingSession, stage: Stage) -> None:
    """Train ``stage.params`` on the session's training data for ``stage.epochs`` epochs; the lr drops by
    10x after each milestone. Data order and randomness come from ``derive(seed, "stage")``."""
    member = session.members[0]
    where, seed = f"{member.spec.where}: stage {stage.name}", derive(session.seed, "stage")
    before = [p.requires_grad for p in stage.params]
    for p in stage.params:
        p.requires_grad_(True)
    try:
        optimizer = build_optimizer(stage.params, stage.optimizer, where)
        stepper = Stepper(optimizer, session.train.amp, session.device)
        session.network.eval()
        for module in stage.train_modules:
            module.train()
        fw = session.forwarder_for(session.network if stage.uses_student else None, [member.objective], stage.views,
                                   stage.student_layers, stage.teacher_layers)
        with fw:
            for epoch in range(1, stage.epochs + 1):
                lr = stage.optimizer["lr"] * 0.1 ** sum(epoch > m for m in stage.milestones)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                session.seed_epoch(stage.name, epoch, base=("stage",))
                _stage_epoch(session, fw, stage, stepper, seed, epoch, where)
    finally:
        for p, flag in zip(stage.params, before):
            p.requires_grad_(flag)


def _stage_epoch(session: TrainingSession, fw, stage: Stage, stepper: Stepper, seed: int, epoch: int, where: str) -> None:
    stream = session.members[0].stream
    batches = session.batches.epoch(seed, epoch, prefix=(stage.name,))
    bar = tqdm(batches, total=len(session.batches), desc=f"{where} {epoch}/{stage.epochs}", disable=not session.progress, leave=False)
    for step, (images, targets, indices) in enumerate(bar):
        (io,) = fw(images, targets, indices, epoch=epoch, step=step)
        with stream if stream is not None else contextlib.nullcontext():
            loss = stage.loss(io)
        check_finite(loss, where, epoch, step, None, 0)
        stepper(loss)
        bar.set_postfix(loss=f"{loss.item():.4g}")
