"""Real `timm` models built by name from their configs (random weights, nothing downloaded):
analyze -> export at 2 random keep-0.5 masks -> forward/backward -> equality with the masked
reference -> a sparse step, with no per-model configuration. timm is imported as a user's
``timm:NAME`` run imports it (``fxsparse.zoo.import_timm``: where torchvision is absent, with
fxsparse's stand-in for the torchvision names timm imports; the tests add no stub of their
own). Skipped when timm is not installed (``pip install --no-deps timm && pip install
huggingface_hub pyyaml safetensors``, see tests/thirdparty/timm_models.py)."""
import pytest

from captures import captured  # each model captured once per session: test_any_input_size.py captures them too
from thirdparty.chain import run_chain  # the chain tests/thirdparty/survey.py reports on
from thirdparty.timm_models import MODELS, import_timm

if import_timm() is None:
    pytest.skip("timm is not installed", allow_module_level=True)

# one of each family in the fast lane; the rest are slow. ResNet v2 (a second ResNet, 6 s),
# EfficientNet (its SE and depthwise blocks are MobileNet v3's) and Swin (15 s; windows are
# checked fast by the transformers Swin and the mirrored timm Swin of test_thirdparty_pruning.py)
# in the full suite
FAST = {"resnet18", "mobilenetv3_small_100", "convnext_atto", "vit_tiny_patch16_224"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    yield


# FLOPs of the exported model at keep 0.5, as a fraction of dense: at most 0.35 (a quarter of
# a conv or linear's cost at half width on both sides, plus what cannot be pruned), except
# where the architecture keeps a large unprunable share
FLOPS_BOUND = 0.35
FLOPS_BOUND_EXCEPT = {"mixer_s16_224": 0.55}  # token-mixing MLPs run along the patch dim


@pytest.mark.reads_capture("timm")
@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in MODELS])
def test_timm_model(name):
    shared = captured(f"timm:{name}")
    status, why, flops = run_chain(shared.model, shared.inputs, shared.graph, shared.fresh()[0])
    assert status == "pass", why
    assert flops is not None and flops <= FLOPS_BOUND_EXCEPT.get(name, FLOPS_BOUND), f"FLOPs at keep 0.5: {flops:.2f}"
