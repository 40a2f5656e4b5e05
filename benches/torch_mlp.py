"""PyTorch CPU baseline for `cargo bench -p halyard-models --bench mlp_train`.

Same architecture and step: 64 inputs, hidden 256 and 256, one logit, batch 1024,
BCE-with-logits, AdamW. Prints the median step time and samples/s over 30 timed steps
after 5 warm-up steps.

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch
    /tmp/torchenv/bin/python benches/torch_mlp.py
"""
import statistics
import time

import torch

torch.manual_seed(1)
torch.set_num_threads(torch.get_num_threads())
inputs, hidden, batch = 64, 256, 1024
model = torch.nn.Sequential(
    torch.nn.Linear(inputs, hidden), torch.nn.ReLU(),
    torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
    torch.nn.Linear(hidden, 1),
)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
loss_fn = torch.nn.BCEWithLogitsLoss()
x = (torch.arange(batch * inputs, dtype=torch.float32).reshape(batch, inputs) * 7919 % 1000) / 1000 - 0.5
y = (torch.arange(batch) % 9 == 0).float().reshape(batch, 1)


def step():
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()


for _ in range(5):
    step()
times = []
for _ in range(30):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
med = statistics.median(times)
print(f"torch {torch.__version__} threads {torch.get_num_threads()}: "
      f"median step {med * 1e3:.3f} ms, {batch / med:,.0f} samples/s")
