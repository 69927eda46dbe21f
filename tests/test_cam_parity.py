"""Our CAMs against pytorch-grad-cam 1.5.7 and Captum 0.9.0 (test-only dependencies)."""

from __future__ import annotations

import pytest

# test dependencies (pyproject's test extra): a missing one must fail the suite, not skip it
import pytorch_grad_cam as gradcam_lib
import torch
import torchvision
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from camscope.explain.engine import explain
from camscope.models import build_model

REFERENCE = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
}


def _tv_resnet18():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10)
    return m.eval(), ["layer4"], [m.layer4]


def _our(name):
    def make():
        torch.manual_seed(0)
        m = build_model(name, 5, 3, (32, 32))
        layer = m.camscope_cam_layer
        return m.eval(), [layer], [m.get_submodule(layer)]

    return make


CASES = {
    "resnet18_tv": (_tv_resnet18, (2, 3, 64, 64)),
    "deep_cnn": (_our("deep_cnn"), (3, 3, 32, 32)),
    "gray_cnn_rgb": (_our("gray_cnn"), (3, 3, 32, 32)),
    "fastnet": (_our("fastnet"), (2, 3, 32, 32)),
}


def _reference(method, model, layers, x, targets):
    cls = getattr(gradcam_lib, REFERENCE[method])
    with cls(model=model, target_layers=layers) as cam:
        if method == "scorecam":
            cam.batch_size = 64
        if method == "ablationcam":
            cam.batch_size = 64
        return torch.from_numpy(
            cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        )


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", list(REFERENCE))
def test_maps_equal_pytorch_grad_cam(case, method):
    make, shape = CASES[case]
    if method in ("scorecam", "ablationcam") and case == "resnet18_tv":
        shape = (1, 3, 32, 32)  # 512 masked forward passes per image: keep it small
    model, names, modules = make()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        targets = model(x).argmin(1)  # not the top class, to make the target matter
    ours = explain(model, x, method, targets=targets, layers=names).first()
    if method == "ablationcam" and case == "fastnet":
        # fastnet's layer ends in GELU (negative values): pytorch-grad-cam then ablates with
        # "min - 1e7", growing within a batch; we always zero the channel, as the paper does
        ref = _zeroing_ablation(model, modules[0], x, targets)
    else:
        ref = _reference(method, model, modules, x, targets)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max().item()


def _zeroing_ablation(model, layer, x, targets):
    """Ablation-CAM by hand: one forward pass per (image, channel) with that channel zeroed."""
    from camscope.explain.engine import aggregate

    acts = {}
    h = layer.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.detach()))
    with torch.no_grad():
        base = model(x).gather(1, targets[:, None])[:, 0]
    h.remove()
    a = acts["a"]
    weights = torch.zeros(a.shape[:2])
    for k in range(a.shape[1]):

        def zero(m, i, o, k=k):
            o = o.clone()
            o[:, k] = 0
            return o

        h = layer.register_forward_hook(zero)
        with torch.no_grad():
            score = model(x).gather(1, targets[:, None])[:, 0]
        h.remove()
        weights[:, k] = (base - score) / base
    raw = (weights[:, :, None, None] * a).sum(1)[:, None]
    return aggregate([raw], tuple(x.shape[-2:]))[:, 0]


def test_multi_layer_aggregation_matches():
    model, _, _ = _tv_resnet18()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ours = explain(model, x, "gradcam", targets=[3, 7], layers=["layer3", "layer4"]).first()
    ref = _reference("gradcam", model, [model.layer3, model.layer4], x, [3, 7])
    assert torch.allclose(ours, ref, atol=1e-5)


def test_eigencam_matches_up_to_the_sign_of_the_singular_vector():
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from camscope.explain.methods import eigencam_map

    model, _, _ = _tv_resnet18()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    res = explain(model, x, "eigencam", layers=["layer4"], eigen_sign_fix=False)
    with torch.no_grad():
        acts = torch.nn.Sequential(*list(model.children())[:-2])(x)
    ref_proj = torch.from_numpy(get_2d_projection(acts.numpy()))
    ours_proj = eigencam_map(acts, sign_fix=False)
    for i in range(3):
        same = torch.allclose(ours_proj[i], ref_proj[i], atol=1e-4)
        assert same or torch.allclose(ours_proj[i], -ref_proj[i], atol=1e-4)
    ref = _reference_eigen(model, x)
    for i in range(3):
        if torch.allclose(ours_proj[i], ref_proj[i], atol=1e-4):
            assert torch.allclose(res.first()[i], ref[i], atol=1e-5)


def _reference_eigen(model, x):
    with gradcam_lib.EigenCAM(model=model, target_layers=[model.layer4]) as cam:
        return torch.from_numpy(cam(input_tensor=x, targets=None))


def test_gradcam_equals_captum_layer_gradcam():
    from captum.attr import LayerGradCam

    model, _, _ = _tv_resnet18()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    res = explain(model, x, "gradcam", targets=[1, 2], layers=["layer4"])
    ref = LayerGradCam(model, model.layer4).attribute(x, target=[1, 2], relu_attributions=True)
    assert torch.allclose(res.raw[0][:, 0].clamp_min(0), ref[:, 0], atol=1e-5)
