"""Reproduce dlqnb's shipped SqueezeNet checkpoint: ``python -m dlqnb.bench.pretrain``.

squeezenet1_1 is trained from scratch on the the 24 generated figures of
:data:`dlqnb.data.synthetic.SHAPE_CLASSES` (none of them a merch class, so transfer learning in notebook 01
really transfers), first at 112×112, then at 192×192 so that its features also fit the larger objects
of 227×227 images. The run is deterministic for a given seed and thread count. The resulting file
and its model card are ``dlqnb/models/weights/squeezenet1_1_shapes.pt`` and ``dlqnb/models/weights/README.md``.

Example:
    $ python -m dlqnb.bench.pretrain --per-class 500 --epochs 10 --fine-epochs 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from tqdm.auto import tqdm

from dlqnb.data.synthetic import SHAPE_CLASSES
from dlqnb.models.networks import SqueezeNet, save_network, set_metadata
from dlqnb.training.trained_zoo import held_out_accuracy, shapes_tensor, train_epoch, warmup_cosine


def write_model_card(result_json: str) -> str:
    """Write ``README.md`` beside the checkpoint from the run's results (the numbers are the run's)."""
    import os

    with open(result_json, encoding="utf-8") as stream:
        result = json.load(stream)
    summary, history = result["summary"], result["history"]
    rows = "\n".join(f"| {h['phase']} | {h['size']} | {h['epoch']} | {h['held_out_accuracy']:.3f} |" for h in history)
    card = f"""# dlqnb's pretrained SqueezeNet (`squeezenet1_1_shapes.pt`)

The offline starting point of transfer learning (notebook 01), standing in for ImageNet weights, which
cannot be downloaded here.

* **Architecture**: SqueezeNet v1.1 (MATLAB's `squeezenet`; the arithmetic of torchvision's squeezenet1_1) with
  MATLAB's layer names (`data`, `conv1`, `relu_conv1`, `pool1`, `fire2-squeeze1x1`, …, `conv10`, `relu_conv10`,
  `pool10`): `data` is dlqnb's input layer (ImageNet mean/std normalization of [0, 1] images); {len(summary['classes'])} output classes.
* **Keys**: network file version 2, weights under MATLAB's layer names (`conv1.weight`,
  `fire2-squeeze1x1.weight`, …). dlqnb still reads version 1 files (torchvision's `features.0.weight`, …) and
  renames their keys on load; `dlqnb.models.networks.torchvision_state_dict` does the same for torchvision's ImageNet
  checkpoint.
* **Data**: {summary['per_class']} images per class of {len(summary['classes'])} generated figures
  ({', '.join(summary['classes'])}), rendered by `dlqnb.data.synthetic.render_shape` with random pose, scale,
  colour, lighting, background and clutter. None of them is a merch class. 10 % held out.
* **Recipe**: AdamW (lr {summary['lr']}, weight decay 5e-4), batches of {summary['batch']}, label smoothing 0.1,
  warm-up then cosine decay; {summary['epochs_112']} epochs at 112×112, then {summary['epochs_192']} at 192×192
  (lr / 4) so that the features also fit the larger objects of 227×227 images; random horizontal flips; seed
  {summary['seed']}, {summary['threads']} threads, torch {summary['torch']}; {summary['minutes']} minutes on 2 cores.
* **Held-out accuracy** at 192×192: **{summary['held_out_accuracy_192']:.3f}**.
* **File**: a dlqnb network file (`torch.load(..., weights_only=True)`; nothing is unpickled),
  {os.path.getsize(result_json.replace('.json', '.pt')) / 1e6:.1f} MB.

Regenerate it (deterministic for a given seed and thread count):

```bash
python -m dlqnb.bench.pretrain --per-class {summary['per_class']} --epochs {summary['epochs_112']} --fine-epochs {summary['epochs_192']} --lr {summary['lr']} --seed {summary['seed']}
```

| phase | size | epoch | held-out accuracy |
|---|---|---|---|
{rows}
"""
    path = os.path.join(os.path.dirname(result_json), "README.md")
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(card)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlqnb.bench.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=10, help="epochs at 112x112")
    parser.add_argument("--fine-epochs", type=int, default=2, help="epochs at 192x192")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="dlqnb/models/weights/squeezenet1_1_shapes.pt")
    parser.add_argument("--card-only", action="store_true", help="only rewrite the model card from the last run's results")
    args = parser.parse_args(argv)
    if args.card_only:
        print(write_model_card(args.out.replace(".pt", ".json")))
        return 0

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
            step = train_epoch(net, optimizer, warmup_cosine, train_x, train_y, size, args.batch, generator, step, steps, args.lr if phase == "coarse" else args.lr / 4)
            accuracy = held_out_accuracy(net, test_x, test_y, size)
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
    write_model_card(args.out.replace(".pt", ".json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
