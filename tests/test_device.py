import pytest

from hfvllm_lab.device import StepTimer, available_kinds, memory_figure, resolve_device, resolve_dtype
from hfvllm_lab.errors import DeviceError


@pytest.mark.parametrize(
    "available,expected",
    [(["mlu", "cuda", "cpu"], "mlu"), (["cuda", "cpu"], "cuda"), (["cpu"], "cpu")],
)
def test_auto_prefers_mlu_then_cuda_then_cpu(available, expected):
    assert resolve_device("auto", available) == expected


def test_explicit_device_must_be_present():
    assert resolve_device("cuda:1", ["cuda", "cpu"]) == "cuda:1"
    with pytest.raises(DeviceError, match="not available"):
        resolve_device("mlu", ["cpu"])
    with pytest.raises(DeviceError, match="unsupported device"):
        resolve_device("tpu", ["cpu"])


def test_this_machine_resolves_to_a_real_kind():
    kinds = available_kinds()
    assert kinds[-1] == "cpu" and resolve_device("auto") == kinds[0]


@pytest.mark.parametrize("kind", ["mlu", "cuda", "cpu"])
def test_this_machine_refuses_exactly_the_absent_kinds(kind):
    if kind in available_kinds():
        assert resolve_device(kind) == kind
    else:
        with pytest.raises(DeviceError, match="not available"):
            resolve_device(kind)


def test_dtypes():
    assert resolve_dtype(None, "cpu") == "float32"
    assert resolve_dtype(None, "cuda") == "bfloat16"
    assert resolve_dtype("bf16", "cpu") == "bfloat16"
    with pytest.raises(DeviceError, match="CPU backend"):
        resolve_dtype("float16", "cpu")
    with pytest.raises(DeviceError, match="unsupported dtype"):
        resolve_dtype("int3", "cpu")


def test_cpu_memory_figure_is_rss_and_timer_measures():
    fig = memory_figure("cpu")
    assert fig.source == "rss" and fig.bytes > 10 << 20
    timer = StepTimer("cpu")
    timer.start("x")
    sum(range(10000))
    timer.stop("x")
    ((key, seconds),) = timer.collect()
    assert key == "x" and seconds > 0
