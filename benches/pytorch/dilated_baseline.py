#!/usr/bin/env python3
"""PyTorch baselines for dilated attention, measured the way our GPU harness measures.

Implementations, all on [batch, seq, heads, head_dim] inputs:
  sdpa_dense      : torch SDPA over the whole sequence (flash backend), causal or not
  head_grouped    : dilated attention as dilated-attention-pytorch computes it, written the
                    straightforward way: per pair, strided view of the group's heads, SDPA per
                    segment batch, scatter into the output (no division by the number of groups)
  longnet         : LongNet mode: every head uses every pair with offset head % r; per pair and
                    offset, flash attention that returns the LSE; scatter; softmax of the LSEs;
                    weighted sum
Useful FLOPs per head and pair: 4 d sum_segments m^2 (causal: 2 d m (m + 1)).

Prints one JSON line per (impl, config, pass) with median ms over repeats, tokens/s, TFLOP/s
useful and peak extra memory (max_memory_allocated minus the inputs).
"""
import argparse, json, math, sys, time

import torch
import torch.nn.functional as F


def pairs_of(spec):
    return [tuple(int(x) for x in p.split(":")) for p in spec.split(",")]


def head_groups(h, g):
    base, extra = divmod(h, g)
    out, start = [], 0
    for i in range(g):
        n = base + (1 if i < extra else 0)
        out.append((start, n))
        start += n
    return out


def useful_flops(n, h, d, pairs, mode, causal):
    total = 0.0
    for i, (s, r) in enumerate(pairs):
        s = min(s, n)
        heads = h if mode == "longnet" else head_groups(h, len(pairs))[i][1]
        full, tail = divmod(n, s)
        for head in range(heads):
            o = (head % r) if mode == "longnet" else (i % r)
            for length, count in ((s, full), (tail, 1 if tail else 0)):
                m = 0 if o >= length else (length - o + r - 1) // r
                per = 2 * d * m * (m + 1) if causal else 4 * d * m * m
                total += per * count
    return total


def segment_sdpa(x_sel, causal, with_lse):
    """x_sel: [b, nseg, m, h, d] for q, k, v -> output (and lse [b, nseg, m, h])."""
    q, k, v = x_sel
    b, nseg, m, h, d = q.shape
    qf = q.reshape(b * nseg, m, h, d).transpose(1, 2)
    kf = k.reshape(b * nseg, m, h, d).transpose(1, 2)
    vf = v.reshape(b * nseg, m, h, d).transpose(1, 2)
    if with_lse:
        if q.dtype == torch.float32:
            # The flash kernel is bf16/f16 only; the memory-efficient kernel returns the LSE in f32.
            out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
                qf, kf, vf, None, True, 0.0, causal)[:2]
            lse = lse[:, :, :m]  # padded to a multiple of 32
        else:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention(qf, kf, vf, 0.0, causal)[:2]
        return (out.transpose(1, 2).reshape(b, nseg, m, h, d),
                lse.transpose(1, 2).reshape(b, nseg, m, h))
    out = F.scaled_dot_product_attention(qf, kf, vf, is_causal=causal)
    return out.transpose(1, 2).reshape(b, nseg, m, h, d), None


