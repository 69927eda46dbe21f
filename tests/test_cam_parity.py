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


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """deep_cnn and gray_cnn after a short training on synthetic coins: with random weights the top
    class's Grad-CAM of these small ReLU networks is often all zero, which would compare nothing."""
    from camscope.data.prepare import PrepareConfig, prepare
    from camscope.data.splits import SplitConfig, make_split
    from camscope.data.synthetic import CoinSpec, SyntheticSource
    from camscope.train.config import make_config
    from camscope.train.data import select_data
    from camscope.train.trainer import train

    spec = CoinSpec(n=400, size=32, seed=4, two_sided=False, centre_classes=2, rim_classes=2)
    ds = prepare(SyntheticSource(spec), PrepareConfig(size=32))
    data = select_data(ds, {r["id"]: r["split"] for r in make_split(ds, SplitConfig(seed=0)).rows})
    out = {}
    for name in ("deep_cnn", "gray_cnn"):
        cfg = make_config(
            name, epochs=6, batch_size=32, flip="none", optimizer="adamw", lr=2e-3, schedule="onecycle"
        )
        model = train(cfg, data, tmp_path_factory.mktemp(name) / "run").model.eval()
        model = model.to(memory_format=torch.contiguous_format)
        out[name] = (model, [model.camscope_cam_layer], [model.get_submodule(model.camscope_cam_layer)])
    return out


# (model, input side): each side gives a map of at least 4 x 4 at the model's CAM layer
CASES = {
    "resnet18_tv": (_tv_resnet18, 128),
    "deep_cnn_trained": ("deep_cnn", 32),
    "gray_cnn_trained": ("gray_cnn", 32),
    "fastnet": (_our("fastnet"), 64),
}


def _images(n: int, side: int) -> torch.Tensor:
    """Coin pictures (structure, not noise), scaled to about [-1, 1]."""
    from camscope.data.synthetic import CoinSpec, generate

    coins = generate(CoinSpec(n=n, size=side, seed=7, two_sided=False))
    return torch.from_numpy(coins.images[:, 0]).permute(0, 3, 1, 2).float() / 127.5 - 1


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


def _not_flat(maps: torch.Tensor) -> bool:
    return bool((maps.flatten(1).std(1) > 1e-3).all())


PERTURBATION = ("scorecam", "ablationcam")  # one forward pass per (image, channel)
PAIRS = [
    # resnet18's 512 channels at 128 px take ~65 s in float64: compared in make test-slow
    pytest.param(m, c, marks=pytest.mark.slow) if m in PERTURBATION and c == "resnet18_tv" else (m, c)
    for c in CASES
    for m in REFERENCE
]


@pytest.mark.parametrize(("method", "case"), PAIRS)
def test_maps_equal_pytorch_grad_cam(case, method, trained):
    make, side = CASES[case]
    model, names, modules = trained[make] if isinstance(make, str) else make()
    # in float64: the comparison is of the algorithms, not of float32 rounding (ablation and score
    # maps divide small score differences: float32 alone moves them by up to 2e-4)
    model = model.double()
    n = 1 if method in PERTURBATION else 3
    x = _images(n, side).double()
    with torch.no_grad():
        targets = model(x).topk(2, 1).indices  # the top class and the second: both matter
    ours = explain(model, x, method, targets=targets, layers=names).maps
    for j in range(2):
        if method == "ablationcam" and case == "fastnet":
            # fastnet's layer ends in GELU (negative values): pytorch-grad-cam then ablates with
            # "min - 1e7", growing within a batch; we always zero the channel, as the paper does
            ref = _zeroing_ablation(model, modules[0], x, targets[:, j])
        else:
            ref = _reference(method, model, modules, x, targets[:, j])
        assert _not_flat(ref) and _not_flat(ours[:, j]), "a flat map compares nothing"
        assert ours[:, j].shape == ref.shape
        assert torch.allclose(ours[:, j], ref.to(ours), atol=1e-5), (ours[:, j] - ref).abs().max().item()


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
    x = _images(2, 128)
    targets = model(x).argmax(1)
    ours = explain(model, x, "gradcam", targets=targets, layers=["layer3", "layer4"]).first()
    ref = _reference("gradcam", model, [model.layer3, model.layer4], x, targets)
    assert _not_flat(ref) and torch.allclose(ours, ref, atol=1e-5)


def test_eigencam_matches_up_to_the_sign_of_the_singular_vector():
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from camscope.explain.methods import eigencam_map

    model, _, _ = _tv_resnet18()
    x = _images(3, 128)
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
    x = _images(2, 128)
    targets = model(x).argmax(1).tolist()
    res = explain(model, x, "gradcam", targets=targets, layers=["layer4"])
    ref = LayerGradCam(model, model.layer4).attribute(x, target=targets, relu_attributions=True)
    assert ref.shape[-2:] == (4, 4) and _not_flat(ref[:, 0])
    assert torch.allclose(res.raw[0][:, 0].clamp_min(0), ref[:, 0], atol=1e-5)
