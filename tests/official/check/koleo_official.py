"""facebookresearch/dinov2's ``KoLeoLoss`` on fixed inputs: the reference of tests/criteria/test_koleo.py.

Usage: ``koleo_official.py REPO``. Imports ``dinov2/loss/koleo_loss.py`` from the checkout and
prints, for ``torch.manual_seed(0)``, ``x = randn(16, 32)`` and ``y = randn(16, 32)`` with rows 3
and 7 equal, the loss and ``x.grad``'s sum of absolute values (float64 printing). Result
(2026-12-05, dinov2 b8931f7, torch 2.14.1 CPU): recorded in tests/criteria/test_koleo.py.
"""

import sys

sys.path.insert(0, sys.argv[1])
import torch
from dinov2.loss.koleo_loss import KoLeoLoss

torch.manual_seed(0)
x = torch.randn(16, 32, requires_grad=True)
y = torch.randn(16, 32)
y[7] = y[3]
loss = KoLeoLoss()
lx = loss(x)
lx.backward()
print(repr(float(lx)), repr(float(x.grad.abs().sum())), repr(float(loss(y))))
