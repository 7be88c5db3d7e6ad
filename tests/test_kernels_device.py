"""Device probing with a stand-in NVML module, and the `device` command's exit codes (no GPU)."""

from __future__ import annotations

import json
import types

import pytest
from tether_kernels import cli, compat, device


class FakeNVMLError(Exception):
    pass


def fake_nvml(*, count: int = 1, unsupported: tuple[str, ...] = (), init_fails: bool = False):
    """A pynvml stand-in describing an H100 SXM; functions named in ``unsupported`` raise."""
    m = types.SimpleNamespace()
    m.NVMLError = FakeNVMLError
    m.NVML_CLOCK_SM, m.NVML_CLOCK_MEM = 1, 2
    m.NVML_TEMPERATURE_GPU = 0
    m.NVML_PCIE_UTIL_TX_BYTES, m.NVML_PCIE_UTIL_RX_BYTES = 0, 1
    m.shutdowns = 0
    values = {
        "nvmlDeviceGetName": lambda h: b"NVIDIA H100 80GB HBM3",
        "nvmlSystemGetDriverVersion": lambda: "550.54.15",
        "nvmlSystemGetCudaDriverVersion": lambda: 12040,
        "nvmlDeviceGetCudaComputeCapability": lambda h: (9, 0),
        "nvmlDeviceGetClockInfo": lambda h, c: {1: 1755, 2: 2619}[c],
        "nvmlDeviceGetMaxClockInfo": lambda h, c: {1: 1980, 2: 2619}[c],
        "nvmlDeviceGetMemoryBusWidth": lambda h: 5120,
        "nvmlDeviceGetMemoryInfo": lambda h: types.SimpleNamespace(used=1 << 30, total=80 << 30),
        "nvmlDeviceGetTemperature": lambda h, s: 41,
        "nvmlDeviceGetPowerUsage": lambda h: 123456,
        "nvmlDeviceGetEnforcedPowerLimit": lambda h: 700000,
        "nvmlDeviceGetUtilizationRates": lambda h: types.SimpleNamespace(gpu=7, memory=3),
        "nvmlDeviceGetPcieThroughput": lambda h, c: 100 if c == 0 else 200,
    }

    def unsupported_fn(*a):
        raise FakeNVMLError("Not Supported")

    for name, fn in values.items():
        setattr(m, name, unsupported_fn if name in unsupported else fn)

    def init():
        if init_fails:
            raise FakeNVMLError("Driver Not Loaded")

    def shutdown():
        m.shutdowns += 1

    m.nvmlInit = init
    m.nvmlShutdown = shutdown
    m.nvmlDeviceGetCount = lambda: count
    m.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)
    return m


CUDA_ATTRS = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": (9, 0), "sms": 132,
              "sm_clock_max_mhz": 1980.0, "mem_clock_max_mhz": 2619.0, "bus_width_bits": 5120,
              "l2_bytes": 50 << 20}  # fmt: skip


def test_nvml_fields() -> None:
    nv = fake_nvml()
    q = device.query_nvml(nv)
    assert q is not None
    assert q["name"] == "NVIDIA H100 80GB HBM3"
    assert q["compute_capability"] == (9, 0)
    assert q["sm_clock_mhz"] == 1755 and q["sm_clock_max_mhz"] == 1980
    assert q["bus_width_bits"] == 5120
    assert q["power_w"] == pytest.approx(123.456) and q["power_limit_w"] == 700
    assert q["pcie_tx_bytes_per_s"] == 100 * 1024
    assert q["utilization_gpu_pct"] == 7
    assert nv.shutdowns == 1


def test_unsupported_nvml_queries_become_none() -> None:
    nv = fake_nvml(unsupported=("nvmlDeviceGetMemoryBusWidth", "nvmlDeviceGetPowerUsage"))
    q = device.query_nvml(nv)
    assert q["bus_width_bits"] is None and q["power_w"] is None
    assert q["temperature_c"] == 41


def test_nvml_without_gpu() -> None:
    assert device.query_nvml(fake_nvml(init_fails=True)) is None
    assert device.query_nvml(fake_nvml(count=0)) is None


def test_detect_nvml_plus_cuda_peaks() -> None:
    info = device.detect(nvml=fake_nvml(), cuda_attrs=CUDA_ATTRS, simulator=False)
    assert info.sms == 132 and info.sources["sms"] == "cuda"
    assert info.sources["bus_width_bits"] == "nvml"
    assert info.known_gpu == "H100 SXM"
    assert info.peaks_source == "device"
    assert info.peaks["flops"]["fp32"] == pytest.approx(66.9e12, rel=1e-3)
    assert info.peaks["dram_bytes_per_s"] == pytest.approx(3.35e12, rel=1e-3)
    json.dumps(info.to_json())


