import pytest
import torch

_RESULTS: list[str] = []


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _collect_extra_info(request):
    """After each benchmark, keep its extra_info (ratios, per-image times) for the summary."""
    yield
    bench = request.node.funcargs.get("benchmark")
    if bench is not None and bench.extra_info:
        info = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in bench.extra_info.items())
        _RESULTS.append(f"{request.node.name}: {info}")


def pytest_terminal_summary(terminalreporter):
    if _RESULTS:
        terminalreporter.section("mtlbench benchmark results")
        for line in _RESULTS:
            terminalreporter.write_line(line)
