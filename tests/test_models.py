"""Models by name: CIFAR-stem ResNets with width suffixes, untrained torchvision models, hook-safe ReLUs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlib.errors import KdlibError
from kdlib.models import build, names


@pytest.mark.parametrize(
    "name, stages, widths",
    [
        ("resnet8", 3, [16, 32, 64]),
        ("resnet14_w8", 3, [8, 16, 32]),
        ("resnet20", 3, [16, 32, 64]),
        ("resnet18_w8", 4, [8, 16, 32, 64]),
        ("resnet34_w16", 4, [16, 32, 64, 128]),
    ],
)
def test_cifar_resnets_have_named_stages_and_widths(name, stages, widths):
    model = build(name, num_classes=6)
    x = torch.randn(2, 3, 24, 24)
    shapes = {}
    hooks = [getattr(model, f"layer{i}").register_forward_hook(lambda m, i, o, k=i: shapes.__setitem__(k, o.shape)) for i in range(1, stages + 1)]
    assert model(x).shape == (2, 6)
    for h in hooks:
        h.remove()
    assert not hasattr(model, f"layer{stages + 1}")
    assert [shapes[i][1] for i in range(1, stages + 1)] == widths
    assert shapes[1][-1] == 24  # CIFAR stem: no downsampling before layer1
    assert shapes[stages][-1] == 24 // 2 ** (stages - 1)


def test_block_counts_follow_the_depth():
    assert [len(build("resnet20", 3).get_submodule(f"layer{i}")) for i in (1, 2, 3)] == [3, 3, 3]
    assert [len(build("resnet34", 3).get_submodule(f"layer{i}")) for i in (1, 2, 3, 4)] == [3, 4, 6, 3]
    assert [len(build("resnet18", 3).get_submodule(f"layer{i}")) for i in (1, 2, 3, 4)] == [2, 2, 2, 2]


@pytest.mark.parametrize("name", ["tv_resnet18", "tv_resnet50", "tv_mobilenet_v2", "tv_mobilenet_v3_small", "tv_vgg11_bn"])
def test_torchvision_models_build_untrained(name):
    model = build(name, num_classes=5)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)


@pytest.mark.parametrize("name", ["resnet18_w8", "tv_resnet18", "tv_resnet50", "tv_mobilenet_v2", "tv_vgg11_bn"])
def test_every_activation_is_out_of_place_and_called_once(name):
    """A ReLU called twice per forward, or in place, corrupts forward hooks (dissection, Captum)."""
    model = build(name, num_classes=4)
    calls: dict[str, int] = {}
    acts = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.ReLU, nn.ReLU6, nn.Hardswish))]
    assert acts
    assert not [n for n, m in acts if m.inplace]
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: calls.__setitem__(n, calls.get(n, 0) + 1)) for n, m in acts]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert set(calls.values()) == {1}, {n: c for n, c in calls.items() if c != 1}
    assert len(calls) == len(acts)


def test_initial_network_depends_on_the_seed_alone():
    """kdlib.train.initial_network, what training starts a run from and the dissection's random null: the
    same at a seed whatever the caller's RNG did before and whatever the run's loss (runs of one seed are
    compared in pairs because they start alike), another at another seed, the caller's RNG untouched."""
    from kdlib.params import RunParams
    from kdlib.train import initial_network

    scratch = RunParams(name="scratch", model="resnet18_w8")
    ls = RunParams(name="ls", model="resnet18_w8", loss=[{"name": "ls", "epsilon": 0.1}])
    torch.manual_seed(1)
    a = initial_network(scratch, 6, 3).state_dict()
    torch.manual_seed(2)
    torch.rand(100)
    before = torch.get_rng_state()
    b = initial_network(ls, 6, 3).state_dict()
    assert torch.equal(torch.get_rng_state(), before), "the caller's RNG state is left as it was"
    other = initial_network(scratch, 6, 4).state_dict()
    weights = [k for k, v in a.items() if v.is_floating_point() and "running" not in k]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(not torch.equal(a[k], other[k]) for k in weights if a[k].std() > 0), "every random tensor differs"


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("resnet19", {}, "unknown model 'resnet19'; valid: "),
        ("tv_resnet18_w8", {}, "unknown model 'tv_resnet18_w8'"),
        ("resnet18_w0", {}, "has width 0"),
        ("resnet18_w8", {"width": 4}, "sets the width twice"),
        ("tv_resnet18", {"weights": "IMAGENET1K_V1"}, "model_kwargs.weights = 'IMAGENET1K_V1' is not allowed"),
        ("resnet8", {"depth": 3}, "model_kwargs ['depth'] are not accepted"),
    ],
)
def test_bad_model_names_and_kwargs_are_one_line(name, kwargs, message):
    with pytest.raises(KdlibError) as e:
        build(name, 6, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(KdlibError) as e:
        build("nope", 6)
    assert "resnet18[_w<N>]" in str(e.value) and "tv_resnet18" in str(e.value)
    assert "resnet18[_w<N>]" in names()


def test_bad_class_count():
    with pytest.raises(KdlibError, match="num_classes = 1 is not valid"):
        build("resnet8", 1)


def test_fold_batchnorm_keeps_outputs_names_and_hooks():
    from kdlib.models.inference import fold_batchnorm

    torch.manual_seed(0)
    model = build("resnet18_w8", 6)
    with torch.no_grad():  # give the BatchNorms non-trivial running statistics
        model.train()
        for _ in range(3):
            model(torch.randn(16, 3, 24, 24))
    model.eval()
    folded = fold_batchnorm(model)
    assert model.bn1.__class__ is nn.BatchNorm2d, "the original is left as it was"
    assert not [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
    seen = []
    folded.layer3.register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(4, 3, 24, 24)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-4, rtol=1e-4)
    assert len(seen) == 1 and seen[0].shape == (4, 32, 6, 6)
