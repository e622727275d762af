"""Benchmarks: ``python -m dlqnb.bench calibrate``.

Each benchmark measures dlqnb against a baseline in the same process and reports the ratio
(medians of repeated runs), because absolute times on a shared 2-core machine are noise. glibc's
malloc thresholds are fixed (``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``) by re-executing
the command with them set, so that page faults on large activation buffers weigh alike on both
sides; the values in force are printed with the results.

Example:
    $ python -m dlqnb.bench calibrate --images 64 --repeats 5
    $ python -m dlqnb.bench deploy
    $ python -m dlqnb.bench prune
    $ python -m dlqnb.bench zoo
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

_MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def _ensure_malloc_settings(argv: list[str]) -> None:
    if all(os.environ.get(name) for name in _MALLOC_SETTINGS) or os.environ.get("DLQNB_BENCH_NO_REEXEC"):
        return
    env = {**_MALLOC_SETTINGS, **os.environ, "DLQNB_BENCH_NO_REEXEC": "1"}
    os.execve(sys.executable, [sys.executable, "-m", "dlqnb.bench", *argv], env)


def _median_time(run: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_calibrate(images: int, size: int, repeats: int, batch: int) -> dict[str, Any]:
    """Ratio of ``DLQuantizer.calibrate`` time to plain ``no_grad`` inference, squeezenet1_1."""
    import torchvision

    from dlqnb import DLQuantizer
    from dlqnb._kernel import kernel_name

    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(num_classes=1000).eval()
    data = torch.rand(images, 3, size, size)

    def inference() -> None:
        with torch.no_grad():
            for chunk in data.split(batch):
                net(chunk)

    quantizer = DLQuantizer(net)
    kernel = kernel_name()  # compile (or fall back) before timing

    def calibrate() -> None:
        quantizer.calibrate(data, mini_batch_size=batch, progress=False)

    inference()
    calibrate()  # warm-up both
    pairs = []
    for _ in range(repeats):  # interleave so drifting machine load hits both alike
        pairs.append((_median_time(inference, 1), _median_time(calibrate, 1)))
    base = statistics.median(p[0] for p in pairs)
    ours = statistics.median(p[1] for p in pairs)
    return {
        "benchmark": "calibrate",
        "network": "squeezenet1_1",
        "images": images,
        "image_size": size,
        "mini_batch_size": batch,
        "kernel": kernel,
        "threads": torch.get_num_threads(),
        "inference_s": round(base, 4),
        "calibrate_s": round(ours, 4),
        "ratio": round(ours / base, 3),
        "malloc": {name: os.environ.get(name) for name in _MALLOC_SETTINGS},
    }


def bench_deploy(size: int, repeats: int, batches: tuple[int, ...] = (1, 32)) -> dict[str, Any]:
    """PyTorch fp32 eager, ONNX Runtime fp32 and ONNX Runtime int8 (dlqnb's QDQ model), squeezenet1_1.

    Ratios are speed-ups against ONNX Runtime fp32 at the same batch; TensorRT rows are added where
    TensorRT and a GPU exist.
    """
    import tempfile

    import torchvision

    from dlqnb import DLQuantizer
    from dlqnb.deploy import choose_backend, export_float_onnx, export_qdq_onnx, load_int8

    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(num_classes=1000).eval()
    calibration = torch.rand(32, 3, size, size)
    folder = tempfile.mkdtemp(prefix="dlqnb-bench-")
    quantizer = DLQuantizer(net, execution_environment="cpu")
    quantizer.calibrate(calibration, progress=False)
    paths = {
        "onnxruntime fp32": export_float_onnx(quantizer, f"{folder}/fp32.onnx", input_size=(size, size)),
        "onnxruntime int8 (dlqnb QDQ)": export_qdq_onnx(quantizer, f"{folder}/int8.onnx", input_size=(size, size)),
    }
    runners: dict[str, Any] = {name: load_int8(path, backend="onnxruntime") for name, path in paths.items()}
    gpu_quantizer = DLQuantizer(net, execution_environment="gpu")
    gpu_quantizer.calibrate(calibration, progress=False)
    gpu_int8 = export_qdq_onnx(gpu_quantizer, f"{folder}/int8_gpu.onnx", input_size=(size, size))
    gpu_backend = choose_backend(gpu_int8, "auto")
    if gpu_backend[0] == "tensorrt":  # an NVIDIA GPU with TensorRT: fp16 and int8 engines
        paths["tensorrt fp16"] = export_float_onnx(quantizer, f"{folder}/fp16.onnx", input_size=(size, size), dtype="float16")
        paths["tensorrt int8 (dlqnb QDQ)"] = gpu_int8
        runners["tensorrt fp16"] = load_int8(paths["tensorrt fp16"], backend="tensorrt")
        runners["tensorrt int8 (dlqnb QDQ)"] = load_int8(gpu_int8, backend="tensorrt")
    results: dict[str, Any] = {"benchmark": "deploy", "network": "squeezenet1_1", "image_size": size, "threads": torch.get_num_threads(), "rows": []}
    for batch in batches:
        x = torch.rand(batch, 3, size, size)
        numpy_x = x.numpy()

        def eager() -> None:
            with torch.no_grad():
                net(x)

        timings = {"pytorch fp32 eager": eager}
        for name, runner in runners.items():
            timings[name] = lambda runner=runner: runner.predict(numpy_x)
        for run in timings.values():
            run()  # warm-up
        medians = {name: [] for name in timings}
        for _ in range(repeats):  # interleaved, so drifting load hits all alike
            for name, run in timings.items():
                medians[name].append(_median_time(run, 1))
        base = statistics.median(medians["onnxruntime fp32"])
        for name, times in medians.items():
            median = statistics.median(times)
            results["rows"].append({"batch": batch, "runtime": name, "ms": round(1000 * median, 2), "speedup_vs_ort_fp32": round(base / median, 2)})
    results["model_bytes"] = {name: os.path.getsize(path) for name, path in paths.items()}
    results["tensorrt"] = "measured" if gpu_backend[0] == "tensorrt" else f"not measured: {gpu_backend[1]}"
    return results


def bench_prune(repeats: int, batch: int = 128) -> dict[str, Any]:
    """Taylor scoring against a plain training step, and pruned against original inference (digits net)."""
    import torch.nn.functional as F

    from dlqnb.models import digits_net
    from dlqnb.pruning import TaylorPrunableNetwork, count_flops

    torch.manual_seed(0)
    net = digits_net().eval()
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    trainable = digits_net()
    optimizer = torch.optim.SGD(trainable.parameters(), lr=0.01, momentum=0.9)

    def training_step() -> None:
        loss = F.cross_entropy(trainable(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    prunable = TaylorPrunableNetwork(net)

    def scoring_step() -> None:
        out, activations = prunable.forward(x)
        gradients = torch.autograd.grad(F.cross_entropy(out, y), activations)
        prunable.update_score(activations, gradients)

    pruned = prunable
    for _ in range(5):  # 40 of the 48 prunable filters
        out, activations = pruned.forward(x)
        pruned = pruned.update_score(activations, torch.autograd.grad(F.cross_entropy(out, y), activations)).update_prunables(8)
    small = pruned.to_module()
    inference_x = torch.rand(512, 1, 28, 28)

    def original_inference() -> None:
        with torch.no_grad():
            net(inference_x)

    def pruned_inference() -> None:
        with torch.no_grad():
            small(inference_x)

    timings = {"training step": training_step, "forward + update_score": scoring_step, "original inference": original_inference, "pruned inference": pruned_inference}
    for run in timings.values():
        run()
    samples: dict[str, list[float]] = {name: [] for name in timings}
    for _ in range(repeats):
        for name, run in timings.items():
            samples[name].append(_median_time(run, 1))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "benchmark": "prune",
        "network": "digits (*updateScore*)",
        "batch": batch,
        "ms": {name: round(1000 * value, 2) for name, value in medians.items()},
        "scoring_vs_training_step": round(medians["forward + update_score"] / medians["training step"], 3),
        "pruned_inference_speedup": round(medians["original inference"] / medians["pruned inference"], 3),
        "filters": {"original": 60, "pruned": sum(pruned.filter_counts().values())},
        "flops": {"original": count_flops(net, (1, 28, 28)), "pruned": count_flops(small, (1, 28, 28))},
    }


def _pruning_verdict(row: dict[str, Any]) -> str:
    """"ok" (the extracted network computes what the masked one does), "none" (every convolution is
    tied to others: nothing to prune) or "FAIL"."""
    if row["error"]:
        return "FAIL"
    if row.get("prunable_layers") == 0:
        return "none"
    return "ok" if row["max_difference"] is not None and row["max_difference"] < 1e-5 else "FAIL"


def bench_zoo(models: list[str] | None = None) -> dict[str, Any]:
    """Every torchvision classifier up to about 30 M parameters through calibrate → quantize → export →
    ONNX Runtime on both targets, and through Taylor pruning (:mod:`dlqnb.reach`); a table is printed
    as it goes, and the rows are returned.

    ONNX Runtime is compared with the emulation that rounds ties to even, as ONNX Runtime and
    TensorRT do where they quantize ("exact": bit for bit); "rule diff" is the largest difference,
    relative to the largest score, from the emulation that rounds as the target's rule (MATLAB's
    cuDNN target rounds ties away from zero; on "cpu" the rule is ties to even, so it is the same).
    """
    from tqdm.auto import tqdm

    from dlqnb.reach import check_pruning, check_quantization, classification_models

    names = models or classification_models()
    rows: list[dict[str, Any]] = []
    header = f"{'model':22s} {'params':>7s} | {'target':6s} {'int8':>4s} {'float':>5s} {'export':>6s} {'top-1':>6s} {'max diff':>8s} {'exact':>5s} {'rule diff':>9s} | {'prune':>5s}"
    print(header, file=sys.stderr)
    for name in tqdm(names, desc="zoo", unit="model", file=sys.stderr):
        pruning = check_pruning(name)
        for target in ("gpu", "cpu"):
            row = check_quantization(name, target)
            row.pop("traceback", None)
            row["pruning"] = pruning
            rows.append(row)
            agreement = f"{row['top1_agreement']:.2f}" if row["top1_agreement"] is not None else "-"
            difference = f"{row['max_difference']:.4g}" if row["max_difference"] is not None else "-"
            rule = f"{row['target_rule_difference']:.3f}" if row.get("target_rule_difference") is not None else "-"
            prune = _pruning_verdict(pruning)
            line = (
                f"{name:22s} {row['parameters'] / 1e6 if row['parameters'] else 0:6.1f}M | {target:6s} {row['quantized_layers'] or 0:4d} "
                f"{row['float_layers'] or 0:5d} {'yes' if row['exported'] else 'NO':>6s} {agreement:>6s} {difference:>8s} "
                f"{'yes' if row['bit_exact'] else 'no':>5s} {rule:>9s} | {prune:>5s} {row['error'] or pruning['error']}"
            )
            tqdm.write(line, file=sys.stderr)
    passed = {target: sum(1 for r in rows if r["target"] == target and r["exported"] and r["top1_agreement"] is not None) for target in ("gpu", "cpu")}
    return {
        "models": len(names),
        "passed_export_and_onnxruntime": passed,
        "pruning_passed": sum(1 for r in rows[::2] if _pruning_verdict(r["pruning"]) != "FAIL"),
        "pruning_nothing_to_prune": [r["model"] for r in rows[::2] if _pruning_verdict(r["pruning"]) == "none"],
        "failures": [{"model": r["model"], "target": r["target"], "error": r["error"]} for r in rows if r["error"]],
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m dlqnb.bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="benchmark", required=True)
    calibrate = sub.add_parser("calibrate", help="calibrate() time / plain inference time")
    calibrate.add_argument("--images", type=int, default=64)
    calibrate.add_argument("--size", type=int, default=227)
    calibrate.add_argument("--batch", type=int, default=32)
    calibrate.add_argument("--repeats", type=int, default=5)
    deploy = sub.add_parser("deploy", help="int8 ONNX Runtime vs fp32 (PyTorch, ONNX Runtime)")
    deploy.add_argument("--size", type=int, default=227)
    deploy.add_argument("--repeats", type=int, default=9)
    prune = sub.add_parser("prune", help="Taylor scoring vs a training step; pruned vs original inference")
    prune.add_argument("--repeats", type=int, default=15)
    zoo = sub.add_parser("zoo", help="torchvision's classifiers: calibrate, quantize, export, ONNX Runtime, pruning")
    zoo.add_argument("models", nargs="*", help="model names (default: every classifier up to about 30 M parameters)")
    args = parser.parse_args(argv)
    if args.benchmark == "zoo":
        result = bench_zoo(args.models)
        result.pop("rows")
        print(json.dumps(result, indent=2))
        return 0
    _ensure_malloc_settings(argv)
    if args.benchmark == "calibrate":
        result = bench_calibrate(args.images, args.size, args.repeats, args.batch)
    elif args.benchmark == "deploy":
        result = bench_deploy(args.size, args.repeats)
    else:
        result = bench_prune(args.repeats)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
