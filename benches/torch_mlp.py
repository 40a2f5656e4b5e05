"""PyTorch CPU baseline for `cargo bench -p halyard-models --bench mlp_train`.

Same architectures and steps: the MLP (64 inputs, hidden 256 and 256, one logit, batch
1024, BCE-with-logits, AdamW), median over 30 timed steps after 5 warm-up steps; and the
N-BEATS member (input 144, horizon 48, 6 generic blocks of 4 ReLU layers of width 512 with
backcast and forecast heads, batch 1024, L1 loss, Adam), median over 10 steps after 2.
Prints each median step time and samples/s.

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


def report(label, step, warm, timed):
    """Run `step` `warm` times, then print the median of `timed` timed runs."""
    for _ in range(warm):
        step()
    times = []
    for _ in range(timed):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(f"torch {torch.__version__} threads {torch.get_num_threads()}{label}: "
          f"median step {med * 1e3:.3f} ms, {batch / med:,.0f} samples/s")


report("", step, 5, 30)


class Block(torch.nn.Module):
    def __init__(self, input_size, horizon, layers, width):
        super().__init__()
        sizes = [input_size] + [width] * layers
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.backcast = torch.nn.Linear(width, input_size)
        self.forecast = torch.nn.Linear(width, horizon)

    def forward(self, x):
        h = x
        for layer in self.layers:
            h = torch.relu(layer(h))
        return self.backcast(h), self.forecast(h)


class NBeats(torch.nn.Module):
    def __init__(self, input_size=144, horizon=48, blocks=6, layers=4, width=512):
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            Block(input_size, horizon, layers, width) for _ in range(blocks))

    def forward(self, x):
        residual, forecast = x, None
        for block in self.blocks:
            b, f = block(residual)
            residual = residual - b
            forecast = f if forecast is None else forecast + f
        return forecast


nbeats = NBeats()
nopt = torch.optim.Adam(nbeats.parameters(), lr=1e-3)
nx = torch.sin((torch.arange(batch * 144) % 97).float() / 97).reshape(batch, 144)
ny = torch.sin((torch.arange(batch * 48) % 97).float() / 97).reshape(batch, 48)


def nbeats_step():
    nopt.zero_grad()
    loss = (nbeats(nx) - ny).abs().mean()
    loss.backward()
    nopt.step()


report(" N-BEATS", nbeats_step, 2, 10)
