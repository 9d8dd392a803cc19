# Old vs new kernels: CPU time and wall time per call, dense vs tw_linear interleaved (env: SH, SP, W, R).
# Run with OMP_WAIT_POLICY=PASSIVE for CPU times without spinning; see cpu_linear_xeon_old_vs_new.md.
# CPU time per call (OMP_WAIT_POLICY=PASSIVE: no spinning), dense vs sparse, interleaved
import sys, time, statistics, os, torch, torch.nn.functional as F
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import bench_linear as B
torch.set_num_threads(2)
_ops = torch.ops.tilesparse
shapes = [tuple(map(int, s.split("x"))) for s in os.environ.get("SH", "2048x2048,768x3072,3072x768").split(",")]
sps = [float(s) for s in os.environ.get("SP", "0.5,0.75").split(",")]
W = os.environ.get("W", "fwd,gi,gv").split(","); R = int(os.environ.get("R", 5))
WALL = []
def samp(fn, n):
    t0 = time.process_time(); w0 = time.perf_counter()
    for _ in range(n): fn()
    WALL.append((time.perf_counter() - w0) / n)
    return (time.process_time() - t0) / n
print("load", os.getloadavg()[0], "kernel", _ops.cpu_kernel(), os.environ.get("OMP_WAIT_POLICY"))
for K, N in shapes:
    for s in sps:
        wm, lay, vals = B.make_layer(N, K, s, 128, 1, torch.float32, "cpu", 0)
        idx = (lay.cols, lay.row_offsets, lay.rows)
        x = torch.randn(2048, K); gy = torch.randn(2048, N)
        fns = {"fwd": (lambda: F.linear(x, wm), lambda: _ops.tw_linear(x, vals, *idx, None, N, 128)),
               "gi": (lambda: torch.mm(gy, wm), lambda: _ops.tw_linear_grad_input(gy, vals, *idx, K, 128)),
               "gv": (lambda: torch.mm(gy.t(), x), lambda: _ops.tw_linear_grad_values(gy, x, *idx, 128, lay.num_values))}
        out = []
        with torch.no_grad():
            for w in W:
                d, sp = fns[w]
                d(); sp()
                cd = max(1, round(0.1 / samp(d, 1))); cs = max(1, round(0.1 / samp(sp, 1)))
                D, S, DW, SW = [], [], [], []
                for _ in range(R):
                    D.append(samp(d, cd)); DW.append(WALL[-1]); S.append(samp(sp, cs)); SW.append(WALL[-1])
                dm, sm = statistics.median(D), statistics.median(S)
                dw, sw = statistics.median(DW), statistics.median(SW)
                out.append(f"{w} cpu {1e3*dm:.1f}/{1e3*sm:.1f}={dm/sm:.2f}x wall {1e3*dw:.1f}/{1e3*sw:.1f}={dw/sw:.2f}x")
        print(f"{K}x{N} s={s}", " | ".join(out), flush=True)
