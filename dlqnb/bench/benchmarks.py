"""Benchmarks: ``python -m dlqnb.bench calibrate|deploy|prune|zoo|accuracy`` (``accuracy``: :mod:`dlqnb.bench.accuracy`).

Each benchmark measures dlqnb against a baseline in the same process and reports the ratio
(medians of repeated runs), because absolute times on a shared 2-core machine are noise. glibc's
malloc thresholds are fixed (``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``) by re-executing
the command with them set, so that page faults on large activation buffers weigh alike on both
sides; the values in force are printed with the results.

Runtimes with worker threads of their own never take turns run by run: an idle ONNX Runtime session's
threads spin after each run and an OpenVINO or PyTorch pool keeps its threads warm, so a runtime timed
between single runs of others competes with them for the cores. ``deploy`` therefore times each
runtime in a block of its own (loaded, warmed up, timed, released; ONNX Runtime sessions without
spinning) and prints the CPU and its int8 instruction sets with the figures, since int8 gains depend
on them. ``calibrate`` and ``prune`` compare two uses of the same PyTorch thread pool, which can take
turns, so they interleave runs to let drifting machine load hit both sides alike.

Example:
    $ python -m dlqnb.bench calibrate --images 64 --repeats 5
    $ python -m dlqnb.bench deploy
    $ python -m dlqnb.bench prune
    $ python -m dlqnb.bench zoo
    $ python -m dlqnb.bench accuracy --models resnet18,mobilenet_v2 --json accuracy.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from dlqnb.bench.peers import openvino_call, peer_nncf, peer_onnxruntime

_MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def _ensure_malloc_settings(argv: list[str]) -> None:
    if all(os.environ.get(name) for name in _MALLOC_SETTINGS) or os.environ.get("DLQNB_BENCH_NO_REEXEC"):
        return
    env = {**_MALLOC_SETTINGS, **os.environ, "DLQNB_BENCH_NO_REEXEC": "1"}
    os.execve(sys.executable, [sys.executable, "-m", "dlqnb.bench.benchmarks", *argv], env)


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

    from dlqnb.quantizer import DLQuantizer
    from dlqnb.calibration.kernel import kernel_name

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


def _deploy_runtimes(net: torch.nn.Module, paths: dict[str, str], gpu: bool) -> dict[str, Callable[[], Callable[[Any], Any]]]:
    """Each runtime of the deploy benchmark as a factory: it loads the runtime and returns its call."""
    from dlqnb.deploy.load import load_int8
    from dlqnb.deploy.runners import OnnxRuntimeRunner, OpenVINORunner, TensorRTRunner

    def eager() -> Callable[[Any], Any]:
        def call(x: Any) -> Any:
            with torch.no_grad():
                return net(torch.from_numpy(x))

        return call

    runtimes: dict[str, Callable[[], Callable[[Any], Any]]] = {
        "PyTorch fp32 (eager)": eager,
        "ONNX Runtime fp32": lambda: OnnxRuntimeRunner(paths["fp32"]).predict,
    }
    has_openvino = "nncf" in paths
    if has_openvino:
        runtimes["OpenVINO fp32"] = lambda: OpenVINORunner(paths["fp32"]).predict
    runtimes["ONNX Runtime int8, its quantize_static (peer)"] = lambda: OnnxRuntimeRunner(paths["ort_peer"]).predict
    if has_openvino:
        runtimes["OpenVINO int8, NNCF (x86 peer)"] = lambda: openvino_call(paths["nncf"])
    runtimes["ONNX Runtime int8, dlqnb's file"] = lambda: OnnxRuntimeRunner(paths["int8"]).predict
    if has_openvino:
        runtimes["OpenVINO int8, dlqnb's file"] = lambda: OpenVINORunner(paths["int8"]).predict
    runtimes["auto, dlqnb's file"] = lambda: load_int8(paths["int8"], backend="auto").predict
    if gpu:
        runtimes["TensorRT fp16"] = lambda: TensorRTRunner(paths["fp16"]).predict
        runtimes["TensorRT int8, dlqnb's file"] = lambda: TensorRTRunner(paths["int8_gpu"]).predict
    return runtimes


def bench_deploy(
    size: int = 227, rounds: int = 5, warmups: int = 3, runs: int = 7, min_seconds: float = 1.0, batches: tuple[int, ...] = (1, 32)
) -> dict[str, Any]:
    """Every runtime that can run squeezenet1_1 here, fp32 and int8, dlqnb's file and the peers', side by side.

    Each runtime is measured in a block of its own: loaded, warmed up, timed per batch (at least
    ``runs`` calls and ``min_seconds``; the block's median is kept), released, and the machine left
    to settle before the next one loads. ``rounds`` passes go over all of them, and each figure is its
    least disturbed round (other loads on a shared machine only ever slow a block down; ``spread``
    says how much slower its slowest round was). ONNX Runtime sessions sleep between runs (no spinning) and OpenVINO
    runs one request at a time with the latency hint, all on every core. Ratios are speed-ups against
    ONNX Runtime fp32 at the same batch. Peers (ONNX Runtime's ``quantize_static``, NNCF + OpenVINO)
    quantize with the same 32 calibration images; rows whose packages are missing are left out and
    named in ``not_measured``.
    """
    import tempfile
    import warnings

    import torchvision
    from tqdm.auto import tqdm

    from dlqnb.quantizer import DLQuantizer
    from dlqnb.deploy.backend_choice import choose_backend
    from dlqnb.deploy import export_float_onnx, export_qdq_onnx
    from dlqnb.deploy.host import cpu_info, cpu_summary, installed_version, time_block

    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(num_classes=1000).eval()
    calibration = torch.rand(32, 3, size, size)
    folder = tempfile.mkdtemp(prefix="dlqnb-bench-")
    quantizer = DLQuantizer(net, execution_environment="cpu")
    quantizer.calibrate(calibration, progress=False)
    paths = {
        "fp32": str(export_float_onnx(quantizer, f"{folder}/fp32.onnx", input_size=(size, size))),
        "int8": str(export_qdq_onnx(quantizer, f"{folder}/int8.onnx", input_size=(size, size))),
    }
    paths["ort_peer"] = peer_onnxruntime(paths["fp32"], calibration, f"{folder}/ort_peer.onnx")
    not_measured = []
    try:
        paths["nncf"] = peer_nncf(paths["fp32"], calibration, f"{folder}/nncf.xml")
    except ImportError as error:
        not_measured.append(f"OpenVINO rows: {error.name} is not installed (pip install 'dlqnb[bench]')")
    gpu_quantizer = DLQuantizer(net, execution_environment="gpu")
    gpu_quantizer.calibrate(calibration, progress=False)
    paths["int8_gpu"] = str(export_qdq_onnx(gpu_quantizer, f"{folder}/int8_gpu.onnx", input_size=(size, size)))
    gpu = choose_backend(paths["int8_gpu"], "auto")
    if gpu[0] == "tensorrt":
        paths["fp16"] = str(export_float_onnx(quantizer, f"{folder}/fp16.onnx", input_size=(size, size), dtype="float16"))
    else:
        not_measured.append(f"TensorRT rows: {gpu[1].split(';')[0]}")  # why not TensorRT; the rest is about CPU runtimes
    runtimes = _deploy_runtimes(net, paths, gpu[0] == "tensorrt")
    auto = choose_backend(paths["int8"], "auto")  # measured (or read from the cache) before any timing
    generator = torch.Generator().manual_seed(1)
    inputs = {batch: torch.rand(batch, 3, size, size, generator=generator).numpy() for batch in batches}
    samples: dict[str, dict[int, list[float]]] = {name: {batch: [] for batch in batches} for name in runtimes}
    with tqdm(total=rounds * len(runtimes), desc="deploy benchmark", unit="block", file=sys.stderr) as bar:
        names = list(runtimes)
        for round_index in range(rounds):
            start = round_index % len(names)  # each round starts one runtime later: no runtime always follows the same one
            for name in names[start:] + names[:start]:
                load = runtimes[name]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the peers' files carry no dlqnb metadata
                    call = load()
                for batch, x in inputs.items():
                    samples[name][batch].append(statistics.median(time_block(lambda: call(x), warmups, runs, min_seconds)))
                del call
                gc.collect()
                time.sleep(0.5)  # let the last runtime's threads go idle
                bar.update()
    rows = []
    for name, by_batch in samples.items():
        for batch, medians in by_batch.items():
            best = min(medians)
            base = min(samples["ONNX Runtime fp32"][batch])
            rows.append({
                "runtime": name,
                "batch": batch,
                "ms": round(1000 * best, 2),
                "speedup_vs_ort_fp32": round(base / best, 2),
                "spread": round(max(medians) / best - 1, 3),
            })
    sizes = {"fp32": "fp32 ONNX", "int8": "dlqnb int8 QDQ ONNX", "ort_peer": "quantize_static QDQ ONNX"}
    return {
        "benchmark": "deploy",
        "network": "squeezenet1_1",
        "image_size": size,
        "cpu": cpu_summary(),
        "cpu_info": cpu_info(),
        "threads": os.cpu_count(),
        "rounds": rounds,
        "runs_per_block": runs,
        "auto": {"backend": auto[0], "reason": auto[1]},
        "rows": rows,
        "model_bytes": {label: os.path.getsize(paths[key]) for key, label in sizes.items()},
        "not_measured": not_measured,
        "versions": {module: installed_version(module) for module in ("torch", "onnxruntime", "openvino", "nncf")},
    }


def deploy_table(result: dict[str, Any]) -> str:
    """The deploy benchmark's rows as a Markdown table, one row per runtime, one column group per batch."""
    batches = sorted({row["batch"] for row in result["rows"]})
    header = "| runtime | " + " | ".join(f"batch {b} | vs ORT fp32" for b in batches) + " |"
    lines = [header, "|---|" + "---|---|" * len(batches)]
    by_runtime: dict[str, dict[int, dict[str, Any]]] = {}
    for row in result["rows"]:
        by_runtime.setdefault(row["runtime"], {})[row["batch"]] = row
    for name, cells in by_runtime.items():
        label = f"{name} → {result['auto']['backend']}" if name.startswith("auto") else name
        figures = " | ".join(f"{cells[b]['ms']:.3g} ms | {cells[b]['speedup_vs_ort_fp32']:.2f}×" for b in batches)
        lines.append(f"| {label} | {figures} |")
    return "\n".join(lines)


def bench_prune(repeats: int, batch: int = 128) -> dict[str, Any]:
    """Taylor scoring against a plain training step, and pruned against original inference (digits net)."""
    import torch.nn.functional as F

    from dlqnb.models.networks import digits_net
    from dlqnb.pruning.taylor import TaylorPrunableNetwork, count_flops

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
    ONNX Runtime on both targets, and through Taylor pruning (:mod:`dlqnb.bench.reach`); then, counted
    apart, the networks that need graph capture's fallback (:func:`~dlqnb.bench.reach.capture_fallback_models`:
    submodules torch.fx cannot trace kept whole, in float). A table is printed as it goes, and the rows
    are returned.

    ONNX Runtime is compared with the emulation that rounds ties to even, as ONNX Runtime and
    TensorRT do where they quantize ("exact": bit for bit); "rule diff" is the largest difference,
    relative to the largest score, from the emulation that rounds as the target's rule (MATLAB's
    cuDNN target rounds ties away from zero; on "cpu" the rule is ties to even, so it is the same).

    Returns:
        The torchvision zoo's counts (``models``, ``passed_export_and_onnxruntime`` per target,
        ``pruning_passed``, ``pruning_nothing_to_prune``), ``capture_fallback`` with the same counts for
        the fallback networks, ``failures`` and ``rows`` (both groups).

    Example:
        $ python -m dlqnb.bench zoo mobilevit_xxs
    """
    from tqdm.auto import tqdm

    from dlqnb.bench.reach import capture_fallback_models, check_pruning, check_quantization, classification_models

    fallback = capture_fallback_models()
    names = models or classification_models() + fallback
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
    # the fallback networks are counted apart, so that the torchvision zoo's count stays its own
    zoo_rows = [row for row in rows if row["model"] not in fallback]
    return {
        **_zoo_counts(zoo_rows),
        "capture_fallback": _zoo_counts([row for row in rows if row["model"] in fallback]),
        "failures": [{"model": r["model"], "target": r["target"], "error": r["error"]} for r in rows if r["error"]],
        "rows": rows,
    }


def _zoo_counts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Models, export-and-ONNX-Runtime passes per target and pruning verdicts of zoo rows (two a model:
    "gpu" then "cpu")."""
    passed = {target: sum(1 for r in rows if r["target"] == target and r["exported"] and r["top1_agreement"] is not None) for target in ("gpu", "cpu")}
    return {
        "models": len(rows) // 2,
        "passed_export_and_onnxruntime": passed,
        "pruning_passed": sum(1 for r in rows[::2] if _pruning_verdict(r["pruning"]) != "FAIL"),
        "pruning_nothing_to_prune": [r["model"] for r in rows[::2] if _pruning_verdict(r["pruning"]) == "none"],
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
    deploy = sub.add_parser("deploy", help="fp32 and int8 on every runtime here, dlqnb's file and the peers'")
    deploy.add_argument("--size", type=int, default=227)
    deploy.add_argument("--rounds", type=int, default=5)
    deploy.add_argument("--runs", type=int, default=7, help="timed runs per block (after 3 warm-ups)")
    prune = sub.add_parser("prune", help="Taylor scoring vs a training step; pruned vs original inference")
    prune.add_argument("--repeats", type=int, default=15)
    zoo = sub.add_parser("zoo", help="torchvision's classifiers (and networks that need the capture fallback): calibrate, quantize, export, ONNX Runtime, pruning")
    zoo.add_argument("models", nargs="*", help="model names (default: every classifier up to about 30 M parameters)")
    accuracy = sub.add_parser("accuracy", help="top-1 of the trained zoo: float, dlqnb's defaults and recipes, the peers' int8")
    accuracy.add_argument("--models", default=None, help="comma-separated trained-zoo names (default: all)")
    accuracy.add_argument("--quick", action="store_true", help="a tiny run: few images, one network unless --models, two recipes")
    accuracy.add_argument("--recipes", default=None, help="comma-separated recipe names to measure (default: all; 'default' always)")
    accuracy.add_argument("--json", default=None, metavar="PATH", help="also write every number to this JSON file")
    args = parser.parse_args(argv)
    if args.benchmark == "accuracy":
        return _main_accuracy(args.models, args.quick, args.json, args.recipes)
    if args.benchmark == "zoo":
        result = bench_zoo(args.models)
        result.pop("rows")
        print(json.dumps(result, indent=2))
        return 0
    _ensure_malloc_settings(argv)
    if args.benchmark == "calibrate":
        result = bench_calibrate(args.images, args.size, args.repeats, args.batch)
    elif args.benchmark == "deploy":
        result = bench_deploy(args.size, args.rounds, runs=args.runs)
        print(f"CPU: {result['cpu']}\n{deploy_table(result)}\n")
    else:
        result = bench_prune(args.repeats)
    if args.benchmark != "deploy":
        from dlqnb.deploy.host import cpu_summary

        result["cpu"] = cpu_summary()
        print(f"CPU: {result['cpu']}")
    print(json.dumps(result, indent=2))
    return 0


def _main_accuracy(models: str | None, quick: bool, json_path: str | None, recipes: str | None = None) -> int:
    """``python -m dlqnb.bench accuracy``: the tables on stdout, every number in ``json_path``."""
    from dlqnb.bench.accuracy import accuracy_table, bench_accuracy, recipes_table
    from dlqnb.core.cache import atomic_write_text

    def listed(text: str | None) -> list[str] | None:
        return [item.strip() for item in text.split(",") if item.strip()] if text else None

    try:
        result = bench_accuracy(listed(models), quick=quick, recipes=listed(recipes))
    except ValueError as error:
        print(f"python -m dlqnb.bench accuracy: {error}", file=sys.stderr)
        return 2
    images = result["images"]
    print(f"CPU: {result['cpu']}")
    print(
        f"Top-1 (%) on {images['validation']} validation images, calibrated on {images['calibration']}, the deployed recipe "
        f"picked on {images['selection']} selection images; dlqnb cells: emulation / ONNX Runtime / OpenVINO\n"
    )
    print(accuracy_table(result) + "\n")
    print(recipes_table(result) + "\n")
    for row in result["networks"]:
        for note in row["not_measured"]:
            print(f"{row['network']}: not measured: {note}")
    if json_path:
        atomic_write_text(json_path, json.dumps(result, indent=1))
        print(f"every number: {json_path}")
    return 0
