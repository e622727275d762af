"""Reproduce dlqnb's shipped SqueezeNet checkpoint: ``python -m dlqnb.pretrain``.

squeezenet1_1 is trained from scratch on the twelve generated figures of
:data:`dlqnb.synthetic.SHAPE_CLASSES` (none of them a merch class, so transfer learning in notebook 01
really transfers), first at 112×112, then at 192×192 so that its features also fit the larger objects
of 227×227 images. The run is deterministic for a given seed and thread count. The resulting file
and its model card are ``dlqnb/weights/squeezenet1_1_shapes.pt`` and ``dlqnb/weights/README.md``.

Example:
    $ python -m dlqnb.pretrain --per-class 800 --epochs 12 --fine-epochs 3
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dlqnb.models import SqueezeNet, save_network, set_metadata
from dlqnb.synthetic import SHAPE_CLASSES, render_shape, sample_rng


def shapes_tensor(per_class: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All generated shape images as a uint8 N×3×size×size tensor, with their labels."""
    images, labels = [], []
    for class_index, name in enumerate(tqdm(SHAPE_CLASSES, desc="Rendering shapes")):
        for index in range(per_class):
            image = render_shape(name, sample_rng(seed, class_index, index), size=size)
            images.append(torch.from_numpy(np.asarray(image)).permute(2, 0, 1))
            labels.append(class_index)
    return torch.stack(images), torch.tensor(labels)


def _epoch(net, optimizer, schedule, images, labels, size, batch, generator, step0, total_steps, base_lr) -> int:
    net.train()
    order = torch.randperm(len(labels), generator=generator)
    step = step0
    for start in range(0, len(order) - batch + 1, batch):
        index = order[start : start + batch]
        x = images[index].float() / 255
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        flip = torch.rand(len(index), generator=generator) < 0.5
        x[flip] = x[flip].flip(-1)
        for group in optimizer.param_groups:
            group["lr"] = schedule(step, total_steps, base_lr)
        loss = F.cross_entropy(net(x), labels[index], label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
    return step


def _accuracy(net, images, labels, size) -> float:
    net.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), 128):
            x = images[start : start + 128].float() / 255
            if x.shape[-1] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            correct += int((net(x).argmax(1) == labels[start : start + 128]).sum())
    return correct / len(labels)


def _warmup_cosine(step: int, total: int, base: float) -> float:
    warmup = max(1, total // 20)
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlqnb.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=12, help="epochs at 112x112")
    parser.add_argument("--fine-epochs", type=int, default=3, help="epochs at 192x192")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="dlqnb/weights/squeezenet1_1_shapes.pt")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    started = time.time()
    images, labels = shapes_tensor(args.per_class, 192, args.seed)
    held_out = torch.zeros(len(labels), dtype=torch.bool)
    held_out[torch.randperm(len(labels), generator=torch.Generator().manual_seed(args.seed))[: len(labels) // 10]] = True
    train_x, train_y, test_x, test_y = images[~held_out], labels[~held_out], images[held_out], labels[held_out]

    net = SqueezeNet(num_classes=len(SHAPE_CLASSES))
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(args.seed)
    history = []
    for phase, size, epochs in (("coarse", 112, args.epochs), ("fine", 192, args.fine_epochs)):
        steps = epochs * (len(train_y) // args.batch)
        step = 0
        for epoch in tqdm(range(epochs), desc=f"Pretraining at {size}x{size}"):
            step = _epoch(net, optimizer, _warmup_cosine, train_x, train_y, size, args.batch, generator, step, steps, args.lr if phase == "coarse" else args.lr / 4)
            accuracy = _accuracy(net, test_x, test_y, size)
            history.append({"phase": phase, "size": size, "epoch": epoch + 1, "held_out_accuracy": accuracy})
            print(json.dumps(history[-1]), flush=True)

    set_metadata(net.eval(), class_names=SHAPE_CLASSES, input_size=(192, 192))
    save_network(net, args.out)
    summary = {
        "per_class": args.per_class,
        "classes": list(SHAPE_CLASSES),
        "epochs_112": args.epochs,
        "epochs_192": args.fine_epochs,
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "held_out_accuracy_192": history[-1]["held_out_accuracy"],
        "minutes": round((time.time() - started) / 60, 1),
        "torch": torch.__version__,
    }
    print(json.dumps(summary), flush=True)
    with open(args.out.replace(".pt", ".json"), "w", encoding="utf-8") as stream:
        json.dump({"summary": summary, "history": history}, stream, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
