"""CAM engine behaviour: hooks, modes, targets, tuple outputs, guided backprop, occlusion."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from camscope.errors import CamscopeError
from camscope.explain.engine import explain
from camscope.explain.guided import guided_backprop, guided_gradcam
from camscope.explain.occlusion import occlusion
from camscope.models import build_model


class Tiny(nn.Module):
    """conv (fixed weights) -> in-place ReLU -> GAP -> linear; maps computable by hand."""

    def __init__(self, tuple_out: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0])[:, None, None, None])
            self.fc.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
        self.tuple_out = tuple_out

    def forward(self, x):
        z = self.fc(self.relu(self.conv(x)).mean((2, 3)))
        return (z, "aux") if self.tuple_out else z


def test_gradcam_by_hand_with_inplace_relu():
    x = torch.tensor([[[[1.0, -2.0], [3.0, 0.0]]]])
    res = explain(Tiny(), x, "gradcam", targets=0, layers="conv")
    # conv output channel 0 = x, channel 1 = -x; d(logit0)/d(act) = relu'(act) * 2/4 on channel 0
    # weights: mean grad = 0.5 * (#positive of x) / 4 = 0.5 * 2 / 4 = 0.25 for channel 0, 0 for 1
    expected_raw = 0.25 * x[0, 0]
    assert torch.allclose(res.raw[0][0, 0], expected_raw)
    cam = expected_raw.clamp_min(0)
    cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
    assert torch.allclose(res.maps[0, 0], cam, atol=1e-6)


def test_several_targets_per_image_and_tuple_outputs():
    x = torch.randn(3, 1, 4, 4)
    res = explain(Tiny(tuple_out=True), x, "layercam", targets=torch.tensor([[0, 1]] * 3), layers="conv")
    assert res.maps.shape == (3, 2, 4, 4) and res.targets.tolist() == [[0, 1]] * 3
    single = explain(Tiny(tuple_out=True), x, "layercam", targets=1, layers="conv")
    assert torch.allclose(single.maps[:, 0], res.maps[:, 1])
    with pytest.raises(CamscopeError, match="out of range"):
        explain(Tiny(), x, "gradcam", targets=5, layers="conv")
    with pytest.raises(CamscopeError, match="no layer named"):
        explain(Tiny(), x, "gradcam", layers="nope")


def test_hooks_removed_and_state_restored_even_after_an_exception():
    model = build_model("deep_cnn", 3, 3)
    model.train()
    model.head.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]

    def boom(_):
        raise RuntimeError("selector failed")

    with pytest.raises(RuntimeError, match="selector failed"):
        explain(model, torch.randn(2, 3, 32, 32), "gradcam", output=boom)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    explain(model, torch.randn(2, 3, 32, 32), "scorecam", score_batch=64)
    assert model.training and all(not m._forward_hooks for m in model.modules())


def test_batching_does_not_change_the_maps():
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(5, 3, 64, 64)
    whole = explain(model, x, "gradcam++").maps
    parts = explain(model, x, "gradcam++", batch_size=2).maps
    assert torch.allclose(whole, parts, atol=1e-6)
    assert explain(model, x, "gradcam").layers == ["layer4"]  # auto-detected for torchvision


def test_guided_backprop_matches_pytorch_grad_cam_and_restores_relus():
    import pytorch_grad_cam as pgc

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    x = torch.randn(1, 3, 64, 64)
    ours = guided_backprop(model, x, targets=2)[0, 0]
    assert [m for m in model.modules() if isinstance(m, nn.ReLU)] == relus
    assert all(m.inplace for m in relus)
    ref = pgc.GuidedBackpropReLUModel(model=torchvision.models.resnet18(num_classes=5).eval(), device="cpu")
    ref.model.load_state_dict(model.state_dict())
    theirs = torch.from_numpy(ref(x.clone(), target_category=2)).permute(2, 0, 1)
    assert torch.allclose(ours, theirs, atol=1e-5)
    gg = guided_gradcam(model, x, targets=2)
    assert gg.shape == (1, 1, 3, 64, 64)


def test_occlusion_matches_captum():
    from captum.attr import Occlusion

    torch.manual_seed(0)
    model = build_model("gray_cnn", 3, 3, (16, 16)).eval()
    x = torch.randn(2, 3, 16, 16)
    ours = occlusion(model, x, targets=[0, 2], window=4, stride=2, batch=7)[:, 0]
    ref = Occlusion(model).attribute(
        x, sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2), target=[0, 2], baselines=0
    )
    assert torch.allclose(ours, ref[:, 0], atol=1e-5)
    assert torch.allclose(ref[:, 0], ref[:, 2], atol=1e-6)


def test_one_registry_serves_the_engine_the_cli_the_page_and_the_study(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from camscope.cli import app
    from camscope.explain.engine import saliency_maps
    from camscope.explain.registry import METHODS, lookup, names
    from camscope.serve.app import PAGE_METHODS
    from camscope.study.config import Study
    from tests.helpers import TINY

    # every entry loads and gives (N, H, W) maps in [0, 1] for its targets
    torch.manual_seed(0)
    model = build_model("gray_cnn", 3, 1, (16, 16)).eval()
    x = torch.randn(2, 1, 16, 16)
    for key in METHODS:
        maps = saliency_maps(model, x, key, torch.tensor([0, 2]))
        assert maps.shape == (2, 16, 16) and maps.min() >= 0 and maps.max() <= 1 + 1e-6, key
    assert lookup("Grad-CAM").key == "gradcam" and lookup("score-cam").key == "scorecam"
    with pytest.raises(CamscopeError, match="unknown explanation method 'gradkam'.*gradcam, gradcam\\+\\+"):
        lookup("gradkam")
    with pytest.raises(CamscopeError, match="not a class activation map"):
        explain(model, x, "occlusion")
    assert names() == PAGE_METHODS and set(names(cams_only=True)) < set(names())
    help_text = CliRunner().invoke(app, ["explain", "--help"], env={"COLUMNS": "300"}).output
    assert all(k in help_text for k in METHODS)
    # a study that names an unknown method is refused when it is read, before anything trains
    exp = {**TINY["experiments"][0], "explain": {"methods": ["gradcam", "gradkam"]}}
    raw = {**TINY, "experiments": [exp]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(CamscopeError, match="explain.methods.*unknown explanation method 'gradkam'"):
        Study.from_yaml(tmp_path / "s.yaml")
