"""`fxsparse bench` rejects bad arguments before building anything."""
import pytest

from fxsparse import bench


@pytest.mark.parametrize("argv, word", [(["--block", "0"], "--block"), (["--steps", "0"], "--steps"),
                                        (["--keep", "1.5"], "--keep"), (["--batch", "-1"], "--batch"),
                                        (["--precision", "fp16"], "--precision")])
def test_bad_arguments_exit_2_naming_the_flag(argv, word, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        bench.main(argv + ["--json", str(tmp_path / "out.json")])
    assert e.value.code == 2
    assert word in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_quartiles():
    q1, mid, q3 = bench.quartiles([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (q1, mid, q3) == (1.5, 3.0, 4.5)
    assert bench.quartiles([2.0]) == (2.0, 2.0, 2.0)


def test_inference_of_the_small_model_beside_the_dense_one():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = bench.bench_model("resnet20", batch=4, keep=0.5, steps=2, variants=("dense-infer", "exported-infer"))
    finally:
        torch.set_num_threads(n)
    assert rows["dense inference"][0] > 0 and rows["exported inference"][0] > 0
    assert len(rows["_ratio exported inference / dense inference"]) == 2  # per round, drift cancels