def select_rows(t, s, r, o):
    """Full segments only (n % s == 0 in these benchmarks): [b, n, h, d] -> [b, n/s, m, h, d]."""
    b, n, h, d = t.shape
    return t.view(b, n // s, s, h, d)[:, :, o::r]


def dilated(q, k, v, pairs, mode, causal):
    b, n, h, d = q.shape
    if mode == "head_grouped":
        out = torch.zeros_like(q)
        for i, ((s, r), (h0, hn)) in enumerate(zip(pairs, head_groups(h, len(pairs)))):
            s = min(s, n)
            o = i % r
            sel = [select_rows(t[:, :, h0:h0 + hn], s, r, o) for t in (q, k, v)]
            res, _ = segment_sdpa(sel, causal, False)
            out.view(b, n // s, s, h, d)[:, :, o::r, h0:h0 + hn] = res
        return out
    # LongNet: per pair, per offset group, flash with LSE, scatter, then LSE-softmax merge.
    outs, lses = [], []
    for s, r in pairs:
        s = min(s, n)
        o_pair = torch.zeros_like(q)
        l_pair = torch.full((b, n, h), float("-inf"), device=q.device, dtype=torch.float32)
        for o in range(min(r, h)):
            heads = list(range(o, h, r))
            sel = [select_rows(t[:, :, o::r] if r > 1 else t, s, r, o) for t in (q, k, v)]
            res, lse = segment_sdpa(sel, causal, True)
            o_pair.view(b, n // s, s, h, d)[:, :, o::r, heads] = res
            l_pair.view(b, n // s, s, h)[:, :, o::r, heads] = lse
        outs.append(o_pair)
        lses.append(l_pair)
    lse = torch.stack(lses)                       # [g, b, n, h]
    w = torch.softmax(lse, dim=0).nan_to_num(0.0)  # rows no pair selects: weight 0
    return sum(w[i].unsqueeze(-1).to(q.dtype) * outs[i] for i in range(len(outs)))


def sdpa_dense(q, k, v, causal):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          is_causal=causal).transpose(1, 2)


def bench(fn, backward, repeats, warmup):
    for _ in range(warmup):
        out = fn()
        if backward:
            out.backward(torch.ones_like(out))
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        if backward:
            out.backward(torch.ones_like(out))
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", default="8192,32768,131072")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--pairs", default="2048:1,4096:2,8192:4")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--impls", default="sdpa_dense,head_grouped,longnet")
    ap.add_argument("--passes", default="fwd,fwd_bwd")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    pairs = pairs_of(args.pairs)
    dev = torch.device("cuda")
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for n in [int(x) for x in args.seqs.split(",")]:
            for impl in args.impls.split(","):
                for pas in args.passes.split(","):
                    torch.cuda.empty_cache()
                    shape = (args.batch, n, args.heads, args.head_dim)
                    q = k = v = None
                    try:
                        q, k, v = (torch.randn(shape, device=dev, dtype=dtype, requires_grad=(pas == "fwd_bwd"))
                                   for _ in range(3))
                        base = torch.cuda.memory_allocated()
                        torch.cuda.reset_peak_memory_stats()
                        if impl == "sdpa_dense":
                            fn = lambda: sdpa_dense(q, k, v, args.causal)
                            flops = (2 if args.causal else 4) * args.batch * args.heads * args.head_dim * n * n
                        else:
                            mode = "longnet" if impl == "longnet" else "head_grouped"
                            fn = lambda: dilated(q, k, v, pairs, mode, args.causal)
                            flops = args.batch * useful_flops(n, args.heads, args.head_dim, pairs, mode, args.causal)
                        if pas == "fwd_bwd":
                            flops *= 3.5  # forward 1 + backward 2.5 (FlashAttention-2's accounting)
                        ms = bench(fn, pas == "fwd_bwd", args.repeats, args.warmup)
                        peak = torch.cuda.max_memory_allocated() - base
                        rec = {"impl": impl, "dtype": dtype_name, "seq": n, "batch": args.batch,
                               "heads": args.heads, "head_dim": args.head_dim, "pairs": args.pairs,
                               "causal": args.causal, "pass": pas, "median_ms": round(ms, 4),
                               "tokens_per_s": round(args.batch * n / (ms / 1e3)),
                               "tflops_useful": round(flops / (ms / 1e3) / 1e12, 2),
                               "peak_extra_mib": round(peak / 2**20, 1)}
                    except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
                        rec = {"impl": impl, "dtype": dtype_name, "seq": n, "pass": pas,
                               "error": str(e).splitlines()[0][:160]}
                    print(json.dumps(rec), flush=True)
                    del q, k, v


if __name__ == "__main__":
    main()
