"""Evaluate a checkpoint on an ImageFolder directory (placeholder: full CLI below)."""
from __future__ import annotations

import torch


@torch.no_grad()
def accuracy_per_glimpse(model, images_u8, labels, batch_size=256, device=None, dtype=None, progress=True):
    """Top-1 accuracy after each glimpse on uint8 images [N, 3, S, S] already at the model's size."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = None
    for i in range(0, len(images_u8), batch_size):
        x = images_u8[i:i + batch_size].to(device).float().div_(255.0).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x).logits
        hits = (logits.argmax(-1).cpu() == labels[i:i + batch_size]).sum(1)
        correct = hits if correct is None else correct + hits
    model.train(was_training)
    return [round(float(c) / len(images_u8), 4) for c in correct]
