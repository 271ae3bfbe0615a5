"""Trains the built-in ``builtin:digits`` DiT with rectified flow on scikit-learn's digits.

    python tools/train_digits.py --steps 5000 --out swiftfusion/models/weights/digits

Runs on CPU in about half an hour on 2 cores. The result is saved with ``save_pretrained``
(config.json + safetensors), the format ``swiftfusion.models.digits.load_transformer`` reads.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from swiftfusion.models import digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(digits.WEIGHTS_DIR))
    parser.add_argument("--save-every", type=int, default=500)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    images, labels = digits.digit_images()
    model = digits.build_transformer().train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = 200
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / args.steps)).item()),
    )
    start = time.time()
    for step in range(1, args.steps + 1):
        index = torch.randint(0, images.shape[0], (args.batch_size,))
        x0, y = images[index], labels[index]
        noise = torch.randn_like(x0)
        sigma = torch.sigmoid(torch.randn(args.batch_size))  # logit-normal, as in SD3
        s = sigma[:, None, None, None]
        xt = (1 - s) * x0 + s * noise
        # The model predicts the clean image (x-prediction: its outputs stay on the data manifold,
        # which a small pixel-space model needs); the loss is on the velocity it implies. Label
        # dropout (10%) happens inside diffusers' LabelEmbedding in train mode: the CFG branch.
        predicted_x0 = model(xt, sigma * 1000.0, y).sample
        velocity = (xt - predicted_x0) / s.clamp_min(digits.MIN_SIGMA_FOR_VELOCITY)
        loss = torch.nn.functional.mse_loss(velocity, noise - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        # EMA with warm-up: a fixed 0.999 would keep 0.999**step of the random initial weights.
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                p_ema.lerp_(p, 1 - decay)
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
        if step % args.save_every == 0 or step == args.steps:
            ema.save_pretrained(args.out, safe_serialization=True)
            print(f"saved {args.out} at step {step}", flush=True)


if __name__ == "__main__":
    main()
