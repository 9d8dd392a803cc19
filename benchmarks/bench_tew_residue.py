"""The TEW residue on this CPU: one layer's forward + backward, TW alone
against TW + residue, with the residue run by the ``csr_linear`` operators
(what TEW modules use) and by the gather + ``index_add`` formula they used
before (``ops._csr_*_gather``, today the CUDA path); and the residue operators
alone (forward + both backward operators) under each residue kernel family
this CPU runs (``generic``; ``avx2``, which avx512 also uses), interleaved,
median of ``--repeats`` rounds, random data.

    python benchmarks/bench_tew_residue.py [--tokens 640] [--delta 0.02] [--repeats 20]

Prints two lines per layer shape: milliseconds for ``tw``, ``tew`` (csr
operator) and ``tew_gather``, and their ratios to ``tw``; then the residue
operators' milliseconds per kernel family and the generic/avx2 ratio.
"""
import argparse
import statistics
import time

import torch
from torch import nn

import tilesparse
from tilesparse import ops
from tilesparse.testing import cpu_kernel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=640, help="rows of the activation (batch 16 x 40 tokens)")
    ap.add_argument("--sparsity", type=float, default=0.75)
    ap.add_argument("--delta", type=float, default=0.02)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, tokens {args.tokens}, "
          f"sparsity {args.sparsity}, delta {args.delta}, median of {args.repeats} interleaved rounds")
    for k, n in ((384, 1536), (1536, 384), (384, 384)):
        dense = nn.Sequential(nn.Linear(k, n))
        tw = tilesparse.sparsify(dense, args.sparsity, 128, "tw", progress=False)[0]
        tew = tilesparse.sparsify(nn.Sequential(nn.Linear(k, n)), args.sparsity, 128, "tew", delta=args.delta,
                                  progress=False)[0]
        x = torch.randn(args.tokens, k, requires_grad=True)
        row_ptr, cols = tew._residue_csr()

        def gather_residue(y, xs):  # the formula the modules ran before csr_linear
            rv = tew._residue_values()
            return y + GatherResidue.apply(xs, rv, row_ptr, cols, y.shape[-1])

        def step(mod, residue=None):
            if residue is None:
                y = mod(x)
            else:
                saved = mod._residue_add
                mod._residue_add = residue
                try:
                    y = mod(x)
                finally:
                    mod._residue_add = saved
            y.square().mean().backward()

        med = interleaved({"tw": lambda: step(tw), "tew": lambda: step(tew),
                           "tew_gather": lambda: step(tew, gather_residue)}, args.repeats)
        print(f"{k}x{n} residue nnz {cols.numel()}: " + ", ".join(f"{name} {v:.2f} ms" for name, v in med.items())
              + f" | tew/tw {med['tew'] / med['tw']:.2f}x, tew_gather/tw {med['tew_gather'] / med['tw']:.2f}x, "
              f"gather/csr {med['tew_gather'] / med['tew']:.1f}x")

        values, xd = tew._residue_values().detach(), x.detach()
        gy = torch.randn(args.tokens, n)
        T = torch.ops.tilesparse

        def residue(kernel):
            def run():
                with cpu_kernel(kernel):
                    T.csr_linear(xd, values, row_ptr, cols, n)
                    T.csr_linear_grad_input(gy, values, row_ptr, cols, k)
                    T.csr_linear_grad_values(gy, xd, row_ptr, cols)
            return run

        families = [f for f in ("generic", "avx2") if f in T.cpu_kernels_supported()]
        res = interleaved({f: residue(f) for f in families}, args.repeats)
        ratio = f" | generic/avx2 {res['generic'] / res['avx2']:.2f}x" if "avx2" in res else " | no avx2 on this CPU"
        print(f"{k}x{n} residue operators alone: " + ", ".join(f"{f} {v:.2f} ms" for f, v in res.items()) + ratio)


def interleaved(runs, repeats):
    """Median milliseconds of each callable, run in turn ``repeats`` times after one warm-up each."""
    times = {name: [] for name in runs}
    for f in runs.values():
        f()
    for _ in range(repeats):
        for name, f in runs.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) * 1e3 for name, v in times.items()}


class GatherResidue(torch.autograd.Function):
    """x @ R^T by the gather formulas, differentiated by the gather formulas (no C++ kernel involved)."""

    @staticmethod
    def forward(ctx, x, values, row_ptr, cols, out_features):
        ctx.save_for_backward(x, values, row_ptr, cols)
        return ops._csr_linear_gather(x, values, row_ptr, cols, out_features)

    @staticmethod
    def backward(ctx, grad):
        x, values, row_ptr, cols = ctx.saved_tensors
        return (ops._csr_grad_input_gather(grad, values, row_ptr, cols, x.shape[-1]),
                ops._csr_grad_values_gather(grad, x, row_ptr, cols), None, None, None)


if __name__ == "__main__":
    main()
