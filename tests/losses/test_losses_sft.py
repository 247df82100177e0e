import math

import pytest
import torch
import torch.nn.functional as F

from tether.losses import sft_loss, sft_loss_sum


def test_sft_loss_by_hand():
    # T = 3, V = 2. Shift: logits[:, t] predicts labels[:, t + 1].
    # t=0: logits (0, 0)     -> p(label 0) = 1/2 -> nll = ln 2   = 0.6931
    # t=1: logits (ln 3, 0)  -> p(label 0) = 3/4 -> nll = ln 4/3 = 0.2877
    # t=2: predicts nothing (no label 3) -> its logits are unused
    # mean over 2 tokens = (0.6931 + 0.2877) / 2 = 0.4904
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [123.0, -456.0]]])
    labels = torch.tensor([[-100, 0, 0]])
    loss, metrics = sft_loss(logits, labels)
    expected = (math.log(2.0) + math.log(4.0 / 3.0)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert metrics == {"loss": pytest.approx(expected, abs=1e-6), "tokens": 2.0}
    assert isinstance(metrics["loss"], float)


def test_ignored_labels_do_not_count():
    # labels[:, 2] ignored -> only t=0 counts -> ln 2
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[5, 0, -100]])
    loss, metrics = sft_loss(logits, labels)
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert metrics["tokens"] == 1.0
    s, n = sft_loss_sum(logits, labels)
    assert n == 1 and s.item() == pytest.approx(math.log(2.0), abs=1e-6)


def test_matches_reference_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=g)
    labels = torch.randint(0, 11, (3, 6), generator=g)
    labels[0, :3] = -100
    labels[2, 4:] = -100
    loss, _ = sft_loss(logits, labels)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)


def test_all_ignored_gives_zero_no_nan():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    labels = torch.full((2, 4), -100)
    loss, metrics = sft_loss(logits, labels)
    assert loss.item() == 0.0 and metrics["tokens"] == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()


def test_bf16_logits_are_upcast():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.randint(0, 7, (2, 5), generator=g)
    loss32, _ = sft_loss(logits.bfloat16().float(), labels)
    loss16, _ = sft_loss(logits.bfloat16(), labels)
    assert loss16.dtype == torch.float32
    assert loss16.item() == pytest.approx(loss32.item(), abs=1e-6)


def test_gradient_accumulation_1x8_equals_8x1():
    # Rows have different numbers of labelled tokens, so averaging per-micro-batch
    # means would be wrong; dividing every micro-batch sum by the window's total
    # token count reproduces the single-batch loss and gradient.
    g = torch.Generator().manual_seed(0)
    B, T, V = 8, 9, 13
    base = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (B, T), generator=g)
    for b in range(B):
        labels[b, : 1 + b % 4] = -100  # prompt
        if b % 3:
            labels[b, T - b % 3 :] = -100  # padding

    full = base.clone().requires_grad_(True)
    loss_full, _ = sft_loss(full, labels)
    loss_full.backward()

    micro = base.clone().requires_grad_(True)
    total_tokens = sum(sft_loss_sum(micro[i : i + 1].detach(), labels[i : i + 1])[1] for i in range(B))
    acc = 0.0
    naive = 0.0
    for i in range(B):
        s, _ = sft_loss_sum(micro[i : i + 1], labels[i : i + 1])
        (s / total_tokens).backward()
        acc += (s / total_tokens).item()
        naive += sft_loss(micro[i : i + 1].detach(), labels[i : i + 1])[0].item() / B

    assert acc == pytest.approx(loss_full.item(), abs=1e-12)
    assert torch.allclose(micro.grad, full.grad, atol=1e-12)
    assert abs(naive - loss_full.item()) > 1e-4  # the naive mean of means differs
