"""Validated run parameters: the only reader of ``params/*.yaml``, and a leaf (it imports no other part).

A params file is plain data (no tags, no duplicate keys) validated into frozen dataclasses; every
problem is one line naming the file, the key, the bad value and what is valid::

    params/tiny.yaml: train.optimizer.lr = -0.1 is out of range; valid: > 0

Modules: :mod:`~kdlib.params.validate` (the generic validator), :mod:`~kdlib.params.world` (the world
section, its profiles and folder name), :mod:`~kdlib.params.train` (training and runs),
:mod:`~kdlib.params.dissect`, :mod:`~kdlib.params.metrics`, :mod:`~kdlib.params.study` (the whole file).
"""

from kdlib.params.dissect import DissectParams
from kdlib.params.report import Claim, ReportParams
from kdlib.params.metrics import MetricsParams
from kdlib.params.study import DataParams, RunInstance, StudyParams, load_study, parse_study, read_yaml
from kdlib.params.train import OptimizerParams, RunParams, ScheduleParams, TeacherRef, TrainParams
from kdlib.params.validate import check_plain_name, from_dict, knob, replace_from_dict, to_dict
from kdlib.params.world import PROFILES, WorldParams, world_dir_name, world_params_from

__all__ = [
    "Claim", "DataParams", "DissectParams", "MetricsParams", "OptimizerParams", "PROFILES", "ReportParams", "RunInstance",
    "RunParams", "ScheduleParams",
    "StudyParams", "TeacherRef", "TrainParams", "WorldParams", "check_plain_name", "from_dict", "knob",
    "load_study", "parse_study", "read_yaml", "replace_from_dict", "to_dict", "world_dir_name", "world_params_from",
]
