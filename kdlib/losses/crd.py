"""Contrastive representation distillation: torchdistill's ``CRDLoss`` (memory bank) and ``Normalizer4CRD``."""

from __future__ import annotations

import torch
from torch import nn
from torchdistill.losses.mid_level import CRDLoss
from torchdistill.models.wrapper import Normalizer4CRD

from kdlib.losses.base import PairedLayerTerm, SetupContext, StepIO, check
from kdlib.registry import LOSSES


class NegativeSampler(nn.Module):
    """Draws, for each sample, ``k`` dataset indices of *other* classes (CRD's "exact" mode), uniformly."""

    def __init__(self, targets: torch.Tensor):
        super().__init__()
        targets = targets.long().cpu()
        order = targets.argsort(stable=True)
        counts = torch.bincount(targets)
        self.register_buffer("order", order, persistent=False)  # dataset indices grouped by class
        self.register_buffer("start", torch.cumsum(counts, 0) - counts, persistent=False)
        self.register_buffer("count", counts, persistent=False)

    def forward(self, targets: torch.Tensor, k: int) -> torch.Tensor:
        n = self.order.numel()
        start, count = self.start[targets].unsqueeze(1), self.count[targets].unsqueeze(1)
        # uniform over the n - count positions outside the class's block, then skip over the block
        r = (torch.rand(targets.shape[0], k, device=targets.device) * (n - count)).long()
        return self.order[torch.where(r < start, r, r + count)]


@LOSSES.register("crd")
class ContrastiveRepresentation(PairedLayerTerm):
    r"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020).

    Student and teacher penultimate features are embedded by trainable linear maps and L2-normalised
    (``Normalizer4CRD``); a memory bank of every training image's embeddings supplies ``negatives`` per
    sample from other classes, and the NCE loss of both directions is
    :math:`L = -\mathbb{E}[\log h(s, t^+)] - K\, \mathbb{E}[\log(1 - h(s, t^-))]` (+ the mirror), with
    :math:`h = e^{s \cdot t / \tau} / (e^{s \cdot t / \tau} + K / N)`. Computed by torchdistill's
    ``CRDLoss``; the memory bank and normalisation constants are buffers saved in the checkpoint.

    Options: ``layer`` (student path of the features, default ``avgpool``), ``teacher_layer`` (default:
    same), ``feat_dim`` (128), ``negatives`` (default 1024, 13% of the default world's 7,680 training images;
    the paper's 16,384 is 1.3% of ImageNet and 33% of CIFAR-100; cost grows linearly: 4,096 made a step
    3.4x a scratch step on 2 CPU cores, 1,024 1.8x), ``nce_temperature`` (0.07), ``momentum`` (0.5,
    memory update). Han et al. / torchdistill: weight 0.8 beside ``ce``.
    """

    def __init__(
        self, *, layer: str = "avgpool", teacher_layer: str | None = None, feat_dim: int = 128,
        negatives: int = 1024, nce_temperature: float = 0.07, momentum: float = 0.5,
    ):
        super().__init__()
        check(isinstance(feat_dim, int) and feat_dim >= 1, "feat_dim", feat_dim, "an integer >= 1")
        check(isinstance(negatives, int) and negatives >= 1, "negatives", negatives, "an integer >= 1")
        check(isinstance(nce_temperature, (int, float)) and nce_temperature > 0, "nce_temperature", nce_temperature, "a number > 0")
        check(isinstance(momentum, (int, float)) and 0 <= momentum < 1, "momentum", momentum, "a number in [0, 1)")
        self.layer, self.teacher_layer = layer, teacher_layer or layer
        self.feat_dim, self.negatives = feat_dim, negatives
        self.nce_temperature, self.momentum = float(nce_temperature), float(momentum)

    def setup(self, ctx: SetupContext) -> None:
        s_dim = ctx.output_shape("student", self.layer, self.where).numel()
        t_dim = ctx.output_shape("teacher", self.teacher_layer, self.where).numel()
        n = int(ctx.train_targets.numel())
        device = next(ctx.student.parameters()).device
        self.student_embed = Normalizer4CRD(nn.Linear(s_dim, self.feat_dim)).to(device)
        self.teacher_embed = Normalizer4CRD(nn.Linear(t_dim, self.feat_dim)).to(device)
        self.sampler = NegativeSampler(ctx.train_targets).to(device)
        self.loss = CRDLoss(
            student_norm_module_path="student", student_empty_module_path="indices",
            teacher_norm_module_path="teacher", input_size=self.feat_dim, output_size=n,
            num_negative_samples=self.negatives, num_samples=n, temperature=self.nce_temperature,
            momentum=self.momentum,
        ).to(device)

    def forward(self, io: StepIO):
        s = self.student_embed(io.student_io[self.layer]["output"].flatten(1))
        t = self.teacher_embed(io.teacher_io[self.teacher_layer]["output"].flatten(1))
        pos = io.indices.to(s.device)
        contrast = torch.cat([pos.unsqueeze(1), self.sampler(io.targets.to(s.device), self.negatives)], dim=1)
        student_io = {"student": {"output": s}, "indices": {"input": {"pos_idx": pos, "contrast_idx": contrast}}}
        return self.loss(student_io, {"teacher": {"output": t}}).reshape(())
