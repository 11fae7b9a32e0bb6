"""`fxsparse bench` on transformers decoders (issue #31): the tiny Llama-style (GQA) and
Mixtral-style (MoE) configs run through the bench's eager variants, their loss is the
causal-LM loss transformers computes itself, and the CNN workload is the one earlier runs timed."""
import pytest
import torch

from fxsparse import bench
from fxsparse.bench_args import parse_args
from fxsparse.bench_models import DEFAULT_BATCH, causal_lm_loss, workload

pytest.importorskip("transformers")


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("name", ["llama_gqa_tiny", "mixtral_moe_tiny"])
def test_decoder_bench_runs_dense_sparse_and_export_side_by_side(name):
    rows = bench.bench_model(name, batch=2, keep=0.5, steps=2, seq=8,
                             variants=("dense-eager", "sparse-eager", "exported-eager"))
    for label in ("dense eager", "sparse eager", "exported eager"):
        assert rows[label][0] > 0, label
    assert rows["_compilations sparse eager"] == 0
    assert 0 < rows["_mem sparse"] < rows["_mem dense"]  # the sparse step saves less for the backward


@pytest.mark.parametrize("name", ["llama_gqa_tiny", "mixtral_moe_tiny"])
def test_decoder_loss_is_transformers_causal_lm_loss(name):
    work = workload(name, batch=2, seq=8)
    model = work.fresh().eval()
    (ids,) = work.inputs
    assert ids.shape == (2, 8) and torch.equal(work.target, ids)
    with torch.no_grad():
        ours = work.loss(model(ids), ids)
        theirs = model(ids, labels=ids).loss
    torch.testing.assert_close(ours, theirs)
    # a dict output and a tuple output (what a captured graph may return) give the same loss
    logits = model(ids).logits
    assert torch.equal(causal_lm_loss({"logits": logits}, ids), causal_lm_loss((logits,), ids))


def test_cnn_workload_is_unchanged():
    work = workload("resnet20")
    torch.manual_seed(0)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    assert torch.equal(work.inputs[0], x) and torch.equal(work.target, y)
    assert DEFAULT_BATCH["cnn"] == 64 and work.kind == "cnn"


def test_seq_and_default_batch_arguments():
    args = parse_args(["--models", "llama_gqa", "--json", "x.json"])
    assert args.batch is None and args.seq == 256
    with pytest.raises(SystemExit):
        parse_args(["--seq", "1"])
