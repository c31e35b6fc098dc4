"""Attention transfer: torchdistill's ``ATLoss`` on named layer pairs."""

from __future__ import annotations

from torchdistill.losses.mid_level import ATLoss

from kdlib.errors import KdlibError
from kdlib.losses.base import LossTerm, SetupContext, StepIO, check
from kdlib.registry import LOSSES


@LOSSES.register("at")
class AttentionTransfer(LossTerm):
    r"""Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017).

    For each layer pair, the attention map :math:`a(F) = \mathrm{normalize}(\mathrm{mean}_c F_c^2)` (flattened
    over space) of student and teacher; ``mode: code`` (the authors' code, torchdistill's default):
    :math:`L = \sum_{pairs} \mathrm{mean}\,(a(F_s) - a(F_t))^2`; ``mode: paper``: Eq. 2, the L2 distance of
    maps from the channel *sum*, averaged over the batch. Computed by torchdistill's ``ATLoss``.

    Options: ``layers`` (student module paths, default ``[layer3, layer4]``: Han et al.'s pairs),
    ``teacher_layers`` (default: the same paths), ``mode`` (``code`` | ``paper``). Pairs need equal
    spatial sizes. Han et al.: weight 1000 beside CE (paper-facts.md).
    """

    needs_teacher = True

    def __init__(self, *, layers: list = ("layer3", "layer4"), teacher_layers: list | None = None, mode: str = "code"):
        super().__init__()
        layers = list(layers)
        teacher_layers = layers if teacher_layers is None else list(teacher_layers)
        check(len(layers) > 0 and all(isinstance(x, str) for x in layers), "layers", layers, "a list of module paths")
        check(len(teacher_layers) == len(layers), "teacher_layers", teacher_layers, f"{len(layers)} module paths, one per student layer")
        check(mode in ("code", "paper"), "mode", mode, "'code' or 'paper'")
        self.pairs = list(zip(layers, teacher_layers))
        self.loss = ATLoss(
            at_pairs={
                f"pair{i}": {"student": {"io": "output", "path": s}, "teacher": {"io": "output", "path": t}, "weight": 1}
                for i, (s, t) in enumerate(self.pairs)
            },
            mode=mode,
        )

    def student_layers(self):
        return tuple(s for s, _ in self.pairs)

    def teacher_layers(self):
        return tuple(t for _, t in self.pairs)

    def setup(self, ctx: SetupContext) -> None:
        for s, t in self.pairs:
            s_shape = ctx.output_shape("student", s, self.where)
            t_shape = ctx.output_shape("teacher", t, self.where)
            if s_shape[1:] != t_shape[1:]:
                raise KdlibError(
                    f"{self.where}: student {s} is {tuple(s_shape[1:])} but teacher {t} is {tuple(t_shape[1:])}; "
                    "valid: layer pairs with equal spatial size"
                )

    def forward(self, io: StepIO):
        return self.loss(io.student_io, io.teacher_io)