def test_detect_falls_back_to_table() -> None:
    nv = fake_nvml(unsupported=("nvmlDeviceGetMemoryBusWidth", "nvmlDeviceGetMaxClockInfo"))
    info = device.detect(nvml=nv, cuda_attrs=None, simulator=False)
    assert info.sms == 132 and info.sources["sms"] == "table:H100 SXM"
    assert info.bus_width_bits == 5120
    assert info.peaks_source == "device+table:H100 SXM"
    assert info.peaks["flops"]["fp32"] == pytest.approx(66.9e12, rel=1e-3)


def test_detect_no_gpu() -> None:
    with pytest.raises(device.NoGPU, match="NUMBA_ENABLE_CUDASIM"):
        device.detect(nvml=None, cuda_attrs=None, simulator=False)


def test_detect_simulator() -> None:
    info = device.detect(simulator=True)
    assert info.simulator and info.name == device.SIMULATOR_NAME and info.peaks == {}
    info = device.detect(simulator=True, assume="H100 SXM")
    assert info.peaks_source == "table:H100 SXM (assumed)"
    with pytest.raises(ValueError, match="known"):
        device.detect(simulator=True, assume="Imaginary 9000")


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "simulator_enabled", lambda: False)
    monkeypatch.setattr(device, "_load_nvml", lambda: None)
    monkeypatch.setattr(device, "query_cuda", lambda index=0: None)


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize("argv", [["device"], ["device", "--json"], ["run", "--quick"]])
def test_cli_without_gpu_exits_69(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 69
    err = capsys.readouterr().err
    assert "no CUDA GPU found" in err and "Traceback" not in err


def test_cli_device_json_with_fake_nvml(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(device, "simulator_enabled", lambda: False)
    monkeypatch.setattr(device, "_load_nvml", fake_nvml)
    monkeypatch.setattr(device, "query_cuda", lambda index=0: CUDA_ATTRS)
    assert cli.main(["device", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["name"] == "NVIDIA H100 80GB HBM3" and d["driver_version"] == "550.54.15"
    assert d["compute_capability"] == [9, 0]
    assert d["peaks"]["flops"]["fp32"] == pytest.approx(66.9e12, rel=1e-3)
    assert cli.main(["device"]) == 0
    assert "66.91 TFLOP/s" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--precisions", "fp4"],
        ["run", "--suite", "nope"],
        ["run", "--gemm", "12x12"],
        ["device", "--assume-gpu", "Imaginary 9000"],
    ],
)
def test_cli_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.startswith("kernels: ")


H200_VERSIONS = {"numpy": "2.5.2", "numba": "0.68.0", "numba-cuda": "0.30.4"}


def test_cli_device_reports_versions_and_known_bad_combination(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The H200's stack (numpy 2.5.2 with numba-cuda 0.30.4): the versions with the driver's, and
    the combination named with its fix on one line."""
    monkeypatch.setattr(device, "simulator_enabled", lambda: False)
    monkeypatch.setattr(device, "_load_nvml", fake_nvml)
    monkeypatch.setattr(device, "query_cuda", lambda index=0: CUDA_ATTRS)
    monkeypatch.setattr(compat, "installed_versions", lambda: dict(H200_VERSIONS))
    assert cli.main(["device", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["versions"] == {**H200_VERSIONS, "driver": "550.54.15"}
    assert d["diagnosis"] == compat.diagnose(d["versions"])
    assert "row_stack" in d["diagnosis"]
    assert cli.main(["device"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"known problem: {d['diagnosis']}" in lines
    assert "numba-cuda 0.30.4" in cli.versions_line(d["versions"])


def test_cli_device_without_known_problem_prints_none(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(device, "simulator_enabled", lambda: True)
    monkeypatch.setattr(compat, "installed_versions", lambda: {**H200_VERSIONS, "numpy": "2.4.6"})
    info = device.detect()
    assert info.versions == {**H200_VERSIONS, "numpy": "2.4.6", "driver": None}
    assert info.diagnosis is None
    assert cli.main(["device"]) == 0
    out = capsys.readouterr().out
    assert "known problem" not in out and "numpy 2.4.6" in out
